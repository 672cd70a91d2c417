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

const COL_SUM2: KernelSpec = KernelSpec {
    shader: &shaders::REDUCE,
    entry: "col_sum2",
    bindings: &[Access::Read, Access::ReadWrite, Access::Read, Access::ReadWrite],
};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params2 {
    rows: u32,
    cols: u32,
    cols2: u32,
    _p0: u32,
    scale: f32,
    beta: f32,
    scale2: f32,
    beta2: f32,
}

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
    vec![(COL_SUM, std::mem::size_of::<Params>()), (COL_SUM2, std::mem::size_of::<Params2>())]
}

/// Workgroup size of the column sum.
const WG: f64 = 64.0;

/// Every set of override constants the host passes, per kernel (`kernels/translate.rs`).
#[cfg(test)]
pub(crate) fn launches() -> Vec<(KernelSpec, Vec<crate::kernels::Constants>)> {
    vec![(COL_SUM, vec![vec![("WG", WG)]]), (COL_SUM2, vec![vec![("WG", WG)]])]
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
    check_fits("col_sum", x, rows, cols, out)?;
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

/// One column sum of [`col_sums`]: `out[j] = scale · Σ_i x[i, j] + beta · out[j]` over a row-major
/// `x` of `rows × cols` (the rows are the call's).
pub struct ColSum<'a> {
    pub x: &'a GpuTensor,
    pub cols: usize,
    pub scale: f32,
    pub beta: f32,
    pub out: &'a GpuTensor,
}

/// Two [`col_sum`]s over the same number of rows in one dispatch (e.g. an adapter's two bias
/// gradients); each column is summed exactly as [`col_sum`] sums it. The outputs must not share a
/// buffer with each other or an input.
pub fn col_sums(batch: &mut CommandRecorder, rows: usize, a: ColSum, b: ColSum) -> Result<()> {
    for s in [&a, &b] {
        check_fits("col_sums", s.x, rows, s.cols, s.out)?;
    }
    super::elementwise::check_no_alias("col_sums", &[a.out, b.out], &[Some(a.x), Some(b.x)])?;
    let total = u32::try_from(a.cols + b.cols).map_err(|_| anyhow::anyhow!("col_sums: too many columns"))?;
    let params = Params2 {
        rows: rows as u32,
        cols: a.cols as u32,
        cols2: b.cols as u32,
        _p0: 0,
        scale: a.scale,
        beta: a.beta,
        scale2: b.scale,
        beta2: b.beta,
    };
    batch.dispatch(
        &COL_SUM2,
        &[("WG", WG)],
        &params,
        &[Some(a.x), Some(a.out), Some(b.x), Some(b.out)],
        [total.div_ceil(64), 1, 1],
    );
    Ok(())
}

/// That `x` holds `rows × cols` values and `out` `cols`.
fn check_fits(what: &str, x: &GpuTensor, rows: usize, cols: usize, out: &GpuTensor) -> Result<()> {
    if rows * cols > x.numel() || cols > out.numel() {
        bail!("{what}: {rows}×{cols} does not fit x {:?} / out {:?}", x.shape, out.shape);
    }
    Ok(())
}
