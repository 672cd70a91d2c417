//! Training, evaluation and prediction of adapters on the frozen encoder (`peft train / eval /
//! predict`). All compute runs on the GPU: the encoder's forward/backward, AdamW, gradient
//! clipping, softmax; the host only batches data, schedules the learning rate and logs.

pub mod cache;
pub mod checkpoint;
pub mod data;
pub mod fuse;
pub mod grads;
pub mod guard;
pub mod metrics;
pub mod resume;
pub mod tokenizer;

use crate::formats::adapterhub::{BottleneckConfig, ResidualBeforeLn};
use crate::gpu::{CommandRecorder, Gpu, GpuTensor};
use crate::kernels::optim::{self, AdamW, LinearSchedule};
use crate::model::adapters::{adapter_tensor_names, AdapterSet, ClassificationHead, Location, Placement};
use crate::model::config::BertConfig;
use crate::model::encoder::{Encoder, Inputs, Setup};
use crate::model::load;
use crate::model::plan;
use crate::train::data::{DataOptions, Example, LabelMap, Tokenized};
use crate::train::metrics::{MetricsLog, Scores, TrainingCurves};
use crate::train::tokenizer::Tokenizer;
use crate::types::Activation;
use anyhow::{anyhow, bail, Context, Result};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// AdapterHub's two bottleneck presets, or no adapter at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// `double_seq_bn`: after the attention output and after the FFN (AdapterHub default: swish).
    Houlsby,
    /// `seq_bn`: after the FFN only (AdapterHub default: relu).
    Pfeiffer,
    /// No adapter: the head alone on the frozen base (a baseline). Saved as a `seq_bn` adapter
    /// left out of every layer (`leave_out`: all), so eval / predict / AdapterHub load it as usual.
    None,
}

/// Everything `peft train` takes.
#[derive(Clone, Debug)]
pub struct TrainArgs {
    pub model: PathBuf,
    pub train: PathBuf,
    pub dev: Option<PathBuf>,
    pub dev_split: f64,
    pub config: Preset,
    pub reduction_factor: f64,
    /// `None`: the preset's AdapterHub default.
    pub non_linearity: Option<Activation>,
    pub epochs: usize,
    pub lr: f32,
    pub batch_size: usize,
    pub max_length: usize,
    pub max_train_examples: Option<usize>,
    pub max_dev_examples: Option<usize>,
    pub seed: u64,
    pub out: PathBuf,
    pub warmup_ratio: f64,
    pub weight_decay: f32,
    pub max_grad_norm: f32,
    /// Stop after this many epochs without a better dev accuracy.
    pub patience: Option<usize>,
    pub data: DataOptions,
    pub adapter_name: String,
    pub resident_layers: Option<usize>,
    /// Recompute layer activations in backward (`--recompute`); the planner may also turn it on to
    /// fit `max_gpu_memory`.
    pub recompute: bool,
    /// `--layer-chunk`: sequences per layer chunk with recompute (`None`: the planner chooses).
    pub layer_chunk: Option<usize>,
    /// `--keep-ffn-output`: recompute keeps each layer's FFN output (less time, more memory).
    pub keep_ffn_output: bool,
    /// `--max-gpu-memory` in bytes: the planner chooses resident layers, recompute and layer
    /// chunks to fit.
    pub max_gpu_memory: Option<u64>,
    pub progress: bool,
}

impl Default for TrainArgs {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            train: PathBuf::new(),
            dev: None,
            dev_split: 0.1,
            config: Preset::Houlsby,
            reduction_factor: 16.0,
            non_linearity: None,
            epochs: 3,
            lr: 1e-4,
            batch_size: 32,
            max_length: 128,
            max_train_examples: None,
            max_dev_examples: None,
            seed: 42,
            out: PathBuf::new(),
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            patience: None,
            data: DataOptions::default(),
            adapter_name: "task".into(),
            resident_layers: None,
            recompute: false,
            layer_chunk: None,
            keep_ffn_output: false,
            max_gpu_memory: None,
            progress: true,
        }
    }
}

/// What a training run produced.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub dev_accuracy: Vec<f64>,
    pub dev_macro_f1: Vec<f64>,
    pub best_accuracy: f64,
    pub best_epoch: usize,
    pub train_losses: Vec<f32>,
    pub tokens_per_second: f64,
    pub trainable_parameters: usize,
    pub model_parameters: usize,
    pub steps: usize,
    pub out: PathBuf,
}

fn bottleneck_config(args: &TrainArgs, layers: usize) -> BottleneckConfig {
    match args.config {
        Preset::Houlsby => {
            BottleneckConfig::houlsby(args.reduction_factor, args.non_linearity.unwrap_or(Activation::Silu))
        }
        Preset::Pfeiffer => {
            BottleneckConfig::pfeiffer(args.reduction_factor, args.non_linearity.unwrap_or(Activation::Relu))
        }
        Preset::None => BottleneckConfig {
            leave_out: (0..layers).collect(),
            ..BottleneckConfig::pfeiffer(args.reduction_factor, args.non_linearity.unwrap_or(Activation::Relu))
        },
    }
}

/// AdapterHub's "bert" initialisation: every Linear N(0, 0.02), biases 0 (so a new adapter starts
/// close to the identity and a new head close to uniform logits).
fn init_values(rng: &mut rand::rngs::StdRng, name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    if name.ends_with("bias") {
        return vec![0.0; n];
    }
    let normal = Normal::new(0.0f32, 0.02).expect("valid normal");
    (0..n).map(|_| normal.sample(rng)).collect()
}

/// New adapter + head with AdapterHub's initialisation, on the GPU.
pub fn new_adapter(
    gpu: &Arc<Gpu>,
    cfg: &BertConfig,
    bn: &BottleneckConfig,
    name: &str,
    labels: usize,
    seed: u64,
) -> Result<(AdapterSet, ClassificationHead)> {
    let d = cfg.hidden_size;
    let m = bn.bottleneck_dim(d, 0)?;
    let placement = Placement {
        original_ln_before: bn.original_ln_before,
        original_ln_after: bn.original_ln_after,
        residual_before_ln: match bn.residual_before_ln {
            ResidualBeforeLn::True => true,
            ResidualBeforeLn::False => false,
            ResidualBeforeLn::PostAdd => bail!("residual_before_ln \"post_add\" is not supported"),
        },
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut values: HashMap<String, Vec<f32>> = HashMap::new();
    let sites = |loc: Location| match loc {
        Location::Attention => bn.mh_adapter,
        Location::Output => bn.output_adapter,
    };
    for l in 0..cfg.num_hidden_layers {
        for loc in [Location::Attention, Location::Output] {
            if sites(loc) && bn.has_layer(l) {
                let names = adapter_tensor_names(name, l, loc);
                let shapes = [vec![m, d], vec![m], vec![d, m], vec![d]];
                for (n, s) in names.iter().zip(&shapes) {
                    values.insert(n.clone(), init_values(&mut rng, n, s));
                }
            }
        }
    }
    for (n, s) in
        ClassificationHead::tensor_names(name).iter().zip([vec![d, d], vec![d], vec![labels, d], vec![labels]])
    {
        values.insert(n.clone(), init_values(&mut rng, n, &s));
    }
    let get = |n: &str, _shape: &[usize]| -> Result<Vec<f32>> {
        values.get(n).cloned().ok_or_else(|| anyhow!("internal: no initial value for {n}"))
    };
    let set = AdapterSet::from_tensors(
        gpu,
        name,
        placement,
        bn.non_linearity,
        bn.scaling as f32,
        d,
        m,
        cfg.num_hidden_layers,
        &|l, loc| sites(loc) && bn.has_layer(l),
        &get,
    )?;
    let head = ClassificationHead::from_tensors(gpu, name, d, labels, &get)?;
    Ok((set, head))
}

/// AdamW state of every trainable tensor.
pub struct Optimizer {
    opt: AdamW,
    schedule: LinearSchedule,
    clip: f32,
    moments: Vec<(GpuTensor, GpuTensor)>,
    ss: GpuTensor,
    scale: GpuTensor,
    step: u32,
}

impl Optimizer {
    pub fn new(
        gpu: &Gpu,
        params: &[(String, &GpuTensor, &GpuTensor)],
        opt: AdamW,
        schedule: LinearSchedule,
        clip: f32,
    ) -> Result<Self> {
        let moments = params
            .iter()
            .map(|(_, w, _)| Ok((GpuTensor::zeros(gpu, &w.shape)?, GpuTensor::zeros(gpu, &w.shape)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            opt,
            schedule,
            clip,
            moments,
            ss: GpuTensor::zeros(gpu, &[1])?,
            scale: GpuTensor::zeros(gpu, &[1])?,
            step: 0,
        })
    }

    /// One AdamW step with global-norm clipping, all on the GPU; returns (lr, grad norm).
    pub fn step(&mut self, gpu: &Arc<Gpu>, params: &[(String, &GpuTensor, &GpuTensor)]) -> Result<(f32, f32)> {
        let mut b = gpu.batch();
        let lr = self.record_step(&mut b, params)?;
        b.finish()?;
        let norm = optim::grad_norm(gpu, &self.ss)?;
        Ok((lr, norm))
    }

    /// Records one AdamW step with global-norm clipping into `b` (after the pass that wrote the
    /// gradients, in the same command buffer); returns the step's learning rate. The squared
    /// gradient norm lands in [`sum_of_squares`](Self::sum_of_squares).
    pub fn record_step(&mut self, b: &mut CommandRecorder, params: &[(String, &GpuTensor, &GpuTensor)]) -> Result<f32> {
        self.step += 1;
        // As HF's Trainer: optimizer step t (1-based) uses the schedule's value at t - 1.
        let lr = self.schedule.lr_at(self.step - 1);
        let grads: Vec<&GpuTensor> = params.iter().map(|p| p.2).collect();
        optim::sum_of_squares(b, &grads, &self.ss)?;
        optim::clip_factor(b, &self.ss, self.clip, &self.scale)?;
        for ((name, w, g), (m, v)) in params.iter().zip(&self.moments) {
            // As HF's Trainer: no weight decay for biases (and LayerNorm weights, which adapters lack).
            let decay = !name.ends_with("bias");
            optim::adamw_step(b, &self.opt, self.step, lr, 1.0, Some(&self.scale), decay, w, g, m, v)?;
        }
        Ok(lr)
    }

    /// `[1]`: the squared global gradient norm of the last recorded step (before clipping).
    pub fn sum_of_squares(&self) -> &GpuTensor {
        &self.ss
    }
}

/// Tokenized examples with label ids.
pub(crate) struct Prepared {
    pub(crate) tokens: Vec<Tokenized>,
    pub(crate) labels: Vec<u32>,
}

impl Prepared {
    /// Tokens that are not padding, over all examples.
    pub(crate) fn real_tokens(&self) -> usize {
        self.tokens.iter().map(|t| t.len()).sum()
    }
}

fn prepare(tok: &Tokenizer, examples: &[Example], labels: &LabelMap, source: &str) -> Result<Prepared> {
    let (tokens, truncated) = data::tokenize_counting(tok, examples)?;
    if let Some(note) = data::truncation_note(source, truncated, examples.len(), tok.max_length()) {
        eprintln!("{note}");
    }
    let labels = labels.encode(examples, source)?;
    Ok(Prepared { tokens, labels })
}

/// Logits of every example (batched by length, in the examples' order).
fn predict_logits(
    enc: &mut Encoder,
    setup: &Setup,
    head: &ClassificationHead,
    tokens: &[Tokenized],
    pad: u32,
    batch_size: usize,
) -> Result<Vec<f32>> {
    let c = head.labels;
    let longest = tokens.iter().map(|t| t.len()).max().unwrap_or(1);
    guard::check_batch_fits(&enc.gpu, &enc.dims, batch_size.max(1).min(tokens.len().max(1)), longest)?;
    let mut out = vec![0.0f32; tokens.len() * c];
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by_key(|&i| tokens[i].len());
    for chunk in order.chunks(batch_size.max(1)) {
        let b = data::Batch::new(tokens, None, chunk, pad);
        let r = enc.pass(setup, head, &b.inputs(), None, false, false)?;
        for (k, &i) in chunk.iter().enumerate() {
            out[i * c..(i + 1) * c].copy_from_slice(&r.logits[k * c..(k + 1) * c]);
        }
    }
    Ok(out)
}

fn evaluate_prepared(
    enc: &mut Encoder,
    setup: &Setup,
    head: &ClassificationHead,
    p: &Prepared,
    pad: u32,
    batch_size: usize,
) -> Result<Scores> {
    let logits = predict_logits(enc, setup, head, &p.tokens, pad, batch_size)?;
    let preds = metrics::argmax_rows(&logits, head.labels);
    Ok(Scores::new(&p.labels, &preds))
}

fn progress_bar(total: u64, enabled: bool) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} steps, ETA {eta} | {msg}",
        )
        .expect("valid template"),
    );
    pb
}

/// Where a task's examples come from (shared by `peft train` and `peft fuse`).
pub(crate) struct DataSpec<'a> {
    pub(crate) train: &'a Path,
    pub(crate) dev: Option<&'a Path>,
    pub(crate) dev_split: f64,
    pub(crate) max_train_examples: Option<usize>,
    pub(crate) max_dev_examples: Option<usize>,
    pub(crate) seed: u64,
    pub(crate) options: &'a DataOptions,
}

/// A task's tokenized training and dev sets and its label map.
pub(crate) struct TaskData {
    pub(crate) train: Prepared,
    pub(crate) dev: Prepared,
    pub(crate) labels: LabelMap,
}

/// Loads, shuffles (seeded, before any split or cut: files may be sorted by label), splits, cuts
/// and tokenizes a task's data; prints a line about it.
pub(crate) fn load_task_data(tok: &Tokenizer, spec: &DataSpec) -> Result<TaskData> {
    let mut train_ex = data::load_examples(spec.train, spec.options)?;
    data::shuffle(&mut train_ex, spec.seed);
    let (mut train_ex, mut dev_ex, dev_note) = match spec.dev {
        Some(dev) => (train_ex, data::load_examples(dev, spec.options)?, format!("{}", dev.display())),
        None => {
            let (t, d) = data::seeded_split(train_ex, spec.dev_split, spec.seed)?;
            (t, d, format!("seeded {:.0}% held out of {}", spec.dev_split * 100.0, spec.train.display()))
        }
    };
    if let Some(n) = spec.max_train_examples {
        train_ex.truncate(n);
    }
    if let Some(n) = spec.max_dev_examples {
        dev_ex.truncate(n);
    }
    if train_ex.is_empty() || dev_ex.is_empty() {
        bail!("need at least one training and one dev example (train {}, dev {})", train_ex.len(), dev_ex.len());
    }
    let labels = LabelMap::from_examples(&train_ex)?;
    if labels.len() < 2 {
        bail!("the training data has {} label(s); classification needs at least 2", labels.len());
    }
    let train = prepare(tok, &train_ex, &labels, &spec.train.display().to_string())?;
    let dev_source = spec.dev.map_or_else(|| "the dev split".to_string(), |p| p.display().to_string());
    let dev = prepare(tok, &dev_ex, &labels, &dev_source)
        .context("the dev data has a label the training data does not have")?;
    println!(
        "data: {} train, {} dev ({dev_note}), {} labels: {}",
        train_ex.len(),
        dev_ex.len(),
        labels.len(),
        labels.labels.join(", ")
    );
    Ok(TaskData { train, dev, labels })
}

/// What the shared training loop trains: the encoder setup, its head, the trainable tensors, and
/// the hooks where an adapter and a fusion differ.
pub trait Trainee {
    fn setup(&self) -> Setup<'_>;
    fn head(&self) -> &ClassificationHead;
    /// (AdapterHub name, weight, gradient) of every trainable tensor, in a stable order.
    fn params(&self) -> Vec<(String, &GpuTensor, &GpuTensor)>;
    /// Before each training forward pass (e.g. the fusion's temperature schedule).
    fn before_train_pass(&mut self) {}
    /// After backward, before the optimizer step, in the same command buffer: records the
    /// gradients of extra loss terms (e.g. the fusion's W_V regularization) into the gradient
    /// tensors; returns the `[1]` tensor that will hold the extra loss, if any.
    fn record_extra_loss(&mut self, _b: &mut CommandRecorder) -> Result<Option<GpuTensor>> {
        Ok(None)
    }
    /// Before each dev evaluation.
    fn before_eval(&mut self, _gpu: &Arc<Gpu>) -> Result<()> {
        Ok(())
    }
    /// Saves the weights into `out` (each file atomically); called right after the dev evaluation
    /// of a new best epoch.
    fn save(&mut self, gpu: &Arc<Gpu>, out: &Path, labels: &[String]) -> Result<()>;
}

/// One training step's numbers.
#[derive(Clone, Copy, Debug)]
pub struct StepOutput {
    /// Cross-entropy + extra loss.
    pub loss: f32,
    pub extra_loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
}

/// One step: forward + backward on the batch, extra loss terms and AdamW, recorded into one
/// command buffer (submitted per layer where weights stream or activations are recomputed), then
/// one read-back of the loss and the gradient norm.
pub fn train_step<T: Trainee>(
    gpu: &Arc<Gpu>,
    enc: &mut Encoder,
    trainee: &mut T,
    optimizer: &mut Optimizer,
    inputs: &Inputs,
    labels: &[u32],
) -> Result<StepOutput> {
    trainee.before_train_pass();
    let mut b = gpu.batch();
    let rec = enc.record(&mut b, &trainee.setup(), trainee.head(), inputs, Some(labels), true)?;
    let loss = rec.loss.ok_or_else(|| anyhow!("internal: no loss for a batch with labels"))?;
    let extra = trainee.record_extra_loss(&mut b)?;
    let params = trainee.params();
    let lr = optimizer.record_step(&mut b, &params)?;
    let mut read = vec![&loss, optimizer.sum_of_squares()];
    read.extend(extra.as_ref());
    let values = b.submit_with_readback(&read)?.wait()?;
    gpu.check()?;
    let extra_loss = values.get(2).map_or(0.0, |v| v[0]);
    Ok(StepOutput { loss: values[0][0] + extra_loss, extra_loss, lr, grad_norm: values[1][0].sqrt() })
}

/// Options of the shared epoch loop.
pub(crate) struct LoopArgs<'a> {
    pub(crate) epochs: usize,
    pub(crate) lr: f32,
    pub(crate) batch_size: usize,
    pub(crate) seed: u64,
    pub(crate) warmup_ratio: f64,
    pub(crate) weight_decay: f32,
    pub(crate) max_grad_norm: f32,
    pub(crate) patience: Option<usize>,
    pub(crate) out: &'a Path,
    pub(crate) progress: bool,
    /// What the checkpoints hold, for the last line ("adapter + head").
    pub(crate) saved_what: &'a str,
    pub(crate) trainable_parameters: usize,
    pub(crate) model_parameters: usize,
}

/// The epoch loop shared by `peft train` and `peft fuse`: length-bucketed batches, AdamW with the
/// HF linear schedule and clipping, per-epoch dev accuracy / macro-F1, a checkpoint at every new
/// best dev accuracy, early stopping, `metrics.jsonl`, `training.png` and a progress bar.
pub(crate) fn run_loop<T: Trainee>(
    gpu: &Arc<Gpu>,
    enc: &mut Encoder,
    trainee: &mut T,
    task: &TaskData,
    pad: u32,
    a: &LoopArgs,
) -> Result<TrainSummary> {
    run_loop_with(gpu, enc, trainee, task, pad, a, &LoopControl::default())
}

/// Checkpointing, resuming and stops of [`run_loop_with`] (see [`resume`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct LoopControl {
    pub(crate) run: resume::RunControl,
    /// The run's settings for the state file; `None`: no state file (the run cannot be resumed).
    pub(crate) settings: Option<serde_json::Value>,
    /// [`resume::fingerprint`] of the task's data.
    pub(crate) fingerprint: String,
}

/// [`run_loop`], also saving `trainer_state.safetensors` (every epoch, every `save_steps`, on a
/// stop), resuming from it, and stopping cleanly on Ctrl-C / `stop_after_steps`.
pub(crate) fn run_loop_with<T: Trainee>(
    gpu: &Arc<Gpu>,
    enc: &mut Encoder,
    trainee: &mut T,
    task: &TaskData,
    pad: u32,
    a: &LoopArgs,
    ctl: &LoopControl,
) -> Result<TrainSummary> {
    let steps_per_epoch = task.train.tokens.len().div_ceil(a.batch_size);
    let total = (steps_per_epoch * a.epochs) as u32;
    let schedule = LinearSchedule {
        base_lr: a.lr,
        warmup_steps: (total as f64 * a.warmup_ratio).round() as u32,
        total_steps: total,
    };
    let opt = AdamW { lr: a.lr, weight_decay: a.weight_decay, ..AdamW::default() };
    let mut optimizer = Optimizer::new(gpu, &trainee.params(), opt, schedule, a.max_grad_norm)?;

    // Resuming: the saved weights, moments, step and counters (checked against this run first).
    let mut p = resume::Progress::new();
    let metrics_path = a.out.join("metrics.jsonl");
    if ctl.run.resume {
        let saved = resume::load(a.out)?;
        if saved.progress.finished {
            bail!(
                "{}: this training run already finished ({} steps); there is nothing to resume",
                a.out.display(),
                saved.progress.step
            );
        }
        saved.restore(gpu, &ctl.fingerprint, &trainee.params(), &mut optimizer)?;
        p = saved.progress;
        println!(
            "resuming at step {} of {total} (epoch {}, batch {}) from {}",
            p.step,
            p.epoch,
            p.batch + 1,
            saved.path.display()
        );
    }
    std::fs::create_dir_all(a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut log = if ctl.run.resume {
        MetricsLog::reopen(&metrics_path, p.metrics_bytes)?
    } else {
        MetricsLog::create(&metrics_path)?
    };
    let lengths: Vec<usize> = task.train.tokens.iter().map(|t| t.len()).collect();
    let pb = progress_bar(total as u64, a.progress);
    pb.set_position(p.step as u64);
    let numbered = |v: &[f64]| -> Vec<(usize, f64)> { v.iter().enumerate().map(|(i, &x)| (i + 1, x)).collect() };
    let mut curves = TrainingCurves {
        loss: p.train_losses.iter().enumerate().map(|(i, &l)| (i + 1, l as f64)).collect(),
        dev_accuracy: numbered(&p.dev_accuracy),
        dev_macro_f1: numbered(&p.dev_macro_f1),
    };
    let mut summary = TrainSummary {
        dev_accuracy: p.dev_accuracy.clone(),
        dev_macro_f1: p.dev_macro_f1.clone(),
        best_accuracy: p.best_accuracy,
        best_epoch: p.best_epoch,
        train_losses: p.train_losses.clone(),
        tokens_per_second: 0.0,
        trainable_parameters: a.trainable_parameters,
        model_parameters: a.model_parameters,
        steps: p.step,
        out: a.out.to_path_buf(),
    };
    let (mut real_tokens, mut train_secs) = (p.real_tokens, p.train_secs);
    let mut since_best = p.since_best;
    // The step of the last state file on disk, for the messages of a failed step.
    let mut saved_step = ctl.run.resume.then_some(p.step);
    let mut stopped = false;
    'epochs: for epoch in p.epoch..=a.epochs {
        pb.set_prefix(format!("epoch {epoch}/{}", a.epochs));
        let batches = data::make_batches(&lengths, a.batch_size, a.seed.wrapping_add(epoch as u64), true);
        for (bi, idx) in batches.iter().enumerate() {
            if epoch == p.epoch && bi < p.batch {
                continue; // done before the run was stopped
            }
            let t0 = Instant::now();
            let step = summary.steps + 1;
            let failed = || resume::failed_at(step, a.out, saved_step);
            resume::inject(gpu, ctl.run.fault, step, &trainee.params())?;
            let b = data::Batch::new(&task.train.tokens, Some(&task.train.labels), idx, pad);
            let s = train_step(gpu, enc, trainee, &mut optimizer, &b.inputs(), &b.labels).with_context(failed)?;
            gpu.check().with_context(failed)?;
            let (loss, lr, norm) = (s.loss, s.lr, s.grad_norm);
            if !loss.is_finite() || !norm.is_finite() {
                bail!(
                    "step {step}: loss {loss} / gradient norm {norm} is not finite (a learning rate too high? try a \
                     smaller --lr); {}",
                    failed()
                );
            }
            train_secs += t0.elapsed().as_secs_f64();
            real_tokens += b.real_tokens();
            summary.steps += 1;
            if summary.steps == 1 {
                let peak = gpu.memory.peak() as f64 / 1048576.0;
                pb.suspend(|| println!("step 1: measured peak GPU memory {peak:.1} MiB (the project's buffers)"));
            }
            summary.train_losses.push(loss);
            curves.loss.push((summary.steps, loss as f64));
            let tps = real_tokens as f64 / train_secs.max(1e-9);
            let mut record = json!({"step": summary.steps, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": norm,
                "tokens": b.real_tokens(), "tokens_per_second": tps});
            if s.extra_loss != 0.0 {
                record["regularization_loss"] = json!(s.extra_loss);
            }
            log.log(&record)?;
            pb.set_message(format!("loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s"));
            pb.inc(1);
            if a.progress && pb.is_hidden() && (summary.steps % 10 == 0 || summary.steps == 1) {
                // No terminal (logs, CI): a plain line now and then instead of the bar.
                let eta = (total as usize - summary.steps) as f64 * train_secs / summary.steps as f64;
                println!("step {}/{total}: loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s, ETA {eta:.0} s", summary.steps);
            }
            let stop = resume::stop_requested() || ctl.run.stop_after_steps == Some(summary.steps);
            let every = ctl.run.save_steps.is_some_and(|n| n > 0 && summary.steps % n == 0);
            if let Some(settings) = ctl.settings.as_ref().filter(|_| stop || every) {
                let snap = resume::Progress::snapshot(
                    &summary,
                    epoch,
                    bi + 1,
                    false,
                    since_best,
                    real_tokens,
                    train_secs,
                    log.bytes_written()?,
                );
                resume::save(gpu, a.out, settings, &snap, &ctl.fingerprint, &trainee.params(), &optimizer)?;
                saved_step = Some(summary.steps);
            }
            if stop {
                stopped = true;
                break 'epochs;
            }
        }
        trainee.before_eval(gpu)?;
        let scores = evaluate_prepared(enc, &trainee.setup(), trainee.head(), &task.dev, pad, a.batch_size)?;
        summary.dev_accuracy.push(scores.accuracy);
        summary.dev_macro_f1.push(scores.macro_f1);
        curves.dev_accuracy.push((epoch, scores.accuracy));
        curves.dev_macro_f1.push((epoch, scores.macro_f1));
        log.log(&json!({"epoch": epoch, "dev_accuracy": scores.accuracy, "dev_macro_f1": scores.macro_f1, "dev_n": task.dev.labels.len()}))?;
        let better = scores.accuracy > summary.best_accuracy;
        let line = format!(
            "epoch {epoch}: dev accuracy {:.4}, macro-F1 {:.4}, {:.0} train tokens/s{}",
            scores.accuracy,
            scores.macro_f1,
            real_tokens as f64 / train_secs.max(1e-9),
            if better { " (best; saved)" } else { "" }
        );
        pb.suspend(|| println!("{line}"));
        if better {
            summary.best_accuracy = scores.accuracy;
            summary.best_epoch = epoch;
            since_best = 0;
            trainee.save(gpu, a.out, &task.labels.labels)?;
        } else {
            since_best += 1;
        }
        let early = !better && a.patience.is_some_and(|p| since_best >= p);
        if let Some(settings) = &ctl.settings {
            let done = early || epoch == a.epochs;
            let snap = resume::Progress::snapshot(
                &summary,
                epoch + 1,
                0,
                done,
                since_best,
                real_tokens,
                train_secs,
                log.bytes_written()?,
            );
            resume::save(gpu, a.out, settings, &snap, &ctl.fingerprint, &trainee.params(), &optimizer)?;
            saved_step = Some(summary.steps);
        }
        if early {
            pb.suspend(|| println!("early stopping: no better dev accuracy for {since_best} epoch(s)"));
            break;
        }
        if resume::stop_requested() && epoch < a.epochs {
            stopped = true;
            break;
        }
    }
    pb.finish_and_clear();
    if stopped {
        metrics::plot_training(a.out.join("training.png"), &curves)?;
        let why = if resume::stop_requested() { "interrupted" } else { "stopped (--stop-after-steps)" };
        match saved_step.filter(|_| ctl.settings.is_some()) {
            Some(s) => eprintln!(
                "{why} at step {s} of {total}: state saved to {}; continue with `peft train --resume {}`",
                a.out.join(resume::STATE_FILE).display(),
                a.out.display()
            ),
            None => eprintln!("{why} at step {} of {total}; this run cannot be resumed", summary.steps),
        }
        summary.tokens_per_second = real_tokens as f64 / train_secs.max(1e-9);
        return Ok(summary);
    }
    summary.tokens_per_second = real_tokens as f64 / train_secs.max(1e-9);
    metrics::plot_training(a.out.join("training.png"), &curves)?;
    println!(
        "best dev accuracy {:.4} (epoch {}); {:.0} real tokens/s over {} steps; {} saved to {}",
        summary.best_accuracy,
        summary.best_epoch,
        summary.tokens_per_second,
        summary.steps,
        a.saved_what,
        a.out.display()
    );
    Ok(summary)
}

/// A new adapter + head being trained (`peft train`).
struct AdapterTrainee {
    set: AdapterSet,
    head: ClassificationHead,
    bn: BottleneckConfig,
    hidden: usize,
    model_name: String,
}

impl Trainee for AdapterTrainee {
    fn setup(&self) -> Setup<'_> {
        Setup::Adapter(&self.set)
    }

    fn head(&self) -> &ClassificationHead {
        &self.head
    }

    fn params(&self) -> Vec<(String, &GpuTensor, &GpuTensor)> {
        self.set.named().into_iter().chain(self.head.named()).collect()
    }

    fn save(&mut self, gpu: &Arc<Gpu>, out: &Path, labels: &[String]) -> Result<()> {
        let a = checkpoint::to_adapterhub(gpu, &self.set, &self.bn, &self.head, labels, self.hidden, &self.model_name)?;
        a.save(out)
    }
}

/// The model directory's name, as AdapterHub's configs record it.
pub(crate) fn model_name(model: &Path) -> String {
    model.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
}

/// `peft train`.
pub fn train(gpu: &Arc<Gpu>, args: &TrainArgs) -> Result<TrainSummary> {
    train_with(gpu, args, &resume::RunControl::default())
}

/// `peft train` with checkpoint control: resume from `args.out`, stop after a number of steps,
/// save every few steps (see [`resume`]).
pub fn train_with(gpu: &Arc<Gpu>, args: &TrainArgs, run: &resume::RunControl) -> Result<TrainSummary> {
    if args.batch_size == 0 || args.epochs == 0 {
        bail!("--batch-size and --epochs must be at least 1");
    }
    println!("device: {}", gpu.description.summary());
    let cfg = BertConfig::from_model_dir(&args.model)?;
    if args.max_length > cfg.max_position_embeddings {
        eprintln!(
            "note: --max-length {} is more than the model's {} positions (max_position_embeddings); using {}",
            args.max_length, cfg.max_position_embeddings, cfg.max_position_embeddings
        );
    }
    let tok = Tokenizer::from_model_dir(&args.model, args.max_length.min(cfg.max_position_embeddings))?;
    let pad = data::pad_id(&tok);
    let task = load_task_data(
        &tok,
        &DataSpec {
            train: &args.train,
            dev: args.dev.as_deref(),
            dev_split: args.dev_split,
            max_train_examples: args.max_train_examples,
            max_dev_examples: args.max_dev_examples,
            seed: args.seed,
            options: &args.data,
        },
    )?;

    let bn = bottleneck_config(args, cfg.num_hidden_layers);
    let (set, head) = new_adapter(gpu, &cfg, &bn, &args.adapter_name, task.labels.len(), args.seed)?;
    let trainable = set.parameters() + head.parameters();
    let model_params = model_parameters(&cfg);
    println!(
        "adapter: {} ({:?}, reduction factor {}, {}), {} trainable parameters = {:.2}% of the model's {}",
        args.adapter_name,
        args.config,
        args.reduction_factor,
        bn.non_linearity.adapterhub_name(),
        trainable,
        100.0 * trainable as f64 / model_params as f64,
        model_params
    );
    // The largest batch must fit the GPU's buffers: found now, not in the middle of a step.
    let longest = task.train.tokens.iter().chain(&task.dev.tokens).map(|t| t.len()).max().unwrap_or(1);
    let widest = args.batch_size.min(task.train.tokens.len().max(task.dev.tokens.len()));
    guard::check_batch_fits(gpu, &load::dims(&cfg), widest, longest)?;
    // Memory plan of the largest step, before anything big is allocated: resident layers and
    // recompute chosen to fit --max-gpu-memory (or as given).
    let mem_plan = plan::choose_for(
        gpu,
        &plan::PlanInput {
            cfg: &cfg,
            batch: widest,
            seq: longest,
            labels: task.labels.len(),
            adapter: &plan::AdapterSpec::from_bottleneck(&cfg, &bn)?,
            resident_layers: cfg.num_hidden_layers,
            recompute: false,
            layer_chunk: 0,
            keep_ffn_output: false,
        },
        plan::Choice {
            resident_layers: args.resident_layers,
            recompute: args.recompute.then_some(true),
            layer_chunk: args.layer_chunk,
            keep_ffn_output: plan::keep_choice(args.keep_ffn_output, args.recompute),
        },
        args.max_gpu_memory,
    )?;
    println!("memory: {mem_plan}");
    let (_, mut enc) = load::load_encoder(gpu, &args.model, Some(mem_plan.resident_layers()))?;
    enc.follow(&mem_plan);
    let mut trainee = AdapterTrainee { set, head, bn, hidden: cfg.hidden_size, model_name: model_name(&args.model) };
    let loop_args = LoopArgs {
        epochs: args.epochs,
        lr: args.lr,
        batch_size: args.batch_size,
        seed: args.seed,
        warmup_ratio: args.warmup_ratio,
        weight_decay: args.weight_decay,
        max_grad_norm: args.max_grad_norm,
        patience: args.patience,
        out: &args.out,
        progress: args.progress,
        saved_what: "adapter + head",
        trainable_parameters: trainable,
        model_parameters: model_params,
    };
    let ctl = LoopControl {
        run: run.clone(),
        settings: Some(resume::args_to_json(args)),
        fingerprint: resume::fingerprint(
            &[(&task.train.tokens, &task.train.labels), (&task.dev.tokens, &task.dev.labels)],
            &task.labels.labels,
        ),
    };
    run_loop_with(gpu, &mut enc, &mut trainee, &task, pad, &loop_args, &ctl)
}

/// Parameters of the base model (embeddings + layers), for the "share of the model" line.
pub fn model_parameters(cfg: &BertConfig) -> usize {
    let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
    let emb = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * d + 2 * d;
    let layer = 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 2 * d;
    emb + cfg.num_hidden_layers * layer
}

/// A trained adapter folder (with its head) ready for inference.
pub struct Loaded {
    pub cfg: BertConfig,
    pub enc: Encoder,
    pub set: AdapterSet,
    pub head: ClassificationHead,
    pub labels: LabelMap,
    pub tok: Tokenizer,
}

pub fn load_trained(gpu: &Arc<Gpu>, model: &Path, adapter: &Path, max_length: usize) -> Result<Loaded> {
    let (cfg, enc) = load::load_encoder(gpu, model, None)?;
    let a = crate::formats::adapterhub::Adapter::load(adapter, &cfg)?;
    let h = a.head.as_ref().ok_or_else(|| anyhow!("{}: no head saved with the adapter", adapter.display()))?;
    let labels = LabelMap::new(h.config.id2label.clone())?;
    let head = load::classification_head(gpu, h, cfg.hidden_size)?;
    let set = load::adapter_set(gpu, &a, &cfg)?;
    let tok = Tokenizer::from_model_dir(model, max_length.min(cfg.max_position_embeddings))?;
    Ok(Loaded { cfg, enc, set, head, labels, tok })
}

/// `peft eval`: accuracy and macro-F1 of a trained adapter on a labelled file.
pub fn evaluate(
    gpu: &Arc<Gpu>,
    model: &Path,
    adapter: &Path,
    data_path: &Path,
    opts: &DataOptions,
    batch_size: usize,
    max_length: usize,
) -> Result<Scores> {
    let mut l = load_trained(gpu, model, adapter, max_length)?;
    let ex = data::load_examples(data_path, opts)?;
    if ex.is_empty() {
        bail!("{}: no examples", data_path.display());
    }
    let p = prepare(&l.tok, &ex, &l.labels, &data_path.display().to_string())?;
    let pad = data::pad_id(&l.tok);
    evaluate_prepared(&mut l.enc, &Setup::Adapter(&l.set), &l.head, &p, pad, batch_size)
}

/// One prediction.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Prediction {
    pub text: String,
    pub label: String,
    pub probabilities: std::collections::BTreeMap<String, f32>,
    pub logits: Vec<f32>,
}

/// `peft predict`: label, probabilities (softmax on the GPU) and raw logits per input.
pub fn predict(
    gpu: &Arc<Gpu>,
    model: &Path,
    adapter: &Path,
    examples: &[Example],
    batch_size: usize,
    max_length: usize,
) -> Result<Vec<Prediction>> {
    let mut l = load_trained(gpu, model, adapter, max_length)?;
    let (tokens, truncated) = data::tokenize_counting(&l.tok, examples)?;
    if let Some(note) = data::truncation_note("the input", truncated, examples.len(), l.tok.max_length()) {
        eprintln!("{note}");
    }
    let pad = data::pad_id(&l.tok);
    let c = l.head.labels;
    let logits = predict_logits(&mut l.enc, &Setup::Adapter(&l.set), &l.head, &tokens, pad, batch_size)?;
    predictions(gpu, &l.labels, examples, &logits, c)
}

/// Predictions from logits `[examples, c]`: label, probabilities (softmax on the GPU), logits.
pub(crate) fn predictions(
    gpu: &Arc<Gpu>,
    labels: &LabelMap,
    examples: &[Example],
    logits: &[f32],
    c: usize,
) -> Result<Vec<Prediction>> {
    let lt = GpuTensor::from_slice(gpu, &[examples.len(), c], logits)?;
    let pt = GpuTensor::zeros(gpu, &[examples.len(), c])?;
    let mut b = gpu.batch();
    crate::kernels::loss::softmax(&mut b, &lt, &pt)?;
    b.finish()?;
    let probs = pt.to_vec(gpu)?;
    let preds = metrics::argmax_rows(logits, c);
    Ok(examples
        .iter()
        .enumerate()
        .map(|(i, e)| Prediction {
            text: e.text.clone(),
            label: labels.name(preds[i]).unwrap_or("?").to_string(),
            probabilities: (0..c)
                .map(|k| (labels.name(k as u32).unwrap_or("?").to_string(), probs[i * c + k]))
                .collect(),
            logits: logits[i * c..(i + 1) * c].to_vec(),
        })
        .collect())
}
