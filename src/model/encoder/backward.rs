//! One layer's backward: activation gradients through the frozen layer to its input, and the
//! gradients of what trains on it (adapters, or AdapterFusion).

use super::super::adapters::Location;
use super::super::store::{ffn_row_stride, LayerWeights};
use super::acts::{AdapterActs, LayerActs, SubActs};
use super::dropout::RowsDropout;
use super::{t, Encoder, Setup};
use crate::gpu::{CommandRecorder, GpuTensor};
use crate::kernels::adapter::DxMode;
use crate::kernels::attention::{self, AttentionShape};
use crate::kernels::dropout::Site;
use crate::kernels::matmul::{Epilogue, Matmul, View};
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
        // The rows after the attention: every token, or the first of each sequence (as forward).
        let (rows, after_attention) =
            if la.head_rows { (s.batch, dropout.map(|r| r.first_tokens(s.seq))) } else { (tok, dropout) };
        if dy.shape != [rows, d] {
            bail!("internal: layer {l}'s output gradient is {:?}, its output [{rows}, {d}]", dy.shape);
        }
        // FFN sub-layer.
        b.phase(format_args!("layer {l} / adapters bwd"));
        let dh2 = t(gpu, &[rows, d])?;
        let dy1 = t(gpu, &[rows, d])?;
        self.sublayer_backward(b, &la.ffn, &w.ln2_g, dy, &dh2, &dy1, accumulate)?;
        // Nothing trainable below this point: the rest of the backward would be wasted work.
        let below = setup.trains_below(l);
        if !below && !setup.trains(l, Location::Attention) {
            return Ok(None);
        }
        b.phase(format_args!("layer {l} / FFN bwd"));
        let dh2 = self.dropout_rows(b, after_attention, l, Site::FfnOutput, dh2)?;
        // Rows of `fs` values, as in forward (padding zero, unread).
        let fs = ffn_row_stride(ffn);
        // dpre = (dh2 · W_o) ⊙ act'(pre) in one product.
        let dpre = t(gpu, &[rows, fs])?;
        Matmul::new(rows, ffn, d).act(self.dims.act).epilogue(Epilogue::TimesActGrad).run_aux(
            b,
            View::rows(&dh2, d),
            View::rows(&w.o_w, fs),
            None,
            View::rows(&dpre, fs),
            &la.pre,
        )?;
        Matmul::new(rows, d, ffn).beta(1.0).run(
            b,
            View::rows(&dpre, fs),
            View::rows(&w.i_w, d),
            None,
            View::rows(&dy1, d),
        )?;
        // Attention sub-layer.
        b.phase(format_args!("layer {l} / adapters bwd"));
        let dh1 = t(gpu, &[rows, d])?;
        let mut dx = t(gpu, &[rows, d])?;
        self.sublayer_backward(b, &la.attn, &w.ln1_g, &dy1, &dh1, &dx, accumulate)?;
        if !below {
            return Ok(None);
        }
        b.phase(format_args!("layer {l} / attention bwd"));
        let dh1 = self.dropout_rows(b, after_attention, l, Site::AttentionOutput, dh1)?;
        let mut dctx = t(gpu, &[rows, d])?;
        Matmul::new(rows, d, d).run(b, View::rows(&dh1, d), View::rows(&w.ao_w, d), None, View::rows(&dctx, d))?;
        // Back to every row (the others' gradients are zero) for the attention and Q, K, V.
        if la.head_rows {
            let (all_dctx, all_dx) = (t(gpu, &[tok, d])?, t(gpu, &[tok, d])?);
            elementwise::scatter_rows(b, &dctx, s.seq, &all_dctx, false)?;
            elementwise::scatter_rows(b, &dx, s.seq, &all_dx, false)?;
            (dctx, dx) = (all_dctx, all_dx);
        }
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
    ///
    /// Plain adapters route the gradients without temporaries where they can: the final
    /// LayerNorm's gradient `du` is written straight into `dh` or `dx_in`, the adapter's input
    /// gradient straight into `dh`, and the pretrained LayerNorm before the adapter adds its
    /// gradient onto `du` in place. Every output is the same sum, in the same order, as before.
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
        let around = &acts.around;
        if acts.options.is_some() {
            let du = self.final_ln_backward(b, around.u.as_ref(), ln_g, dfinal)?;
            let dout = du.as_ref().unwrap_or(dfinal);
            return self.adapter_with_options_backward(b, acts, ln_g, dout, du.as_ref(), dh, dx_in, accumulate);
        }
        let (ad, eps) = (acts.module, self.dims.eps);
        let separate = acts.placement.separate_residual();
        // The final LayerNorm's gradient, written into `target` (a new tensor when None).
        let final_ln = |b: &mut CommandRecorder, target: Option<&GpuTensor>| -> Result<Option<GpuTensor>> {
            let Some(u) = &around.u else { return Ok(None) };
            let du = match target {
                Some(x) => x.clone(),
                None => t(&self.gpu, &dfinal.shape)?,
            };
            layernorm::layer_norm_backward(b, u, ln_g, eps, dfinal, &du, false)?;
            Ok(Some(du))
        };
        let (x, a) = (&around.hs, (&acts.a, acts.pre.as_ref()));
        match (&around.s1, separate) {
            // No LayerNorm before the adapter (its input is its residual): dh = the adapter's
            // input gradient, dx_in = du (or 0).
            (None, _) => {
                // On the matmul path the final LayerNorm's backward writes `du` into `dh` as well,
                // and the bottleneck's input gradient is added onto it there (no copy).
                if let Some(u) = around.u.as_ref().filter(|_| ad.shape.runs_matmul_path(&self.gpu)) {
                    layernorm::layer_norm_backward_twice(b, u, ln_g, eps, dfinal, dx_in, Some(dh), false)?;
                    return self.bottleneck_backward(b, ad, x, a, dx_in, dh, DxMode::OntoDy, accumulate);
                }
                let du = final_ln(b, Some(dx_in))?;
                self.bottleneck_backward(b, ad, x, a, du.as_ref().unwrap_or(dfinal), dh, DxMode::AddDy, accumulate)?;
                if du.is_none() {
                    elementwise::fill(b, dx_in, 0.0)?;
                }
                Ok(())
            }
            // Residual h: dh = du + LN₁'(dhs), dx_in the same sum.
            (Some(s1), true) => {
                let du = final_ln(b, Some(dh))?;
                let dhs = t(&self.gpu, &dfinal.shape)?;
                self.bottleneck_backward(
                    b,
                    ad,
                    x,
                    a,
                    du.as_ref().unwrap_or(dfinal),
                    &dhs,
                    DxMode::Separate,
                    accumulate,
                )?;
                if du.is_some() {
                    layernorm::layer_norm_backward(b, s1, ln_g, eps, &dhs, dh, true)?;
                    elementwise::copy(b, dh, dx_in)
                } else {
                    layernorm::layer_norm_backward(b, s1, ln_g, eps, &dhs, dx_in, false)?;
                    elementwise::add(b, dfinal, dx_in, dh)
                }
            }
            // Residual hs = LN₁(h + x_in): dh = LN₁'(dhs), dx_in = du + dh (or dh).
            (Some(s1), false) => {
                let du = final_ln(b, None)?;
                let dhs = t(&self.gpu, &dfinal.shape)?;
                self.bottleneck_backward(b, ad, x, a, du.as_ref().unwrap_or(dfinal), &dhs, DxMode::AddDy, accumulate)?;
                layernorm::layer_norm_backward(b, s1, ln_g, eps, &dhs, dh, false)?;
                match &du {
                    Some(du) => elementwise::add(b, du, dh, dx_in),
                    None => elementwise::copy(b, dh, dx_in),
                }
            }
        }
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
