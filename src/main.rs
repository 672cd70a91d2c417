//! `peft`: the command-line tool.

use anyhow::Result;
use clap::{Parser, Subcommand};
use peft_wgpu::gpu;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "peft",
    version,
    about = "Parameter-efficient fine-tuning (adapters, AdapterFusion) on any GPU via wgpu"
)]
struct Cli {
    /// GPU to use: an index from `peft info` or part of its name (also env PEFT_GPU).
    #[arg(long, global = true, env = "PEFT_GPU")]
    gpu: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the GPUs wgpu sees, with the limits and features our kernels use.
    Info,
    /// One forward + backward (mean cross-entropy) on a JSON batch; writes logits, loss,
    /// last_hidden_state and grad.<name> of every trainable tensor (AdapterHub names).
    Grads {
        /// Hugging Face model directory (config.json + model.safetensors).
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
    },
}

fn info(select: Option<String>) -> Result<()> {
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
    let chosen = gpu::Gpu::new(&gpu::GpuOptions { select })?;
    println!("selected: {}", chosen.description.summary());
    Ok(())
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => info(cli.gpu),
        Command::Grads { model, adapters, fusion, head, inputs, out, resident_layers } => {
            let args = peft_wgpu::grads::GradsArgs { model, adapters, fusion, head, inputs, out, resident_layers };
            gpu::Gpu::new(&gpu::GpuOptions { select: cli.gpu }).and_then(|g| {
                let map = peft_wgpu::grads::run(&g, &args)?;
                println!("wrote {} tensors to {}", map.len(), args.out.display());
                Ok(())
            })
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
