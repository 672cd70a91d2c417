//! `shaders/optim.wgsl`: the optimizer on the GPU — [`adamw_step`] (torch.optim.AdamW),
//! [`sum_of_squares`] and [`clip_factor`] (torch.nn.utils.clip_grad_norm_ without a host round
//! trip), and the host-side [`LinearSchedule`] (HF `get_linear_schedule_with_warmup`).
//!
//! One training step with clipping, all queued in one batch:
//!
//! ```ignore
//! sum_of_squares(&mut batch, &grads, &ss)?;          // ss[0] = Σ g² over every gradient
//! clip_factor(&mut batch, &ss, max_norm, &factor)?;  // factor[0] = min(1, max_norm / (‖g‖ + 1e-6))
//! for each trainable tensor i {
//!     adamw_step(&mut batch, &opt, t, schedule.lr_at(t - 1), 1.0, Some(&factor), decay[i],
//!                &param[i], &grad[i], &m[i], &v[i])?;
//! }
//! batch.submit();
//! // every N steps: grad_norm(&gpu, &ss)? for the log and a NaN/Inf check
//! ```

use super::elementwise::check_no_alias;
use crate::gpu::{Access, CommandRecorder, Gpu, GpuTensor, KernelSpec};
use crate::shaders;
use anyhow::{anyhow, bail, Result};

mod multi;
#[cfg(any(test, feature = "reference"))]
pub mod reference;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_f64;
#[cfg(test)]
mod tests_multi;

#[cfg(test)]
pub(crate) use multi::multi_tensor_specs;
pub use multi::{adamw_step_multi, multi_tensor_supported, sum_of_squares_and_clip, AdamWTensor};

const R: Access = Access::Read;
const W: Access = Access::ReadWrite;

const ADAMW: KernelSpec = KernelSpec { shader: &shaders::OPTIM, entry: "adamw", bindings: &[W, R, W, W, R] };
const SUMSQ_PARTIAL: KernelSpec = KernelSpec { shader: &shaders::OPTIM, entry: "sumsq_partial", bindings: &[R, W] };
const SUMSQ_FINAL: KernelSpec = KernelSpec { shader: &shaders::OPTIM, entry: "sumsq_final", bindings: &[R, W] };
const CLIP_FACTOR: KernelSpec = KernelSpec { shader: &shaders::OPTIM, entry: "clip_factor", bindings: &[R, W] };

/// Threads per workgroup (`WG` in the shader).
const WG: u32 = 256;
/// Elements summed by one `sumsq_partial` workgroup (`CHUNK` in the shader).
const CHUNK: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    use_scale: u32,
    off: u32,
    _p0: u32,
    grad_scale: f32,
    decay_mul: f32,
    one_minus_b1: f32,
    beta2: f32,
    one_minus_b2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    max_norm: f32,
    _p1: [f32; 3],
}

/// Every kernel of this module with the size of its parameter block (`kernels/bindings.rs` checks
/// them against the WGSL).
#[cfg(test)]
pub(crate) fn specs() -> Vec<(KernelSpec, usize)> {
    let p = std::mem::size_of::<Params>();
    let mut v = vec![(ADAMW, p), (SUMSQ_PARTIAL, p), (SUMSQ_FINAL, p), (CLIP_FACTOR, p)];
    v.extend(multi::specs());
    v
}

/// AdamW hyper-parameters (torch.optim.AdamW's; `Default` is PyTorch / HF Trainer's betas, eps and
/// weight decay with AdapterHub's usual lr 1e-4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Base learning rate (the schedule's peak); each step's lr is an argument of [`adamw_step`].
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay, applied as `p *= 1 - lr·weight_decay` to tensors stepped with
    /// `decay = true`.
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        Self { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// The f64 a Python user meant by an f32 hyper-parameter: the decimal the f32 prints as (its
/// shortest round-trip form). `0.999f32` is 0.99900001287…, and `1 - β₂` from it differs from
/// torch's (a Python float) by 1.3e-5 relative; through the decimal the step's scalars are
/// torch's to f32 rounding.
fn decimal(x: f32) -> f64 {
    x.to_string().parse().expect("an f32 prints as a valid f64")
}

fn count(what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| anyhow!("{what}: {n} elements exceed u32 indexing"))
}

impl AdamW {
    /// Fails on values torch.optim.AdamW rejects (and non-finite ones).
    pub fn validate(&self) -> Result<()> {
        let ok = |x: f32| x.is_finite();
        if !ok(self.lr) || self.lr < 0.0 {
            bail!("AdamW: invalid learning rate {}", self.lr);
        }
        if !ok(self.beta1) || !(0.0..1.0).contains(&self.beta1) {
            bail!("AdamW: invalid beta1 {} (needs 0 ≤ beta1 < 1)", self.beta1);
        }
        if !ok(self.beta2) || !(0.0..1.0).contains(&self.beta2) {
            bail!("AdamW: invalid beta2 {} (needs 0 ≤ beta2 < 1)", self.beta2);
        }
        if !ok(self.eps) || self.eps < 0.0 {
            bail!("AdamW: invalid eps {}", self.eps);
        }
        if !ok(self.weight_decay) || self.weight_decay < 0.0 {
            bail!("AdamW: invalid weight decay {}", self.weight_decay);
        }
        Ok(())
    }
}

/// The f32 scalars of one AdamW step that the kernels take (folded on the host in f64).
#[derive(Clone, Copy)]
struct StepScalars {
    decay_mul: f32,
    one_minus_b1: f32,
    beta2: f32,
    one_minus_b2: f32,
    step_size: f32,
    bc2_sqrt: f32,
}

impl StepScalars {
    fn new(opt: &AdamW, step: u32, lr: f32, decay: bool) -> Self {
        let (b1, b2, lr64) = (decimal(opt.beta1), decimal(opt.beta2), decimal(lr));
        let t = step as i32;
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        let decay_mul = if decay && opt.weight_decay != 0.0 { 1.0 - lr64 * decimal(opt.weight_decay) } else { 1.0 };
        Self {
            decay_mul: decay_mul as f32,
            one_minus_b1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_b2: (1.0 - b2) as f32,
            step_size: (lr64 / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
        }
    }
}

/// Checks the step's arguments common to [`adamw_step`] and [`adamw_step_multi`].
fn check_step(what: &str, opt: &AdamW, step: u32, lr: f32, grad_scale: f32, scale_t: Option<&GpuTensor>) -> Result<()> {
    opt.validate()?;
    if step == 0 {
        bail!("{what}: step counts from 1 (bias correction divides by 1 - beta^step)");
    }
    if !lr.is_finite() || lr < 0.0 {
        bail!("{what}: invalid learning rate {lr}");
    }
    if !grad_scale.is_finite() {
        bail!("{what}: non-finite grad_scale {grad_scale}");
    }
    if let Some(s) = scale_t {
        if s.numel() == 0 {
            bail!("{what}: the gradient-scale tensor is empty");
        }
    }
    Ok(())
}

/// One torch.optim.AdamW step of one tensor, in one dispatch:
///
/// ```text
/// g = grad · grad_scale (· grad_scale_tensor[0] when given)
/// p -= lr · weight_decay · p                       (when `decay`)
/// m = β₁ m + (1 − β₁) g ;  v = β₂ v + (1 − β₂) g²
/// p -= lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + eps)
/// ```
///
/// `step` is the 1-based step count t (bias correction), `lr` this step's scheduled learning
/// rate (`opt.lr` is not used here), `grad_scale` a multiplier on the gradient (1.0 for none) and
/// `grad_scale_tensor` an optional `[1]`-or-larger GPU tensor whose element 0 multiplies it too
/// (the [`clip_factor`] output: clipping without a host round trip). `decay`: apply weight decay
/// to this tensor (HF excludes biases and LayerNorm weights). `param`, `m` (exp_avg) and `v`
/// (exp_avg_sq, both zero before step 1) are updated in place; `grad` is only read. All four have
/// the same shape and distinct buffers.
pub fn adamw_step(
    batch: &mut CommandRecorder,
    opt: &AdamW,
    step: u32,
    lr: f32,
    grad_scale: f32,
    grad_scale_tensor: Option<&GpuTensor>,
    decay: bool,
    param: &GpuTensor,
    grad: &GpuTensor,
    m: &GpuTensor,
    v: &GpuTensor,
) -> Result<()> {
    check_step("adamw_step", opt, step, lr, grad_scale, grad_scale_tensor)?;
    for (what, t) in [("grad", grad), ("m", m), ("v", v)] {
        if t.shape != param.shape {
            bail!("adamw_step: {what} has shape {:?}, the parameter {:?}", t.shape, param.shape);
        }
    }
    check_no_alias("adamw_step", &[param, m, v], &[Some(grad), grad_scale_tensor])?;
    let n = count("adamw_step", param.numel())?;

    let scalars = StepScalars::new(opt, step, lr, decay);
    let params = Params {
        n,
        use_scale: grad_scale_tensor.is_some() as u32,
        grad_scale,
        decay_mul: scalars.decay_mul,
        one_minus_b1: scalars.one_minus_b1,
        beta2: scalars.beta2,
        one_minus_b2: scalars.one_minus_b2,
        step_size: scalars.step_size,
        bc2_sqrt: scalars.bc2_sqrt,
        eps: opt.eps,
        ..Default::default()
    };
    batch.dispatch(
        &ADAMW,
        &[],
        &params,
        &[Some(param), Some(grad), Some(m), Some(v), grad_scale_tensor],
        [n.div_ceil(WG), 1, 1],
    );
    Ok(())
}

/// Scratch values [`sum_of_squares_with_scratch`] needs for `tensors`: one per 4096 elements of
/// each tensor.
pub fn sum_of_squares_scratch_len(tensors: &[&GpuTensor]) -> usize {
    tensors.iter().map(|t| t.numel().div_ceil(CHUNK)).sum()
}

/// `out[0] = Σ_tensors Σ_i t[i]²` (the squared global L2 norm of the gradients), deterministic:
/// one dispatch per tensor writes fixed-order partial sums, one more adds them in order. Allocates
/// its scratch buffer; a trainer that calls it every step can keep one and use
/// [`sum_of_squares_with_scratch`].
pub fn sum_of_squares(batch: &mut CommandRecorder, tensors: &[&GpuTensor], out: &GpuTensor) -> Result<()> {
    let len = sum_of_squares_scratch_len(tensors);
    let scratch = GpuTensor::zeros(batch.gpu(), &[len.max(1)])?;
    sum_of_squares_with_scratch(batch, tensors, &scratch, out)
}

/// [`sum_of_squares`] with a caller's `scratch` of at least
/// [`sum_of_squares_scratch_len`]`(tensors)` values (contents overwritten). `out` and `scratch`
/// are distinct from every input and from each other.
pub fn sum_of_squares_with_scratch(
    batch: &mut CommandRecorder,
    tensors: &[&GpuTensor],
    scratch: &GpuTensor,
    out: &GpuTensor,
) -> Result<()> {
    let len = sum_of_squares_scratch_len(tensors);
    if scratch.numel() < len {
        bail!("sum_of_squares: scratch has {} values, {len} needed", scratch.numel());
    }
    if out.numel() == 0 {
        bail!("sum_of_squares: the output tensor is empty (needs [1])");
    }
    let inputs: Vec<Option<&GpuTensor>> = tensors.iter().map(|&t| Some(t)).collect();
    check_no_alias("sum_of_squares", &[out, scratch], &inputs)?;
    let mut off = 0u32;
    for t in tensors {
        let n = count("sum_of_squares", t.numel())?;
        let chunks = t.numel().div_ceil(CHUNK) as u32;
        batch.dispatch(
            &SUMSQ_PARTIAL,
            &[],
            &Params { n, off, ..Default::default() },
            &[Some(t), Some(scratch)],
            [chunks, 1, 1],
        );
        off += chunks;
    }
    batch.dispatch(&SUMSQ_FINAL, &[], &Params { n: off, ..Default::default() }, &[Some(scratch), Some(out)], [1, 1, 1]);
    Ok(())
}

/// `out[0] = min(1, max_norm / (√ss[0] + 1e-6))`, torch.nn.utils.clip_grad_norm_'s clipping
/// coefficient from the squared norm `ss` of [`sum_of_squares`], computed on the GPU so
/// [`adamw_step`] can take it as `grad_scale_tensor`. A non-finite `ss` gives NaN (as in torch,
/// where a non-finite gradient makes the clipped gradients NaN): check [`grad_norm`] on the host.
pub fn clip_factor(batch: &mut CommandRecorder, ss: &GpuTensor, max_norm: f32, out: &GpuTensor) -> Result<()> {
    if !max_norm.is_finite() || max_norm <= 0.0 {
        bail!("clip_factor: max_norm must be positive and finite, got {max_norm} (skip clipping instead)");
    }
    if ss.numel() == 0 || out.numel() == 0 {
        bail!("clip_factor: ss {:?} and out {:?} need at least one element", ss.shape, out.shape);
    }
    check_no_alias("clip_factor", &[out], &[Some(ss)])?;
    batch.dispatch(&CLIP_FACTOR, &[], &Params { max_norm, ..Default::default() }, &[Some(ss), Some(out)], [1, 1, 1]);
    Ok(())
}

/// The global gradient norm √ss[0] from the [`sum_of_squares`] output, read back (waits for the
/// GPU): for the log, and to stop on NaN/Inf (`!grad_norm(..)?.is_finite()`).
pub fn grad_norm(gpu: &Gpu, ss: &GpuTensor) -> Result<f32> {
    let v = ss.to_vec(gpu)?;
    let s = *v.first().ok_or_else(|| anyhow!("grad_norm: empty sum-of-squares tensor"))?;
    Ok(s.sqrt())
}

/// HF `get_linear_schedule_with_warmup`: linear warmup from 0 to `base_lr` over `warmup_steps`,
/// then linear decay to 0 at `total_steps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearSchedule {
    pub base_lr: f32,
    pub warmup_steps: u32,
    pub total_steps: u32,
}

impl LinearSchedule {
    /// The learning rate after `step` scheduler steps (HF's `lr_lambda(step) · base_lr`). As in
    /// the HF Trainer, optimizer step t (1-based, [`adamw_step`]'s `step`) uses `lr_at(t - 1)`:
    /// with warmup the first step's lr is 0.
    pub fn lr_at(&self, step: u32) -> f32 {
        let (s, w, t) = (step as f64, self.warmup_steps as f64, self.total_steps as f64);
        let factor = if step < self.warmup_steps { s / w.max(1.0) } else { ((t - s) / (t - w).max(1.0)).max(0.0) };
        (decimal(self.base_lr) * factor) as f32
    }
}
