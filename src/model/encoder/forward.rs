//! One layer's forward: attention, FFN, and the adapter (or AdapterFusion) on each sub-layer.

use super::super::adapters::{AdapterModule, Location, Placement};
use super::super::store::{ffn_row_stride, LayerWeights};
use super::acts::{AdapterActs, Around, LayerActs, SubActs};
use super::dropout::RowsDropout;
use super::{t, Encoder, Setup};
use crate::gpu::{CommandRecorder, GpuTensor};
use crate::kernels::adapter::Residual;
use crate::kernels::attention::{self, AttentionShape};
use crate::kernels::dropout::Site;
use crate::kernels::matmul::{linear_parts, Epilogue, Matmul, View};
use crate::kernels::{elementwise, layernorm};
use anyhow::Result;

impl Encoder {
    /// One layer's forward: its activations and the FFN output dense result `h2`. `recomputing`
    /// when it runs again for backward (`--recompute`), where nothing but the activations may
    /// change (no fusion weights are recorded twice); `ffn_out`: a saved `h2` to use instead of
    /// computing it (`--keep-ffn-output`; saved after its dropout). `dropout`: the training pass's
    /// dropout over these rows of the batch. `head_rows`: after the attention, compute only the
    /// first token of each sequence (the rows a sequence head reads: the top layer's output is
    /// then `[batch, hidden]`); the attention itself still runs over every row.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layer_forward<'s>(
        &self,
        b: &mut CommandRecorder,
        w: &LayerWeights,
        setup: &'s Setup,
        l: usize,
        x: &GpuTensor,
        mask: &GpuTensor,
        s: AttentionShape,
        recomputing: bool,
        ffn_out: Option<&GpuTensor>,
        dropout: Option<RowsDropout>,
        head_rows: bool,
    ) -> Result<(LayerActs<'s>, GpuTensor)> {
        let gpu = &self.gpu;
        let (d, tok) = (self.dims.hidden, s.batch * s.seq);
        // The profiler's phases: `layer l / <part> fwd`, or `recompute` when it runs again for backward.
        let pass = if recomputing { "recompute" } else { "fwd" };
        b.phase(format_args!("layer {l} / attention {pass}"));
        // Q, K and V in one product over the concatenated weights; attention reads them as views.
        // CPU drivers: three products into the same columns (the same bits; one over the 3d × d
        // weight ran ≈ 1.4× slower than the three on lavapipe, its weight no longer in cache).
        let qkv = t(gpu, &[tok, 3 * d])?;
        let parts = if gpu.policy().is_cpu { 3 } else { 1 };
        linear_parts(b, x, &w.qkv_w, Some(&w.qkv_b), &qkv, parts)?;
        let probs = t(gpu, &[s.batch, s.heads, s.seq, s.seq])?;
        let ctx = t(gpu, &[tok, d])?;
        let mut work = None;
        let probs_dropout = self.probs_dropout(dropout, l, s, &mut work)?;
        attention::attention_forward_packed(b, s, &qkv, mask, &probs, &ctx, probs_dropout)?;
        drop(work); // the dropped probabilities: P·V has them, nothing else needs them

        // From here on every row, or the first token of each sequence (`head_rows`): the output
        // dense reads those rows of the context in place, the residual is gathered, and their
        // dropout masks are the ones those rows draw in the whole batch.
        let (rows, ctx_rows, x_rows, dropout) = if head_rows {
            let x_rows = t(gpu, &[s.batch, d])?;
            elementwise::gather_rows(b, x, s.seq, &x_rows)?;
            let every_seq = View { s_row: s.seq * d, ..View::rows(&ctx, d) };
            (s.batch, every_seq, x_rows, dropout.map(|r| r.first_tokens(s.seq)))
        } else {
            (tok, View::rows(&ctx, d), x.clone(), dropout)
        };
        let x = &x_rows;
        let h1 = t(gpu, &[rows, d])?;
        let out_dense = Matmul::new(rows, d, d);
        out_dense.run(b, ctx_rows, View::transposed(&w.ao_w, d), Some((&w.ao_b, 0)), View::rows(&h1, d))?;
        let h1 = self.dropout_rows(b, dropout, l, Site::AttentionOutput, h1)?;
        b.phase(format_args!("layer {l} / adapters {pass}"));
        // Softmax weights of a fusion summed over real tokens, when the caller records them.
        let record = if recomputing { None } else { Some(mask) };
        let attn = match setup.fusion_at(l, Location::Attention) {
            Some(f) => self.fusion_forward(b, h1, x, &w.ln1_g, &w.ln1_b, f, (l, Location::Attention), record)?,
            None => self.sublayer_forward(b, h1, x, &w.ln1_g, &w.ln1_b, setup.adapter(l, Location::Attention))?,
        };
        let y1 = attn.out().clone();
        let (ffn_dim, fs) = (self.dims.ffn, ffn_row_stride(self.dims.ffn));
        b.phase(format_args!("layer {l} / FFN {pass}"));
        // The intermediate activations have rows of `fs` values (padding unread, see ffn_row_stride).
        let pre = t(gpu, &[rows, fs])?;
        let ffn_in = Matmul::new(rows, ffn_dim, d);
        let (x_in, w_in, b_in) = (View::rows(&y1, d), View::transposed(&w.i_w, d), Some((&w.i_b, 0)));
        // The FFN's output dense: computed, or (recomputing with --keep-ffn-output) the saved one.
        let h2 = match ffn_out {
            Some(h2) => {
                ffn_in.run(b, x_in, w_in, b_in, View::rows(&pre, fs))?;
                h2.clone()
            }
            None => {
                // The pre-activation (saved for backward) and its activation from one product.
                let inter = t(gpu, &[rows, fs])?;
                let keep_pre = ffn_in.act(self.dims.act).epilogue(Epilogue::KeepPre);
                keep_pre.run_aux(b, x_in, w_in, b_in, View::rows(&inter, fs), &pre)?;
                let h2 = t(gpu, &[rows, d])?;
                let (x, wo) = (View::rows(&inter, fs), View::transposed(&w.o_w, fs));
                Matmul::new(rows, d, ffn_dim).run(b, x, wo, Some((&w.o_b, 0)), View::rows(&h2, d))?;
                self.dropout_rows(b, dropout, l, Site::FfnOutput, h2)?
            }
        };
        let h2_out = h2.clone();
        b.phase(format_args!("layer {l} / adapters {pass}"));
        let ffn = match setup.fusion_at(l, Location::Output) {
            Some(f) => self.fusion_forward(b, h2, &y1, &w.ln2_g, &w.ln2_b, f, (l, Location::Output), record)?,
            None => self.sublayer_forward(b, h2, &y1, &w.ln2_g, &w.ln2_b, setup.adapter(l, Location::Output))?,
        };
        Ok((LayerActs { qkv, probs, attn, pre, ffn, head_rows }, h2_out))
    }

    /// `LN(x + x_in)` with the pretrained LayerNorm, keeping the sum for backward: `(sum, out)`.
    pub(super) fn add_layer_norm(
        &self,
        b: &mut CommandRecorder,
        x: &GpuTensor,
        x_in: &GpuTensor,
        ln_g: &GpuTensor,
        ln_b: &GpuTensor,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let sum = t(&self.gpu, &x.shape)?;
        let out = t(&self.gpu, &x.shape)?;
        layernorm::layer_norm(b, x, Some(x_in), ln_g, ln_b, self.dims.eps, Some(&sum), &out)?;
        Ok((sum, out))
    }

    /// The adapter's input (`hs`) from the dense output `h`: `LN(h + x_in)` with the pretrained
    /// LayerNorm before the adapter (keeping `s1 = h + x_in`), or `h` itself.
    pub(super) fn adapter_input(
        &self,
        b: &mut CommandRecorder,
        pl: Placement,
        h: &GpuTensor,
        x_in: &GpuTensor,
        ln_g: &GpuTensor,
        ln_b: &GpuTensor,
    ) -> Result<(Option<GpuTensor>, GpuTensor)> {
        if pl.original_ln_before {
            let (s1, hs) = self.add_layer_norm(b, h, x_in, ln_g, ln_b)?;
            Ok((Some(s1), hs))
        } else {
            Ok((None, h.clone()))
        }
    }

    /// The final output from the adapter's output `o`: `LN(o + x_in)` with the pretrained
    /// LayerNorm after the adapter (keeping `u = o + x_in`), or `o` itself.
    pub(super) fn adapter_output(
        &self,
        b: &mut CommandRecorder,
        pl: Placement,
        o: GpuTensor,
        x_in: &GpuTensor,
        ln_g: &GpuTensor,
        ln_b: &GpuTensor,
    ) -> Result<(Option<GpuTensor>, GpuTensor)> {
        if pl.original_ln_after {
            let (u, out) = self.add_layer_norm(b, &o, x_in, ln_g, ln_b)?;
            Ok((Some(u), out))
        } else {
            Ok((None, o))
        }
    }

    /// Dense output `h` of a sub-layer → its final output, with an optional adapter placed as
    /// AdapterHub places it (see [`Placement`]).
    fn sublayer_forward<'s>(
        &self,
        b: &mut CommandRecorder,
        h: GpuTensor,
        x_in: &GpuTensor,
        ln_g: &GpuTensor,
        ln_b: &GpuTensor,
        adapter: Option<(&'s AdapterModule, Placement)>,
    ) -> Result<SubActs<'s>> {
        let gpu = &self.gpu;
        let shape = h.shape.clone();
        let Some((ad, pl)) = adapter else {
            let (u, out) = self.add_layer_norm(b, &h, x_in, ln_g, ln_b)?;
            return Ok(SubActs::Plain { u, out });
        };
        if !ad.is_plain() || pl.parallel {
            let (acts, o) = self.adapter_with_options_forward(b, ad, pl, &h, x_in, ln_g, ln_b)?;
            let (u, out) = self.adapter_output(b, pl, o, x_in, ln_g, ln_b)?;
            let acts = AdapterActs { around: Around { u, ..acts.around }, ..acts };
            return Ok(SubActs::Adapter { acts, out });
        }
        let (s1, hs) = self.adapter_input(b, pl, &h, x_in, ln_g, ln_b)?;
        let a = t(gpu, &[shape[0], ad.shape.m])?;
        let adapted = t(gpu, &shape)?;
        // With the residual h and the pretrained LayerNorm after the adapter, h joins through the
        // saved `s1 = h + x_in`: `LN(adapter(hs) + s1)`, no copy of h under the up-projection.
        let (residual, after_input) = match &s1 {
            Some(s1) if pl.separate_residual() && pl.original_ln_after => (Residual::None, s1),
            _ if pl.separate_residual() => (Residual::Tensor(&h), x_in),
            _ => (Residual::Input, x_in),
        };
        // On the matmul path with the pretrained LayerNorm after the adapter, its residual joins
        // there too: `LN((y + residual) + x_in)` adds in the order the up product's β = 1 and a
        // two-term LayerNorm did (the same bits), without a copy of the residual under `y`.
        let joined = match residual {
            Residual::Input => Some(&hs),
            Residual::Tensor(r) => Some(r),
            Residual::None => None,
        };
        // On the matmul path the down product keeps the pre-activation beside act(a) (its
        // epilogue), so the backward does not compute it again.
        let matmul_path = ad.shape.runs_matmul_path(gpu);
        let pre = if matmul_path { Some(t(gpu, &[shape[0], ad.shape.m])?) } else { None };
        let forward = |b: &mut CommandRecorder, residual: Residual| match &pre {
            Some(p) => ad.shape.forward_keeping_pre(b, &ad.w, &hs, residual, &adapted, &a, p),
            None => ad.shape.forward_residual(b, &ad.w, &hs, residual, &adapted, &a),
        };
        if let Some(r) = joined.filter(|_| pl.original_ln_after && matmul_path) {
            forward(b, Residual::None)?;
            let (u, out) = (t(gpu, &shape)?, t(gpu, &shape)?);
            layernorm::layer_norm_sum(b, &adapted, &[r, after_input], ln_g, ln_b, self.dims.eps, Some(&u), &out)?;
            let around = Around { s1, hs, u: Some(u) };
            let acts = AdapterActs { module: ad, placement: pl, around, a, pre, options: None };
            return Ok(SubActs::Adapter { acts, out });
        }
        forward(b, residual)?;
        let (u, out) = self.adapter_output(b, pl, adapted, after_input, ln_g, ln_b)?;
        let acts = AdapterActs { module: ad, placement: pl, around: Around { s1, hs, u }, a, pre, options: None };
        Ok(SubActs::Adapter { acts, out })
    }
}
