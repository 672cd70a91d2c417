//! The `peft` command line: clap's structs and the command handlers (the binary's `main` only
//! calls [`main`]). The top layer: it may import every other.
//!
//! - [`train`]: `peft train` and `peft fuse` (the training option groups, resume, Ctrl-C);
//! - [`infer`]: `peft eval` and `peft predict`;
//! - [`report`]: the terminal's progress bar and lines.

pub mod infer;
pub mod report;
pub mod train;

use crate::gpu::{self, Gpu, GpuOptions, LimitsMode};
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "peft",
    version,
    about = "Parameter-efficient fine-tuning (adapters, AdapterFusion) on any GPU via wgpu"
)]
pub struct Cli {
    #[command(flatten)]
    device: GpuArgs,
    #[command(subcommand)]
    command: Command,
}

/// The device options of every command that opens a GPU (they build its [`GpuOptions`]).
#[derive(clap::Args, Clone, Debug)]
struct GpuArgs {
    /// GPU to use: an index from `peft info` or part of its name (also env PEFT_GPU).
    #[arg(long, global = true, env = "PEFT_GPU")]
    gpu: Option<String>,
    /// Limits and features to request: `adapter` (all the GPU offers) or `webgpu` (exactly
    /// WebGPU's default limits, no optional features: what a browser gives). Also env PEFT_LIMITS.
    #[arg(long, global = true, value_name = "adapter|webgpu", value_parser = LimitsMode::parse)]
    limits: Option<LimitsMode>,
}

impl GpuArgs {
    fn options(&self) -> GpuOptions {
        GpuOptions { select: self.gpu.clone(), limits: self.limits, ..Default::default() }
    }
}

#[derive(Subcommand)]
enum Command {
    /// List the GPUs wgpu sees, with the limits and features our kernels use.
    Info,
    /// Train a bottleneck adapter + classification head on a CSV/TSV/JSONL file.
    Train(train::TrainCli),
    /// Train an AdapterFusion (+ a new head) over frozen adapters (AdapterHub's train_adapter_fusion).
    Fuse(train::FuseCli),
    /// Accuracy and macro-F1 of a trained adapter (or, with --fusion, a fused model) on a labelled file.
    Eval(infer::EvalCli),
    /// Label, probabilities and logits per input of a trained adapter (or fused model).
    Predict(infer::PredictCli),
    /// Kernel and training-step benchmarks on the selected GPU (table + JSON).
    #[cfg(feature = "reference")]
    Bench(crate::bench::cli::BenchCli),
    /// Data sets of the fusion demo: `peft data prepare <task>` writes train.csv + test.csv.
    #[command(subcommand)]
    Data(DataCommand),
    /// One forward + backward (mean cross-entropy) on a JSON batch; writes logits, loss,
    /// last_hidden_state and grad.<name> of every trainable tensor (AdapterHub names).
    Grads(GradsCli),
}

#[derive(Subcommand)]
enum DataCommand {
    /// Convert a task's raw files (fetched by scripts/fetch-fusion-data.sh when missing) to
    /// text,label CSV: newsgroups (20 Newsgroups), spam (SpamAssassin), tweets (2016 election,
    /// author), drugs (drug reviews, 3 classes), imdb (1,000 training reviews).
    Prepare(crate::datasets::PrepareArgs),
}

#[derive(clap::Args)]
struct GradsCli {
    /// Hugging Face model directory (config.json + model.safetensors or pytorch_model.bin).
    #[arg(long)]
    model: PathBuf,
    /// AdapterHub adapter folder (repeat with --fusion).
    #[arg(long = "adapter")]
    adapters: Vec<PathBuf>,
    /// AdapterHub fusion folder.
    #[arg(long)]
    fusion: Option<PathBuf>,
    /// AdapterHub head folder (default: the head saved with the adapter).
    #[arg(long)]
    head: Option<PathBuf>,
    /// JSON with input_ids, attention_mask, labels [, token_type_ids].
    #[arg(long)]
    inputs: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Frozen layers kept on the GPU; fewer stream from the file (default: all).
    #[arg(long)]
    resident_layers: Option<usize>,
}

fn open_gpu(device: &GpuArgs) -> Result<Arc<Gpu>> {
    Gpu::new(&device.options())
}

fn info(device: &GpuArgs) -> Result<()> {
    let gpus = gpu::list_gpus();
    if gpus.is_empty() {
        anyhow::bail!("no GPU found by wgpu. On a machine without one, install a CPU Vulkan driver: `sudo scripts/install-vulkan.sh` (Mesa lavapipe)");
    }
    println!("{} GPU(s) found:", gpus.len());
    for g in &gpus {
        println!("{}", g.summary());
        for line in g.details() {
            println!("    {line}");
        }
    }
    let chosen = open_gpu(device)?;
    println!("selected: {}", chosen.description.summary());
    println!("policy: {}", chosen.policy());
    if chosen.policy().limits != LimitsMode::Adapter {
        let l = &chosen.limits;
        println!(
            "limits in force ({}): {} storage buffers per stage, {} MiB per storage binding, {} MiB per buffer, \
             {} KiB workgroup memory, {} invocations per workgroup; optional features: {}",
            chosen.policy().limits,
            l.max_storage_buffers_per_shader_stage,
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup,
            if chosen.features.is_empty() { "none".to_string() } else { format!("{:?}", chosen.features) }
        );
    }
    Ok(())
}

fn grads(g: &Arc<Gpu>, c: GradsCli) -> Result<()> {
    let GradsCli { model, adapters, fusion, head, inputs, out, resident_layers } = c;
    let args = crate::train::grads::GradsArgs { model, adapters, fusion, head, inputs, out, resident_layers };
    let map = crate::train::grads::run(g, &args)?;
    println!("wrote {} tensors to {}", map.len(), args.out.display());
    Ok(())
}

/// Runs the command line; on an error prints it and exits with 1.
pub fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => info(&cli.device),
        Command::Data(DataCommand::Prepare(a)) => crate::datasets::prepare_cli(&a).map(|_| ()),
        #[cfg(feature = "reference")]
        Command::Bench(b) => open_gpu(&cli.device).and_then(|g| b.run(&g)),
        Command::Train(t) => open_gpu(&cli.device).and_then(|g| train::train(&g, t)),
        Command::Fuse(f) => open_gpu(&cli.device).and_then(|g| train::fuse(&g, f)),
        Command::Eval(e) => open_gpu(&cli.device).and_then(|g| infer::eval(&g, e)),
        Command::Predict(p) => open_gpu(&cli.device).and_then(|g| infer::predict(&g, p)),
        Command::Grads(c) => open_gpu(&cli.device).and_then(|g| grads(&g, c)),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("peft").chain(args.iter().copied()))
    }

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// `peft fuse` shares the option groups with `peft train` but keeps its own defaults.
    #[test]
    fn fuse_keeps_its_defaults() {
        let fuse = parse(&["fuse", "--model", "m", "--adapter", "a", "--train", "t", "--out", "o"]).unwrap();
        let Command::Fuse(f) = fuse.command else { panic!("not fuse") };
        let (run, opt) = f.run_and_optimizer();
        assert_eq!((run.epochs, opt.lr), (crate::train::fuse::FUSE_EPOCHS, crate::train::fuse::FUSE_LR));
        let train = parse(&["train", "--model", "m", "--train", "t", "--out", "o"]).unwrap();
        let Command::Train(t) = train.command else { panic!("not train") };
        let (run, opt) = t.run_and_optimizer();
        assert_eq!((run.epochs, opt.lr), (3, 1e-4));
    }

    /// `--resume` takes the run's settings from the state: giving one again is an error; memory
    /// options and checkpoints stay free.
    #[test]
    fn resume_conflicts_with_the_settings_only() {
        for cmd in ["train", "fuse"] {
            let flags: [&[&str]; 16] = [
                &["--model", "m"],
                &["--train", "t"],
                &["--out", "o"],
                &["--dev", "d"],
                &["--dev-split", "0.2"],
                &["--max-length", "9"],
                &["--max-train-examples", "9"],
                &["--max-dev-examples", "9"],
                &["--text-column", "x"],
                &["--label-column", "x"],
                &["--lr", "1"],
                &["--max-grad-norm", "2"],
                &["--epochs", "1"],
                &["--seed", "1"],
                &["--patience", "1"],
                &["--name", "x"],
            ];
            for flag in flags {
                let mut args = vec![cmd, "--resume", "d"];
                args.extend(flag);
                assert!(parse(&args).is_err(), "{args:?}");
            }
            assert!(
                parse(&[cmd, "--resume", "d", "--recompute", "--max-gpu-memory", "1GiB", "--save-steps", "2"]).is_ok()
            );
        }
        assert!(parse(&["train", "--resume", "d", "--config", "pfeiffer"]).is_err());
        assert!(parse(&["train", "--resume", "d", "--non-linearity", "relu"]).is_err());
        assert!(parse(&["fuse", "--resume", "d", "--adapter", "a"]).is_err());
        assert!(parse(&["fuse", "--resume", "d", "--temperature"]).is_err());
    }
}
