//! `shaders/attention_fused.wgsl`: attention forward in one dispatch (scores, mask, softmax,
//! probability dropout and `P'·V`), backward in two (per query row: `dP`, the dropout mask, the
//! softmax backward into the scratch tensor and `dQ`; per key row: `dK` and `dV`). The operands
//! and outputs are those of the separate path (`passes.rs`), in the same layouts, so the encoder's
//! saved activations and the memory planner do not change; `mod.rs` validates them and picks the
//! path ([`AttentionKernel`](crate::gpu::AttentionKernel), [`supports`]).
//!
//! With dropout the forward writes `P'` into the dropout work tensor (as the separate path does)
//! and the backward's row pass writes it again there for the key pass, so each mask word is drawn
//! once per pass, row by row (four columns a draw), never column by column.

use super::passes::Qkv;
use super::{AttentionShape, ProbsDropout};
use crate::gpu::policy::{FUSED_MAX_HEAD_DIM, FUSED_MAX_SEQ};
use crate::gpu::{Access, CommandRecorder, GpuTensor, KernelSpec};
use crate::shaders;
use anyhow::{bail, Result};

use Access::{Read as R, ReadWrite as W};

const FORWARD: KernelSpec = KernelSpec {
    shader: &shaders::ATTENTION_FUSED,
    entry: "attention_fused_forward",
    bindings: &[R, R, R, R, W, W, W],
};
const BACKWARD_ROWS: KernelSpec = KernelSpec {
    shader: &shaders::ATTENTION_FUSED,
    entry: "attention_fused_backward_rows",
    bindings: &[R, R, R, R, W, W, W],
};
const BACKWARD_KEYS: KernelSpec = KernelSpec {
    shader: &shaders::ATTENTION_FUSED,
    entry: "attention_fused_backward_keys",
    bindings: &[R, R, R, R, W, W],
};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    pairs: u32,
    seq: u32,
    heads: u32,
    head_dim: u32,
    in_stride: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
    out_stride: u32,
    dq_off: u32,
    dk_off: u32,
    dv_off: u32,
    scale: f32,
    drop: u32,
    threshold: u32,
    keep_scale: f32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    stream: u32,
    row0: u32,
    blocks: u32,
    _p: [u32; 2],
}

/// Every kernel of this file with the size of its parameter block (`kernels/bindings.rs`).
#[cfg(test)]
pub(super) fn specs() -> Vec<(KernelSpec, usize)> {
    let p = std::mem::size_of::<Params>();
    vec![(FORWARD, p), (BACKWARD_ROWS, p), (BACKWARD_KEYS, p)]
}

/// The workgroup sizes the host passes (`kernels/translate.rs`, `kernels/limits.rs`).
#[cfg(test)]
pub(super) fn launches() -> Vec<(KernelSpec, Vec<crate::kernels::Constants>)> {
    let mut sets: Vec<crate::kernels::Constants> = vec![];
    for seq in 1..=FUSED_MAX_SEQ {
        for cpu in [false, true] {
            let c = vec![("WG", workgroup(seq, cpu) as f64)];
            if !sets.contains(&c) {
                sets.push(c);
            }
        }
    }
    specs().into_iter().map(|(s, _)| (s, sets.clone())).collect()
}

/// Rows (invocations) per workgroup: 8 on CPU drivers (one SIMD program on lavapipe); on GPUs
/// the sequence rounded up to a power of two, from 8 to 64.
fn workgroup(seq: usize, cpu: bool) -> u32 {
    if cpu {
        8
    } else {
        (seq.next_power_of_two() as u32).clamp(8, 64)
    }
}

/// Whether the fused kernels take this shape: sequences up to [`FUSED_MAX_SEQ`], heads up to
/// [`FUSED_MAX_HEAD_DIM`] (the shader's `MAX_HD`).
pub(super) fn supports(s: AttentionShape) -> bool {
    s.seq <= FUSED_MAX_SEQ && s.head_dim <= FUSED_MAX_HEAD_DIM
}

/// The parameters shared by the three kernels; `grads` are dQ, dK, dV (backward) or unused.
fn params(
    s: AttentionShape,
    wg: u32,
    acts: &Qkv,
    grads: Option<&Qkv>,
    dropout: Option<ProbsDropout>,
) -> Result<Params> {
    let [q, k, v] = acts;
    if k.stride != q.stride || v.stride != q.stride {
        bail!("fused attention: Q, K and V must share a row stride");
    }
    let mut p = Params {
        pairs: (s.batch * s.heads) as u32,
        seq: s.seq as u32,
        heads: s.heads as u32,
        head_dim: s.head_dim as u32,
        in_stride: q.stride as u32,
        q_off: q.off as u32,
        k_off: k.off as u32,
        v_off: v.off as u32,
        scale: 1.0 / (s.head_dim as f32).sqrt(),
        blocks: (s.seq as u32).div_ceil(wg),
        ..Default::default()
    };
    if let Some([dq, dk, dv]) = grads {
        if dk.stride != dq.stride || dv.stride != dq.stride {
            bail!("fused attention: dQ, dK and dV must share a row stride");
        }
        (p.out_stride, p.dq_off, p.dk_off, p.dv_off) = (dq.stride as u32, dq.off as u32, dk.off as u32, dv.off as u32);
    }
    if let Some(d) = dropout {
        let stream = d.key.stream()?;
        if u32::try_from(d.row0 + s.batch * s.seq).is_err() {
            bail!("fused attention: dropout rows from {} exceed u32 indexing", d.row0);
        }
        p.drop = 1;
        p.threshold = d.rate.threshold();
        p.keep_scale = d.rate.scale();
        (p.seed_lo, p.seed_hi) = (d.key.seed as u32, (d.key.seed >> 32) as u32);
        (p.step, p.stream, p.row0) = (d.key.step, stream, d.row0 as u32);
    }
    Ok(p)
}

/// The 1-D grid of `p`: `pairs · blocks` workgroups.
fn groups(p: &Params) -> Result<[u32; 3]> {
    match p.pairs.checked_mul(p.blocks) {
        Some(n) => Ok([n, 1, 1]),
        None => bail!("fused attention: {} (batch, head) pairs are too many for one grid", p.pairs),
    }
}

/// `probs = softmax(scale·Q·Kᵀ, masked)`, `P' = dropout(probs)` into `dropout.work`, `ctx = P'·V`.
pub(super) fn forward(
    batch: &mut CommandRecorder,
    s: AttentionShape,
    acts: Qkv,
    mask: &GpuTensor,
    probs: &GpuTensor,
    ctx: &GpuTensor,
    dropout: Option<ProbsDropout>,
) -> Result<()> {
    let wg = workgroup(s.seq, super::cpu_rows(batch));
    let p = params(s, wg, &acts, None, dropout)?;
    let [q, k, v] = acts;
    let (n, hd) = ((s.batch * s.heads * s.seq) as f64, s.head_dim as f64);
    // Q, K, V read and ctx written once; probs (and P') written.
    batch.cost(4.0 * n * s.seq as f64 * hd, 4.0 * (4.0 * n * hd + 2.0 * n * s.seq as f64));
    let work = dropout.map(|d| d.work);
    batch.dispatch(
        &FORWARD,
        &[("WG", wg as f64)],
        &p,
        &[Some(mask), Some(q.t), Some(k.t), Some(v.t), Some(probs), work, Some(ctx)],
        groups(&p)?,
    );
    Ok(())
}

/// dQ, dK, dV from the saved `probs` and `dctx`; `scratch` receives dS, `dropout.work` P'.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    batch: &mut CommandRecorder,
    s: AttentionShape,
    acts: Qkv,
    probs: &GpuTensor,
    dctx: &GpuTensor,
    grads: Qkv,
    scratch: &GpuTensor,
    dropout: Option<ProbsDropout>,
) -> Result<()> {
    let wg = workgroup(s.seq, super::cpu_rows(batch));
    let p = params(s, wg, &acts, Some(&grads), dropout)?;
    let ([q, k, v], [dq, dk, dv]) = (acts, grads);
    let constants = [("WG", wg as f64)];
    let (n, hd) = ((s.batch * s.heads * s.seq) as f64, s.head_dim as f64);
    let (act_bytes, row_bytes) = (4.0 * n * hd, 4.0 * n * s.seq as f64);
    let work = dropout.map(|d| d.work);
    batch.cost(4.0 * n * s.seq as f64 * hd, 4.0 * act_bytes + 3.0 * row_bytes);
    let rows = [Some(k.t), Some(v.t), Some(probs), Some(dctx), Some(scratch), work, Some(dq.t)];
    batch.dispatch(&BACKWARD_ROWS, &constants, &p, &rows, groups(&p)?);
    // The key pass reads P' where dropout dropped some of P, else P itself.
    let pd = work.unwrap_or(probs);
    batch.cost(4.0 * n * s.seq as f64 * hd, 4.0 * act_bytes + 2.0 * row_bytes);
    // dK and dV in one packed tensor: bound once (WebGPU rejects a buffer in two writable slots).
    let packed = std::sync::Arc::ptr_eq(&dk.t.buffer, &dv.t.buffer);
    let keys = [Some(q.t), Some(dctx), Some(scratch), Some(pd), Some(dk.t), (!packed).then_some(dv.t)];
    let key_constants = [constants[0], ("KV_PACKED", if packed { 1.0 } else { 0.0 })];
    batch.dispatch(&BACKWARD_KEYS, &key_constants, &p, &keys, groups(&p)?);
    Ok(())
}
