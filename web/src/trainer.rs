//! The browser's training loop: the native loop's step (`submit_train_step`), awaited where the
//! native one blocks; length-bucketed batches, AdamW with the linear schedule and clipping at 1.0,
//! dropout as the model's config says, dev accuracy after each epoch.

use anyhow::{anyhow, bail, Context, Result};
use peft_wgpu::formats::adapterhub::{BottleneckConfig, HeadConfig};
use peft_wgpu::gpu::{Gpu, GpuTensor};
use peft_wgpu::kernels::elementwise;
use peft_wgpu::kernels::optim::{AdamW, LinearSchedule};
use peft_wgpu::model::config::BertConfig;
use peft_wgpu::model::encoder::{DropoutRates, Encoder, PassDropout, Targets};
use peft_wgpu::model::plan::{self, AdapterSpec, Choice, MemoryPlan, PlanInput};
use peft_wgpu::train::data::{self, DataOptions, Example, Format, LabelMap, Tokenized};
use peft_wgpu::train::metrics::{self, Scores};
use peft_wgpu::train::tokenizer::Tokenizer;
use peft_wgpu::train::trainer::submit_train_step;
use peft_wgpu::train::{new_adapter_with_head, AdapterTrainee, Optimizer, Trainee};
use peft_wgpu::{Activation, WeightPrecision};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// What the page sets (JSON); the defaults are `peft train`'s where it has one.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TrainOptions {
    pub epochs: usize,
    pub lr: f32,
    pub batch_size: usize,
    pub max_length: usize,
    pub reduction_factor: f64,
    pub seed: u64,
    /// Held out of the training CSV as dev when no dev CSV is given.
    pub dev_fraction: f64,
    pub max_train_examples: Option<usize>,
    /// `false`: no dropout (as `--no-dropout`).
    pub dropout: bool,
    /// The GPU memory training may use (`"48MiB"`, `"1GiB"`; as `--max-gpu-memory`): the memory
    /// planner then streams layers, recomputes and chunks as `peft train` does. None: everything
    /// resident (the browser does not say how much memory its GPU has).
    pub max_gpu_memory: Option<String>,
    /// Layers kept on the GPU, the others streamed (as `--resident-layers`). None: the planner's.
    pub resident_layers: Option<usize>,
    /// How the frozen layers' matrices are held (as `--precision`, `"f16"` / `"f32"`). None: f16
    /// where the browser offers `shader-f16` (a GPU with half-precision support), else f32.
    pub precision: Option<WeightPrecision>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 3,
            lr: 1e-4,
            batch_size: 32,
            max_length: 128,
            reduction_factor: 16.0,
            seed: 42,
            dev_fraction: 0.1,
            max_train_examples: None,
            dropout: true,
            max_gpu_memory: None,
            resident_layers: None,
            precision: None,
        }
    }
}

/// Tokenized, labelled examples.
pub(crate) struct Split {
    pub tokens: Vec<Tokenized>,
    pub labels: Vec<u32>,
}

impl Split {
    fn new(tok: &Tokenizer, examples: &[Example], labels: &LabelMap, source: &str) -> Result<Self> {
        Ok(Self { tokens: data::tokenize(tok, examples)?, labels: labels.encode(examples, source)? })
    }
}

/// A CSV task (columns `text,label`): train and dev, and the label names.
pub(crate) struct Task {
    pub train: Split,
    pub dev: Split,
    pub labels: LabelMap,
}

fn parse_csv(name: &str, csv: &[u8]) -> Result<Vec<Example>> {
    data::parse_examples(Path::new(name), csv, Format::Csv, &DataOptions::default())
}

impl Task {
    /// `train_csv` (and `dev_csv`, else a seeded `dev_fraction` of the training file).
    pub fn parse(tok: &Tokenizer, train_csv: &[u8], dev_csv: Option<&[u8]>, o: &TrainOptions) -> Result<Self> {
        let all = parse_csv("train.csv", train_csv)?;
        let (mut train, dev) = match dev_csv {
            Some(d) => (all, parse_csv("dev.csv", d)?),
            None => data::seeded_split(all, o.dev_fraction, o.seed)?,
        };
        if let Some(n) = o.max_train_examples {
            train.truncate(n);
        }
        let labels = LabelMap::from_examples(&train)?;
        if labels.len() < 2 {
            bail!("train.csv: the labels need at least two different values, found {}", labels.len());
        }
        Ok(Self {
            train: Split::new(tok, &train, &labels, "train.csv")?,
            dev: Split::new(tok, &dev, &labels, "dev.csv")?,
            labels,
        })
    }
}

/// One training step, as the page is told it (JSON).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct StepReport {
    pub epoch: usize,
    pub step: usize,
    pub total: usize,
    pub loss: f32,
    pub lr: f32,
    pub tokens_per_second: f64,
}

/// What training gives (JSON).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct TrainReport {
    pub losses: Vec<f32>,
    pub dev_accuracy: Vec<f64>,
    pub dev_macro_f1: Vec<f64>,
    /// The epoch (from 1) whose adapter and head are kept, as `peft train` keeps them: the first
    /// with the best dev accuracy.
    pub best_epoch: usize,
    pub real_tokens: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub trainable_parameters: usize,
    /// The memory plan's line (`peft train`'s `memory:` line).
    pub memory: String,
}

/// Milliseconds on the page's clock (`std::time::Instant` does not exist in the browser).
pub(crate) fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// The adapter the page trains: AdapterHub's Houlsby (`double_seq_bn`), swish, `reduction_factor`.
fn houlsby(o: &TrainOptions) -> BottleneckConfig {
    BottleneckConfig::houlsby(o.reduction_factor, Activation::Silu)
}

/// The memory plan of training `task` as `o` says (`peft train`'s planner): every layer resident
/// unless `o.max_gpu_memory` asks for less; fails clearly when the largest batch cannot fit.
pub(crate) fn memory_plan(gpu: &Gpu, cfg: &BertConfig, task: &Task, o: &TrainOptions) -> Result<MemoryPlan> {
    let budget = o.max_gpu_memory.as_deref().map(plan::parse_size).transpose()?;
    let spec = AdapterSpec::from_bottleneck(cfg, &houlsby(o))?;
    let longest = task.train.tokens.iter().chain(&task.dev.tokens).map(|t| t.len()).max().unwrap_or(1);
    let widest = o.batch_size.min(task.train.tokens.len().max(task.dev.tokens.len())).max(1);
    let dropout = if o.dropout { DropoutRates::from_config(cfg, None)?.sites() } else { Default::default() };
    let precision = o.precision.unwrap_or(if gpu.description.has_shader_f16() {
        WeightPrecision::F16
    } else {
        WeightPrecision::F32
    });
    let input = PlanInput { dropout, precision, ..PlanInput::resident(cfg, &spec, widest, longest, task.labels.len()) };
    let choice = Choice { resident_layers: o.resident_layers, ..Choice::default() };
    plan::choose_for(gpu, &input, choice, budget)
}

/// Trains a new Houlsby adapter (AdapterHub's `double_seq_bn`, swish, `reduction_factor`) and a
/// classification head on `task`; `progress` hears every step, `epoch_done` every dev accuracy.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn train(
    gpu: &Arc<Gpu>,
    cfg: &BertConfig,
    model_name: &str,
    enc: &mut Encoder,
    pad: u32,
    task: &Task,
    o: &TrainOptions,
    progress: &dyn Fn(&StepReport),
) -> Result<(AdapterTrainee, TrainReport)> {
    if o.batch_size == 0 || o.epochs == 0 {
        bail!("batch_size and epochs must be at least 1");
    }
    if task.train.tokens.is_empty() {
        bail!("train.csv has no examples");
    }
    let bn = houlsby(o);
    let head_config = HeadConfig::classification(&task.labels.labels);
    let (set, head) = new_adapter_with_head(gpu, cfg, &bn, "task", &head_config, o.seed)?;
    let mut trainee = AdapterTrainee::new(set, head, bn, cfg, model_name);
    let total = task.train.tokens.len().div_ceil(o.batch_size) * o.epochs;
    let schedule = LinearSchedule { base_lr: o.lr, warmup_steps: 0, total_steps: total as u32 };
    let opt = AdamW { lr: o.lr, weight_decay: 0.0, ..AdamW::default() };
    let mut optimizer = Optimizer::new(gpu, &trainee.params(), opt, schedule, 1.0)?;
    let rates = if o.dropout { Some(DropoutRates::from_config(cfg, None)?) } else { None };
    let mut report = TrainReport {
        trainable_parameters: trainee.set.parameters() + trainee.head.parameters(),
        ..Default::default()
    };
    let lengths: Vec<usize> = task.train.tokens.iter().map(|t| t.len()).collect();
    // The best epoch's parameters, copied on the GPU (no read-back), restored after the last epoch.
    let best: Vec<GpuTensor> =
        trainee.params().iter().map(|(_, p, _)| GpuTensor::zeros(gpu, &p.shape)).collect::<Result<_>>()?;
    let copy_all = |pairs: &mut dyn Iterator<Item = (&GpuTensor, &GpuTensor)>| -> Result<()> {
        let mut b = gpu.batch();
        for (src, dst) in pairs {
            elementwise::copy(&mut b, src, dst)?;
        }
        b.submit();
        gpu.check()
    };
    let mut step = 0;
    for epoch in 1..=o.epochs {
        let start = now_ms();
        for idx in data::make_batches(&lengths, o.batch_size, o.seed.wrapping_add(epoch as u64), true) {
            step += 1;
            let b =
                data::Batch::new(&task.train.tokens, Some(&task.train.labels), &idx, data::Padding::to_longest(pad));
            let dropout = rates.map(|rates| PassDropout { rates, seed: o.seed, step: step as u32 });
            let targets = Targets::Classes(&b.labels);
            let s = submit_train_step(gpu, enc, &mut trainee, &mut optimizer, &b.inputs(), targets, dropout)?
                .wait_async()
                .await
                .with_context(|| format!("training step {step}"))?;
            if !s.loss.is_finite() || !s.grad_norm.is_finite() {
                bail!("step {step}: loss {} / gradient norm {} is not finite (try a smaller lr)", s.loss, s.grad_norm);
            }
            report.losses.push(s.loss);
            report.real_tokens += b.real_tokens();
            let secs = report.seconds + (now_ms() - start) / 1000.0;
            let tokens_per_second = report.real_tokens as f64 / secs.max(1e-9);
            progress(&StepReport { epoch, step, total, loss: s.loss, lr: s.lr, tokens_per_second });
        }
        report.seconds += (now_ms() - start) / 1000.0;
        report.tokens_per_second = report.real_tokens as f64 / report.seconds.max(1e-9);
        let scores = evaluate(gpu, enc, &trainee, &task.dev, pad, o.batch_size).await?;
        // A dev set without a finite accuracy (none) keeps the last epoch.
        let better = scores.accuracy.is_finite()
            && report.dev_accuracy.iter().filter(|a| a.is_finite()).all(|&a| scores.accuracy > a);
        report.dev_accuracy.push(scores.accuracy);
        report.dev_macro_f1.push(scores.macro_f1);
        if better {
            report.best_epoch = epoch;
            if epoch < o.epochs {
                copy_all(&mut trainee.params().into_iter().map(|(_, p, _)| p).zip(&best))?;
            }
        }
    }
    if report.best_epoch > 0 && report.best_epoch < o.epochs {
        copy_all(&mut best.iter().zip(trainee.params().into_iter().map(|(_, p, _)| p)))?;
    }
    Ok((trainee, report))
}

/// The head's logits `[examples][labels]`, batched by length, each batch's read-back awaited.
pub(crate) async fn logits(
    gpu: &Arc<Gpu>,
    enc: &mut Encoder,
    trainee: &AdapterTrainee,
    tokens: &[Tokenized],
    pad: u32,
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    let c = trainee.head.labels;
    let mut out = vec![vec![]; tokens.len()];
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by_key(|&i| tokens[i].len());
    for chunk in order.chunks(batch_size.max(1)) {
        let b = data::Batch::new(tokens, None, chunk, data::Padding::to_longest(pad));
        let mut rec = gpu.batch();
        let r = enc.record(&mut rec, &trainee.setup(), &trainee.head, &b.inputs(), None, false, None)?;
        let values = rec.submit_with_readback(&[&r.logits])?.wait_async().await?;
        let all = values.first().ok_or_else(|| anyhow!("internal: no logits read back"))?;
        for (k, &i) in chunk.iter().enumerate() {
            out[i] = all[k * c..(k + 1) * c].to_vec();
        }
    }
    Ok(out)
}

/// Accuracy and macro-F1 on `split`.
pub(crate) async fn evaluate(
    gpu: &Arc<Gpu>,
    enc: &mut Encoder,
    trainee: &AdapterTrainee,
    split: &Split,
    pad: u32,
    batch_size: usize,
) -> Result<Scores> {
    let rows = logits(gpu, enc, trainee, &split.tokens, pad, batch_size).await?;
    let preds = metrics::argmax_rows(&rows.concat(), trainee.head.labels);
    Ok(Scores::new(&split.labels, &preds))
}
