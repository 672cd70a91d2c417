//! The products and row kernels of one attention forward or backward, over activations that are
//! whole `[tokens, hidden]` tensors or thirds of a packed `[tokens, 3·hidden]` Q|K|V tensor (the
//! fused QKV projection's output and its gradient). The callers in `mod.rs` validate the operands.

use super::{
    row_kernel, softmax_backward_with_dropout, softmax_with_dropout, AttentionShape, ProbsDropout, SOFTMAX_BACKWARD,
    SOFTMAX_ROWS,
};
use crate::gpu::{CommandRecorder, GpuTensor};
use crate::kernels::matmul::{InnerBatch, Matmul, View};
use anyhow::Result;

/// One `[tokens, heads·head_dim]` activation inside a tensor: its first column and row stride (a
/// whole `[tokens, hidden]` tensor, or one third of a packed `[tokens, 3·hidden]` Q|K|V tensor).
#[derive(Clone, Copy)]
pub(super) struct Act<'a> {
    pub(super) t: &'a GpuTensor,
    pub(super) off: usize,
    pub(super) stride: usize,
}

impl<'a> Act<'a> {
    pub(super) fn whole(t: &'a GpuTensor, s: AttentionShape) -> Self {
        Self { t, off: 0, stride: s.hidden() }
    }
    /// Q (`i = 0`), K (1) or V (2) of a packed `[tokens, 3·hidden]` tensor.
    pub(super) fn packed(t: &'a GpuTensor, s: AttentionShape, i: usize) -> Self {
        Self { t, off: i * s.hidden(), stride: 3 * s.hidden() }
    }
}

/// Views of one (batch, head) pair, with the head as the inner batch.
struct Layout {
    s: AttentionShape,
}

impl Layout {
    /// `[seq, head_dim]` slice of an activation (rows = tokens).
    fn act<'a>(&self, a: Act<'a>) -> View<'a> {
        View::rows(a.t, a.stride).offset(a.off).batch_stride(self.s.seq * a.stride)
    }
    /// Its transpose `[head_dim, seq]`.
    fn act_t<'a>(&self, a: Act<'a>) -> View<'a> {
        View::transposed(a.t, a.stride).offset(a.off).batch_stride(self.s.seq * a.stride)
    }
    /// `[seq, seq]` slice of probabilities / scores.
    fn rows<'a>(&self, t: &'a GpuTensor) -> View<'a> {
        View::rows(t, self.s.seq).batch_stride(self.s.heads * self.s.seq * self.s.seq)
    }
    /// Its transpose.
    fn rows_t<'a>(&self, t: &'a GpuTensor) -> View<'a> {
        View::transposed(t, self.s.seq).batch_stride(self.s.heads * self.s.seq * self.s.seq)
    }
    /// Head stride of an activation and of a probability tensor.
    fn inner(&self, a: Which, b: Which, c: Which) -> InnerBatch {
        let st = |w: Which| match w {
            Which::Act => self.s.head_dim,
            Which::Rows => self.s.seq * self.s.seq,
        };
        InnerBatch { count: self.s.heads, a: st(a), b: st(b), c: st(c) }
    }
}

#[derive(Clone, Copy)]
enum Which {
    Act,
    Rows,
}

/// Q, K and V (or their gradients) as three activations.
pub(super) type Qkv<'a> = [Act<'a>; 3];

/// `S = scale·Q·Kᵀ` → masked softmax (saved in `probs`) → optional dropout → `ctx = P'·V`.
pub(super) fn forward(
    batch: &mut CommandRecorder,
    s: AttentionShape,
    [q, k, v]: Qkv,
    mask: &GpuTensor,
    probs: &GpuTensor,
    ctx: Act,
    dropout: Option<ProbsDropout>,
) -> Result<()> {
    let l = Layout { s };
    let (n, hd) = (s.seq, s.head_dim);
    let scale = 1.0 / (hd as f32).sqrt();
    // S = scale · Q Kᵀ
    Matmul::new(n, n, hd).batch(s.batch).alpha(scale).run_inner(
        batch,
        l.inner(Which::Act, Which::Act, Which::Rows),
        l.act(q),
        l.act_t(k),
        None,
        l.rows(probs),
    )?;
    // P = softmax(S) in place, and P' = dropout(P) when training with dropout (in the same pass
    // where one thread takes a row over key quads)
    let used = match dropout {
        Some(d) => {
            if !softmax_with_dropout(batch, s, mask, probs, &d)? {
                row_kernel(batch, &SOFTMAX_ROWS, s, mask, probs);
                d.apply(batch, s, probs, d.work)?;
            }
            d.work
        }
        None => {
            row_kernel(batch, &SOFTMAX_ROWS, s, mask, probs);
            probs
        }
    };
    // ctx = P' V
    Matmul::new(n, hd, n).batch(s.batch).run_inner(
        batch,
        l.inner(Which::Rows, Which::Act, Which::Act),
        l.rows(used),
        l.act(v),
        None,
        l.act(ctx),
    )?;
    Ok(())
}

/// dQ, dK, dV of [`forward`] from the saved `probs` and `dctx`; `scratch` receives dS.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    batch: &mut CommandRecorder,
    s: AttentionShape,
    [q, k, v]: Qkv,
    probs: &GpuTensor,
    dctx: Act,
    [dq, dk, dv]: Qkv,
    scratch: &GpuTensor,
    dropout: Option<ProbsDropout>,
) -> Result<()> {
    let l = Layout { s };
    let (n, hd) = (s.seq, s.head_dim);
    let pv = Matmul::new(n, hd, n).batch(s.batch);
    let pv_inner = l.inner(Which::Rows, Which::Act, Which::Act);
    // dP = dctx Vᵀ (with dropout: dP', made dP below)
    Matmul::new(n, n, hd).batch(s.batch).run_inner(
        batch,
        l.inner(Which::Act, Which::Act, Which::Rows),
        l.act(dctx),
        l.act_t(v),
        None,
        l.rows(scratch),
    )?;
    // dS = scale · P ⊙ (dP − rowsum(P ⊙ dP)), in place in scratch. With dropout, one mask drawn
    // once for both P' = dropout(P) into work (regenerated, for dV = P'ᵀ dctx) and
    // dP = dropout(dP'), in the softmax backward's pass where one thread takes a row over quads.
    let ds = scratch;
    if let Some(d) = dropout {
        if !softmax_backward_with_dropout(batch, s, probs, ds, &d)? {
            d.apply_pair(batch, s, probs, d.work, ds)?;
            row_kernel(batch, &SOFTMAX_BACKWARD, s, probs, ds);
        }
        pv.run_inner(batch, pv_inner, l.rows_t(d.work), l.act(dctx), None, l.act(dv))?;
    } else {
        row_kernel(batch, &SOFTMAX_BACKWARD, s, probs, ds);
    }
    // dQ = dS K
    pv.run_inner(batch, pv_inner, l.rows(ds), l.act(k), None, l.act(dq))?;
    // dK = dSᵀ Q
    pv.run_inner(batch, pv_inner, l.rows_t(ds), l.act(q), None, l.act(dk))?;
    if dropout.is_none() {
        // dV = Pᵀ dctx
        pv.run_inner(batch, pv_inner, l.rows_t(probs), l.act(dctx), None, l.act(dv))?;
    }
    Ok(())
}
