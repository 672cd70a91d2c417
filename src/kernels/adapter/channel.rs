//! `shaders/adapter.wgsl`'s per-channel kernels: AdapterHub's trainable `scaling` ("learned": one
//! value, "channel": one per hidden unit) and the affine part of the adapter's own LayerNorms
//! (`ln_before` / `ln_after`), whose normalisation is the LayerNorm kernel with unit gamma.
//!
//! `channel_scale`: `y = x ⊙ s (+ add)`; `channel_dot`: `out[k] = Σ_t a[t,k]·b[t,k]`, the
//! gradient of a per-channel scale (summed again over channels for a scalar one), one thread per
//! column in a fixed order: the same bits every run.

use super::super::{expect_shape, layernorm, reduce};
use super::Params;
use crate::gpu::{Access, CommandRecorder, GpuTensor, KernelSpec};
use crate::kernels::elementwise::check_no_alias;
use crate::shaders;
use anyhow::{bail, Result};

const CHANNEL_SCALE: KernelSpec = KernelSpec {
    shader: &shaders::ADAPTER,
    entry: "channel_scale",
    bindings: &[Access::Read, Access::Read, Access::Read, Access::ReadWrite],
};

const CHANNEL_DOT: KernelSpec = KernelSpec {
    shader: &shaders::ADAPTER,
    entry: "channel_dot",
    bindings: &[Access::Read, Access::Read, Access::ReadWrite],
};

/// Threads per workgroup of both kernels.
const WG: usize = 64;

// The adapter shader's parameter block ([`Params`]), as these kernels read it: `t` rows, `d`
// columns, `m` values of the scale, `scale` = 0 (write) or 1 (add to the output) for `channel_dot`.

#[cfg(test)]
pub(crate) fn specs() -> Vec<(KernelSpec, usize)> {
    let p = std::mem::size_of::<Params>();
    vec![(CHANNEL_SCALE, p), (CHANNEL_DOT, p)]
}

#[cfg(test)]
pub(crate) fn launches() -> Vec<(KernelSpec, Vec<crate::kernels::Constants>)> {
    let add = |a: f64| vec![("WG", WG as f64), ("ADD", a)];
    vec![(CHANNEL_SCALE, vec![add(0.0), add(1.0), add(2.0)]), (CHANNEL_DOT, vec![vec![("WG", WG as f64)]])]
}

/// What [`channel_scale`] adds after scaling.
#[derive(Clone, Copy, Debug)]
pub enum ChannelAdd<'a> {
    Nothing,
    /// One value per channel (`[d]`): a LayerNorm's beta.
    Vector(&'a GpuTensor),
    /// A tensor of the input's shape: a residual.
    Tensor(&'a GpuTensor),
}

/// Rows and columns of `x` for a scale of `s.numel()` values (1 or the last dimension).
fn rows_cols(what: &str, x: &GpuTensor, s: &GpuTensor) -> Result<(usize, usize)> {
    let d = *x.shape.last().unwrap_or(&0);
    if d == 0 || (s.numel() != 1 && s.numel() != d) {
        bail!("{what}: a scale of shape {:?} for an input of shape {:?} (needs 1 or {d} values)", s.shape, x.shape);
    }
    let t = x.numel() / d;
    if x.numel() > u32::MAX as usize {
        bail!("{what}: too many values ({})", x.numel());
    }
    Ok((t, d))
}

/// `y = x ⊙ s + add` over the last dimension of `x`; `s` holds one value or one per channel.
pub fn channel_scale(
    batch: &mut CommandRecorder,
    x: &GpuTensor,
    s: &GpuTensor,
    add: ChannelAdd,
    y: &GpuTensor,
) -> Result<()> {
    let (t, d) = rows_cols("channel_scale", x, s)?;
    expect_shape("channel_scale output", &y.shape, &x.shape)?;
    let (mode, extra) = match add {
        ChannelAdd::Nothing => (0.0, None),
        ChannelAdd::Vector(v) => {
            expect_shape("channel_scale vector", &v.shape, &[d])?;
            (1.0, Some(v))
        }
        ChannelAdd::Tensor(r) => {
            expect_shape("channel_scale tensor", &r.shape, &x.shape)?;
            (2.0, Some(r))
        }
    };
    check_no_alias("channel_scale", &[y], &[Some(x), Some(s), extra])?;
    let params = Params { t: t as u32, d: d as u32, m: s.numel() as u32, _pad: 0, scale: 0.0, _pad2: [0; 3] };
    let groups = (t * d).div_ceil(WG) as u32;
    batch.cost(2.0 * (t * d) as f64, 4.0 * (3.0 * (t * d) as f64 + 2.0 * d as f64));
    // Without an addend the slot binds x again (read only, unread).
    batch.dispatch(
        &CHANNEL_SCALE,
        &[("WG", WG as f64), ("ADD", mode)],
        &params,
        &[Some(x), Some(s), Some(extra.unwrap_or(x)), Some(y)],
        [groups, 1, 1],
    );
    Ok(())
}

/// `out[k] = Σ_t a[t,k]·b[t,k] (+ out[k] with `accumulate`)`; `out` is `[d]`.
pub fn channel_dot(
    batch: &mut CommandRecorder,
    a: &GpuTensor,
    b: &GpuTensor,
    accumulate: bool,
    out: &GpuTensor,
) -> Result<()> {
    let d = *a.shape.last().unwrap_or(&0);
    expect_shape("channel_dot b", &b.shape, &a.shape)?;
    expect_shape("channel_dot output", &out.shape, &[d])?;
    if d == 0 || a.numel() > u32::MAX as usize {
        bail!("channel_dot: input of shape {:?}", a.shape);
    }
    check_no_alias("channel_dot", &[out], &[Some(a), Some(b)])?;
    let t = a.numel() / d;
    let params = Params {
        t: t as u32,
        d: d as u32,
        m: d as u32,
        _pad: 0,
        scale: if accumulate { 1.0 } else { 0.0 },
        _pad2: [0; 3],
    };
    batch.cost(2.0 * (t * d) as f64, 4.0 * (2.0 * (t * d) as f64 + d as f64));
    batch.dispatch(
        &CHANNEL_DOT,
        &[("WG", WG as f64)],
        &params,
        &[Some(a), Some(b), Some(out)],
        [d.div_ceil(WG) as u32, 1, 1],
    );
    Ok(())
}

/// Gradient of a trainable scale `s` in `y = u ⊙ s`: `ds[k] = Σ_t dy[t,k]·u[t,k]`, summed over
/// the channels too when `ds` is one value; added to `ds` with `accumulate`.
pub fn scale_grad(
    batch: &mut CommandRecorder,
    dy: &GpuTensor,
    u: &GpuTensor,
    accumulate: bool,
    ds: &GpuTensor,
) -> Result<()> {
    let (_, d) = rows_cols("scale_grad", u, ds)?;
    if ds.numel() == d {
        return channel_dot(batch, dy, u, accumulate, ds);
    }
    let per_channel = GpuTensor::zeros(batch.gpu(), &[d])?;
    channel_dot(batch, dy, u, false, &per_channel)?;
    reduce::col_sum(batch, &per_channel, d, 1, 1.0, if accumulate { 1.0 } else { 0.0 }, ds)
}

/// An adapter's own LayerNorm (`adapter_norm_before` / `adapter_norm_after`, trainable gamma and
/// beta): the LayerNorm kernel with `unit` (ones) as gamma and `zero` as beta gives `x̂`, then
/// `y = x̂ ⊙ gamma + beta`. `x_hat` receives `x̂`.
#[allow(clippy::too_many_arguments)]
pub fn trainable_layer_norm(
    batch: &mut CommandRecorder,
    x: &GpuTensor,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    unit: &GpuTensor,
    zero: &GpuTensor,
    eps: f32,
    x_hat: &GpuTensor,
    y: &GpuTensor,
) -> Result<()> {
    layernorm::layer_norm(batch, x, None, unit, zero, eps, None, x_hat)?;
    channel_scale(batch, x_hat, gamma, ChannelAdd::Vector(beta), y)
}

/// Backward of [`trainable_layer_norm`] from its input `x`: `dx` (written, or added to with
/// `accumulate_dx`), and the gradients of gamma and beta (written, or added to with
/// `accumulate_params`).
#[allow(clippy::too_many_arguments)]
pub fn trainable_layer_norm_backward(
    batch: &mut CommandRecorder,
    x: &GpuTensor,
    gamma: &GpuTensor,
    unit: &GpuTensor,
    zero: &GpuTensor,
    eps: f32,
    dy: &GpuTensor,
    dx: &GpuTensor,
    accumulate_dx: bool,
    d_gamma: &GpuTensor,
    d_beta: &GpuTensor,
    accumulate_params: bool,
) -> Result<()> {
    let d = *x.shape.last().unwrap_or(&0);
    let gpu = batch.gpu().clone();
    let x_hat = GpuTensor::zeros(&gpu, &x.shape)?;
    layernorm::layer_norm(batch, x, None, unit, zero, eps, None, &x_hat)?;
    channel_dot(batch, dy, &x_hat, accumulate_params, d_gamma)?;
    reduce::col_sum(batch, dy, x.numel() / d.max(1), d, 1.0, if accumulate_params { 1.0 } else { 0.0 }, d_beta)?;
    let dx_hat = GpuTensor::zeros(&gpu, &x.shape)?;
    channel_scale(batch, dy, gamma, ChannelAdd::Nothing, &dx_hat)?;
    layernorm::layer_norm_backward(batch, x, unit, eps, &dx_hat, dx, accumulate_dx)
}
