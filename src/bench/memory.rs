//! `peft bench --memory`: planned vs measured peak GPU memory of one adapter training step
//! (Houlsby, reduction factor 16, AdamW) on a model of a given shape with random weights, and its
//! step time; optionally the same step with and without `--recompute`.

use super::step::random_inputs;
use crate::formats::adapterhub::BottleneckConfig;
use crate::gpu::Gpu;
use crate::kernels::optim::{AdamW, LinearSchedule};
use crate::model::config::BertConfig;
use crate::model::encoder::{DropoutRates, Inputs, PassDropout, Targets};
use crate::model::load;
use crate::model::plan::{self, AdapterSpec, Choice, MemoryPlan, PlanInput};
use crate::train::trainer::{train_step_accumulated, MicroBatch, Trainee};
use crate::train::AdapterTrainee;
use crate::train::{new_adapter, Optimizer};
use crate::types::{Activation, WeightPrecision};
use anyhow::{bail, Result};
use rand::SeedableRng;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The adapter the memory benchmark trains: AdapterHub's Houlsby (`double_seq_bn`) defaults.
pub fn bench_adapter() -> BottleneckConfig {
    BottleneckConfig::houlsby(16.0, Activation::Silu)
}

/// Sequences per layer chunk of the default (lean) setup.
pub const LEAN_CHUNK: usize = 8;

/// One measured training step.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryRun {
    pub config: String,
    pub layers: usize,
    pub hidden: usize,
    pub batch: usize,
    pub seq: usize,
    /// Layer slots on the GPU (= layers when resident).
    pub resident_layers: usize,
    pub recompute: bool,
    /// Recompute keeps each layer's FFN output.
    pub keep_ffn_output: bool,
    /// Sequences per layer chunk (0: the whole batch).
    pub layer_chunk: usize,
    pub planned_bytes: u64,
    pub measured_bytes: u64,
    /// Seconds of each step, wall clock around forward + backward + AdamW with a full sync (the
    /// first includes compiling the pipelines).
    pub step_seconds: Vec<f64>,
    pub loss: f32,
    pub device: String,
}

impl MemoryRun {
    /// `(measured − planned) / measured`.
    pub fn plan_error(&self) -> f64 {
        (self.planned_bytes as f64 - self.measured_bytes as f64) / self.measured_bytes as f64
    }

    /// The median step time after the first (which compiles pipelines), or the first alone.
    pub fn typical_step(&self) -> f64 {
        let mut t: Vec<f64> = self.step_seconds.iter().skip(1).copied().collect();
        if t.is_empty() {
            return self.step_seconds.first().copied().unwrap_or(f64::NAN);
        }
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    }

    pub fn row(&self) -> String {
        let mib = |b: u64| b as f64 / 1048576.0;
        let times: Vec<String> = self.step_seconds.iter().map(|t| format!("{t:.2}")).collect();
        format!(
            "{:<12} {:>3}×{:<5} {:>3}×{:<4} {:>9} {:>9} {:>10.1} {:>10.1} {:>+7.1}% {:>8.4}  {}",
            self.config,
            self.layers,
            self.hidden,
            self.batch,
            self.seq,
            format!("{}/{}", self.resident_layers, self.layers),
            match (self.recompute, self.layer_chunk, self.keep_ffn_output) {
                (false, _, _) => "off".to_string(),
                (true, 0, false) => "on".to_string(),
                (true, 0, true) => "on+ffn".to_string(),
                (true, c, false) => format!("on c={c}"),
                (true, c, true) => format!("on+ffn c={c}"),
            },
            mib(self.planned_bytes),
            mib(self.measured_bytes),
            100.0 * self.plan_error(),
            self.loss,
            times.join(" ")
        )
    }
}

pub fn table_header() -> String {
    format!(
        "{:<12} {:>9} {:>8} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8}  step seconds",
        "config", "layers×d", "B×S", "resident", "recompute", "plan MiB", "meas. MiB", "plan err", "loss"
    )
}

/// The plan of a Houlsby training step at `batch × seq` on `cfg`, with `dropout` (a training
/// pass's rates) or without, over `gradient_accumulation` micro-batches (1: none).
#[allow(clippy::too_many_arguments)]
pub fn plan_step(
    gpu: &Gpu,
    cfg: &BertConfig,
    batch: usize,
    seq: usize,
    choice: Choice,
    budget: Option<u64>,
    dropout: Option<DropoutRates>,
    gradient_accumulation: usize,
    precision: WeightPrecision,
) -> Result<MemoryPlan> {
    let spec = AdapterSpec::from_bottleneck(cfg, &bench_adapter())?;
    let input = PlanInput {
        dropout: dropout.map(|r| r.sites()).unwrap_or_default(),
        gradient_accumulation,
        precision,
        ..PlanInput::resident(cfg, &spec, batch, seq, 2)
    };
    plan::choose_for(gpu, &input, choice, budget)
}

/// Plans, then runs `steps` training steps of a new Houlsby adapter + head with AdamW on the model
/// in `model_dir` (all tokens real) and measures the peak of the project's GPU buffers
/// ([`MemoryTracker`](crate::gpu::MemoryTracker)) over the steps. With `dropout`, every step is a
/// training pass with those rates (and planned with them). With `gradient_accumulation` N above 1,
/// each step is the training loop's accumulated step over N micro-batches of `batch`.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    gpu: &Arc<Gpu>,
    name: &str,
    model_dir: &Path,
    batch: usize,
    seq: usize,
    choice: Choice,
    budget: Option<u64>,
    steps: usize,
    dropout: Option<DropoutRates>,
    gradient_accumulation: usize,
    precision: WeightPrecision,
) -> Result<(MemoryPlan, MemoryRun)> {
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    if gradient_accumulation == 0 {
        bail!("--gradient-accumulation must be at least 1");
    }
    let cfg = BertConfig::from_model_dir(model_dir)?;
    let planned = plan_step(gpu, &cfg, batch, seq, choice, budget, dropout, gradient_accumulation, precision)?;
    let (cfg, mut enc) = load::load_encoder_with(gpu, model_dir, Some(planned.resident_layers()), precision)?;
    enc.follow(&planned);
    let (set, head) = new_adapter(gpu, &cfg, &bench_adapter(), "bench", 2, 0)?;
    let mut trainee = AdapterTrainee::new(set, head, bench_adapter(), &cfg, "bench");
    let schedule = LinearSchedule { base_lr: 1e-4, warmup_steps: 0, total_steps: steps as u32 };
    let mut opt = Optimizer::new(gpu, &trainee.params(), AdamW::default(), schedule, 1.0)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let micro_inputs: Vec<Inputs> =
        (0..gradient_accumulation).map(|_| random_inputs(&mut rng, &vec![seq; batch], cfg.vocab_size)).collect();
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 2).collect();
    let mut times = vec![];
    let mut peak = 0;
    let mut loss = f32::NAN;
    for step in 0..steps {
        let t0 = Instant::now();
        let n = gradient_accumulation;
        let drop = |i: usize| dropout.map(|rates| PassDropout { rates, seed: 5, step: (step * n + i) as u32 });
        if n == 1 {
            // The pass starts a new peak measurement; the optimizer step adds to it.
            let t = &trainee;
            let out =
                enc.pass_with_dropout(&t.setup(), &t.head, &micro_inputs[0], Some(&labels), true, false, drop(0))?;
            opt.step(gpu, &t.params())?;
            loss = out.loss.unwrap_or(f32::NAN);
        } else {
            // The training loop's accumulated step, measured from its start.
            gpu.memory.reset_peak();
            let micro: Vec<MicroBatch> = (micro_inputs.iter().enumerate())
                .map(|(i, inputs)| MicroBatch { inputs, targets: Targets::Classes(&labels), dropout: drop(i) })
                .collect();
            loss = train_step_accumulated(gpu, &mut enc, &mut trainee, &mut opt, &micro)?.loss;
        }
        times.push(t0.elapsed().as_secs_f64());
        peak = peak.max(gpu.memory.peak());
        if !loss.is_finite() {
            bail!("memory benchmark: the loss is not finite ({loss})");
        }
    }
    let run = MemoryRun {
        config: name.to_string(),
        layers: cfg.num_hidden_layers,
        hidden: cfg.hidden_size,
        batch,
        seq,
        resident_layers: planned.resident_layers(),
        recompute: planned.recompute,
        layer_chunk: planned.encoder_chunk(),
        keep_ffn_output: planned.keep_ffn_output,
        planned_bytes: planned.peak_bytes(),
        measured_bytes: peak,
        step_seconds: times,
        loss,
        device: gpu.description.info.name.clone(),
    };
    Ok((planned, run))
}

fn is_model_dir(spec: &str) -> bool {
    let p = Path::new(spec);
    p.is_dir() && p.join("model.safetensors").is_file()
}

/// The config of `spec` (preset, config file or model directory with weights), with only the
/// first `layers` layers when given (presets and config files only).
pub fn model_config(spec: &str, layers: Option<usize>) -> Result<BertConfig> {
    if is_model_dir(spec) {
        if layers.is_some() {
            bail!("--layers applies to presets and config files, not to a model directory ({spec})");
        }
        return BertConfig::from_model_dir(Path::new(spec));
    }
    let mut cfg = super::model::resolve_config(spec)?;
    if let Some(n) = layers {
        if n == 0 || n > cfg.num_hidden_layers {
            bail!("--layers {n}: must be 1..={} for {spec}", cfg.num_hidden_layers);
        }
        cfg.num_hidden_layers = n;
    }
    Ok(cfg)
}

/// A model directory for `spec` (preset, config or model directory), with only the first
/// `layers` layers when given: random weights written under `scratch` unless `spec` is a
/// directory with weights.
pub fn model_dir(spec: &str, layers: Option<usize>, scratch: &Path) -> Result<(BertConfig, std::path::PathBuf)> {
    let cfg = model_config(spec, layers)?;
    if is_model_dir(spec) {
        return Ok((cfg, Path::new(spec).to_path_buf()));
    }
    let dir = scratch.join(format!("random-{}x{}x{}-0", cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size));
    if !(dir.join("model.safetensors").is_file() && BertConfig::from_model_dir(&dir).ok().as_ref() == Some(&cfg)) {
        eprintln!("writing random weights of {spec} ({} layers) to {}", cfg.num_hidden_layers, dir.display());
        super::model::write_random_model(&cfg, &dir, 0)?;
    }
    Ok((cfg, dir))
}

/// What `peft bench --memory` runs: the memory options of `peft bench`'s arguments (see
/// `bench::cli::BenchCli`, which builds this).
#[derive(Clone, Debug)]
pub struct MemoryOptions {
    /// Presets, config files or model directories.
    pub configs: Vec<String>,
    pub batch: usize,
    pub seq: usize,
    pub recompute: bool,
    pub keep_ffn_output: bool,
    pub layer_chunk: Option<usize>,
    pub resident_layers: Option<usize>,
    /// A size such as `2GiB`.
    pub max_gpu_memory: Option<String>,
    /// Only the first N layers of each config.
    pub layers: Option<usize>,
    pub steps: usize,
    /// Print the plans only.
    pub plan_only: bool,
    pub compare_recompute: bool,
    /// Where random-weight models are written (default: the system temp dir).
    pub scratch: Option<PathBuf>,
    /// Write every run as one JSON object per line here.
    pub json: Option<PathBuf>,
    /// How the frozen layers' matrices are held (`--precision`).
    pub precision: WeightPrecision,
}

/// `peft bench --memory`.
pub fn run(gpu: &Arc<Gpu>, o: &MemoryOptions) -> Result<()> {
    let budget = o.max_gpu_memory.as_deref().map(plan::parse_size).transpose()?;
    let given =
        o.recompute || o.keep_ffn_output || o.resident_layers.is_some() || o.layer_chunk.is_some() || budget.is_some();
    let choice = if given {
        Choice {
            resident_layers: o.resident_layers,
            recompute: o.recompute.then_some(true),
            layer_chunk: o.layer_chunk,
            keep_ffn_output: plan::keep_choice(o.keep_ffn_output, o.recompute),
        }
    } else {
        Choice {
            resident_layers: Some(1),
            recompute: Some(true),
            layer_chunk: Some(LEAN_CHUNK),
            keep_ffn_output: Some(false),
        }
    };
    let scratch = o.scratch.clone().unwrap_or_else(|| std::env::temp_dir().join("peft-bench"));
    println!("device: {}", gpu.description.summary());
    let mut runs = vec![];
    for spec in &o.configs {
        if o.plan_only {
            let cfg = model_config(spec, o.layers)?;
            println!("{spec}: {}", plan_step(gpu, &cfg, o.batch, o.seq, choice, budget, None, 1, o.precision)?);
            continue;
        }
        let (_, dir) = model_dir(spec, o.layers, &scratch)?;
        // With --compare-recompute: without recompute, with it, and with it keeping FFN outputs
        // (same resident layers and chunks), one after the other.
        let choices = if o.compare_recompute {
            vec![
                Choice { recompute: Some(false), layer_chunk: None, keep_ffn_output: None, ..choice },
                Choice { recompute: Some(true), keep_ffn_output: Some(false), ..choice },
                Choice { recompute: Some(true), keep_ffn_output: Some(true), ..choice },
            ]
        } else {
            vec![choice]
        };
        let first = runs.len();
        for c in choices {
            let (planned, run) = measure(gpu, spec, &dir, o.batch, o.seq, c, budget, o.steps, None, 1, o.precision)?;
            println!("{spec}: {planned}");
            println!("{}\n{}", table_header(), run.row());
            runs.push(run);
        }
        if o.compare_recompute {
            let off = runs[first].typical_step();
            for (r, what) in runs[first + 1..].iter().zip(["recompute", "recompute keeping FFN outputs"]) {
                let on = r.typical_step();
                println!(
                    "{spec}: step time with {what} / without = {:.3} ({:.1} ms / {:.1} ms, median step of each \
                     after the first)",
                    on / off,
                    on * 1e3,
                    off * 1e3
                );
            }
        }
    }
    if let Some(path) = &o.json {
        let mut text = String::new();
        for r in &runs {
            text += &serde_json::to_string(r)?;
            text.push('\n');
        }
        crate::formats::write_atomic(path, text.as_bytes())?;
        println!("wrote {} results to {}", runs.len(), path.display());
    }
    Ok(())
}
