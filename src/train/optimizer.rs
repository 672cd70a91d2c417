//! AdamW with global-norm clipping and the linear schedule, every tensor's moments on the GPU.

use crate::gpu::{CommandRecorder, Gpu, GpuTensor};
use crate::kernels::optim::{self, AdamW, LinearSchedule};
use anyhow::Result;
use std::sync::Arc;

/// AdamW state of every trainable tensor.
pub struct Optimizer {
    opt: AdamW,
    schedule: LinearSchedule,
    clip: f32,
    pub(crate) moments: Vec<(GpuTensor, GpuTensor)>,
    ss: GpuTensor,
    scale: GpuTensor,
    pub(crate) step: u32,
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
        b.phase("optimizer");
        // The squared norm and the clip factor, then every tensor's update: a few multi-tensor
        // dispatches (bit-identical to one AdamW and one sum-of-squares dispatch per tensor).
        let scratch = GpuTensor::zeros(b.gpu(), &[optim::sum_of_squares_scratch_len(&grads).max(1)])?;
        optim::sum_of_squares_and_clip(b, &grads, &scratch, self.clip, &self.ss, &self.scale)?;
        let tensors: Vec<optim::AdamWTensor> = params
            .iter()
            .zip(&self.moments)
            .map(|((name, w, g), (m, v))| optim::AdamWTensor {
                param: w,
                grad: g,
                m,
                v,
                // As HF's Trainer: no weight decay for biases and LayerNorm weights (the adapters' own
                // `adapter_norm_before` / `adapter_norm_after`).
                decay: !name.ends_with("bias") && !name.contains(".adapter_norm_"),
            })
            .collect();
        optim::adamw_step_multi(b, &self.opt, self.step, lr, 1.0, Some(&self.scale), &tensors)?;
        Ok(lr)
    }

    /// `[1]`: the squared global gradient norm of the last recorded step (before clipping).
    pub fn sum_of_squares(&self) -> &GpuTensor {
        &self.ss
    }
}
