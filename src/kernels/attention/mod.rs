//! `shaders/attention.wgsl` + the shared matmul: BERT's masked multi-head self-attention,
//! forward and input gradients.
//!
//! Activations are `[batch·seq, heads·head_dim]` row-major (q, k, v, ctx and their gradients), the
//! mask is `[batch, seq]` f32 (1 = token, 0 = padding; masked keys get probability exactly 0) and the
//! probabilities are `[batch, heads, seq, seq]`. Per (batch, head) pair:
//!
//! forward:  `S = Q·Kᵀ/√hd` → `P = masked softmax(S)` (saved) → `ctx = P·V`
//! backward: `dP = dctx·Vᵀ` → `dS = P ⊙ (dP − rowsum(P ⊙ dP)) / √hd` → `dQ = dS·K`, `dK = dSᵀ·Q`,
//! `dV = Pᵀ·dctx`
//!
//! With dropout on the probabilities (training, [`ProbsDropout`]): `P' = dropout(P)` feeds `ctx = P'·V`;
//! backward regenerates `P'` for `dV = P'ᵀ·dctx` and applies the same mask to `dP' = dctx·Vᵀ` before
//! the softmax backward (the mask is drawn again, never stored).
//!
//! Q, K and V (and dQ, dK, dV) are three `[batch·seq, hidden]` tensors, or one packed
//! `[batch·seq, 3·hidden]` tensor with them side by side (`*_packed`: the fused QKV projection's
//! output, read and written through strided views, bit-identical to the separate tensors).
//!
//! Two implementations, chosen by the GPU's policy ([`AttentionKernel`], `PEFT_ATTENTION_KERNEL`):
//! `Separate` (`passes.rs`): the products are the matmul kernel over the (batch, head) pairs as an
//! `InnerBatch`, the row softmax and its backward one workgroup-cooperative pass each, dropout its
//! own kernel; `Fused` (`fused.rs`, sequences up to [`FUSED_MAX_SEQ`], heads up to
//! [`FUSED_MAX_HEAD_DIM`]): the forward in one dispatch,
//! the backward in two. Both take the same operands and save the same tensors. Every output is
//! summed in a fixed order: results are bit-identical run to run.

use super::dropout::{self, MaskKey, MaskLayout, Rate};
use super::elementwise::check_no_alias;
pub use crate::gpu::policy::{AttentionKernel, ATTENTION_KERNEL_ENV, FUSED_MAX_HEAD_DIM, FUSED_MAX_SEQ};
use crate::gpu::{Access, CommandRecorder, GpuTensor, KernelSpec};
use crate::shaders;
use anyhow::{bail, Result};
use passes::Act;

mod fused;
mod passes;
#[cfg(any(test, feature = "reference"))]
pub mod reference;
#[cfg(any(test, feature = "reference"))]
pub mod reference_dropout;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_dropout;
#[cfg(test)]
mod tests_fused;
#[cfg(test)]
mod tests_packed;

/// Shape of a multi-head self-attention call. Activations are `[batch·seq, heads·head_dim]`
/// (BERT's layout), the mask is `[batch, seq]` with 1 for real tokens and 0 for padding.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// `heads · head_dim`, the width of an activation row.
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// A row kernel (`attention.wgsl`) and its one-thread-a-row form over key quads, for rows of a
/// multiple of 4 keys where one thread takes a row.
struct RowKernel {
    keys: KernelSpec,
    quads: KernelSpec,
}

const fn row_spec(entry: &'static str) -> KernelSpec {
    KernelSpec { shader: &shaders::ATTENTION, entry, bindings: &[Access::Read, Access::ReadWrite] }
}

const SOFTMAX_ROWS: RowKernel = RowKernel { keys: row_spec("softmax_rows"), quads: row_spec("softmax_rows4") };
const SOFTMAX_BACKWARD: RowKernel =
    RowKernel { keys: row_spec("softmax_backward"), quads: row_spec("softmax_backward4") };

/// The row-thread softmax that also drops the probabilities it writes (rows of a multiple of 4
/// keys, CPU drivers): bindings mask, probabilities, dropped probabilities.
const SOFTMAX_ROWS4_DROPOUT: KernelSpec = KernelSpec {
    shader: &shaders::ATTENTION,
    entry: "softmax_rows4_dropout",
    bindings: &[Access::Read, Access::ReadWrite, Access::ReadWrite],
};

/// Its backward with the pair dropout in the same pass: bindings probabilities, dP' (dS on exit),
/// dropped probabilities.
const SOFTMAX_BACKWARD4_DROPOUT: KernelSpec =
    KernelSpec { entry: "softmax_backward4_dropout", ..SOFTMAX_ROWS4_DROPOUT };

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    seq: u32,
    heads: u32,
    row0: u32,
    scale: f32,
    threshold: u32,
    drop_scale: f32,
    step: u32,
    seed_lo: u32,
    seed_hi: u32,
    stream: u32,
    _p0: u32,
}

/// Every kernel of this module with the size of its parameter block (`kernels/bindings.rs` checks
/// them against the WGSL).
#[cfg(test)]
pub(crate) fn specs() -> Vec<(KernelSpec, usize)> {
    let p = std::mem::size_of::<Params>();
    let mut v: Vec<(KernelSpec, usize)> =
        [SOFTMAX_ROWS, SOFTMAX_BACKWARD].into_iter().flat_map(|k| [(k.keys, p), (k.quads, p)]).collect();
    v.push((SOFTMAX_ROWS4_DROPOUT, p));
    v.push((SOFTMAX_BACKWARD4_DROPOUT, p));
    v.extend(fused::specs());
    v
}

const WG: u32 = 64;

/// Number of elements of the probabilities (and of the backward scratch): `batch·heads·seq²`.
pub fn probs_len(s: AttentionShape) -> usize {
    s.batch * s.heads * s.seq * s.seq
}

/// The `[batch, heads, seq, seq]` shape of the saved probabilities and the backward scratch.
pub fn probs_shape(s: AttentionShape) -> [usize; 4] {
    [s.batch, s.heads, s.seq, s.seq]
}

/// Every set of override constants the host passes, per kernel (`kernels/translate.rs`): the
/// threads per row of every sequence length, on GPUs and CPU drivers.
#[cfg(test)]
pub(crate) fn launches() -> Vec<(KernelSpec, Vec<crate::kernels::Constants>)> {
    let mut sets: Vec<crate::kernels::Constants> = vec![];
    for seq in 1..=4096 {
        for cpu in [false, true] {
            for c in super::with_either_divmod(&constants(seq, cpu)) {
                if !sets.contains(&c) {
                    sets.push(c);
                }
            }
        }
    }
    let mut v: Vec<(KernelSpec, Vec<crate::kernels::Constants>)> = [SOFTMAX_ROWS, SOFTMAX_BACKWARD]
        .into_iter()
        .flat_map(|k| [(k.keys, sets.clone()), (k.quads, sets.clone())])
        .collect();
    v.push((SOFTMAX_ROWS4_DROPOUT, sets.clone()));
    v.push((SOFTMAX_BACKWARD4_DROPOUT, sets));
    v.extend(fused::launches());
    v
}

#[cfg(test)]
thread_local! {
    /// Tests: run the CPU drivers' (`Some(true)`) or the GPUs' (`Some(false)`) row layout on
    /// whatever device the tests have, so both are checked on lavapipe.
    pub(crate) static FORCE_CPU_ROWS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
thread_local! {
    /// Tests: the attention kernel to run instead of the policy's.
    pub(crate) static FORCE_KERNEL: std::cell::Cell<Option<AttentionKernel>> = const { std::cell::Cell::new(None) };
}

/// The kernels that run `s` on this recorder's GPU: the policy's ([`AttentionKernel`]), the
/// separate ones for sequences the fused kernels do not take.
pub fn kernel_for(batch: &CommandRecorder, s: AttentionShape) -> AttentionKernel {
    let k = batch.gpu().policy().attention_kernel;
    #[cfg(test)]
    let k = FORCE_KERNEL.with(|f| f.get()).unwrap_or(k);
    if k == AttentionKernel::Fused && !fused::supports(s) {
        return AttentionKernel::Separate;
    }
    k
}

/// Whether the row kernels use the CPU drivers' layout on this recorder's GPU.
fn cpu_rows(batch: &CommandRecorder) -> bool {
    let cpu = batch.gpu().policy().is_cpu;
    #[cfg(test)]
    let cpu = FORCE_CPU_ROWS.with(|f| f.get()).unwrap_or(cpu);
    cpu
}

/// Workgroup size and threads per row of the row kernels. GPUs: [`WG`] threads, about four keys
/// each per row. CPU drivers: 8 threads (one SIMD program on lavapipe, so the barriers meet
/// within one program; with 64 threads softmax was 3–5 % of a MiniLM step there), with the GPUs'
/// threads per row up to 8, so a row's sums keep several partials (one chain per row put the
/// AdapterFusion float64 parity test over its bound).
fn layout(seq: usize, cpu: bool) -> (u32, u32) {
    let tpr = (seq.div_ceil(4).next_power_of_two() as u32).min(WG);
    if cpu {
        (8, tpr.min(8))
    } else {
        (WG, tpr)
    }
}

/// The row kernels' override constants for rows of `seq` keys: on CPU drivers, rows of at most
/// [`ROW_KEYS`] keys one thread each (`ROW_THREAD`, the same bits as TPR threads a row).
fn constants(seq: usize, cpu: bool) -> [(&'static str, f64); 4] {
    let (wg, tpr) = layout(seq, cpu);
    let row_thread = row_thread(seq, cpu);
    let row_loop = if row_thread { seq.next_power_of_two() } else { ROW_KEYS };
    [
        ("WG", wg as f64),
        ("TPR", tpr as f64),
        ("ROW_THREAD", f64::from(u8::from(row_thread))),
        ("ROW_LOOP", row_loop as f64),
    ]
}

/// Keys a row may have for one thread to take it (`ROW_KEYS` in attention.wgsl).
const ROW_KEYS: usize = 128;

/// Whether one thread takes a whole row (CPU drivers, rows of at most [`ROW_KEYS`] keys).
fn row_thread(seq: usize, cpu: bool) -> bool {
    let on = cpu && seq <= ROW_KEYS;
    #[cfg(test)]
    let on = on && !NO_ROW_THREAD.with(|f| f.get());
    on
}

#[cfg(test)]
thread_local! {
    /// Tests: the CPU drivers' threads-per-row layout even for rows one thread could take.
    pub(crate) static NO_ROW_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Tests: one thread a row key by key even where the quad kernels apply.
    pub(crate) static NO_ROW_QUADS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a row of `seq` keys runs the one-thread-a-row kernels over key quads.
fn row_quads(seq: usize, cpu: bool) -> bool {
    let on = row_thread(seq, cpu) && seq % 4 == 0;
    #[cfg(test)]
    let on = on && !NO_ROW_QUADS.with(|f| f.get());
    on
}

/// Validates the shapes of every operand of an attention call.
fn check(
    what: &str,
    s: AttentionShape,
    acts: &[(&str, &GpuTensor)],
    mask: &GpuTensor,
    rows: &[(&str, &GpuTensor)],
) -> Result<()> {
    if s.batch == 0 || s.seq == 0 || s.heads == 0 || s.head_dim == 0 {
        bail!("{what}: every dimension of {s:?} must be at least 1");
    }
    let hidden = s.heads * s.head_dim;
    let tokens = s.batch * s.seq;
    for (name, t) in acts {
        if t.numel() != tokens * hidden || t.shape.last() != Some(&hidden) {
            bail!(
                "{what}: {name} must be [batch·seq, heads·head_dim] = [{tokens}, {hidden}] for {s:?}, got {:?}",
                t.shape
            );
        }
    }
    if mask.numel() != tokens {
        bail!("{what}: mask must hold batch·seq = {tokens} values, got shape {:?}", mask.shape);
    }
    for (name, t) in rows {
        if t.numel() != probs_len(s) {
            bail!("{what}: {name} must be [batch, heads, seq, seq] = {:?}, got {:?}", probs_shape(s), t.shape);
        }
    }
    if probs_len(s) > u32::MAX as usize || tokens * hidden > u32::MAX as usize {
        bail!("{what}: {s:?} is too large for u32 indexing");
    }
    Ok(())
}

fn row_kernel(batch: &mut CommandRecorder, kernel: &RowKernel, s: AttentionShape, a: &GpuTensor, b: &GpuTensor) {
    let cpu = cpu_rows(batch);
    let spec = if row_quads(s.seq, cpu) { &kernel.quads } else { &kernel.keys };
    row_dispatch(batch, spec, s, Params::default(), &[Some(a), Some(b)]);
}

/// One dispatch of a row kernel over the `[batch, heads, seq, seq]` rows of `s`, with `params`'
/// dropout words (if any) and the shape's own.
fn row_dispatch(
    batch: &mut CommandRecorder,
    spec: &KernelSpec,
    s: AttentionShape,
    params: Params,
    tensors: &[Option<&GpuTensor>],
) {
    let rows = s.batch * s.heads * s.seq;
    let cpu = cpu_rows(batch);
    let (wg, tpr) = layout(s.seq, cpu);
    let params = Params {
        rows: rows as u32,
        seq: s.seq as u32,
        heads: s.heads as u32,
        scale: 1.0 / (s.head_dim as f32).sqrt(),
        ..params
    };
    let rows_per_group = if row_thread(s.seq, cpu) { wg } else { wg / tpr };
    let groups = (rows as u32).div_ceil(rows_per_group);
    // The row-thread kernels split a row index by seq, heads and heads · seq: every dividend and
    // divisor is at most the rows (batch ≥ 1).
    let [wg_c, tpr_c, thread_c, loop_c] = constants(s.seq, cpu);
    let constants = [wg_c, tpr_c, thread_c, loop_c, super::divmod_override(rows)];
    batch.dispatch(spec, &constants, &params, tensors, [groups, 1, 1]);
}

/// The softmax of the scores in `probs` (in place) and, in the same pass, their dropout into
/// `d.work`, where one thread takes a row over key quads (CPU drivers, rows of a multiple of 4
/// keys): the bits of the softmax followed by [`dropout::apply`]. `false` (nothing recorded)
/// where that layout does not apply.
fn softmax_with_dropout(
    batch: &mut CommandRecorder,
    s: AttentionShape,
    mask: &GpuTensor,
    probs: &GpuTensor,
    d: &ProbsDropout,
) -> Result<bool> {
    if !row_quads(s.seq, cpu_rows(batch)) {
        return Ok(false);
    }
    let params = d.row_params(s)?;
    row_dispatch(batch, &SOFTMAX_ROWS4_DROPOUT, s, params, &[Some(mask), Some(probs), Some(d.work)]);
    Ok(true)
}

/// The backward's counterpart of [`softmax_with_dropout`]: from the saved `probs` and dP' in
/// `grad`, P' into `d.work` and dS into `grad` (in place), in one pass where one thread takes a
/// row over key quads: the bits of [`dropout::apply_pair`] followed by the softmax backward.
/// `false` (nothing recorded) where that layout does not apply.
fn softmax_backward_with_dropout(
    batch: &mut CommandRecorder,
    s: AttentionShape,
    probs: &GpuTensor,
    grad: &GpuTensor,
    d: &ProbsDropout,
) -> Result<bool> {
    if !row_quads(s.seq, cpu_rows(batch)) {
        return Ok(false);
    }
    let params = d.row_params(s)?;
    row_dispatch(batch, &SOFTMAX_BACKWARD4_DROPOUT, s, params, &[Some(probs), Some(grad), Some(d.work)]);
    Ok(true)
}

impl ProbsDropout<'_> {
    /// The row kernels' dropout words for this mask.
    fn row_params(&self, s: AttentionShape) -> Result<Params> {
        let k = dropout::draw_key(self.key, self.rate)?;
        let row0 = u32::try_from(self.row0)
            .ok()
            .filter(|r| r.checked_add((s.batch * s.seq) as u32).is_some())
            .ok_or_else(|| anyhow::anyhow!("attention dropout: row {} exceeds u32 indexing", self.row0))?;
        Ok(Params {
            row0,
            threshold: k.threshold,
            drop_scale: k.scale,
            step: k.step,
            seed_lo: k.seed_lo,
            seed_hi: k.seed_hi,
            stream: k.stream,
            ..Default::default()
        })
    }
}

/// Dropout on the attention probabilities (training): the mask of `key` over the probabilities'
/// rows (the batch's first sequence starts at token row `row0`, see [`MaskLayout::Attention`]), and
/// `work`, one more `[batch, heads, seq, seq]` tensor distinct from every operand.
#[derive(Clone, Copy)]
pub struct ProbsDropout<'a> {
    pub key: MaskKey,
    pub rate: Rate,
    pub row0: usize,
    pub work: &'a GpuTensor,
}

impl ProbsDropout<'_> {
    fn apply(&self, batch: &mut CommandRecorder, s: AttentionShape, x: &GpuTensor, out: &GpuTensor) -> Result<()> {
        let layout = MaskLayout::Attention { heads: s.heads, seq: s.seq, row0: self.row0 };
        dropout::apply(batch, self.key, self.rate, layout, x, out)
    }

    /// [`apply`](Self::apply) to `x` into `out` and to `z` in place, in one dispatch.
    fn apply_pair(
        &self,
        batch: &mut CommandRecorder,
        s: AttentionShape,
        x: &GpuTensor,
        out: &GpuTensor,
        z: &GpuTensor,
    ) -> Result<()> {
        let layout = MaskLayout::Attention { heads: s.heads, seq: s.seq, row0: self.row0 };
        dropout::apply_pair(batch, self.key, self.rate, layout, x, out, z)
    }
}

/// `ctx = softmax(q·kᵀ/√head_dim, masked)·v` per batch and head; saves the probabilities in `probs`
/// (`[batch, heads, seq, seq]`, needed by [`attention_backward`]). `probs` and `ctx` must not share
/// a buffer with an input or each other. A query whose keys are all masked gets zero probabilities
/// (and a zero context).
pub fn attention_forward(
    batch: &mut CommandRecorder,
    s: AttentionShape,
    q: &GpuTensor,
    k: &GpuTensor,
    v: &GpuTensor,
    mask: &GpuTensor,
    probs: &GpuTensor,
    ctx: &GpuTensor,
) -> Result<()> {
    attention_forward_with(batch, s, q, k, v, mask, probs, ctx, None)
}

/// The `[batch, heads, seq, seq]` operands of a call (probabilities, scratch, dropout work).
fn row_operands<'a>(named: [(&'a str, Option<&'a GpuTensor>); 3]) -> Vec<(&'a str, &'a GpuTensor)> {
    named.into_iter().filter_map(|(n, t)| t.map(|t| (n, t))).collect()
}

/// [`attention_forward`], with dropout on the probabilities when `dropout` is given: `probs` keeps
/// the softmax (what backward needs), `dropout.work` receives the dropped probabilities `P'` and
/// `ctx = P'·v`.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_with(
    batch: &mut CommandRecorder,
    s: AttentionShape,
    q: &GpuTensor,
    k: &GpuTensor,
    v: &GpuTensor,
    mask: &GpuTensor,
    probs: &GpuTensor,
    ctx: &GpuTensor,
    dropout: Option<ProbsDropout>,
) -> Result<()> {
    let work = dropout.map(|d| d.work);
    let rows = row_operands([("probs", Some(probs)), ("dropout work", work), ("", None)]);
    check("attention_forward", s, &[("q", q), ("k", k), ("v", v), ("ctx", ctx)], mask, &rows)?;
    let outputs: Vec<&GpuTensor> = [Some(probs), Some(ctx), work].into_iter().flatten().collect();
    check_no_alias("attention_forward", &outputs, &[Some(q), Some(k), Some(v), Some(mask)])?;
    forward(batch, s, [q, k, v].map(|t| Act::whole(t, s)), mask, probs, ctx, dropout)
}

/// The forward of validated operands through the kernels of [`kernel_for`].
fn forward(
    batch: &mut CommandRecorder,
    s: AttentionShape,
    acts: passes::Qkv,
    mask: &GpuTensor,
    probs: &GpuTensor,
    ctx: &GpuTensor,
    dropout: Option<ProbsDropout>,
) -> Result<()> {
    match kernel_for(batch, s) {
        AttentionKernel::Fused => fused::forward(batch, s, acts, mask, probs, ctx, dropout),
        AttentionKernel::Separate => passes::forward(batch, s, acts, mask, probs, Act::whole(ctx, s), dropout),
    }
}

/// Checks that `t` is a packed `[batch·seq, 3·heads·head_dim]` Q|K|V tensor (or its gradient).
fn check_packed(what: &str, s: AttentionShape, name: &str, t: &GpuTensor) -> Result<()> {
    let (tokens, hidden) = (s.batch * s.seq, s.hidden());
    if t.shape != [tokens, 3 * hidden] {
        bail!(
            "{what}: {name} must be [batch·seq, 3·heads·head_dim] = [{tokens}, {}] for {s:?}, got {:?}",
            3 * hidden,
            t.shape
        );
    }
    if tokens * 3 * hidden > u32::MAX as usize {
        bail!("{what}: {s:?} is too large for u32 indexing");
    }
    Ok(())
}

/// [`attention_forward_with`] reading Q, K and V from one packed `[batch·seq, 3·hidden]` tensor
/// (columns `0..hidden` Q, then K, then V: the fused QKV projection's output), as strided views.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_packed(
    batch: &mut CommandRecorder,
    s: AttentionShape,
    qkv: &GpuTensor,
    mask: &GpuTensor,
    probs: &GpuTensor,
    ctx: &GpuTensor,
    dropout: Option<ProbsDropout>,
) -> Result<()> {
    let work = dropout.map(|d| d.work);
    let rows = row_operands([("probs", Some(probs)), ("dropout work", work), ("", None)]);
    check("attention_forward", s, &[("ctx", ctx)], mask, &rows)?;
    check_packed("attention_forward", s, "qkv", qkv)?;
    let outputs: Vec<&GpuTensor> = [Some(probs), Some(ctx), work].into_iter().flatten().collect();
    check_no_alias("attention_forward", &outputs, &[Some(qkv), Some(mask)])?;
    forward(batch, s, [0, 1, 2].map(|i| Act::packed(qkv, s, i)), mask, probs, ctx, dropout)
}

/// Gradients of [`attention_forward`] with respect to q, k and v (all overwritten), given the saved
/// `probs` and `dctx`. `scratch` (`[batch, heads, seq, seq]`) receives dS. The outputs and
/// `scratch` must not share a buffer with an input or each other.
pub fn attention_backward(
    batch: &mut CommandRecorder,
    s: AttentionShape,
    q: &GpuTensor,
    k: &GpuTensor,
    v: &GpuTensor,
    mask: &GpuTensor,
    probs: &GpuTensor,
    dctx: &GpuTensor,
    dq: &GpuTensor,
    dk: &GpuTensor,
    dv: &GpuTensor,
    scratch: &GpuTensor,
) -> Result<()> {
    attention_backward_with(batch, s, q, k, v, mask, probs, dctx, dq, dk, dv, scratch, None)
}

/// [`attention_backward`] of [`attention_forward_with`]: with `dropout` (the forward's key, rate
/// and row), its mask is drawn again for `dV = P'ᵀ·dctx` and for `dP = mask ⊙ dP' / (1 − p)`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_with(
    batch: &mut CommandRecorder,
    s: AttentionShape,
    q: &GpuTensor,
    k: &GpuTensor,
    v: &GpuTensor,
    mask: &GpuTensor,
    probs: &GpuTensor,
    dctx: &GpuTensor,
    dq: &GpuTensor,
    dk: &GpuTensor,
    dv: &GpuTensor,
    scratch: &GpuTensor,
    dropout: Option<ProbsDropout>,
) -> Result<()> {
    let work = dropout.map(|d| d.work);
    let rows = row_operands([("probs", Some(probs)), ("scratch", Some(scratch)), ("dropout work", work)]);
    check(
        "attention_backward",
        s,
        &[("q", q), ("k", k), ("v", v), ("dctx", dctx), ("dq", dq), ("dk", dk), ("dv", dv)],
        mask,
        &rows,
    )?;
    let outputs: Vec<&GpuTensor> = [Some(dq), Some(dk), Some(dv), Some(scratch), work].into_iter().flatten().collect();
    check_no_alias("attention_backward", &outputs, &[Some(q), Some(k), Some(v), Some(mask), Some(probs), Some(dctx)])?;
    let (qkv, grads) = ([q, k, v].map(|t| Act::whole(t, s)), [dq, dk, dv].map(|t| Act::whole(t, s)));
    backward(batch, s, qkv, probs, dctx, grads, scratch, dropout)
}

/// The backward of validated operands through the kernels of [`kernel_for`].
#[allow(clippy::too_many_arguments)]
fn backward(
    batch: &mut CommandRecorder,
    s: AttentionShape,
    acts: passes::Qkv,
    probs: &GpuTensor,
    dctx: &GpuTensor,
    grads: passes::Qkv,
    scratch: &GpuTensor,
    dropout: Option<ProbsDropout>,
) -> Result<()> {
    match kernel_for(batch, s) {
        AttentionKernel::Fused => fused::backward(batch, s, acts, probs, dctx, grads, scratch, dropout),
        AttentionKernel::Separate => {
            passes::backward(batch, s, acts, probs, Act::whole(dctx, s), grads, scratch, dropout)
        }
    }
}

/// [`attention_backward_with`] of [`attention_forward_packed`]: reads Q, K, V from the packed `qkv`
/// and writes dQ, dK, dV into the packed `dqkv` (same layout; every element overwritten).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_packed(
    batch: &mut CommandRecorder,
    s: AttentionShape,
    qkv: &GpuTensor,
    mask: &GpuTensor,
    probs: &GpuTensor,
    dctx: &GpuTensor,
    dqkv: &GpuTensor,
    scratch: &GpuTensor,
    dropout: Option<ProbsDropout>,
) -> Result<()> {
    let work = dropout.map(|d| d.work);
    let rows = row_operands([("probs", Some(probs)), ("scratch", Some(scratch)), ("dropout work", work)]);
    check("attention_backward", s, &[("dctx", dctx)], mask, &rows)?;
    check_packed("attention_backward", s, "qkv", qkv)?;
    check_packed("attention_backward", s, "dqkv", dqkv)?;
    let outputs: Vec<&GpuTensor> = [Some(dqkv), Some(scratch), work].into_iter().flatten().collect();
    check_no_alias("attention_backward", &outputs, &[Some(qkv), Some(mask), Some(probs), Some(dctx)])?;
    let (acts, grads) = ([0, 1, 2].map(|i| Act::packed(qkv, s, i)), [0, 1, 2].map(|i| Act::packed(dqkv, s, i)));
    backward(batch, s, acts, probs, dctx, grads, scratch, dropout)
}
