//! Multi-tensor AdamW and gradient norm (`adamw_multi`, `sumsq_multi`, `sumsq_final_clip` in
//! `shaders/optim.wgsl`): the optimizer step of many tensors in a few dispatches instead of two per
//! tensor. The tensors stay separate buffers, bound side by side (8 AdamW quadruples or 16
//! gradients a dispatch); a table in the parameter block maps each workgroup to its tensor. Every
//! element goes through the per-tensor kernels' expressions and every partial sum lands in the same
//! scratch slot, so the results are bit-identical to [`adamw_step`](super::adamw_step) per tensor
//! and [`sum_of_squares`](super::sum_of_squares) + [`clip_factor`](super::clip_factor). Devices
//! with fewer than 33 storage buffers per shader stage (WebGPU's default limits allow 8) run those
//! per-tensor kernels instead: the device policy decides once
//! (`KernelPolicy::multi_tensor_optimizer`).

use super::{check_step, count, Params, StepScalars, CHUNK, WG};
use super::{clip_factor, sum_of_squares_scratch_len, sum_of_squares_with_scratch, AdamW};
use crate::gpu::policy::MULTI_TENSOR_BINDINGS;
use crate::gpu::{Access, CommandRecorder, Gpu, GpuTensor, KernelSpec, DUMMY_BINDINGS};
use crate::kernels::elementwise::check_no_alias;
use crate::shaders;
use anyhow::{bail, Result};

const R: Access = Access::Read;
const W: Access = Access::ReadWrite;

/// Tensors per `adamw_multi` dispatch (4 bindings each, then the clip factor).
const ADAMW_SLOTS: usize = 8;
/// Gradients per `sumsq_multi` dispatch (then the scratch).
const SQ_SLOTS: usize = 16;
/// Storage bindings of the widest kernel here.
const MAX_BINDINGS: usize = 4 * ADAMW_SLOTS + 1;
const _: () = assert!(MAX_BINDINGS == MULTI_TENSOR_BINDINGS as usize && DUMMY_BINDINGS >= MAX_BINDINGS);

const ADAMW_MULTI: KernelSpec = KernelSpec {
    shader: &shaders::OPTIM,
    entry: "adamw_multi",
    bindings: &[W, R, W, W, W, R, W, W, W, R, W, W, W, R, W, W, W, R, W, W, W, R, W, W, W, R, W, W, W, R, W, W, R],
};
const SUMSQ_MULTI: KernelSpec = KernelSpec {
    shader: &shaders::OPTIM,
    entry: "sumsq_multi",
    bindings: &[R, R, R, R, R, R, R, R, R, R, R, R, R, R, R, R, W],
};
const SUMSQ_FINAL_CLIP: KernelSpec =
    KernelSpec { shader: &shaders::OPTIM, entry: "sumsq_final_clip", bindings: &[R, W, W] };

/// `MultiParams` in the shader: the shared scalars and the per-slot table.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct MultiParams {
    slots: u32,
    use_scale: u32,
    base: u32,
    _p0: u32,
    grad_scale: f32,
    one_minus_b1: f32,
    beta2: f32,
    one_minus_b2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    _p1: f32,
    n: [u32; 16],
    /// First workgroup of each slot; `first[slots]` = the dispatch's workgroups.
    first: [u32; 20],
    decay_mul: [f32; 16],
}

/// The kernels that bind more storage buffers than WebGPU's default 8, which the policy turns off
/// under those limits (`kernels/limits.rs` checks that no other kernel does).
#[cfg(test)]
pub(crate) fn multi_tensor_specs() -> [KernelSpec; 2] {
    [ADAMW_MULTI, SUMSQ_MULTI]
}

/// This module's kernels with the size of their parameter blocks.
#[cfg(test)]
pub(super) fn specs() -> Vec<(KernelSpec, usize)> {
    let m = std::mem::size_of::<MultiParams>();
    vec![(ADAMW_MULTI, m), (SUMSQ_MULTI, m), (SUMSQ_FINAL_CLIP, std::mem::size_of::<Params>())]
}

#[cfg(test)]
thread_local! {
    /// Tests: `Some(false)` runs the per-tensor fallback on a device that has the bindings.
    pub(crate) static FORCE_MULTI: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether this device runs the multi-tensor kernels (33 storage buffers in one dispatch): its
/// policy's choice from the requested limits.
pub fn multi_tensor_supported(gpu: &Gpu) -> bool {
    let ok = gpu.policy().multi_tensor_optimizer;
    #[cfg(test)]
    let ok = ok && FORCE_MULTI.with(|f| f.get()).unwrap_or(true);
    ok
}

/// One trainable tensor of [`adamw_step_multi`]: as [`adamw_step`](super::adamw_step) takes it.
#[derive(Clone, Copy)]
pub struct AdamWTensor<'a> {
    pub param: &'a GpuTensor,
    pub grad: &'a GpuTensor,
    pub m: &'a GpuTensor,
    pub v: &'a GpuTensor,
    /// Apply weight decay to this tensor.
    pub decay: bool,
}

/// [`adamw_step`](super::adamw_step) of every tensor in `tensors` (same step, learning rate and
/// gradient scales), eight tensors a dispatch; bit-identical to stepping them one by one. Every
/// buffer is distinct: no parameter or moment may share a buffer with any other operand.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step_multi(
    batch: &mut CommandRecorder,
    opt: &AdamW,
    step: u32,
    lr: f32,
    grad_scale: f32,
    grad_scale_tensor: Option<&GpuTensor>,
    tensors: &[AdamWTensor],
) -> Result<()> {
    const WHAT: &str = "adamw_step_multi";
    check_step(WHAT, opt, step, lr, grad_scale, grad_scale_tensor)?;
    for (i, t) in tensors.iter().enumerate() {
        for (what, x) in [("grad", t.grad), ("m", t.m), ("v", t.v)] {
            if x.shape != t.param.shape {
                bail!("{WHAT}: tensor {i}: {what} has shape {:?}, the parameter {:?}", x.shape, t.param.shape);
            }
        }
        count(WHAT, t.param.numel())?;
    }
    let outputs: Vec<&GpuTensor> = tensors.iter().flat_map(|t| [t.param, t.m, t.v]).collect();
    let inputs: Vec<Option<&GpuTensor>> = tensors.iter().map(|t| Some(t.grad)).chain([grad_scale_tensor]).collect();
    check_no_alias(WHAT, &outputs, &inputs)?;
    if !multi_tensor_supported(batch.gpu()) {
        for t in tensors {
            super::adamw_step(batch, opt, step, lr, grad_scale, grad_scale_tensor, t.decay, t.param, t.grad, t.m, t.v)?;
        }
        return Ok(());
    }
    let s = StepScalars::new(opt, step, lr, false);
    for group in tensors.chunks(ADAMW_SLOTS) {
        let mut p = MultiParams {
            slots: group.len() as u32,
            use_scale: grad_scale_tensor.is_some() as u32,
            grad_scale,
            one_minus_b1: s.one_minus_b1,
            beta2: s.beta2,
            one_minus_b2: s.one_minus_b2,
            step_size: s.step_size,
            bc2_sqrt: s.bc2_sqrt,
            eps: opt.eps,
            ..Default::default()
        };
        let mut groups = 0u32;
        let mut bindings: Vec<Option<&GpuTensor>> = vec![None; 4 * ADAMW_SLOTS + 1];
        for (i, t) in group.iter().enumerate() {
            let n = t.param.numel() as u32;
            p.n[i] = n;
            p.first[i] = groups;
            p.decay_mul[i] = StepScalars::new(opt, step, lr, t.decay).decay_mul;
            groups += n.div_ceil(WG);
            bindings[4 * i..4 * i + 4].copy_from_slice(&[Some(t.param), Some(t.grad), Some(t.m), Some(t.v)]);
        }
        p.first[group.len()] = groups;
        bindings[4 * ADAMW_SLOTS] = grad_scale_tensor;
        batch.dispatch(&ADAMW_MULTI, &[], &p, &bindings, [groups, 1, 1]);
    }
    Ok(())
}

/// `ss[0] = Σ g²` over every tensor of `grads` (as [`sum_of_squares`](super::sum_of_squares)) and
/// `factor[0]` = its clip factor for `max_norm` (as [`clip_factor`]), sixteen gradients a dispatch
/// and one more for the total and the factor; bit-identical to those. `scratch` holds at least
/// [`sum_of_squares_scratch_len`]`(grads)` values (overwritten); `ss`, `factor` and `scratch` are
/// distinct from every gradient and from each other.
pub fn sum_of_squares_and_clip(
    batch: &mut CommandRecorder,
    grads: &[&GpuTensor],
    scratch: &GpuTensor,
    max_norm: f32,
    ss: &GpuTensor,
    factor: &GpuTensor,
) -> Result<()> {
    const WHAT: &str = "sum_of_squares_and_clip";
    if !max_norm.is_finite() || max_norm <= 0.0 {
        bail!("{WHAT}: max_norm must be positive and finite, got {max_norm} (skip clipping instead)");
    }
    let len = sum_of_squares_scratch_len(grads);
    if scratch.numel() < len {
        bail!("{WHAT}: scratch has {} values, {len} needed", scratch.numel());
    }
    if ss.numel() == 0 || factor.numel() == 0 {
        bail!("{WHAT}: ss {:?} and factor {:?} need at least one element", ss.shape, factor.shape);
    }
    let inputs: Vec<Option<&GpuTensor>> = grads.iter().map(|&g| Some(g)).collect();
    check_no_alias(WHAT, &[ss, factor, scratch], &inputs)?;
    for g in grads {
        count(WHAT, g.numel())?;
    }
    if !multi_tensor_supported(batch.gpu()) {
        sum_of_squares_with_scratch(batch, grads, scratch, ss)?;
        return clip_factor(batch, ss, max_norm, factor);
    }
    let mut base = 0u32;
    for group in grads.chunks(SQ_SLOTS) {
        let mut p = MultiParams { slots: group.len() as u32, base, ..Default::default() };
        let mut groups = 0u32;
        let mut bindings: Vec<Option<&GpuTensor>> = vec![None; SQ_SLOTS + 1];
        for (i, g) in group.iter().enumerate() {
            p.n[i] = g.numel() as u32;
            p.first[i] = groups;
            groups += g.numel().div_ceil(CHUNK) as u32;
            bindings[i] = Some(g);
        }
        p.first[group.len()] = groups;
        bindings[SQ_SLOTS] = Some(scratch);
        batch.dispatch(&SUMSQ_MULTI, &[], &p, &bindings, [groups, 1, 1]);
        base += groups;
    }
    let p = Params { n: base, max_norm, ..Default::default() };
    batch.dispatch(&SUMSQ_FINAL_CLIP, &[], &p, &[Some(scratch), Some(ss), Some(factor)], [1, 1, 1]);
    Ok(())
}
