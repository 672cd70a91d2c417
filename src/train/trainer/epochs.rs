//! The epoch loop itself: one [`Run`] holds everything a step and an epoch's end change.

use super::{submit_step_accumulated, LoopControl, LoopSetup, MicroBatch, SubmittedStep, Trainee};
use crate::gpu::Gpu;
use crate::kernels::optim::{AdamW, LinearSchedule};
use crate::model::encoder::{Encoder, PassDropout};
use crate::train::metrics::{self, MetricsLog, TrainingCurves};
use crate::train::optimizer::Optimizer;
use crate::train::options::BatchOrder;
use crate::train::report::{Reporter, StepReport};
use crate::train::resume::{self, Progress};
use crate::train::task::TaskData;
use crate::train::{data, infer, TrainSummary};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// What the loop does after a step or an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Stopped (Ctrl-C, `--stop-after-steps`): the state is saved, the run can resume.
    Stop,
    /// Early stopping: the run is done.
    Done,
}

/// A training run in progress.
struct Run<'a, T: Trainee> {
    gpu: &'a Arc<Gpu>,
    enc: &'a mut Encoder,
    trainee: &'a mut T,
    task: &'a TaskData,
    /// How training batches are padded (`--pad-to-multiple-of`, else the device policy's); its
    /// token also pads the dev batches.
    padding: data::Padding,
    a: &'a LoopSetup<'a>,
    ctl: &'a LoopControl,
    rep: &'a mut dyn Reporter,
    optimizer: Optimizer,
    log: MetricsLog,
    curves: TrainingCurves,
    summary: TrainSummary,
    total: usize,
    real_tokens: usize,
    train_secs: f64,
    since_best: usize,
    /// The step of the last state file on disk, for the messages of a failed step.
    saved_step: Option<usize>,
    /// Whether the next step is recorded while the last one runs: with the buffer pool on and no
    /// memory budget. Under a budget the pool reuses exact sizes only, so a next step of another
    /// length allocates while the running one still holds its buffers (and buffers the pool trims
    /// meanwhile are destroyed only once the GPU is done): two working sets at once, which the
    /// budget was not planned for.
    pipelined: bool,
    /// The step submitted and not yet read back.
    in_flight: Option<InFlight>,
    /// Where the training time since the last read-back started (`None` between epochs).
    mark: Option<Instant>,
}

/// A step submitted to the GPU whose numbers are not read back yet.
struct InFlight {
    submitted: SubmittedStep,
    epoch: usize,
    step: usize,
    real_tokens: usize,
}

/// The epoch loop of `peft train` and `peft fuse`, also saving `trainer_state.safetensors` (every
/// epoch, every `save_steps`, on a stop when `ctl` has settings), resuming from it, and stopping
/// cleanly on Ctrl-C / `stop_after_steps`.
pub(crate) fn run_loop_with<T: Trainee>(
    gpu: &Arc<Gpu>,
    enc: &mut Encoder,
    trainee: &mut T,
    task: &TaskData,
    pad: u32,
    a: &LoopSetup,
    ctl: &LoopControl,
    rep: &mut dyn Reporter,
) -> Result<TrainSummary> {
    let accumulate = a.optimizer.gradient_accumulation;
    if accumulate == 0 {
        bail!("--gradient-accumulation must be at least 1");
    }
    // Optimizer steps: per epoch one per `accumulate` batches, the last group possibly shorter.
    let total = task.train.tokens.len().div_ceil(a.run.batch_size).div_ceil(accumulate) * a.run.epochs;
    let o = a.optimizer;
    let schedule = LinearSchedule {
        base_lr: o.lr,
        warmup_steps: (total as f64 * o.warmup_ratio).round() as u32,
        total_steps: total as u32,
    };
    let opt = AdamW { lr: o.lr, weight_decay: o.weight_decay, ..AdamW::default() };
    let mut optimizer = Optimizer::new(gpu, &trainee.params(), opt, schedule, o.max_grad_norm)?;
    // Resuming: the saved weights, moments, step and counters (checked against this run first).
    let p = if ctl.run.resume { restore(gpu, trainee, &mut optimizer, a, ctl, total, rep)? } else { Progress::new() };
    std::fs::create_dir_all(a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let metrics_path = a.out.join("metrics.jsonl");
    let log = if ctl.run.resume {
        MetricsLog::reopen(&metrics_path, p.metrics_bytes)?
    } else {
        MetricsLog::create(&metrics_path)?
    };
    let mut run = Run::new(gpu, enc, trainee, task, pad, a, ctl, rep, optimizer, log, &p, total);
    if run.padding.multiple > 1 {
        let from = if a.run.pad_to_multiple_of.is_some() { "--pad-to-multiple-of" } else { "the device's default" };
        run.rep.message(&format!("batches padded to a multiple of {} tokens ({from})", run.padding.multiple));
    }
    run.rep.start(total, p.step);
    let lengths: Vec<usize> = task.train.tokens.iter().map(|t| t.len()).collect();
    let mut stopped = false;
    'epochs: for epoch in p.epoch..=a.run.epochs {
        run.rep.epoch(epoch, a.run.epochs);
        let seed = a.run.seed.wrapping_add(epoch as u64);
        let batches = match a.run.batch_order {
            BatchOrder::Bucketed => data::make_batches(&lengths, a.run.batch_size, seed, true),
            BatchOrder::File => data::batches_in_order(lengths.len(), a.run.batch_size),
        };
        // One optimizer step per group of `accumulate` batches; `bi`: the group's first batch.
        for (gi, group) in batches.chunks(accumulate).enumerate() {
            let bi = gi * accumulate;
            if epoch == p.epoch && bi < p.batch {
                continue; // done before the run was stopped
            }
            if run.step(epoch, bi, group)? == Flow::Stop {
                stopped = true;
                break 'epochs;
            }
        }
        match run.end_epoch(epoch)? {
            Flow::Continue => {}
            Flow::Stop => {
                stopped = true;
                break;
            }
            Flow::Done => break,
        }
    }
    run.rep.finish();
    run.finish(stopped)
}

/// Restores the saved state into the trainee's tensors and the optimizer; the saved counters.
fn restore<T: Trainee>(
    gpu: &Gpu,
    trainee: &mut T,
    optimizer: &mut Optimizer,
    a: &LoopSetup,
    ctl: &LoopControl,
    total: usize,
    rep: &mut dyn Reporter,
) -> Result<Progress> {
    let saved = resume::load(a.out)?;
    if saved.progress.finished {
        bail!(
            "{}: this training run already finished ({} steps); there is nothing to resume",
            a.out.display(),
            saved.progress.step
        );
    }
    saved.restore(gpu, &ctl.fingerprint, &trainee.params(), optimizer)?;
    let p = saved.progress;
    trainee.resumed_after(p.step);
    rep.message(&format!(
        "resuming at step {} of {total} (epoch {}, batch {}) from {}",
        p.step,
        p.epoch,
        p.batch + 1,
        saved.path.display()
    ));
    Ok(p)
}

impl<'a, T: Trainee> Run<'a, T> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        gpu: &'a Arc<Gpu>,
        enc: &'a mut Encoder,
        trainee: &'a mut T,
        task: &'a TaskData,
        pad: u32,
        a: &'a LoopSetup<'a>,
        ctl: &'a LoopControl,
        rep: &'a mut dyn Reporter,
        optimizer: Optimizer,
        log: MetricsLog,
        p: &Progress,
        total: usize,
    ) -> Self {
        let numbered = |v: &[f64]| -> Vec<(usize, f64)> { v.iter().enumerate().map(|(i, &x)| (i + 1, x)).collect() };
        let curves = TrainingCurves {
            loss: p.train_losses.iter().enumerate().map(|(i, &l)| (i + 1, l as f64)).collect(),
            dev_accuracy: numbered(&p.dev_accuracy),
            dev_macro_f1: numbered(&p.dev_macro_f1),
        };
        let summary = TrainSummary {
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
            stopped: false,
        };
        let padding = data::Padding {
            id: pad,
            multiple: a.run.pad_to_multiple_of.unwrap_or(gpu.policy().seq_multiple),
            // Never past the longest example: the memory plan is made for it.
            cap: task.largest_batch(a.run.batch_size).1.min(enc.dims.max_positions),
        };
        Self {
            gpu,
            enc,
            trainee,
            task,
            padding,
            a,
            ctl,
            rep,
            optimizer,
            log,
            curves,
            summary,
            total,
            real_tokens: p.real_tokens,
            train_secs: p.train_secs,
            since_best: p.since_best,
            saved_step: ctl.run.resume.then_some(p.step),
            pipelined: gpu.policy().buffer_pool && gpu.pool_stats().budget.is_none(),
            in_flight: None,
            mark: None,
        }
    }

    fn tokens_per_second(&self) -> f64 {
        self.real_tokens as f64 / self.train_secs.max(1e-9)
    }

    /// One optimizer step on the batches `group` (the first is batch `bi` of `epoch`; more than
    /// one with `--gradient-accumulation`): recorded and submitted, then the step before it (still
    /// in flight) read back and logged, so the host records step i+1 while the GPU runs step i.
    /// A step after which the state is saved (`save_steps`, a stop) is read back at once.
    fn step(&mut self, epoch: usize, bi: usize, group: &[Vec<usize>]) -> Result<Flow> {
        let (gpu, task, a) = (self.gpu, self.task, self.a);
        let step = self.summary.steps + usize::from(self.in_flight.is_some()) + 1;
        if self.ctl.run.fault.is_some_and(|f| f.step() == step) {
            // A fault injected before this step must not hit the one still in flight.
            self.flush()?;
        }
        self.mark.get_or_insert_with(Instant::now);
        let saved_step = self.saved_step;
        let failed = || resume::failed_at(a.command, step, a.out, saved_step);
        resume::inject(gpu, self.ctl.run.fault, step, &self.trainee.params())?;
        let batches: Vec<data::Batch> = group
            .iter()
            .map(|idx| data::Batch::with_targets(&task.train.tokens, &task.train.targets, idx, self.padding))
            .collect();
        let inputs: Vec<_> = batches.iter().map(|b| b.inputs()).collect();
        let n = a.optimizer.gradient_accumulation;
        let mut micro = Vec::with_capacity(batches.len());
        for (i, (b, inputs)) in batches.iter().zip(&inputs).enumerate() {
            // Keyed by the pass: (optimizer step − 1) · N + i + 1, the optimizer step itself without
            // accumulation; a resumed run draws the masks the uninterrupted one would.
            let pass = u32::try_from((step - 1) * n + i + 1)?;
            let dropout = a.dropout.map(|rates| PassDropout { rates, seed: a.run.seed, step: pass });
            let targets =
                b.targets.as_ref().map(|t| t.as_targets()).context("internal: a training batch without targets")?;
            micro.push(MicroBatch { inputs, targets, dropout });
        }
        let before = gpu.counters();
        let submitted =
            submit_step_accumulated(gpu, self.enc, self.trainee, &mut self.optimizer, &micro).with_context(failed)?;
        let created = gpu.counters() - before;
        log::debug!(
            "step {step} ({} x {}): {} buffers and {} bind groups created",
            batches[0].batch,
            batches[0].seq,
            created.buffers,
            created.bind_groups
        );
        let real_tokens: usize = batches.iter().map(|b| b.real_tokens()).sum();
        let this = InFlight { submitted, epoch, step, real_tokens };
        if let Some(previous) = self.in_flight.replace(this) {
            self.complete(previous)?;
        }
        if !self.pipelined || self.summary.steps == 0 {
            // The first step completes alone (its peak is one step's: "step 1: measured peak").
            self.flush()?;
        }
        let stop = resume::stop_requested() || self.ctl.run.stop_after_steps == Some(step);
        let every = self.ctl.run.save_steps.is_some_and(|n| n > 0 && step % n == 0);
        if stop || every {
            self.flush()?;
            self.save_state(epoch, bi + group.len(), false)?;
        }
        Ok(if stop { Flow::Stop } else { Flow::Continue })
    }

    /// Reads back the step in flight, if any (before an evaluation, a saved state, the end); the
    /// time until the next step starts is not training time.
    fn flush(&mut self) -> Result<()> {
        if let Some(f) = self.in_flight.take() {
            self.complete(f)?;
        }
        self.mark = None;
        Ok(())
    }

    /// A submitted step's numbers: waited for, checked, counted, logged and reported.
    fn complete(&mut self, f: InFlight) -> Result<()> {
        let (gpu, a) = (self.gpu, self.a);
        let step = f.step;
        let saved_step = self.saved_step;
        let failed = || resume::failed_at(a.command, step, a.out, saved_step);
        let s = f.submitted.wait().with_context(failed)?;
        gpu.check().with_context(failed)?;
        let (loss, lr, norm) = (s.loss, s.lr, s.grad_norm);
        if !loss.is_finite() || !norm.is_finite() {
            bail!(
                "step {step}: loss {loss} / gradient norm {norm} is not finite (a learning rate too high? try a \
                 smaller --lr); {}",
                failed()
            );
        }
        let now = Instant::now();
        if let Some(mark) = self.mark.replace(now) {
            self.train_secs += now.duration_since(mark).as_secs_f64();
        }
        self.real_tokens += f.real_tokens;
        self.summary.steps += 1;
        if self.summary.steps == 1 {
            let peak = gpu.memory.peak() as f64 / 1048576.0;
            self.rep.message(&format!("step 1: measured peak GPU memory {peak:.1} MiB (the project's buffers)"));
        }
        self.summary.train_losses.push(loss);
        self.curves.loss.push((self.summary.steps, loss as f64));
        let tps = self.tokens_per_second();
        let mut record = json!({"step": self.summary.steps, "epoch": f.epoch, "loss": loss, "lr": lr, "grad_norm": norm,
            "tokens": f.real_tokens, "tokens_per_second": tps});
        if s.extra_loss != 0.0 {
            record["regularization_loss"] = json!(s.extra_loss);
        }
        self.log.log(&record)?;
        self.rep.step(&StepReport {
            step: self.summary.steps,
            total: self.total,
            loss,
            lr,
            tokens_per_second: tps,
            train_secs: self.train_secs,
        });
        Ok(())
    }

    /// Writes the resume state (when the run has one), continuing at `epoch` / `batch`.
    fn save_state(&mut self, epoch: usize, batch: usize, finished: bool) -> Result<()> {
        let Some(settings) = &self.ctl.settings else {
            return Ok(());
        };
        let snap = Progress::snapshot(
            &self.summary,
            epoch,
            batch,
            finished,
            self.since_best,
            self.real_tokens,
            self.train_secs,
            self.log.bytes_written()?,
        );
        let params = self.trainee.params();
        resume::save(self.gpu, self.a.out, settings, &snap, &self.ctl.fingerprint, &params, &self.optimizer)?;
        self.saved_step = Some(self.summary.steps);
        Ok(())
    }

    /// Dev evaluation, the checkpoint of a new best epoch, the state, early stopping.
    fn end_epoch(&mut self, epoch: usize) -> Result<Flow> {
        let (gpu, task, a) = (self.gpu, self.task, self.a);
        self.flush()?;
        self.trainee.before_eval(gpu)?;
        let scores = {
            let (setup, head) = (self.trainee.setup(), self.trainee.head());
            infer::evaluate_prepared(self.enc, &setup, head, &task.dev, self.padding.id, a.run.batch_size)?
        };
        self.summary.dev_accuracy.push(scores.accuracy);
        self.summary.dev_macro_f1.push(scores.macro_f1);
        self.curves.dev_accuracy.push((epoch, scores.accuracy));
        self.curves.dev_macro_f1.push((epoch, scores.macro_f1));
        self.log.log(&json!({"epoch": epoch, "dev_accuracy": scores.accuracy, "dev_macro_f1": scores.macro_f1, "dev_n": task.dev.targets.len()}))?;
        let better = scores.accuracy > self.summary.best_accuracy;
        self.rep.message(&format!(
            "epoch {epoch}: dev {}, {:.0} train tokens/s{}",
            scores.summary(),
            self.tokens_per_second(),
            if better { " (best; saved)" } else { "" }
        ));
        if better {
            self.summary.best_accuracy = scores.accuracy;
            self.summary.best_epoch = epoch;
            self.since_best = 0;
            self.trainee.save(gpu, a.out, a.format, &task.labels.labels)?;
        } else {
            self.since_best += 1;
        }
        let early = !better && a.run.patience.is_some_and(|p| self.since_best >= p);
        self.save_state(epoch + 1, 0, early || epoch == a.run.epochs)?;
        if early {
            let n = self.since_best;
            let what = scores.primary_name();
            self.rep.message(&format!("early stopping: no better dev {what} for {n} epoch(s)"));
            return Ok(Flow::Done);
        }
        if resume::stop_requested() && epoch < a.run.epochs {
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    /// The training plot and the last lines.
    fn finish(mut self, stopped: bool) -> Result<TrainSummary> {
        self.flush()?;
        let a = self.a;
        self.summary.tokens_per_second = self.tokens_per_second();
        metrics::plot_training(a.out.join("training.png"), &self.curves)?;
        let total = self.total;
        if stopped {
            self.summary.stopped = true;
            let why = if resume::stop_requested() { "interrupted" } else { "stopped (--stop-after-steps)" };
            self.rep.note(&match self.saved_step.filter(|_| self.ctl.settings.is_some()) {
                Some(s) => format!(
                    "{why} at step {s} of {total}: state saved to {}; continue with `peft {} --resume {}`",
                    a.out.join(resume::STATE_FILE).display(),
                    a.command,
                    a.out.display()
                ),
                None => format!("{why} at step {} of {total}; this run cannot be resumed", self.summary.steps),
            });
            return Ok(self.summary);
        }
        let summary = &self.summary;
        let what = metrics::primary_metric(self.trainee.head().kind());
        self.rep.message(&format!(
            "best dev {what} {:.4} (epoch {}); {:.0} real tokens/s over {} steps; {} saved to {}",
            summary.best_accuracy,
            summary.best_epoch,
            summary.tokens_per_second,
            summary.steps,
            a.saved_what,
            a.out.display()
        ));
        Ok(self.summary)
    }
}
