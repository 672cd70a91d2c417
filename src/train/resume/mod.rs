//! Resumable training and clean stops.
//!
//! Beside the AdapterHub files of the best epoch, `peft train` (and `peft fuse`) keeps `trainer_state.safetensors`
//! in its output folder: the current adapter + head weights, AdamW's two moments of every tensor,
//! and (in the header's metadata, as JSON) the run's settings, the step, the epoch and batch to
//! continue at, the best score so far, the loss history and a fingerprint of the tokenized data.
//! It is written atomically (one file: temporary file, fsync, rename) at the end of every epoch,
//! every `--save-steps` steps, and when the run is stopped (Ctrl-C, `--stop-after-steps`).
//! `peft train --resume DIR` (`peft fuse --resume DIR`) restores it and continues exactly where the run stopped: the
//! schedule is a function of the step, every epoch's batch order a function of the seed and the
//! epoch, and the GPU kernels are deterministic, so a stopped and resumed run ends with the same
//! weights, bit for bit, as one that never stopped. AdapterHub ignores the extra file, so the
//! folder stays loadable by `adapters`' `load_adapter`.

use crate::gpu::{Gpu, GpuTensor};
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

mod progress;
mod state;

pub use progress::Progress;
pub use state::{absolute, fingerprint, load, save, RunSettings, Saved};

/// The state file in a training output folder.
pub const STATE_FILE: &str = "trainer_state.safetensors";
const STATE_KEY: &str = "peft_trainer_state";
const FORMAT: &str = "peft-wgpu trainer state 1";

// ---------------------------------------------------------------------------------------------
// Stop requests (Ctrl-C)
// ---------------------------------------------------------------------------------------------

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks a running training loop to save its state and stop after the current step; whether a
/// stop was requested already (a second Ctrl-C).
pub fn request_stop() -> bool {
    STOP.swap(true, Ordering::SeqCst)
}

/// Whether a stop was requested (by Ctrl-C or [`request_stop`]).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const INTERRUPTED_EXIT_CODE: i32 = 130;

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

/// How [`super::train_with`] and [`super::fuse::fuse_with`] runs, beyond the training settings.
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

/// The message of a run that stopped on an error after its last checkpoint.
pub fn failed_at(command: &str, step: usize, dir: &Path, saved_step: Option<usize>) -> String {
    match saved_step {
        Some(s) => format!(
            "training stopped at step {step}; the last checkpoint (step {s}) in {} is intact: continue with `peft {command} --resume {}`",
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
    fn faults_parse() {
        assert_eq!("nan@3".parse::<Fault>().unwrap(), Fault::Nan(3));
        assert_eq!("device-lost@1".parse::<Fault>().unwrap(), Fault::DeviceLost(1));
        assert!("nan@0".parse::<Fault>().is_err());
        assert!("oom@2".parse::<Fault>().is_err());
        assert!("nan".parse::<Fault>().is_err());
    }
}
