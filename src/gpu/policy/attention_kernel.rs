//! [`AttentionKernel`]: which kernels compute masked self-attention (`kernels::attention`).

use super::DeviceFacts;
use anyhow::{bail, Result};

/// How masked self-attention runs: `Fused` is `shaders/attention_fused.wgsl` (the forward in one
/// dispatch: scores, mask, softmax, probability dropout and `P'·V`; the backward in two: one
/// invocation per query row, then one per key row), `Separate` the shared matmul over the
/// (batch, head) pairs plus the row kernels of `shaders/attention.wgsl` and the dropout kernel
/// (3–4 dispatches forward, 5–7 backward). Both save the probabilities the same way and draw the
/// same dropout masks; sums run in other orders, so they agree to fp32 rounding, not bit for bit.
/// Fused takes sequences up to [`FUSED_MAX_SEQ`] and heads up to [`FUSED_MAX_HEAD_DIM`] wide;
/// other shapes run separate whatever the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    Fused,
    Separate,
}

/// The longest sequence the fused kernels take (each invocation walks a whole row of keys).
pub const FUSED_MAX_SEQ: usize = 512;
/// The widest head the fused kernels take (each invocation keeps a row of a head in private arrays).
pub const FUSED_MAX_HEAD_DIM: usize = 128;

impl AttentionKernel {
    pub fn name(self) -> &'static str {
        match self {
            AttentionKernel::Fused => "fused",
            AttentionKernel::Separate => "separate",
        }
    }

    /// `fused` or `separate` (case-insensitive).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fused" => Ok(AttentionKernel::Fused),
            "separate" => Ok(AttentionKernel::Separate),
            _ => bail!("unknown attention kernel {s:?} (expected fused or separate)"),
        }
    }

    /// The device rule: fused on GPUs (3 dispatches a layer instead of 8, what issue 15 asks for;
    /// not measured on a GPU yet), separate on CPU drivers, where lavapipe ran the fused kernels
    /// 4–8× slower than the subgroup matmul and row kernels they replace (one lane a row: every
    /// load of a row is a gather there; bench/NOTES.md, "Fused attention").
    pub fn for_device(facts: &DeviceFacts) -> Self {
        if facts.is_cpu() {
            AttentionKernel::Separate
        } else {
            AttentionKernel::Fused
        }
    }
}
