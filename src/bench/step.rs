//! Whole training steps: a Houlsby adapter (reduction factor 16, AdapterHub's defaults) + head
//! trained with AdamW on a frozen encoder of a given shape, random weights and tokens; and the
//! demo workload, an epoch of real Rotten Tomatoes sentence lengths (dynamic padding).

use super::{time_wall, Clock, Measurement, Peaks, Reps};
use crate::formats::adapterhub::BottleneckConfig;
use crate::gpu::{Gpu, GpuTensor, Readback};
use crate::kernels::optim::{AdamW, LinearSchedule};
use crate::model::config::BertConfig;
use crate::model::encoder::{DropoutRates, Inputs, PassDropout, Setup};
use crate::model::load;
use crate::train::{new_adapter, Optimizer};
use crate::types::{Activation, WeightPrecision};
use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// FLOPs of one training step over `tokens` tokens in sequences of `seq`: the frozen layers'
/// forward products (8d² + 4d·ffn a token) and attention (4·seq·d), then the input-gradient
/// backward (one product per weight, attention twice its forward); adapters and head are < 1%.
pub fn step_flops(cfg: &BertConfig, tokens: usize, seq: usize) -> f64 {
    let (d, f) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
    let dense = 8.0 * d * d + 4.0 * d * f;
    let attn = 4.0 * seq as f64 * d;
    tokens as f64 * cfg.num_hidden_layers as f64 * (2.0 * dense + 3.0 * attn)
}

/// Random token ids (first token 101 = `[CLS]`) with `lengths[i]` real tokens per sequence,
/// padded to the longest.
pub fn random_inputs(rng: &mut impl Rng, lengths: &[usize], vocab: usize) -> Inputs {
    random_inputs_padded(rng, lengths, vocab, 1)
}

/// [`random_inputs`] padded to a multiple of `multiple` tokens (as `peft train --pad-to-multiple-of`).
pub fn random_inputs_padded(rng: &mut impl Rng, lengths: &[usize], vocab: usize, multiple: usize) -> Inputs {
    let padding = crate::train::data::Padding { id: 0, multiple, cap: usize::MAX };
    let seq = padding.length(lengths.iter().copied().max().unwrap_or(1).max(1));
    let batch = lengths.len();
    let mut ids = vec![0u32; batch * seq];
    let mut mask = vec![0f32; batch * seq];
    for (b, &len) in lengths.iter().enumerate() {
        for s in 0..len.max(1) {
            ids[b * seq + s] = if s == 0 {
                101.min(vocab as u32 - 1)
            } else {
                rng.random_range(1000.min(vocab as u32 - 1)..vocab as u32)
            };
            mask[b * seq + s] = 1.0;
        }
    }
    Inputs { batch, seq, ids, token_types: vec![0; batch * seq], mask }
}

/// A model (from `model_dir`) with a new Houlsby adapter, its head and AdamW, ready to step.
pub struct Trainer {
    pub cfg: BertConfig,
    enc: crate::model::encoder::Encoder,
    set: crate::model::adapters::AdapterSet,
    head: crate::model::adapters::ClassificationHead,
    opt: Optimizer,
    in_flight: Option<Readback>,
    pub trainable: usize,
    /// Dropout in the steps (the model config's rates, as `peft train` trains by default), with
    /// masks keyed by the step's number; `None` (the default): no dropout.
    pub dropout: Option<DropoutRates>,
    steps_recorded: u32,
    /// Host seconds the last [`step`](Self::step) took to record, up to its submit.
    pub last_record_seconds: f64,
}

impl Trainer {
    pub fn new(gpu: &Arc<Gpu>, model_dir: &Path, resident_layers: Option<usize>, steps: u32) -> Result<Self> {
        Self::with_precision(gpu, model_dir, resident_layers, steps, WeightPrecision::F32)
    }

    /// [`new`](Self::new) with the frozen layers' matrices held in `precision` (`--precision`).
    pub fn with_precision(
        gpu: &Arc<Gpu>,
        model_dir: &Path,
        resident_layers: Option<usize>,
        steps: u32,
        precision: WeightPrecision,
    ) -> Result<Self> {
        let (cfg, enc) = load::load_encoder_with(gpu, model_dir, resident_layers, precision)?;
        let bn = BottleneckConfig::houlsby(16.0, Activation::Silu);
        let (set, head) = new_adapter(gpu, &cfg, &bn, "bench", 2, 0)?;
        let trainable = set.parameters() + head.parameters();
        let opt = {
            let params: Vec<(String, &GpuTensor, &GpuTensor)> = set.named().into_iter().chain(head.named()).collect();
            let schedule = LinearSchedule { base_lr: 1e-4, warmup_steps: 0, total_steps: steps.max(1) };
            Optimizer::new(gpu, &params, AdamW::default(), schedule, 1.0)?
        };
        Ok(Self {
            cfg,
            enc,
            set,
            head,
            opt,
            in_flight: None,
            trainable,
            dropout: None,
            steps_recorded: 0,
            last_record_seconds: 0.0,
        })
    }

    /// Forward, loss, backward and the optimizer step recorded into one command buffer and
    /// submitted without waiting; returns the loss and squared gradient norm of the *previous*
    /// step (whose results are read back while this one runs), if any.
    pub fn step(&mut self, gpu: &Arc<Gpu>, inp: &Inputs, labels: &[u32]) -> Result<Option<(f32, f32)>> {
        let t0 = Instant::now();
        let mut b = gpu.batch();
        let dropout = self.dropout.map(|rates| PassDropout { rates, seed: 42, step: self.steps_recorded });
        self.steps_recorded += 1;
        let rec = self.enc.record(&mut b, &Setup::Adapter(&self.set), &self.head, inp, Some(labels), true, dropout)?;
        let params: Vec<(String, &GpuTensor, &GpuTensor)> =
            self.set.named().into_iter().chain(self.head.named()).collect();
        self.opt.record_step(&mut b, &params)?;
        let loss = rec.loss.context("training pass recorded no loss")?;
        self.last_record_seconds = t0.elapsed().as_secs_f64();
        let rb = b.submit_with_readback(&[&loss, self.opt.sum_of_squares()])?;
        self.finish_previous(Some(rb))
    }

    /// Waits for the step in flight (if any) and checks its loss.
    pub fn flush(&mut self) -> Result<Option<(f32, f32)>> {
        self.finish_previous(None)
    }

    fn finish_previous(&mut self, next: Option<Readback>) -> Result<Option<(f32, f32)>> {
        let Some(prev) = std::mem::replace(&mut self.in_flight, next) else {
            return Ok(None);
        };
        let v = prev.wait()?;
        let (loss, ss) = (v[0][0], v[1][0]);
        if !loss.is_finite() || !ss.is_finite() {
            bail!("benchmark step: loss {loss} or gradient norm² {ss} is not finite");
        }
        Ok(Some((loss, ss)))
    }
}

/// Median step time at `batch × seq` (all tokens real).
pub fn train_step(
    gpu: &Arc<Gpu>,
    model_dir: &Path,
    batch: usize,
    seq: usize,
    resident_layers: Option<usize>,
    precision: WeightPrecision,
    reps: Reps,
    peaks: Option<Peaks>,
) -> Result<Measurement> {
    let mut tr =
        Trainer::with_precision(gpu, model_dir, resident_layers, (reps.warmup + reps.timed) as u32, precision)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let inp = random_inputs(&mut rng, &vec![seq; batch], tr.cfg.vocab_size);
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 2).collect();
    // Warm-up (pipelines compiled, buffers sized); then each step submitted as one command buffer
    // and waited for (as `peft train` runs), the median of `reps.timed`.
    for _ in 0..reps.warmup.max(1) {
        tr.step(gpu, &inp, &labels)?;
    }
    tr.flush()?;
    gpu.memory.reset_peak();
    let mut last_loss = f32::NAN;
    let times = time_wall(Reps { warmup: 0, timed: reps.timed }, || {
        tr.step(gpu, &inp, &labels)?;
        last_loss = tr.flush()?.map(|l| l.0).unwrap_or(f32::NAN);
        Ok(())
    })?;
    let peak = gpu.memory.peak();
    // The same steps back to back, the host recording step i+1 while the GPU runs step i.
    let t0 = Instant::now();
    for _ in 0..reps.timed {
        tr.step(gpu, &inp, &labels)?;
    }
    tr.flush()?;
    let pipelined = t0.elapsed().as_secs_f64() / reps.timed as f64;
    let cfg = &tr.cfg;
    let tokens = batch * seq;
    let mut variant = match resident_layers {
        Some(k) if k < cfg.num_hidden_layers => format!("stream-{k}"),
        _ => "resident".to_string(),
    };
    if precision == WeightPrecision::F16 {
        variant += "-f16";
    }
    let name = format!("train_step_{}x{}", cfg.num_hidden_layers, cfg.hidden_size);
    let m = Measurement::new(
        &name,
        format!("B={batch} S={seq}"),
        &variant,
        &times,
        Clock::Wall,
        step_flops(cfg, tokens, seq),
        4.0 * 2.0 * crate::train::model_parameters(cfg) as f64,
    )
    .with_peaks(peaks);
    let tps = tokens as f64 / (m.median_us * 1e-6);
    Ok(m.with_extra("tokens_per_s", tps)
        .with_extra("pipelined_step_us", pipelined * 1e6)
        .with_extra("peak_gpu_mib", peak as f64 / 1048576.0)
        .with_extra("trainable_parameters", tr.trainable)
        .with_extra("final_loss", last_loss as f64))
}

/// Reads a lengths file (one integer per line, `#` comments).
pub fn read_lengths(path: &Path) -> Result<Vec<usize>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading lengths file {}", path.display()))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n: usize = line
            .parse()
            .with_context(|| format!("{}:{}: expected a token count, got {line:?}", path.display(), i + 1))?;
        if n == 0 {
            bail!("{}:{}: a sentence has at least one token", path.display(), i + 1);
        }
        out.push(n);
    }
    if out.is_empty() {
        bail!("{}: no lengths", path.display());
    }
    Ok(out)
}

/// One epoch of the demo workload: the sentences of `lengths` in file order, `batch_size` at a
/// time, each batch padded to its longest rounded up to a multiple of `pad_multiple`; wall time
/// of the whole epoch after a three-step warm-up.
pub fn demo_epoch(
    gpu: &Arc<Gpu>,
    model_dir: &Path,
    lengths: &[usize],
    (batch_size, pad_multiple): (usize, usize),
    precision: WeightPrecision,
    peaks: Option<Peaks>,
) -> Result<Measurement> {
    let chunks: Vec<&[usize]> = lengths.chunks(batch_size.max(1)).collect();
    let mut tr = Trainer::with_precision(gpu, model_dir, None, 2 * chunks.len() as u32, precision)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let batches: Vec<(Inputs, Vec<u32>)> = chunks
        .iter()
        .map(|c| {
            let inp = random_inputs_padded(&mut rng, c, tr.cfg.vocab_size, pad_multiple);
            let labels = (0..c.len() as u32).map(|i| i % 2).collect();
            (inp, labels)
        })
        .collect();
    // Warm-up: a few steps (pipelines are compiled once; shapes only change parameters).
    for (inp, labels) in batches.iter().take(3) {
        tr.step(gpu, inp, labels)?;
    }
    tr.flush()?;
    // The epoch as `peft train` runs it: each step one command buffer, waited for.
    let t0 = Instant::now();
    for (inp, labels) in &batches {
        tr.step(gpu, inp, labels)?;
        tr.flush()?;
    }
    let epoch = t0.elapsed().as_secs_f64();
    // Again with the host recording step i+1 while the GPU runs step i.
    let t0 = Instant::now();
    for (inp, labels) in &batches {
        tr.step(gpu, inp, labels)?;
    }
    tr.flush()?;
    let pipelined = t0.elapsed().as_secs_f64();
    let real: usize = lengths.iter().sum();
    let padded: usize = batches.iter().map(|(inp, _)| inp.batch * inp.seq).sum();
    let flops: f64 = batches.iter().map(|(inp, _)| step_flops(&tr.cfg, inp.batch * inp.seq, inp.seq)).sum();
    let m = Measurement::new(
        "demo_epoch",
        if pad_multiple > 1 {
            format!("{} sentences, batch {batch_size}, padded to a multiple of {pad_multiple}", lengths.len())
        } else {
            format!("{} sentences, batch {batch_size}", lengths.len())
        },
        &format!(
            "{}x{}{}",
            tr.cfg.num_hidden_layers,
            tr.cfg.hidden_size,
            if precision == WeightPrecision::F16 { "-f16" } else { "" }
        ),
        &[epoch],
        Clock::Wall,
        flops,
        0.0,
    )
    .with_peaks(peaks);
    Ok(m.with_extra("steps", batches.len())
        .with_extra("mean_step_ms", epoch / batches.len() as f64 * 1e3)
        .with_extra("real_tokens_per_s", real as f64 / epoch)
        .with_extra("pipelined_epoch_s", pipelined)
        .with_extra("real_tokens", real)
        .with_extra("padded_tokens", padded))
}
