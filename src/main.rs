//! `peft`: the command-line tool.

use anyhow::Result;
use clap::{Parser, Subcommand};
use peft_wgpu::gpu;

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
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
