//! The JSON Lines metrics log, and the training curves read back from it.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A JSON Lines log: one compact JSON value per line, each line written whole and flushed, so
/// the file can be followed (`tail -f`) while training runs and survives an interruption.
pub struct MetricsLog {
    file: File,
    path: PathBuf,
}

impl MetricsLog {
    /// Creates (or truncates) `path`, making its folder if needed.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).with_context(|| format!("creating folder {}", dir.display()))?;
        }
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { file, path: path.to_path_buf() })
    }

    /// Opens an existing log to continue it (a resumed run), first cutting it to `keep` bytes: the
    /// length it had when the run's state was saved.
    pub fn reopen(path: impl AsRef<Path>, keep: u64) -> Result<Self> {
        let path = path.as_ref();
        let file = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {} to continue it", path.display()))?;
        let len = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
        if len < keep {
            bail!("{}: {len} bytes, shorter than the {keep} it had at the checkpoint", path.display());
        }
        file.set_len(keep).with_context(|| format!("truncating {}", path.display()))?;
        Ok(Self { file, path: path.to_path_buf() })
    }

    /// Bytes written so far (the file's length).
    pub fn bytes_written(&self) -> Result<u64> {
        Ok(self.file.metadata().with_context(|| format!("reading {}", self.path.display()))?.len())
    }

    /// Appends `record` as one line.
    pub fn log(&mut self, record: &Value) -> Result<()> {
        let mut line = serde_json::to_string(record).context("serializing a metrics record")?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).with_context(|| format!("writing {}", self.path.display()))?;
        self.file.flush().with_context(|| format!("writing {}", self.path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What [`plot_training`](super::plot_training) draws.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainingCurves {
    /// `(step, training loss)`, steps counted from 1.
    pub loss: Vec<(usize, f64)>,
    /// `(epoch, dev accuracy)`, epochs counted from 1.
    pub dev_accuracy: Vec<(usize, f64)>,
    /// `(epoch, dev macro-F1)`; may be empty.
    pub dev_macro_f1: Vec<(usize, f64)>,
}

impl TrainingCurves {
    /// Rebuilds the curves from a metrics log: lines with numeric `step` and `loss` give the loss
    /// curve; lines with numeric `epoch` and `dev_accuracy` (and optionally `dev_macro_f1`) give
    /// the dev curves. Other lines and fields are ignored.
    pub fn from_metrics_log(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut c = Self::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value =
                serde_json::from_str(line).with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))?;
            let int = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as usize);
            let num = |k: &str| v.get(k).and_then(Value::as_f64);
            if let (Some(step), Some(loss)) = (int("step"), num("loss")) {
                c.loss.push((step, loss));
            }
            if let (Some(epoch), Some(acc)) = (int("epoch"), num("dev_accuracy")) {
                c.dev_accuracy.push((epoch, acc));
                if let Some(f1) = num("dev_macro_f1") {
                    c.dev_macro_f1.push((epoch, f1));
                }
            }
        }
        Ok(c)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_log_writes_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("metrics.jsonl");
        let mut log = MetricsLog::create(&p).unwrap();
        log.log(&serde_json::json!({"step": 1, "loss": 0.7})).unwrap();
        log.log(&serde_json::json!({"epoch": 1, "dev_accuracy": 0.8, "dev_macro_f1": 0.79})).unwrap();
        // Readable while the log is still open.
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2);
        let c = TrainingCurves::from_metrics_log(&p).unwrap();
        assert_eq!(c.loss, vec![(1, 0.7)]);
        assert_eq!(c.dev_accuracy, vec![(1, 0.8)]);
        assert_eq!(c.dev_macro_f1, vec![(1, 0.79)]);
    }
}
