//! `shaders/reduce.wgsl`: deterministic column sums (bias gradients).

use crate::gpu::{Access, CommandRecorder, GpuTensor, KernelSpec};
use crate::shaders;
use anyhow::{bail, Result};

#[cfg(any(test, feature = "reference"))]
pub mod reference;
#[cfg(test)]
mod tests;

const COL_SUM: KernelSpec =
    KernelSpec { shader: &shaders::REDUCE, entry: "col_sum", bindings: &[Access::Read, Access::ReadWrite] };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    row_stride: u32,
    x_off: u32,
    out_off: u32,
    _p0: u32,
    scale: f32,
    beta: f32,
}

/// Every kernel of this module with the size of its parameter block (`kernels/bindings.rs` checks
/// them against the WGSL).
#[cfg(test)]
pub(crate) fn specs() -> Vec<(KernelSpec, usize)> {
    let p = std::mem::size_of::<Params>();
    vec![(COL_SUM, p)]
}

/// Workgroup size of the column sum.
const WG: f64 = 64.0;

/// Every set of override constants the host passes, per kernel (`kernels/translate.rs`).
#[cfg(test)]
pub(crate) fn launches() -> Vec<(KernelSpec, Vec<crate::kernels::Constants>)> {
    vec![(COL_SUM, vec![vec![("WG", WG)]])]
}

/// `out[j] = scale · Σ_i x[i, j] + beta · out[j]` for a row-major `x` of `rows × cols`.
pub fn col_sum(
    batch: &mut CommandRecorder,
    x: &GpuTensor,
    rows: usize,
    cols: usize,
    scale: f32,
    beta: f32,
    out: &GpuTensor,
) -> Result<()> {
    if rows * cols > x.numel() || cols > out.numel() {
        bail!("col_sum: {rows}×{cols} does not fit x {:?} / out {:?}", x.shape, out.shape);
    }
    let params = Params {
        rows: rows as u32,
        cols: cols as u32,
        row_stride: cols as u32,
        x_off: 0,
        out_off: 0,
        _p0: 0,
        scale,
        beta,
    };
    batch.dispatch(&COL_SUM, &[("WG", WG)], &params, &[Some(x), Some(out)], [(cols as u32).div_ceil(64), 1, 1]);
    Ok(())
}
