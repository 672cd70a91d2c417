//! The epoch loop shared by `peft train` and `peft fuse`: length-bucketed batches, AdamW with the
//! HF linear schedule and clipping, per-epoch dev accuracy / macro-F1, a checkpoint at every new
//! best dev accuracy, early stopping, `metrics.jsonl`, `training.png`, the resume state
//! (`trainer_state.safetensors`: every epoch, every `--save-steps`, on a stop) and clean stops
//! (Ctrl-C, `--stop-after-steps`). What it tells goes to a [`Reporter`].

use crate::formats::adapterhub::WeightsFormat;
use crate::gpu::{CommandRecorder, Gpu, GpuTensor, Readback};
use crate::kernels::elementwise;
use crate::model::adapters::ClassificationHead;
use crate::model::config::BertConfig;
use crate::model::encoder::{DropoutRates, Encoder, Inputs, PassDropout, Setup, Targets};
use crate::train::optimizer::Optimizer;
use crate::train::options::{LoopArgs, OptimizerArgs};
use crate::train::report::Reporter;
use crate::train::resume;
use anyhow::{anyhow, bail, Result};
use std::path::Path;
use std::sync::Arc;

mod epochs;
pub(crate) use epochs::run_loop_with;

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
    /// A resumed run continues after `steps` training steps (e.g. the fusion's temperature
    /// schedule, which advances once a training pass, catches up).
    fn resumed_after(&mut self, _steps: usize) {}
    /// Before each dev evaluation.
    fn before_eval(&mut self, _gpu: &Arc<Gpu>) -> Result<()> {
        Ok(())
    }
    /// Saves the weights into `out` (each file atomically); called right after the dev evaluation
    /// of a new best epoch.
    fn save(&mut self, gpu: &Arc<Gpu>, out: &Path, format: WeightsFormat, labels: &[String]) -> Result<()>;
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

/// One step: forward + backward on the batch (with `dropout`, a training pass's), extra loss
/// terms and AdamW, recorded into one command buffer (submitted per layer where weights stream or
/// activations are recomputed), then one read-back of the loss and the gradient norm.
pub fn train_step<T: Trainee>(
    gpu: &Arc<Gpu>,
    enc: &mut Encoder,
    trainee: &mut T,
    optimizer: &mut Optimizer,
    inputs: &Inputs,
    labels: &[u32],
    dropout: Option<PassDropout>,
) -> Result<StepOutput> {
    train_step_targets(gpu, enc, trainee, optimizer, inputs, Targets::Classes(labels), dropout)
}

/// [`train_step`] against any head kind's [`Targets`].
pub fn train_step_targets<T: Trainee>(
    gpu: &Arc<Gpu>,
    enc: &mut Encoder,
    trainee: &mut T,
    optimizer: &mut Optimizer,
    inputs: &Inputs,
    targets: Targets,
    dropout: Option<PassDropout>,
) -> Result<StepOutput> {
    submit_train_step(gpu, enc, trainee, optimizer, inputs, targets, dropout)?.wait()
}

/// [`train_step_targets`] up to its one read-back: the step is recorded and submitted (no read-back
/// happens before the loss), and the returned [`SubmittedStep`] waits for its numbers (natively
/// [`SubmittedStep::wait`]; the browser build awaits [`SubmittedStep::wait_async`]).
pub fn submit_train_step<T: Trainee>(
    gpu: &Arc<Gpu>,
    enc: &mut Encoder,
    trainee: &mut T,
    optimizer: &mut Optimizer,
    inputs: &Inputs,
    targets: Targets,
    dropout: Option<PassDropout>,
) -> Result<SubmittedStep> {
    trainee.before_train_pass();
    let mut b = gpu.batch();
    let rec = enc.record_targets(&mut b, &trainee.setup(), trainee.head(), inputs, Some(targets), true, dropout)?;
    let loss = rec.loss.ok_or_else(|| anyhow!("internal: no loss for a batch with labels"))?;
    finish_step(&mut b, trainee, optimizer, &[loss])
}

/// A submitted training step: the read-back of its losses, gradient norm and extra loss.
pub struct SubmittedStep {
    readback: Readback,
    /// How many loss tensors come first (their mean is the step's loss).
    losses: usize,
    lr: f32,
}

impl SubmittedStep {
    /// Waits for the step's numbers (blocking: native only).
    pub fn wait(self) -> Result<StepOutput> {
        let (losses, lr) = (self.losses, self.lr);
        Ok(Self::output(losses, lr, &self.readback.wait()?))
    }

    /// [`wait`](Self::wait) without blocking (the browser build).
    pub async fn wait_async(self) -> Result<StepOutput> {
        let (losses, lr) = (self.losses, self.lr);
        Ok(Self::output(losses, lr, &self.readback.wait_async().await?))
    }

    fn output(k: usize, lr: f32, values: &[Vec<f32>]) -> StepOutput {
        let loss = match &values[..k] {
            [one] => one[0],
            many => (many.iter().map(|v| v[0] as f64).sum::<f64>() / k as f64) as f32,
        };
        let extra_loss = values.get(k + 1).map_or(0.0, |v| v[0]);
        StepOutput { loss: loss + extra_loss, extra_loss, lr, grad_norm: values[k][0].sqrt() }
    }
}

/// The end of a step, once the gradients are in place: the extra loss terms, AdamW, and the
/// submit with one read-back of the `losses` (their mean is the step's loss), the gradient norm
/// and the extra loss.
fn finish_step<T: Trainee>(
    b: &mut CommandRecorder,
    trainee: &mut T,
    optimizer: &mut Optimizer,
    losses: &[GpuTensor],
) -> Result<SubmittedStep> {
    let extra = trainee.record_extra_loss(b)?;
    let params = trainee.params();
    let lr = optimizer.record_step(b, &params)?;
    let mut read: Vec<&GpuTensor> = losses.iter().collect();
    read.push(optimizer.sum_of_squares());
    read.extend(extra.as_ref());
    // Errors are checked by the wait, after its poll: a lost device is reported as lost then,
    // not as the first invalid-buffer error its loss caused.
    let readback = b.submit_with_readback(&read)?;
    Ok(SubmittedStep { readback, losses: losses.len(), lr })
}

/// One micro-batch of an accumulated step: its inputs, targets and training pass's dropout.
pub struct MicroBatch<'a> {
    pub inputs: &'a Inputs,
    pub targets: Targets<'a>,
    pub dropout: Option<PassDropout>,
}

/// One optimizer step over several micro-batches (`--gradient-accumulation`): forward + backward
/// on each (submitted one after the other, so only one micro-batch's activations live at a time),
/// their gradients summed, then scaled by 1/N into the gradient tensors, the extra loss terms
/// (once, as their gradient is the mean of N equal ones) and AdamW; the loss is the micro-batches'
/// mean (HF's accumulated `loss / N`). One micro-batch is [`train_step`] exactly.
pub fn train_step_accumulated<T: Trainee>(
    gpu: &Arc<Gpu>,
    enc: &mut Encoder,
    trainee: &mut T,
    optimizer: &mut Optimizer,
    micro: &[MicroBatch],
) -> Result<StepOutput> {
    submit_step_accumulated(gpu, enc, trainee, optimizer, micro)?.wait()
}

/// [`train_step_accumulated`] up to its one read-back (the epoch loop records the next step
/// while this one runs).
pub fn submit_step_accumulated<T: Trainee>(
    gpu: &Arc<Gpu>,
    enc: &mut Encoder,
    trainee: &mut T,
    optimizer: &mut Optimizer,
    micro: &[MicroBatch],
) -> Result<SubmittedStep> {
    match micro {
        [] => bail!("internal: an optimizer step over no batches"),
        [one] => return submit_train_step(gpu, enc, trainee, optimizer, one.inputs, one.targets, one.dropout),
        _ => {}
    }
    trainee.before_train_pass();
    let grads: Vec<GpuTensor> = trainee.params().iter().map(|p| p.2.clone()).collect();
    let mut b = gpu.batch();
    let mut sums: Vec<GpuTensor> = Vec::with_capacity(grads.len());
    let mut losses = Vec::with_capacity(micro.len());
    for (i, m) in micro.iter().enumerate() {
        let rec =
            enc.record_targets(&mut b, &trainee.setup(), trainee.head(), m.inputs, Some(m.targets), true, m.dropout)?;
        // Only the loss is kept: the rest of the pass's tensors go with `rec`.
        losses.push(rec.loss.ok_or_else(|| anyhow!("internal: no loss for a batch with labels"))?);
        b.phase("gradient accumulation");
        for (j, g) in grads.iter().enumerate() {
            let sum = GpuTensor::zeros(gpu, &g.shape)?;
            if i == 0 {
                elementwise::copy(&mut b, g, &sum)?;
                sums.push(sum);
            } else {
                elementwise::add(&mut b, &sums[j], g, &sum)?;
                sums[j] = sum;
            }
        }
        // This micro-batch's activations are freed once the GPU is done with them.
        b.finish()?;
    }
    let n = micro.len() as f32;
    for (sum, g) in sums.iter().zip(&grads) {
        elementwise::scale(&mut b, sum, 1.0 / n, g)?;
    }
    finish_step(&mut b, trainee, optimizer, &losses)
}

/// What the loop trains for and how (the options and the run's fixed facts).
pub(crate) struct LoopSetup<'a> {
    pub(crate) optimizer: &'a OptimizerArgs,
    pub(crate) run: &'a LoopArgs,
    pub(crate) out: &'a Path,
    /// The weight files each save writes.
    pub(crate) format: WeightsFormat,
    /// The `peft` command that runs it, for the messages ("train", "fuse").
    pub(crate) command: &'a str,
    /// What the checkpoints hold, for the last line ("adapter + head").
    pub(crate) saved_what: &'a str,
    pub(crate) trainable_parameters: usize,
    pub(crate) model_parameters: usize,
    /// The training steps' dropout rates; `None`: no dropout (`--no-dropout`).
    pub(crate) dropout: Option<DropoutRates>,
}

/// The dropout rates of a run (`None` with `--no-dropout`): the model's config.json and a new
/// head's (AdapterHub's `dropout_prob` None: `classifier_dropout`, else `hidden_dropout_prob`),
/// told to `rep`.
pub(crate) fn dropout_rates(cfg: &BertConfig, run: &LoopArgs, rep: &mut dyn Reporter) -> Result<Option<DropoutRates>> {
    if !run.dropout() {
        rep.message("dropout: off (--no-dropout)");
        return Ok(None);
    }
    let r = DropoutRates::from_config(cfg, None)?;
    rep.message(&format!(
        "dropout in training (config.json): hidden {}, attention probabilities {}, head {}",
        r.hidden.p, r.attention.p, r.head.p
    ));
    Ok(Some(r))
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
