//! `peft bench`'s command-line arguments.

use super::memory::{self, MemoryOptions};
use super::{kernels::KernelShapes, BenchOptions, Peaks, Reps};
use crate::gpu::Gpu;
use crate::kernels::attention::AttentionShape;
use crate::types::WeightPrecision;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// Kernel and training-step benchmarks (GPU timestamps; median of --reps after --warmup).
#[derive(clap::Args, Clone, Debug)]
pub struct BenchCli {
    /// Workload groups to run (comma-separated): adapter, fusion, matmul, attention, layernorm, step,
    /// demo. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Model shapes for the train step: minilm, bert-base, bert-large, or a model directory /
    /// config.json (random weights are written for presets and configs).
    #[arg(long = "config", default_values_t = ["minilm".to_string(), "bert-base".to_string()])]
    pub configs: Vec<String>,
    /// Train-step batch size and sequence length.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Also time the train step with this many resident layers (the rest streamed).
    #[arg(long)]
    pub stream_layers: Option<usize>,
    /// Kernel shapes: tokens, hidden size, bottleneck, fused adapters, square matmul size.
    #[arg(long, default_value_t = 4096)]
    pub tokens: usize,
    #[arg(long, default_value_t = 768)]
    pub hidden: usize,
    #[arg(long, default_value_t = 64)]
    pub bottleneck: usize,
    #[arg(long, default_value_t = 8)]
    pub adapters: usize,
    #[arg(long, default_value_t = 4096)]
    pub matmul: usize,
    /// Demo workload: sentence token lengths (one per line), model, batch size.
    #[arg(long, default_value = "bench/rt-lengths.txt")]
    pub lengths: PathBuf,
    #[arg(long, default_value = "minilm")]
    pub demo_model: String,
    #[arg(long, default_value_t = 32)]
    pub demo_batch: usize,
    /// Only the first N sentences of the lengths file (CPU drivers: an epoch takes many minutes).
    #[arg(long)]
    pub demo_sentences: Option<usize>,
    /// Demo workload: pad each batch to a multiple of N tokens (as `peft train
    /// --pad-to-multiple-of`; default 1: to its longest sentence).
    #[arg(long, default_value_t = 1, value_parser = crate::train::options::pad_multiple)]
    pub pad_to_multiple_of: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
    /// Device peaks for the roofline floor (default: datasheet numbers of known cards).
    #[arg(long)]
    pub peak_gbps: Option<f64>,
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Write every result as one JSON object per line here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where random-weight models are written (default: the system temp dir).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Profile instead: one train step of this config (as --config takes it; after a warm-up
    /// step) at --batch × --seq with a GPU timestamp around every dispatch, per kernel and per
    /// phase (--json writes the whole profile).
    #[arg(long, value_name = "CONFIG")]
    pub profile: Option<String>,
    /// Profile a step with dropout on (the model config's rates, as `peft train` trains by
    /// default; masks drawn in the step, redrawn in its backward).
    #[arg(long, requires = "profile")]
    pub dropout: bool,
    /// How the frozen layers' matrices are held on the GPU in the train-step, demo, profile and
    /// memory workloads: f32, or f16 (as `peft train --precision`).
    #[arg(long, value_enum, default_value_t)]
    pub precision: WeightPrecision,
    /// Memory benchmark instead: planned vs measured peak GPU memory of one Houlsby + AdamW
    /// training step per --config at --batch × --seq (default: a lean setup, --recompute with one
    /// resident layer and layer chunks of 8 sequences, unless --recompute/--resident-layers/
    /// --layer-chunk/--max-gpu-memory are given).
    #[arg(long)]
    pub memory: bool,
    /// Memory benchmark: recompute layer activations in backward.
    #[arg(long)]
    pub recompute: bool,
    /// Memory benchmark: print the plans only (no model written, nothing run).
    #[arg(long)]
    pub plan_only: bool,
    /// Memory benchmark: recompute keeps each layer's FFN output (implies --recompute).
    #[arg(long)]
    pub keep_ffn_output: bool,
    /// Memory benchmark: sequences per layer chunk (implies --recompute).
    #[arg(long)]
    pub layer_chunk: Option<usize>,
    /// Memory benchmark: frozen layers kept on the GPU (the rest streamed).
    #[arg(long)]
    pub resident_layers: Option<usize>,
    /// Memory benchmark: let the planner choose resident layers and recompute to fit this size
    /// (e.g. 2GiB, 512MiB).
    #[arg(long)]
    pub max_gpu_memory: Option<String>,
    /// Memory benchmark: use only the first N layers of each config (slow CPU drivers).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Memory benchmark: training steps per run (the first compiles pipelines).
    #[arg(long, default_value_t = 1)]
    pub steps: usize,

    /// Memory benchmark: run each config without --recompute, with it, and with it keeping FFN
    /// outputs (same resident layers) and report the step-time ratios.
    #[arg(long)]
    pub compare_recompute: bool,
}

impl BenchCli {
    pub fn options(&self, gpu: &Gpu) -> Result<BenchOptions> {
        if self.reps == 0 || self.batch == 0 || self.seq == 0 || self.tokens == 0 {
            anyhow::bail!("--reps, --batch, --seq and --tokens must be at least 1");
        }
        let heads = if self.hidden % 64 == 0 { self.hidden / 64 } else { 1 };
        let peaks = match (self.peak_gbps, self.peak_tflops) {
            (Some(g), Some(t)) => Some(Peaks { bytes_per_s: g * 1e9, flops_per_s: t * 1e12, source: "command line" }),
            (None, None) => Peaks::known(&gpu.description.info.name),
            _ => anyhow::bail!("give both --peak-gbps and --peak-tflops, or neither"),
        };
        Ok(BenchOptions {
            only: self.only.clone(),
            shapes: KernelShapes {
                t: self.tokens,
                d: self.hidden,
                m: self.bottleneck,
                n: self.adapters,
                mm: self.matmul,
                attention: AttentionShape { batch: self.batch, seq: self.seq, heads, head_dim: self.hidden / heads },
            },
            configs: self.configs.clone(),
            batch: self.batch,
            seq: self.seq,
            stream_layers: self.stream_layers,
            lengths: self.lengths.clone(),
            demo_model: self.demo_model.clone(),
            demo_batch: self.demo_batch,
            demo_sentences: self.demo_sentences,
            demo_pad_multiple: self.pad_to_multiple_of,
            reps: Reps { warmup: self.warmup, timed: self.reps },
            peaks,
            precision: self.precision,
            scratch: self.scratch.clone().unwrap_or_else(|| std::env::temp_dir().join("peft-bench")),
        })
    }

    /// The options of `peft bench --memory`.
    pub fn memory_options(&self) -> MemoryOptions {
        MemoryOptions {
            configs: self.configs.clone(),
            batch: self.batch,
            seq: self.seq,
            recompute: self.recompute,
            keep_ffn_output: self.keep_ffn_output,
            layer_chunk: self.layer_chunk,
            resident_layers: self.resident_layers,
            max_gpu_memory: self.max_gpu_memory.clone(),
            layers: self.layers,
            steps: self.steps,
            plan_only: self.plan_only,
            compare_recompute: self.compare_recompute,
            scratch: self.scratch.clone(),
            json: self.json.clone(),
            precision: self.precision,
        }
    }

    /// `peft bench`.
    pub fn run(&self, gpu: &Arc<Gpu>) -> Result<()> {
        if self.memory {
            return memory::run(gpu, &self.memory_options());
        }
        let opts = self.options(gpu)?;
        if let Some(spec) = &self.profile {
            super::profile::run(
                gpu,
                spec,
                opts.batch,
                opts.seq,
                opts.precision,
                self.dropout,
                opts.peaks,
                &opts.scratch,
                self.json.as_deref(),
            )?;
            return Ok(());
        }
        let results = super::run(gpu, &opts)?;
        if let Some(path) = &self.json {
            let mut text = String::new();
            for r in &results {
                text += &serde_json::to_string(r)?;
                text.push('\n');
            }
            crate::formats::write_atomic(path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {} results to {}", results.len(), path.display());
        }
        Ok(())
    }
}
