//! `shaders/loss.wgsl`: mean softmax cross-entropy with its logit gradient (one workgroup, fixed
//! summation order: deterministic) and a row softmax for inference.

use super::elementwise::check_no_alias;
use super::expect_shape;
use crate::gpu::{Access, CommandRecorder, GpuTensor, KernelSpec};
use crate::shaders;
use anyhow::{bail, Result};

#[cfg(any(test, feature = "reference"))]
pub mod reference;
#[cfg(test)]
mod tests;

const CROSS_ENTROPY: KernelSpec = KernelSpec {
    shader: &shaders::LOSS,
    entry: "cross_entropy",
    bindings: &[Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite],
};
const SOFTMAX: KernelSpec =
    KernelSpec { shader: &shaders::LOSS, entry: "softmax", bindings: &[Access::Read, Access::ReadWrite] };

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    classes: u32,
    _p: [u32; 2],
}

/// Every kernel of this module with the size of its parameter block (`kernels/bindings.rs` checks
/// them against the WGSL).
#[cfg(test)]
pub(crate) fn specs() -> Vec<(KernelSpec, usize)> {
    let p = std::mem::size_of::<Params>();
    vec![(CROSS_ENTROPY, p), (SOFTMAX, p)]
}

/// Workgroup sizes: one workgroup for the whole cross entropy, one invocation per row of softmax.
const CROSS_ENTROPY_WG: f64 = 256.0;
const SOFTMAX_WG: f64 = 64.0;

/// Every set of override constants the host passes, per kernel (`kernels/translate.rs`).
#[cfg(test)]
pub(crate) fn launches() -> Vec<(KernelSpec, Vec<crate::kernels::Constants>)> {
    vec![(CROSS_ENTROPY, vec![vec![("WG", CROSS_ENTROPY_WG)]]), (SOFTMAX, vec![vec![("WG", SOFTMAX_WG)]])]
}

/// `[rows, classes]` of a logits tensor.
fn dims(what: &str, logits: &GpuTensor) -> Result<(usize, usize)> {
    match logits.shape[..] {
        [rows, classes] if rows > 0 && classes > 0 && rows * classes <= u32::MAX as usize => Ok((rows, classes)),
        _ => bail!("{what}: logits must be [rows, classes] with both ≥ 1, got {:?}", logits.shape),
    }
}

/// Mean softmax cross-entropy of `logits` `[B, C]` against `labels` (u32 `[B]`, from
/// [`GpuTensor::from_u32`]): `loss[0] = mean_b (logsumexp(l_b) − l_b[label_b])` and
/// `dlogits = (softmax(l) − onehot(label)) / B`. Labels must be `< C` (validate them before upload;
/// the kernel clamps larger ones to `C − 1` only to stay in bounds). One workgroup walks all rows,
/// so this suits classifier heads (`B·C` up to some 10⁵).
pub fn softmax_cross_entropy(
    batch: &mut CommandRecorder,
    logits: &GpuTensor,
    labels: &GpuTensor,
    loss: &GpuTensor,
    dlogits: &GpuTensor,
) -> Result<()> {
    let (rows, classes) = dims("softmax_cross_entropy", logits)?;
    if labels.numel() != rows {
        bail!("softmax_cross_entropy: {} labels for {rows} rows of logits", labels.numel());
    }
    if loss.numel() != 1 {
        bail!("softmax_cross_entropy: loss must hold one value, got shape {:?}", loss.shape);
    }
    expect_shape("softmax_cross_entropy dlogits", &dlogits.shape, &logits.shape)?;
    check_no_alias("softmax_cross_entropy", &[loss, dlogits], &[Some(logits), Some(labels)])?;
    let params = Params { rows: rows as u32, classes: classes as u32, _p: [0; 2] };
    batch.dispatch(
        &CROSS_ENTROPY,
        &[("WG", CROSS_ENTROPY_WG)],
        &params,
        &[Some(logits), Some(labels), Some(loss), Some(dlogits)],
        [1, 1, 1],
    );
    Ok(())
}

/// `probs = softmax(logits)` over each row of `[B, C]` logits.
pub fn softmax(batch: &mut CommandRecorder, logits: &GpuTensor, probs: &GpuTensor) -> Result<()> {
    let (rows, classes) = dims("softmax", logits)?;
    expect_shape("softmax probs", &probs.shape, &logits.shape)?;
    check_no_alias("softmax", &[probs], &[Some(logits)])?;
    let params = Params { rows: rows as u32, classes: classes as u32, _p: [0; 2] };
    batch.dispatch(
        &SOFTMAX,
        &[("WG", SOFTMAX_WG)],
        &params,
        &[Some(logits), Some(probs)],
        [(rows as u32).div_ceil(64), 1, 1],
    );
    Ok(())
}
