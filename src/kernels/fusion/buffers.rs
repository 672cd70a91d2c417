//! Host weights of a fusion layer (AdapterHub's initialization, upload), zeroed gradients, the
//! tensors saved for backward, the backward scratch, and the softmax temperature schedule.

use super::{FusionHostWeights, FusionSaved, FusionScratch, FusionShape, FusionWeights};
use crate::gpu::{Gpu, GpuTensor};
use anyhow::Result;
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// The softmax temperature schedule. AdapterHub (`temperature: true`) starts at T = 50 and lowers
/// it by 0.05 after every forward pass down to 1; otherwise T = 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Temperature {
    current: f64,
    reduction: f64,
}

impl Temperature {
    /// T = 1 throughout.
    pub fn fixed() -> Self {
        Self { current: 1.0, reduction: 0.0 }
    }

    /// AdapterHub's annealing: 50, 49.95, ..., 1.
    pub fn annealed() -> Self {
        Self { current: 50.0, reduction: 50.0 / 1000.0 }
    }

    /// The configuration flag `temperature` as AdapterHub names it.
    pub fn from_config(temperature: bool) -> Self {
        if temperature {
            Self::annealed()
        } else {
            Self::fixed()
        }
    }

    /// The temperature of the next forward pass (without advancing).
    pub fn current(&self) -> f32 {
        self.current as f32
    }

    /// The temperature for this forward pass; advances the schedule (as AdapterHub's forward does).
    pub fn next_forward(&mut self) -> f32 {
        let t = self.current;
        self.current = (self.current - self.reduction).max(1.0);
        t as f32
    }
}

impl FusionHostWeights {
    /// AdapterHub's initialization: W_Q, W_K ~ N(0, 0.02), biases 0 (BERT init); with a value
    /// matrix (`value_initialized`), W_V = 1 on the diagonal and 1e-6 elsewhere.
    pub fn adapterhub_init<R: Rng>(d: usize, value: bool, rng: &mut R) -> Self {
        let normal = Normal::new(0.0f32, 0.02).expect("valid normal");
        let mut sample = |n: usize| -> Vec<f32> { (0..n).map(|_| normal.sample(rng)).collect() };
        let w_q = sample(d * d);
        let w_k = sample(d * d);
        let w_v = value.then(|| (0..d * d).map(|k| if k / d == k % d { 1.0 } else { 1e-6 }).collect());
        Self { w_q, b_q: vec![0.0; d], w_k, b_k: vec![0.0; d], w_v }
    }

    pub fn upload(&self, gpu: &Gpu) -> Result<FusionWeights> {
        let d = self.b_q.len();
        Ok(FusionWeights {
            w_q: GpuTensor::from_slice(gpu, &[d, d], &self.w_q)?,
            b_q: GpuTensor::from_slice(gpu, &[d], &self.b_q)?,
            w_k: GpuTensor::from_slice(gpu, &[d, d], &self.w_k)?,
            b_k: GpuTensor::from_slice(gpu, &[d], &self.b_k)?,
            w_v: self.w_v.as_ref().map(|v| GpuTensor::from_slice(gpu, &[d, d], v)).transpose()?,
        })
    }
}

impl FusionWeights {
    /// Zeroed tensors of the right shapes (for gradients).
    pub fn zeros(gpu: &Gpu, shape: &FusionShape) -> Result<Self> {
        let d = shape.d;
        Ok(Self {
            w_q: GpuTensor::zeros(gpu, &[d, d])?,
            b_q: GpuTensor::zeros(gpu, &[d])?,
            w_k: GpuTensor::zeros(gpu, &[d, d])?,
            b_k: GpuTensor::zeros(gpu, &[d])?,
            w_v: if shape.value { Some(GpuTensor::zeros(gpu, &[d, d])?) } else { None },
        })
    }
}

impl FusionSaved {
    pub fn new(gpu: &Gpu, shape: &FusionShape, tokens: usize) -> Result<Self> {
        let d = shape.d;
        Ok(Self {
            q: GpuTensor::zeros(gpu, &[tokens, d])?,
            qt: GpuTensor::zeros(gpu, &[tokens, d])?,
            p: GpuTensor::zeros(gpu, &[tokens, shape.n])?,
            mix: GpuTensor::zeros(gpu, &[tokens, d])?,
        })
    }
}

impl FusionScratch {
    pub fn new(gpu: &Gpu, shape: &FusionShape, tokens: usize) -> Result<Self> {
        let d = shape.d;
        Ok(Self {
            du: GpuTensor::zeros(gpu, &[tokens, d])?,
            dqt: GpuTensor::zeros(gpu, &[tokens, d])?,
            dq: GpuTensor::zeros(gpu, &[tokens, d])?,
        })
    }
}
