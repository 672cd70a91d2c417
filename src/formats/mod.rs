//! The file formats, read and written on the CPU with no GPU dependency: memory-mapped
//! safetensors ([`weights`]), Hugging Face's `config.json` ([`hf_config`]), AdapterHub's adapter /
//! head / fusion folders ([`adapterhub`]), JSON laid out as Python writes it ([`python_json`]),
//! torch's `.bin` checkpoints ([`torch_bin`], read and written without Python), and atomic writes
//! ([`write_atomic`]).
//!
//! Layer: imports nothing of the crate but `crate::types`; the model, training, bench and CLI
//! layers build on it.

pub mod adapterhub;
pub mod family;
pub mod hf_config;
pub mod python_json;
pub mod torch_bin;
pub mod weights;

use anyhow::{Context, Result};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

pub use family::Family;
pub use hf_config::BertConfig;
pub use python_json::{python_float_repr, to_python_json};
pub use weights::{Tensor, TensorMap, WeightFile};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename over
/// `path`, fsync of the folder. A reader sees the old file or the new one, never a torn one, and
/// an existing file that is memory-mapped elsewhere is replaced, not truncated under the map.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?
        .to_string_lossy()
        .into_owned();
    fs::create_dir_all(dir).with_context(|| format!("creating folder {}", dir.display()))?;
    // Unique per process and call, so concurrent writers never share a temporary file.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.{}.{seq}.tmp", std::process::id()));
    let result = (|| -> Result<()> {
        {
            // Closed before the rename.
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .with_context(|| format!("creating temporary file {}", tmp.display()))?;
            f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
            f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        }
        fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable. Opening a directory for sync is a Unix thing; elsewhere
    // the rename is as durable as the platform makes it.
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
