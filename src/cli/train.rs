//! `peft train` and `peft fuse`: the option groups of [`crate::train::options`] flattened into
//! both, a new run or `--resume DIR`; Ctrl-C saves the state and exits with 130.

use super::report::Terminal;
use crate::gpu::Gpu;
use crate::train::fuse::{self, FuseArgs, FusionArgs};
use crate::train::options::{DataArgs, LoopArgs, MemoryArgs, OptimizerArgs, SaveArgs};
use crate::train::resume::{self, Fault, RunControl};
use crate::train::{AdapterArgs, TrainArgs};
use anyhow::{anyhow, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// Checkpoints and stops, shared by `train` and `fuse`.
#[derive(clap::Args, Clone, Debug)]
pub struct CheckpointArgs {
    /// Also save the training state every N steps (it is always saved at the end of each epoch
    /// and on Ctrl-C).
    #[arg(long, value_name = "N")]
    pub save_steps: Option<usize>,
    /// Save the state and stop after N steps in all (for tests and scheduled jobs).
    #[arg(long, value_name = "N", hide = true)]
    pub stop_after_steps: Option<usize>,
    /// Inject a fault before a step, to test what a run does then: nan@STEP, device-lost@STEP.
    #[arg(long, value_name = "KIND@STEP", hide = true)]
    pub inject_fault: Option<Fault>,
}

impl CheckpointArgs {
    fn control(&self, resume: bool) -> RunControl {
        RunControl {
            resume,
            stop_after_steps: self.stop_after_steps,
            save_steps: self.save_steps,
            fault: self.inject_fault,
        }
    }
}

/// The option groups that define a run: `--resume` takes them from the saved state, so it
/// conflicts with every one of them (the memory options and checkpoints stay free).
/// (`DataArgs` is named by its arguments: the group of a struct with a flattened group inside
/// does not conflict as a whole.)
macro_rules! settings {
    ($own:literal) => {
        [
            "model",
            "train",
            "out",
            "dev",
            "dev_split",
            "max_length",
            "max_train_examples",
            "max_dev_examples",
            "Columns",
            "OptimizerArgs",
            "LoopArgs",
            $own,
        ]
    };
}
const SETTINGS: [&str; 12] = settings!("AdapterArgs");
const FUSE_SETTINGS: [&str; 12] = settings!("FusionArgs");

#[derive(clap::Args, Clone, Debug)]
pub struct TrainCli {
    /// Hugging Face model directory (config.json, model.safetensors or pytorch_model.bin, tokenizer.json or vocab.txt).
    #[arg(long, required_unless_present = "resume")]
    model: Option<PathBuf>,
    /// Training data: CSV / TSV with a header, or JSONL.
    #[arg(long, required_unless_present = "resume")]
    train: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    adapter: AdapterArgs,
    #[command(flatten)]
    run: LoopArgs,
    #[command(flatten)]
    optimizer: OptimizerArgs,
    #[command(flatten)]
    memory: MemoryArgs,
    #[command(flatten)]
    save: SaveArgs,
    /// Output folder (AdapterHub adapter + head, metrics.jsonl, training.png, trainer_state.safetensors).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the stopped run in this output folder (from its trainer_state.safetensors), with
    /// the settings it was started with.
    #[arg(long, value_name = "DIR", conflicts_with_all = SETTINGS)]
    resume: Option<PathBuf>,
    #[command(flatten)]
    checkpoint: CheckpointArgs,
}

#[derive(clap::Args, Clone, Debug)]
#[command(
    mut_arg("epochs", |a| a.default_value("10")),
    mut_arg("lr", |a| a.default_value("0.00005"))
)]
pub struct FuseCli {
    /// Hugging Face model directory (config.json, model.safetensors or pytorch_model.bin, tokenizer.json or vocab.txt).
    #[arg(long, required_unless_present = "resume")]
    model: Option<PathBuf>,
    #[command(flatten)]
    fusion: FusionArgs,
    /// Training data of the target task: CSV / TSV with a header, or JSONL.
    #[arg(long, required_unless_present = "resume")]
    train: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    run: LoopArgs,
    #[command(flatten)]
    optimizer: OptimizerArgs,
    #[command(flatten)]
    memory: MemoryArgs,
    #[command(flatten)]
    save: SaveArgs,
    /// Output folder (AdapterHub fusion + head, metrics.jsonl, training.png, fusion_attention.{json,png},
    /// trainer_state.safetensors).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the stopped run in this output folder (from its trainer_state.safetensors), with
    /// the settings it was started with.
    #[arg(long, value_name = "DIR", conflicts_with_all = FUSE_SETTINGS)]
    resume: Option<PathBuf>,
    #[command(flatten)]
    checkpoint: CheckpointArgs,
}

/// Installs the Ctrl-C (SIGINT / SIGTERM) handler: the first one asks the training loop to save a
/// checkpoint and stop after the step it is in; a second one exits at once.
fn install_ctrlc_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        if resume::request_stop() {
            eprintln!("\ninterrupted again: exiting without saving");
            std::process::exit(resume::INTERRUPTED_EXIT_CODE);
        }
        eprintln!("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to quit at once)");
    })
    .map_err(|e| anyhow!("installing the Ctrl-C handler: {e}"))
}

/// Exits with 130 when the run was stopped by Ctrl-C (its state is saved).
fn exit_if_interrupted() {
    if resume::stop_requested() {
        std::process::exit(resume::INTERRUPTED_EXIT_CODE);
    }
}

/// `peft train`: a new run, or `--resume DIR`.
pub fn train(g: &Arc<Gpu>, t: TrainCli) -> Result<()> {
    let run = t.checkpoint.control(t.resume.is_some());
    let args = match t.resume {
        Some(dir) => TrainArgs { memory: t.memory, save: t.save, ..resume::load(&dir)?.settings(&dir)? },
        None => TrainArgs {
            model: t.model.expect("required by clap"),
            train: t.train.expect("required by clap"),
            out: t.out.expect("required by clap"),
            data: t.data,
            adapter: t.adapter,
            optimizer: t.optimizer,
            run: t.run,
            memory: t.memory,
            save: t.save,
        },
    };
    install_ctrlc_handler()?;
    crate::train::train_with(g, &args, &run, &mut Terminal::new())?;
    exit_if_interrupted();
    Ok(())
}

/// `peft fuse`: a new run, or `--resume DIR`.
pub fn fuse(g: &Arc<Gpu>, f: FuseCli) -> Result<()> {
    let run = f.checkpoint.control(f.resume.is_some());
    let args = match f.resume {
        Some(dir) => FuseArgs { memory: f.memory, save: f.save, ..resume::load(&dir)?.settings(&dir)? },
        None => FuseArgs {
            model: f.model.expect("required by clap"),
            train: f.train.expect("required by clap"),
            out: f.out.expect("required by clap"),
            data: f.data,
            fusion: f.fusion,
            optimizer: f.optimizer,
            run: f.run,
            memory: f.memory,
            save: f.save,
        },
    };
    install_ctrlc_handler()?;
    fuse::fuse_with(g, &args, &run, &mut Terminal::new())?;
    exit_if_interrupted();
    Ok(())
}

#[cfg(test)]
impl TrainCli {
    pub(super) fn run_and_optimizer(&self) -> (&LoopArgs, &OptimizerArgs) {
        (&self.run, &self.optimizer)
    }
}

#[cfg(test)]
impl FuseCli {
    pub(super) fn run_and_optimizer(&self) -> (&LoopArgs, &OptimizerArgs) {
        (&self.run, &self.optimizer)
    }
}
