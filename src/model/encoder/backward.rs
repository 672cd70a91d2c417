//! One layer's backward: activation gradients through the frozen layer to its input, and the
//! gradients of what trains on it (adapters, or AdapterFusion).

use super::super::adapters::Location;
use super::super::store::{ffn_row_stride, LayerWeights};
use super::acts::{AdapterActs, LayerActs, SubActs};
use super::dropout::RowsDropout;
use super::{t, Encoder, Setup};
use crate::gpu::{CommandRecorder, GpuTensor};
use crate::kernels::adapter::{AdapterScratch, AdapterWeights};
use crate::kernels::attention::{self, AttentionShape};
use crate::kernels::dropout::Site;
use crate::kernels::matmul::{Matmul, View};
use crate::kernels::{elementwise, layernorm};
use anyhow::{bail, Result};

impl Encoder {
    /// Backward of layer `l` from `dy` (the gradient of its output) with its activations `la`:
    /// the trainable gradients (added to what is there with `accumulate`) and the gradient of the
    /// layer's input, or `None` when nothing trainable is below this layer (backward stops here).
    /// `dropout`: the forward's, whose masks are drawn again for the gradients.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layer_backward(
        &self,
        b: &mut CommandRecorder,
        w: &LayerWeights,
        setup: &Setup,
        l: usize,
        la: &LayerActs,
        mask: &GpuTensor,
        s: AttentionShape,
        dy: &GpuTensor,
        accumulate: bool,
        dropout: Option<RowsDropout>,
    ) -> Result<Option<GpuTensor>> {
        let gpu = &self.gpu;
        let (d, tok, ffn) = (self.dims.hidden, s.batch * s.seq, self.dims.ffn);
        if accumulate && setup.is_fusion() {
            bail!("internal: fusion gradients are not accumulated over chunks");
        }
        // FFN sub-layer.
        b.phase(format_args!("layer {l} / adapters bwd"));
        let dh2 = t(gpu, &[tok, d])?;
        let dy1 = t(gpu, &[tok, d])?;
        self.sublayer_backward(b, &la.ffn, &w.ln2_g, dy, &dh2, &dy1, accumulate)?;
        // Nothing trainable below this point: the rest of the backward would be wasted work.
        let below = setup.trains_below(l);
        if !below && !setup.trains(l, Location::Attention) {
            return Ok(None);
        }
        b.phase(format_args!("layer {l} / FFN bwd"));
        let dh2 = self.dropout_rows(b, dropout, l, Site::FfnOutput, dh2)?;
        // Rows of `fs` values, as in forward (padding zero, unread).
        let fs = ffn_row_stride(ffn);
        let dinter = t(gpu, &[tok, fs])?;
        Matmul::new(tok, ffn, d).run(b, View::rows(&dh2, d), View::rows(&w.o_w, fs), None, View::rows(&dinter, fs))?;
        let dpre = t(gpu, &[tok, fs])?;
        elementwise::act_backward(b, self.dims.act, &la.pre, &dinter, &dpre)?;
        Matmul::new(tok, d, ffn).beta(1.0).run(
            b,
            View::rows(&dpre, fs),
            View::rows(&w.i_w, d),
            None,
            View::rows(&dy1, d),
        )?;
        // Attention sub-layer.
        b.phase(format_args!("layer {l} / adapters bwd"));
        let dh1 = t(gpu, &[tok, d])?;
        let dx = t(gpu, &[tok, d])?;
        self.sublayer_backward(b, &la.attn, &w.ln1_g, &dy1, &dh1, &dx, accumulate)?;
        if !below {
            return Ok(None);
        }
        b.phase(format_args!("layer {l} / attention bwd"));
        let dh1 = self.dropout_rows(b, dropout, l, Site::AttentionOutput, dh1)?;
        let dctx = t(gpu, &[tok, d])?;
        Matmul::new(tok, d, d).run(b, View::rows(&dh1, d), View::rows(&w.ao_w, d), None, View::rows(&dctx, d))?;
        let dqkv = t(gpu, &[tok, 3 * d])?;
        let scratch = t(gpu, &[s.batch, s.heads, s.seq, s.seq])?;
        let mut work = None;
        let probs_dropout = self.probs_dropout(dropout, l, s, &mut work)?;
        attention::attention_backward_packed(b, s, &la.qkv, mask, &la.probs, &dctx, &dqkv, &scratch, probs_dropout)?;
        // dx += [dQ dK dV] · [Wq; Wk; Wv]: one product over the concatenated weights (K = 3d).
        Matmul::new(tok, d, 3 * d).beta(1.0).run(
            b,
            View::rows(&dqkv, 3 * d),
            View::rows(&w.qkv_w, d),
            None,
            View::rows(&dx, d),
        )?;
        Ok(Some(dx))
    }

    /// Gradient of a sub-layer: from `dfinal` to `dh` (its dense output) and `dx_in` (written).
    #[allow(clippy::too_many_arguments)]
    fn sublayer_backward(
        &self,
        b: &mut CommandRecorder,
        acts: &SubActs,
        ln_g: &GpuTensor,
        dfinal: &GpuTensor,
        dh: &GpuTensor,
        dx_in: &GpuTensor,
        accumulate: bool,
    ) -> Result<()> {
        match acts {
            SubActs::Plain { u, .. } => {
                layernorm::layer_norm_backward(b, u, ln_g, self.dims.eps, dfinal, dh, false)?;
                elementwise::copy(b, dh, dx_in)
            }
            SubActs::Adapter { acts, .. } => self.adapter_backward(b, acts, ln_g, dfinal, dh, dx_in, accumulate),
            SubActs::Fusion { acts, .. } => self.fusion_backward(b, acts, ln_g, dfinal, dh, dx_in),
        }
    }

    /// Gradient of a sub-layer with an adapter; the adapter's gradients are written (or, with
    /// `accumulate`, added to what is there).
    #[allow(clippy::too_many_arguments)]
    fn adapter_backward(
        &self,
        b: &mut CommandRecorder,
        acts: &AdapterActs,
        ln_g: &GpuTensor,
        dfinal: &GpuTensor,
        dh: &GpuTensor,
        dx_in: &GpuTensor,
        accumulate: bool,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let shape = dfinal.shape.clone();
        let (ad, around) = (acts.module, &acts.around);
        let du = self.final_ln_backward(b, around.u.as_ref(), ln_g, dfinal)?;
        let dout = du.as_ref().unwrap_or(dfinal);
        if acts.options.is_some() {
            return self.adapter_with_options_backward(b, acts, ln_g, dout, du.as_ref(), dh, dx_in, accumulate);
        }
        let dhs = t(gpu, &shape)?;
        let scratch = AdapterScratch::new(gpu, shape[0], ad.shape.m)?;
        let separate = acts.placement.separate_residual();
        let grads = if accumulate { AdapterWeights::zeros(gpu, ad.shape.d, ad.shape.m)? } else { ad.grad.clone() };
        ad.shape.backward_residual(b, &ad.w, &around.hs, separate, &acts.a, dout, &dhs, &grads, &scratch)?;
        if accumulate {
            // ad.grad += this chunk's gradients.
            for (sum, part) in [
                (&ad.grad.w_down, &grads.w_down),
                (&ad.grad.b_down, &grads.b_down),
                (&ad.grad.w_up, &grads.w_up),
                (&ad.grad.b_up, &grads.b_up),
            ] {
                let next = t(gpu, &sum.shape)?;
                elementwise::add(b, sum, part, &next)?;
                elementwise::copy(b, &next, sum)?;
            }
        }
        // The gradient reaching the adapter's input flows to h (directly, or through the
        // pretrained LayerNorm before the adapter, which also feeds x_in).
        let (to_h, to_x) = match &around.s1 {
            Some(s1) => {
                let ds1 = t(gpu, &shape)?;
                layernorm::layer_norm_backward(b, s1, ln_g, self.dims.eps, &dhs, &ds1, false)?;
                (ds1.clone(), Some(ds1))
            }
            None => (dhs, None),
        };
        if separate {
            elementwise::add(b, dout, &to_h, dh)?;
        } else {
            elementwise::copy(b, &to_h, dh)?;
        }
        match (&du, &to_x) {
            (Some(du), Some(dx)) => elementwise::add(b, du, dx, dx_in)?,
            (Some(du), None) => elementwise::copy(b, du, dx_in)?,
            (None, Some(dx)) => elementwise::copy(b, dx, dx_in)?,
            (None, None) => elementwise::fill(b, dx_in, 0.0)?,
        }
        Ok(())
    }

    /// Gradient through the final `LN(out + x_in)` when there is one (`u` is its saved input).
    pub(super) fn final_ln_backward(
        &self,
        b: &mut CommandRecorder,
        u: Option<&GpuTensor>,
        ln_g: &GpuTensor,
        dfinal: &GpuTensor,
    ) -> Result<Option<GpuTensor>> {
        let Some(u) = u else { return Ok(None) };
        let du = t(&self.gpu, &dfinal.shape)?;
        layernorm::layer_norm_backward(b, u, ln_g, self.dims.eps, dfinal, &du, false)?;
        Ok(Some(du))
    }

    /// Sum of same-shaped tensors (fixed order) into a new tensor.
    pub(super) fn sum(&self, b: &mut CommandRecorder, xs: &[GpuTensor]) -> Result<GpuTensor> {
        let mut acc = xs.first().ok_or_else(|| anyhow::anyhow!("empty sum"))?.clone();
        for x in &xs[1..] {
            let next = t(&self.gpu, &acc.shape)?;
            elementwise::add(b, &acc, x, &next)?;
            acc = next;
        }
        Ok(acc)
    }
}
