//! Resumable training and clean stops.
//!
//! Beside the AdapterHub files of the best epoch, `peft train` keeps `trainer_state.safetensors`
//! in its output folder: the current adapter + head weights, AdamW's two moments of every tensor,
//! and (in the header's metadata, as JSON) the run's settings, the step, the epoch and batch to
//! continue at, the best score so far, the loss history and a fingerprint of the tokenized data.
//! It is written atomically (one file: temporary file, fsync, rename) at the end of every epoch,
//! every `--save-steps` steps, and when the run is stopped (Ctrl-C, `--stop-after-steps`).
//! `peft train --resume DIR` restores it and continues exactly where the run stopped: the
//! schedule is a function of the step, every epoch's batch order a function of the seed and the
//! epoch, and the GPU kernels are deterministic, so a stopped and resumed run ends with the same
//! weights, bit for bit, as one that never stopped. AdapterHub ignores the extra file, so the
//! folder stays loadable by `adapters`' `load_adapter`.

use super::{Optimizer, Preset, TrainArgs, TrainSummary};
use crate::formats::weights::{write_tensors, Tensor, TensorMap, WeightFile};
use crate::gpu::{Gpu, GpuTensor};
use crate::train::data::{DataOptions, Format, Tokenized};
use crate::types::Activation;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The state file in a training output folder.
pub const STATE_FILE: &str = "trainer_state.safetensors";
const STATE_KEY: &str = "peft_trainer_state";
const FORMAT: &str = "peft-wgpu trainer state 1";

// ---------------------------------------------------------------------------------------------
// Stop requests (Ctrl-C)
// ---------------------------------------------------------------------------------------------

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks a running training loop to save its state and stop after the current step.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a stop was requested (by Ctrl-C or [`request_stop`]).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const INTERRUPTED_EXIT_CODE: i32 = 130;

/// Installs the Ctrl-C (SIGINT / SIGTERM) handler: the first one asks the training loop to save a
/// checkpoint and stop after the step it is in; a second one exits at once.
pub fn install_ctrlc_handler() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                if STOP.swap(true, Ordering::SeqCst) {
                    eprintln!("\ninterrupted again: exiting without saving");
                    std::process::exit(INTERRUPTED_EXIT_CODE);
                }
                eprintln!("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to quit at once)");
            })
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| anyhow!("installing the Ctrl-C handler: {e}"))
}

// ---------------------------------------------------------------------------------------------
// How a run is driven
// ---------------------------------------------------------------------------------------------

/// A fault injected on purpose (hidden `--inject-fault`, for the tests of what a run does then).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Before step N (1-based) the first trainable tensor is filled with NaN, as an overflowing
    /// update leaves it: the step's loss and gradients are NaN.
    Nan(usize),
    /// Before step N the GPU device is destroyed, as a driver reset or a removed GPU would.
    DeviceLost(usize),
}

impl Fault {
    /// The step the fault hits.
    pub fn step(self) -> usize {
        match self {
            Fault::Nan(s) | Fault::DeviceLost(s) => s,
        }
    }
}

impl FromStr for Fault {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (kind, step) = s.split_once('@').ok_or_else(|| anyhow!("expected KIND@STEP, got {s:?}"))?;
        let step: usize = step.parse().with_context(|| format!("step in {s:?}"))?;
        if step == 0 {
            bail!("steps count from 1");
        }
        match kind {
            "nan" => Ok(Fault::Nan(step)),
            "device-lost" => Ok(Fault::DeviceLost(step)),
            other => bail!("unknown fault {other:?} (nan, device-lost)"),
        }
    }
}

/// How [`super::train_with`] runs, beyond the training settings.
#[derive(Clone, Debug, Default)]
pub struct RunControl {
    /// Continue from `trainer_state.safetensors` in the output folder.
    pub resume: bool,
    /// Save the state and stop once this many steps (in all, counted from the run's start) are done.
    pub stop_after_steps: Option<usize>,
    /// Also save the state every this many steps (besides every epoch's end).
    pub save_steps: Option<usize>,
    pub fault: Option<Fault>,
}

// ---------------------------------------------------------------------------------------------
// The loop's counters
// ---------------------------------------------------------------------------------------------

/// Where a run is and what it has seen: everything besides the tensors that the loop needs to
/// continue exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Optimizer steps done.
    pub step: usize,
    /// The epoch to run next (1-based), and the batch of it to start at.
    pub epoch: usize,
    pub batch: usize,
    /// Every epoch ran (or early stopping ended the run).
    pub finished: bool,
    pub best_accuracy: f64,
    pub best_epoch: usize,
    pub since_best: usize,
    pub dev_accuracy: Vec<f64>,
    pub dev_macro_f1: Vec<f64>,
    pub train_losses: Vec<f32>,
    pub real_tokens: usize,
    pub train_secs: f64,
    /// Length of `metrics.jsonl` when the state was saved (a resumed run cuts what came after).
    pub metrics_bytes: u64,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            step: 0,
            epoch: 1,
            batch: 0,
            finished: false,
            best_accuracy: f64::NEG_INFINITY,
            best_epoch: 0,
            since_best: 0,
            dev_accuracy: vec![],
            dev_macro_f1: vec![],
            train_losses: vec![],
            real_tokens: 0,
            train_secs: 0.0,
            metrics_bytes: 0,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "finished": self.finished,
            "best_accuracy": if self.best_accuracy.is_finite() { json!(self.best_accuracy) } else { Value::Null },
            "best_epoch": self.best_epoch,
            "since_best": self.since_best,
            "dev_accuracy": self.dev_accuracy,
            "dev_macro_f1": self.dev_macro_f1,
            "train_losses": self.train_losses,
            "real_tokens": self.real_tokens,
            "train_secs": self.train_secs,
            "metrics_bytes": self.metrics_bytes,
        })
    }

    fn from_json(v: &Value) -> Result<Self> {
        let u = |k: &str| -> Result<usize> {
            v.get(k).and_then(Value::as_u64).map(|x| x as usize).with_context(|| format!("field {k:?}"))
        };
        let f64s = |k: &str| -> Result<Vec<f64>> {
            v.get(k)
                .and_then(Value::as_array)
                .with_context(|| format!("field {k:?}"))?
                .iter()
                .map(|x| x.as_f64().with_context(|| format!("field {k:?}")))
                .collect()
        };
        Ok(Self {
            step: u("step")?,
            epoch: u("epoch")?,
            batch: u("batch")?,
            finished: v.get("finished").and_then(Value::as_bool).context("field \"finished\"")?,
            best_accuracy: v.get("best_accuracy").and_then(Value::as_f64).unwrap_or(f64::NEG_INFINITY),
            best_epoch: u("best_epoch")?,
            since_best: u("since_best")?,
            dev_accuracy: f64s("dev_accuracy")?,
            dev_macro_f1: f64s("dev_macro_f1")?,
            train_losses: f64s("train_losses")?.into_iter().map(|x| x as f32).collect(),
            real_tokens: u("real_tokens")?,
            train_secs: v.get("train_secs").and_then(Value::as_f64).unwrap_or(0.0),
            metrics_bytes: v.get("metrics_bytes").and_then(Value::as_u64).context("field \"metrics_bytes\"")?,
        })
    }
}

impl Progress {
    /// The loop's counters after `s.steps` steps, continuing at `epoch` / `batch`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn snapshot(
        s: &TrainSummary,
        epoch: usize,
        batch: usize,
        finished: bool,
        since_best: usize,
        real_tokens: usize,
        train_secs: f64,
        metrics_bytes: u64,
    ) -> Self {
        Self {
            step: s.steps,
            epoch,
            batch,
            finished,
            best_accuracy: s.best_accuracy,
            best_epoch: s.best_epoch,
            since_best,
            dev_accuracy: s.dev_accuracy.clone(),
            dev_macro_f1: s.dev_macro_f1.clone(),
            train_losses: s.train_losses.clone(),
            real_tokens,
            train_secs,
            metrics_bytes,
        }
    }
}

/// Injects `fault` if it is due before step `step`.
pub(crate) fn inject(
    gpu: &Gpu,
    fault: Option<Fault>,
    step: usize,
    params: &[(String, &GpuTensor, &GpuTensor)],
) -> Result<()> {
    match fault {
        Some(Fault::Nan(s)) if s == step => {
            let w = params.first().context("no trainable tensor")?.1;
            w.write(gpu, &vec![f32::NAN; w.numel()])
        }
        Some(Fault::DeviceLost(s)) if s == step => {
            gpu.device.destroy();
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Settings as JSON
// ---------------------------------------------------------------------------------------------

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The settings that define a run (paths made absolute, so `--resume` works from any folder).
/// `out`, `resident_layers` and `progress` are not part of it: they do not change the result.
pub fn args_to_json(a: &TrainArgs) -> Value {
    json!({
        "model": absolute(&a.model),
        "train": absolute(&a.train),
        "dev": a.dev.as_deref().map(absolute),
        "dev_split": a.dev_split,
        "config": match a.config { Preset::Houlsby => "houlsby", Preset::Pfeiffer => "pfeiffer", Preset::None => "none" },
        "reduction_factor": a.reduction_factor,
        "non_linearity": a.non_linearity.map(|x| x.adapterhub_name()),
        "epochs": a.epochs,
        "lr": a.lr,
        "batch_size": a.batch_size,
        "max_length": a.max_length,
        "max_train_examples": a.max_train_examples,
        "max_dev_examples": a.max_dev_examples,
        "seed": a.seed,
        "warmup_ratio": a.warmup_ratio,
        "weight_decay": a.weight_decay,
        "max_grad_norm": a.max_grad_norm,
        "patience": a.patience,
        "adapter_name": a.adapter_name,
        "text_column": a.data.text_column,
        "text_pair_column": a.data.text_pair_column,
        "label_column": a.data.label_column,
        "format": a.data.format.map(|f| f.to_string()),
    })
}

/// The settings saved by [`args_to_json`]; `out` is the folder they were read from.
pub fn args_from_json(v: &Value, out: &Path) -> Result<TrainArgs> {
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    let s = |k: &str| -> Result<String> {
        get(k).and_then(Value::as_str).map(String::from).with_context(|| format!("setting {k:?}"))
    };
    let f = |k: &str| -> Result<f64> { get(k).and_then(Value::as_f64).with_context(|| format!("setting {k:?}")) };
    let u = |k: &str| -> Result<usize> {
        get(k).and_then(Value::as_u64).map(|x| x as usize).with_context(|| format!("setting {k:?}"))
    };
    let ou = |k: &str| -> Result<Option<usize>> { get(k).map(|_| u(k)).transpose() };
    let config = match s("config")?.as_str() {
        "houlsby" => Preset::Houlsby,
        "pfeiffer" => Preset::Pfeiffer,
        "none" => Preset::None,
        other => bail!("setting \"config\": unknown preset {other:?}"),
    };
    Ok(TrainArgs {
        model: s("model")?.into(),
        train: s("train")?.into(),
        dev: get("dev").map(|_| s("dev")).transpose()?.map(PathBuf::from),
        dev_split: f("dev_split")?,
        config,
        reduction_factor: f("reduction_factor")?,
        non_linearity: get("non_linearity")
            .map(|_| s("non_linearity"))
            .transpose()?
            .map(|n| Activation::parse(&n))
            .transpose()?,
        epochs: u("epochs")?,
        lr: f("lr")? as f32,
        batch_size: u("batch_size")?,
        max_length: u("max_length")?,
        max_train_examples: ou("max_train_examples")?,
        max_dev_examples: ou("max_dev_examples")?,
        seed: get("seed").and_then(Value::as_u64).context("setting \"seed\"")?,
        out: out.to_path_buf(),
        warmup_ratio: f("warmup_ratio")?,
        weight_decay: f("weight_decay")? as f32,
        max_grad_norm: f("max_grad_norm")? as f32,
        patience: ou("patience")?,
        data: DataOptions {
            text_column: s("text_column")?,
            text_pair_column: get("text_pair_column").map(|_| s("text_pair_column")).transpose()?,
            label_column: s("label_column")?,
            format: get("format").map(|_| s("format")).transpose()?.map(|x| Format::from_str(&x)).transpose()?,
            require_labels: true,
        },
        adapter_name: s("adapter_name")?,
        resident_layers: None,
        recompute: false,
        layer_chunk: None,
        keep_ffn_output: false,
        max_gpu_memory: None,
        progress: true,
    })
}

// ---------------------------------------------------------------------------------------------
// Data fingerprint
// ---------------------------------------------------------------------------------------------

/// FNV-1a over the tokenized train and dev sets, their label ids and the label names: a resumed
/// run must see exactly the data the stopped one saw.
pub fn fingerprint(parts: &[(&[Tokenized], &[u32])], labels: &[String]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (tokens, ids) in parts {
        eat(&(tokens.len() as u64).to_le_bytes());
        for t in *tokens {
            eat(&(t.ids.len() as u64).to_le_bytes());
            for (&i, &ty) in t.ids.iter().zip(&t.types) {
                eat(&i.to_le_bytes());
                eat(&ty.to_le_bytes());
            }
        }
        for &l in *ids {
            eat(&l.to_le_bytes());
        }
    }
    for l in labels {
        eat(&(l.len() as u64).to_le_bytes());
        eat(l.as_bytes());
    }
    format!("{h:016x}")
}

// ---------------------------------------------------------------------------------------------
// Save / load
// ---------------------------------------------------------------------------------------------

fn host(gpu: &Gpu, t: &GpuTensor) -> Result<Tensor> {
    Tensor::new(t.shape.clone(), t.to_vec(gpu)?)
}

/// Writes the state file into `out` atomically: `param.<name>`, `exp_avg.<name>`,
/// `exp_avg_sq.<name>` for every trainable tensor, and the JSON (the run's `settings` as
/// [`args_to_json`] writes them, the progress, the data fingerprint) in the metadata.
pub fn save(
    gpu: &Gpu,
    out: &Path,
    settings: &Value,
    progress: &Progress,
    data_fingerprint: &str,
    params: &[(String, &GpuTensor, &GpuTensor)],
    opt: &Optimizer,
) -> Result<()> {
    if opt.step as usize != progress.step {
        bail!("internal: optimizer at step {}, loop at step {}", opt.step, progress.step);
    }
    let mut tensors = TensorMap::new();
    for ((name, w, _), (m, v)) in params.iter().zip(&opt.moments) {
        tensors.insert(format!("param.{name}"), host(gpu, w)?);
        tensors.insert(format!("exp_avg.{name}"), host(gpu, m)?);
        tensors.insert(format!("exp_avg_sq.{name}"), host(gpu, v)?);
    }
    let state = json!({
        "format": FORMAT,
        "args": settings,
        "progress": progress.to_json(),
        "data": data_fingerprint,
        "params": params.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
    });
    let meta = HashMap::from([(STATE_KEY.to_string(), state.to_string())]);
    let path = out.join(STATE_FILE);
    write_tensors(&path, &tensors, Some(meta)).with_context(|| format!("saving the training state {}", path.display()))
}

/// A state file, read back.
pub struct Saved {
    pub path: PathBuf,
    pub args: TrainArgs,
    pub progress: Progress,
    pub data_fingerprint: String,
    pub params: Vec<String>,
    pub tensors: WeightFile,
}

/// Reads `<dir>/trainer_state.safetensors`; `args.out` is `dir`.
pub fn load(dir: &Path) -> Result<Saved> {
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        bail!(
            "{}: no {STATE_FILE}: not the output folder of a `peft train` run (or one from before resumable runs)",
            dir.display()
        );
    }
    let tensors = WeightFile::open(&path)?;
    let text = tensors
        .metadata()
        .and_then(|m| m.get(STATE_KEY))
        .with_context(|| format!("{}: no {STATE_KEY:?} in the header's metadata", path.display()))?;
    let parse = || -> Result<Saved> {
        let v: Value = serde_json::from_str(text).context("invalid JSON")?;
        let format = v.get("format").and_then(Value::as_str).unwrap_or("");
        if format != FORMAT {
            bail!("format {format:?}, this build reads {FORMAT:?}");
        }
        let args = args_from_json(v.get("args").context("no \"args\"")?, dir)?;
        let progress = Progress::from_json(v.get("progress").context("no \"progress\"")?)?;
        let data_fingerprint = v.get("data").and_then(Value::as_str).context("no \"data\"")?.to_string();
        let params: Vec<String> = v
            .get("params")
            .and_then(Value::as_array)
            .context("no \"params\"")?
            .iter()
            .map(|x| x.as_str().map(String::from).context("\"params\" must list names"))
            .collect::<Result<_>>()?;
        Ok(Saved { path: path.clone(), args, progress, data_fingerprint, params, tensors: WeightFile::open(&path)? })
    };
    parse().with_context(|| format!("{}: invalid training state", path.display()))
}

impl Saved {
    /// Puts the saved weights and moments into `params` and `opt` after checking that the run is
    /// the same (tensor names and shapes, data).
    pub fn restore(
        &self,
        gpu: &Gpu,
        data_fingerprint: &str,
        params: &[(String, &GpuTensor, &GpuTensor)],
        opt: &mut Optimizer,
    ) -> Result<()> {
        let p = self.path.display();
        if data_fingerprint != self.data_fingerprint {
            bail!(
                "{p}: the training or dev data differ from the run being resumed (files changed since it stopped?); \
                 resuming needs the same data"
            );
        }
        let names: Vec<&str> = params.iter().map(|x| x.0.as_str()).collect();
        if names != self.params.iter().map(String::as_str).collect::<Vec<_>>() {
            bail!("{p}: the trainable tensors differ from the saved ones");
        }
        for ((name, w, _), (m, v)) in params.iter().zip(&opt.moments) {
            for (prefix, t) in [("param", *w), ("exp_avg", m), ("exp_avg_sq", v)] {
                let data = self.tensors.get_checked(&format!("{prefix}.{name}"), &t.shape)?;
                t.write(gpu, &data)?;
            }
        }
        opt.step = u32::try_from(self.progress.step).context("step count")?;
        Ok(())
    }
}

/// The message of a run that stopped on an error after its last checkpoint.
pub fn failed_at(step: usize, dir: &Path, saved_step: Option<usize>) -> String {
    match saved_step {
        Some(s) => format!(
            "training stopped at step {step}; the last checkpoint (step {s}) in {} is intact: continue with `peft train --resume {}`",
            dir.display(),
            dir.display()
        ),
        None => format!("training stopped at step {step}, before its first checkpoint"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip_through_json() {
        let a = TrainArgs {
            model: "/m".into(),
            train: "/t.csv".into(),
            dev: Some("/d.csv".into()),
            config: Preset::Pfeiffer,
            non_linearity: Some(Activation::Gelu),
            lr: 3.3e-4,
            weight_decay: 0.01,
            max_train_examples: Some(7),
            patience: Some(2),
            seed: u64::MAX,
            out: "/o".into(),
            data: DataOptions { text_pair_column: Some("b".into()), format: Some(Format::Tsv), ..Default::default() },
            ..TrainArgs::default()
        };
        let v: Value = serde_json::from_str(&args_to_json(&a).to_string()).unwrap();
        let b = args_from_json(&v, Path::new("/o")).unwrap();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn progress_round_trips_exactly() {
        let p = Progress {
            step: 9,
            epoch: 2,
            batch: 3,
            best_accuracy: 0.1 + 0.2,
            best_epoch: 1,
            dev_accuracy: vec![0.1 + 0.2],
            dev_macro_f1: vec![1.0 / 3.0],
            train_losses: vec![1.0986123, f32::MIN_POSITIVE, 1e-30],
            train_secs: 0.125,
            metrics_bytes: 77,
            ..Progress::new()
        };
        let v: Value = serde_json::from_str(&p.to_json().to_string()).unwrap();
        assert_eq!(Progress::from_json(&v).unwrap(), p);
        let fresh: Value = serde_json::from_str(&Progress::new().to_json().to_string()).unwrap();
        assert_eq!(Progress::from_json(&fresh).unwrap(), Progress::new());
    }

    #[test]
    fn faults_parse() {
        assert_eq!("nan@3".parse::<Fault>().unwrap(), Fault::Nan(3));
        assert_eq!("device-lost@1".parse::<Fault>().unwrap(), Fault::DeviceLost(1));
        assert!("nan@0".parse::<Fault>().is_err());
        assert!("oom@2".parse::<Fault>().is_err());
        assert!("nan".parse::<Fault>().is_err());
    }
}
