//! `shaders/loss.wgsl`: the heads' losses with their logit gradients (one workgroup each, fixed
//! summation order: deterministic): mean softmax cross-entropy over labelled rows (classification,
//! tagging with ignored tokens), mean squared error (regression), binary cross-entropy with logits
//! (multi-label classification); and a row softmax for inference.

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
const MSE: KernelSpec = KernelSpec {
    shader: &shaders::LOSS,
    entry: "mse",
    bindings: &[Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite],
};
const BCE_LOGITS: KernelSpec = KernelSpec {
    shader: &shaders::LOSS,
    entry: "bce_logits",
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
    vec![(CROSS_ENTROPY, p), (MSE, p), (BCE_LOGITS, p), (SOFTMAX, p)]
}

/// Workgroup sizes: one workgroup for a whole loss, one invocation per row of softmax.
const CROSS_ENTROPY_WG: f64 = 256.0;
const SOFTMAX_WG: f64 = 64.0;

/// Every set of override constants the host passes, per kernel (`kernels/translate.rs`).
#[cfg(test)]
pub(crate) fn launches() -> Vec<(KernelSpec, Vec<crate::kernels::Constants>)> {
    vec![
        (CROSS_ENTROPY, vec![vec![("WG", CROSS_ENTROPY_WG)]]),
        (MSE, vec![vec![("WG", CROSS_ENTROPY_WG)]]),
        (BCE_LOGITS, vec![vec![("WG", CROSS_ENTROPY_WG)]]),
        (SOFTMAX, vec![vec![("WG", SOFTMAX_WG)]]),
    ]
}

/// `[rows, classes]` of a logits tensor.
fn dims(what: &str, logits: &GpuTensor) -> Result<(usize, usize)> {
    match logits.shape[..] {
        [rows, classes] if rows > 0 && classes > 0 && rows * classes <= u32::MAX as usize => Ok((rows, classes)),
        _ => bail!("{what}: logits must be [rows, classes] with both ≥ 1, got {:?}", logits.shape),
    }
}

/// The label of a row that the cross-entropy leaves out (HF's `-100`: padding, and the sub-tokens
/// after a word's first in tagging).
pub const IGNORE_LABEL: u32 = u32::MAX;

/// Mean softmax cross-entropy of `logits` `[B, C]` against `labels` (u32 `[B]`, from
/// [`GpuTensor::from_u32`]) over the `N` rows whose label is not [`IGNORE_LABEL`]:
/// `loss[0] = mean_b (logsumexp(l_b) − l_b[label_b])` and `dlogits = (softmax(l) − onehot(label)) / N`
/// (zero on ignored rows; with no labelled row, loss and gradient are 0). Labels must be `< C` or
/// ignored (validate them before upload; the kernel clamps larger ones to `C − 1` only to stay in
/// bounds). One workgroup walks all rows, so this suits classifier and tagging heads (`B·C` up to
/// some 10⁶).
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

/// Checks and dispatches a float-target loss (`mse` / `bce_logits`): `targets` has the logits' shape.
fn float_target_loss(
    batch: &mut CommandRecorder,
    spec: &KernelSpec,
    logits: &GpuTensor,
    targets: &GpuTensor,
    loss: &GpuTensor,
    dlogits: &GpuTensor,
) -> Result<()> {
    let what = spec.entry;
    let (rows, classes) = dims(what, logits)?;
    expect_shape(&format!("{what} targets"), &targets.shape, &logits.shape)?;
    if loss.numel() != 1 {
        bail!("{what}: loss must hold one value, got shape {:?}", loss.shape);
    }
    expect_shape(&format!("{what} dlogits"), &dlogits.shape, &logits.shape)?;
    check_no_alias(what, &[loss, dlogits], &[Some(logits), Some(targets)])?;
    let params = Params { rows: rows as u32, classes: classes as u32, _p: [0; 2] };
    batch.dispatch(
        spec,
        &[("WG", CROSS_ENTROPY_WG)],
        &params,
        &[Some(logits), Some(targets), Some(loss), Some(dlogits)],
        [1, 1, 1],
    );
    Ok(())
}

/// Mean squared error of `logits` against `targets` (both `[B, C]`; regression has `C = 1`), as
/// torch's `MSELoss()`: `loss[0] = mean (x − y)²`, `dlogits = 2 (x − y) / (B·C)`.
pub fn mse(
    batch: &mut CommandRecorder,
    logits: &GpuTensor,
    targets: &GpuTensor,
    loss: &GpuTensor,
    dlogits: &GpuTensor,
) -> Result<()> {
    float_target_loss(batch, &MSE, logits, targets, loss, dlogits)
}

/// Mean binary cross-entropy of `sigmoid(logits)` against `targets` in `[0, 1]` (both `[B, C]`), as
/// torch's `BCEWithLogitsLoss()`, computed stably: `loss[0] = mean (max(x, 0) − x·y +
/// log(1 + exp(−|x|)))`, `dlogits = (sigmoid(x) − y) / (B·C)`.
pub fn bce_with_logits(
    batch: &mut CommandRecorder,
    logits: &GpuTensor,
    targets: &GpuTensor,
    loss: &GpuTensor,
    dlogits: &GpuTensor,
) -> Result<()> {
    float_target_loss(batch, &BCE_LOGITS, logits, targets, loss, dlogits)
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
