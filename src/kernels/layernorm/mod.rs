//! `shaders/layernorm.wgsl`: LayerNorm over the last dimension (optionally of `x + residual`) and
//! its input gradient (gamma and beta are frozen). One workgroup per row, deterministic.

use super::elementwise::check_no_alias;
use super::expect_shape;
use crate::gpu::{Access, CommandRecorder, GpuTensor, KernelSpec};
use crate::shaders;
use anyhow::{bail, Result};

#[cfg(any(test, feature = "reference"))]
pub mod reference;
#[cfg(test)]
mod tests;

const FORWARD: KernelSpec = KernelSpec {
    shader: &shaders::LAYERNORM,
    entry: "forward",
    bindings: &[
        Access::Read,
        Access::Read,
        Access::Read,
        Access::Read,
        Access::ReadWrite,
        Access::ReadWrite,
        Access::Read,
    ],
};

const BACKWARD: KernelSpec = KernelSpec {
    shader: &shaders::LAYERNORM,
    entry: "backward",
    bindings: &[Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite],
};

/// [`BACKWARD`] over column quads (vec4), for CPU drivers where `d % 4 == 0`.
const BACKWARD4: KernelSpec = KernelSpec { entry: "backward4", ..BACKWARD };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    d: u32,
    accumulate: u32,
    _p0: u32,
    eps: f32,
    _p1: [u32; 3],
}

/// Every kernel of this module with the size of its parameter block (`kernels/bindings.rs` checks
/// them against the WGSL).
#[cfg(test)]
pub(crate) fn specs() -> Vec<(KernelSpec, usize)> {
    let p = std::mem::size_of::<Params>();
    vec![(FORWARD, p), (BACKWARD, p), (BACKWARD4, p)]
}

/// Largest supported hidden size (a thread walks `d / WG` columns; nothing breaks above it, but
/// nothing tests it either).
pub const MAX_D: usize = 1 << 16;

/// Every set of override constants the host passes, per kernel, apart from the flags
/// (`kernels/translate.rs`): the workgroup size of every hidden size, on GPUs and CPU drivers.
#[cfg(test)]
pub(crate) fn launches() -> Vec<(KernelSpec, Vec<crate::kernels::Constants>)> {
    let mut sets: Vec<crate::kernels::Constants> = vec![];
    for d in 1..=8192 {
        for cpu in [false, true] {
            let c = vec![("WG", workgroup_size(d, cpu))];
            if !sets.contains(&c) {
                sets.push(c);
            }
        }
    }
    let cpu = vec![("WG", CPU_WG)];
    vec![(FORWARD, sets.clone()), (BACKWARD, sets), (BACKWARD4, vec![cpu])]
}

/// Threads per row. GPUs: enough for coalesced loads, few enough that short rows keep them busy.
/// CPU drivers: [`CPU_WG`], one SIMD program a row (lavapipe runs 8 threads as one 8-wide program;
/// with 64 it ran 8 programs a row that meet at each barrier, and the reductions over 64 partials
/// were 8 times longer).
fn workgroup_size(d: usize, cpu: bool) -> f64 {
    if cpu {
        CPU_WG
    } else if d >= 2048 {
        256.0
    } else if d >= 512 {
        128.0
    } else {
        64.0
    }
}

/// Threads per row on CPU drivers (lavapipe's SIMD width on AVX2); they sum with four partial
/// sums each (`PARTIALS` in the shader), which keeps the sums as accurate as 64 threads' were.
const CPU_WG: f64 = 8.0;

#[cfg(test)]
thread_local! {
    /// Tests: run the CPU drivers' (`Some(true)`) or the GPUs' (`Some(false)`) row layout on
    /// whatever device the tests have, so both are checked on lavapipe.
    pub(crate) static FORCE_CPU_ROWS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Columns a thread may keep in registers (`LN_CACHE` in layernorm.wgsl).
const LN_CACHE: usize = 128;

#[cfg(test)]
thread_local! {
    /// Tests: the column-at-a-time backward on CPU drivers even where the quad one applies.
    pub(crate) static NO_QUADS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether rows of `d` run the quad backward ([`BACKWARD4`]): the CPU drivers' row layout
/// (`cpu`, [`cpu_rows`]) and `d` a multiple of 4.
fn quads(cpu: bool, d: usize) -> bool {
    #[cfg(test)]
    if NO_QUADS.with(|f| f.get()) {
        return false;
    }
    cpu && d % 4 == 0
}

/// Whether the CPU drivers' row layout runs (the device's policy, or the tests' choice).
fn cpu_rows(batch: &CommandRecorder) -> bool {
    let cpu = batch.gpu().policy().is_cpu;
    #[cfg(test)]
    let cpu = FORCE_CPU_ROWS.with(|f| f.get()).unwrap_or(cpu);
    cpu
}

/// The override constants of the row layout: `WG` threads a row, and `PARTIALS` on CPU drivers
/// (`cpu`), with `CACHED` (a thread's values kept between the passes) where its columns fit
/// [`LN_CACHE`].
fn row_constants(cpu: bool, d: usize) -> [(&'static str, f64); 3] {
    let wg = workgroup_size(d, cpu);
    let cached = cpu && d.div_ceil(wg as usize) <= LN_CACHE;
    #[cfg(test)]
    let cached = cached && !NO_CACHE.with(|f| f.get());
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    [("WG", wg), ("PARTIALS", flag(cpu)), ("CACHED", flag(cached))]
}

#[cfg(test)]
thread_local! {
    /// Tests: the CPU drivers' layout reading its inputs again in every pass.
    pub(crate) static NO_CACHE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Rows and row length of `x` for a LayerNorm with `gamma` of shape `[d]`.
fn rows_of(what: &str, x: &GpuTensor, gamma: &GpuTensor) -> Result<(usize, usize)> {
    let d = gamma.numel();
    if gamma.shape.len() != 1 || d == 0 || d > MAX_D {
        bail!("{what}: gamma must have shape [d] with 1 ≤ d ≤ {MAX_D}, got {:?}", gamma.shape);
    }
    if x.shape.last() != Some(&d) {
        bail!("{what}: input of shape {:?} does not end in the hidden size {d}", x.shape);
    }
    let rows = x.numel() / d;
    if rows > u32::MAX as usize {
        bail!("{what}: too many rows ({rows})");
    }
    Ok((rows, d))
}

/// `y = LayerNorm(x [+ residual]) · gamma + beta` over the last dimension. `x`, `residual`,
/// `sum_out` and `y` have the same shape `[.., d]`; `sum_out`, when given, receives `x + residual`
/// (or `x`), the input [`layer_norm_backward`] needs. `y` and `sum_out` must not share a buffer with
/// an input or each other.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    batch: &mut CommandRecorder,
    x: &GpuTensor,
    residual: Option<&GpuTensor>,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    eps: f32,
    sum_out: Option<&GpuTensor>,
    y: &GpuTensor,
) -> Result<()> {
    let residuals: Vec<&GpuTensor> = residual.into_iter().collect();
    layer_norm_sum(batch, x, &residuals, gamma, beta, eps, sum_out, y)
}

/// [`layer_norm`] of `x` plus up to two residuals, added in order: `(x + r₀) + r₁` (an adapter's
/// output, its residual and the sub-layer's input, in the order its up product's β = 1 epilogue
/// and a two-term LayerNorm added them, so the same bits without the copy of the residual).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_sum(
    batch: &mut CommandRecorder,
    x: &GpuTensor,
    residuals: &[&GpuTensor],
    gamma: &GpuTensor,
    beta: &GpuTensor,
    eps: f32,
    sum_out: Option<&GpuTensor>,
    y: &GpuTensor,
) -> Result<()> {
    let (rows, d) = rows_of("layer_norm", x, gamma)?;
    expect_shape("layer_norm beta", &beta.shape, &[d])?;
    expect_shape("layer_norm output", &y.shape, &x.shape)?;
    if residuals.len() > 2 {
        bail!("layer_norm: at most two residuals, got {}", residuals.len());
    }
    for r in residuals {
        expect_shape("layer_norm residual", &r.shape, &x.shape)?;
    }
    let mut outputs = vec![y];
    if let Some(s) = sum_out {
        expect_shape("layer_norm sum_out", &s.shape, &x.shape)?;
        outputs.push(s);
    }
    let (r0, r1) = (residuals.first().copied(), residuals.get(1).copied());
    check_no_alias("layer_norm", &outputs, &[Some(x), r0, r1, Some(gamma), Some(beta)])?;
    if !(eps >= 0.0 && eps.is_finite()) {
        bail!("layer_norm: eps must be a finite number ≥ 0, got {eps}");
    }
    let params = Params { rows: rows as u32, d: d as u32, accumulate: 0, _p0: 0, eps, _p1: [0; 3] };
    let [wg, partials, cached] = row_constants(cpu_rows(batch), d);
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let constants = [
        wg,
        partials,
        cached,
        ("HAS_RESIDUAL", flag(r0.is_some())),
        ("HAS_SUM", flag(sum_out.is_some())),
        ("HAS_RESIDUAL2", flag(r1.is_some())),
    ];
    batch.dispatch(
        &FORWARD,
        &constants,
        &params,
        // An absent residual or sum binds its slot's own dummy (unread / unwritten).
        &[Some(x), r0, Some(gamma), Some(beta), sum_out, Some(y), r1],
        [rows as u32, 1, 1],
    );
    Ok(())
}

/// Input gradient of [`layer_norm`]: `dx (+)= ∂L/∂x` given `dy = ∂L/∂y` and the LayerNorm input
/// `x` (the saved sum); mean and rstd are recomputed from `x`. With `accumulate`, `dx` is added to
/// instead of overwritten. `dx` must not share a buffer with `x`, `gamma` or `dy`.
pub fn layer_norm_backward(
    batch: &mut CommandRecorder,
    x: &GpuTensor,
    gamma: &GpuTensor,
    eps: f32,
    dy: &GpuTensor,
    dx: &GpuTensor,
    accumulate: bool,
) -> Result<()> {
    layer_norm_backward_twice(batch, x, gamma, eps, dy, dx, None, accumulate)
}

/// [`layer_norm_backward`] that also writes `dx` (its final value) into `dx2`, a second tensor
/// (the gradient of a sum's two terms, e.g. a residual input and an adapter's output, in one
/// dispatch instead of a copy). `dx2` must not share a buffer with `dx` or an input.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward_twice(
    batch: &mut CommandRecorder,
    x: &GpuTensor,
    gamma: &GpuTensor,
    eps: f32,
    dy: &GpuTensor,
    dx: &GpuTensor,
    dx2: Option<&GpuTensor>,
    accumulate: bool,
) -> Result<()> {
    let (rows, d) = rows_of("layer_norm_backward", x, gamma)?;
    expect_shape("layer_norm_backward dy", &dy.shape, &x.shape)?;
    expect_shape("layer_norm_backward dx", &dx.shape, &x.shape)?;
    let mut outputs = vec![dx];
    if let Some(d2) = dx2 {
        expect_shape("layer_norm_backward dx2", &d2.shape, &x.shape)?;
        outputs.push(d2);
    }
    check_no_alias("layer_norm_backward", &outputs, &[Some(x), Some(gamma), Some(dy)])?;
    if !(eps >= 0.0 && eps.is_finite()) {
        bail!("layer_norm_backward: eps must be a finite number ≥ 0, got {eps}");
    }
    let params = Params { rows: rows as u32, d: d as u32, accumulate: accumulate as u32, _p0: 0, eps, _p1: [0; 3] };
    let cpu = cpu_rows(batch);
    let spec = if quads(cpu, d) { &BACKWARD4 } else { &BACKWARD };
    let [wg, partials, cached] = row_constants(cpu, d);
    let constants = [wg, partials, cached, ("HAS_DX2", if dx2.is_some() { 1.0 } else { 0.0 })];
    // An absent dx2 binds its slot's dummy (never written): not dx again, as WebGPU forbids two
    // writable bindings of one buffer in a dispatch.
    batch.dispatch(spec, &constants, &params, &[Some(x), Some(gamma), Some(dy), Some(dx), dx2], [rows as u32, 1, 1]);
    Ok(())
}
