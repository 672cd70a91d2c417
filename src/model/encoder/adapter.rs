//! An adapter with the options of AdapterHub's `BnConfig` beyond a plain bottleneck, composed from
//! the adapter, LayerNorm and per-channel kernels as `adapters`' `Adapter` / `ParallelAdapter`
//! compute it (`methods/modeling.py`):
//!
//! - sequential: `x = ln_before ? LN_a(hs) : hs`, `z = s ⊙ up(act(down(x)))`, then
//!   `out = LN_b(z + r)` (`adapter_residual_before_ln`) or `LN_b(z) + r`, without `LN_b` when
//!   there is no `ln_after`; `r` the residual of the placement (`h` or `hs`);
//! - parallel (`par_bn`): the adapter reads the sub-layer's input `x_in` and
//!   `out = h + [LN_b](s ⊙ up(act(down([LN_a](x_in)))))`;
//!
//! `s` a fixed number, or trained (`"learned"`: one value, `"channel"`: one per unit); `LN_a`,
//! `LN_b` the adapter's own LayerNorms (trainable, eps 1e-5 as `nn.LayerNorm`). The result then
//! goes through the pretrained LayerNorm with `x_in` as for a plain adapter.

use super::super::adapters::{AdapterModule, AdapterNorm, Placement};
use super::acts::{AdapterActs, Around, OptionActs};
use super::{t, Encoder};
use crate::gpu::{CommandRecorder, GpuTensor};
use crate::kernels::adapter::channel::{
    channel_scale, scale_grad, trainable_layer_norm, trainable_layer_norm_backward, ChannelAdd,
};
use crate::kernels::adapter::{AdapterKernel, AdapterScratch, AdapterWeights, DxMode, Residual};
use crate::kernels::{elementwise, layernorm};
use anyhow::Result;

/// `nn.LayerNorm`'s default eps, which the adapter's own LayerNorms use.
const ADAPTER_LN_EPS: f32 = 1e-5;

/// Whether the residual is added before the adapter's LayerNorm after (only then does it differ).
fn residual_before_norm(ad: &AdapterModule, pl: Placement) -> bool {
    !pl.parallel && pl.adapter_residual_before_ln && ad.norm_after.is_some()
}

impl Encoder {
    /// One adapter LayerNorm forward into a new tensor.
    fn adapter_norm(&self, b: &mut CommandRecorder, n: &AdapterNorm, x: &GpuTensor) -> Result<GpuTensor> {
        let x_hat = t(&self.gpu, &x.shape)?;
        let y = t(&self.gpu, &x.shape)?;
        trainable_layer_norm(b, x, &n.gamma.w, &n.beta.w, &n.unit, &n.zero, ADAPTER_LN_EPS, &x_hat, &y)?;
        Ok(y)
    }

    /// Dense output `h` → the sub-layer's output before the pretrained LayerNorm after, for an
    /// adapter with options (see the module's note): `(acts, out)`, `acts.around.u` unset.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn adapter_with_options_forward<'s>(
        &self,
        b: &mut CommandRecorder,
        ad: &'s AdapterModule,
        pl: Placement,
        h: &GpuTensor,
        x_in: &GpuTensor,
        ln_g: &GpuTensor,
        ln_b: &GpuTensor,
    ) -> Result<(AdapterActs<'s>, GpuTensor)> {
        let gpu = &self.gpu;
        let shape = h.shape.clone();
        let (s1, hs) = if pl.parallel { (None, x_in.clone()) } else { self.adapter_input(b, pl, h, x_in, ln_g, ln_b)? };
        let residual = if pl.parallel {
            None
        } else if pl.separate_residual() {
            Some(h.clone())
        } else {
            Some(hs.clone())
        };
        let xb = ad.norm_before.as_ref().map(|n| self.adapter_norm(b, n, &hs)).transpose()?;
        let a = t(gpu, &[shape[0], ad.shape.m])?;
        let core = t(gpu, &shape)?;
        ad.shape.forward_residual(b, &ad.w, xb.as_ref().unwrap_or(&hs), Residual::None, &core, &a)?;
        let before = residual_before_norm(ad, pl);
        let add_now = match (&residual, before) {
            (Some(r), true) => ChannelAdd::Tensor(r),
            _ => ChannelAdd::Nothing,
        };
        let (u, scaled) = match (&ad.scaling, add_now) {
            (Some(s), add) => {
                let z = t(gpu, &shape)?;
                channel_scale(b, &core, &s.w, add, &z)?;
                (Some(core), z)
            }
            (None, ChannelAdd::Tensor(r)) => {
                let z = t(gpu, &shape)?;
                elementwise::add(b, &core, r, &z)?;
                (None, z)
            }
            (None, _) => (None, core),
        };
        let (v, normed) = match &ad.norm_after {
            Some(n) => {
                let y = self.adapter_norm(b, n, &scaled)?;
                (Some(scaled), y)
            }
            None => (None, scaled),
        };
        let out = match (pl.parallel, &residual, before) {
            (true, _, _) => Some(h),
            (false, Some(r), false) => Some(r),
            _ => None,
        };
        let out = match out {
            Some(other) => {
                let o = t(gpu, &shape)?;
                elementwise::add(b, &normed, other, &o)?;
                o
            }
            None => normed,
        };
        let options = Some(Box::new(OptionActs { xb, u, v }));
        let acts = AdapterActs { module: ad, placement: pl, around: Around { s1, hs, u: None }, a, pre: None, options };
        Ok((acts, out))
    }

    /// Gradient of a sub-layer with an adapter with options, from `dout` (the gradient of the
    /// adapter block's output) and `du` (that of the pretrained LayerNorm after, whose input
    /// includes `x_in`, if there is one): `dh` and `dx_in` written, the adapter's gradients
    /// written (or added to with `accumulate`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn adapter_with_options_backward(
        &self,
        b: &mut CommandRecorder,
        acts: &AdapterActs,
        ln_g: &GpuTensor,
        dout: &GpuTensor,
        du: Option<&GpuTensor>,
        dh: &GpuTensor,
        dx_in: &GpuTensor,
        accumulate: bool,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let shape = dout.shape.clone();
        let (ad, pl, around) = (acts.module, acts.placement, &acts.around);
        let opts = acts.options.as_deref().ok_or_else(|| anyhow::anyhow!("internal: no option activations"))?;
        let before = residual_before_norm(ad, pl);
        let dscaled = match (&ad.norm_after, &opts.v) {
            (Some(n), Some(v)) => {
                let d = t(gpu, &shape)?;
                let (gg, gb) = (&n.gamma.grad, &n.beta.grad);
                trainable_layer_norm_backward(
                    b,
                    v,
                    &n.gamma.w,
                    &n.unit,
                    &n.zero,
                    ADAPTER_LN_EPS,
                    dout,
                    &d,
                    false,
                    gg,
                    gb,
                    accumulate,
                )?;
                d
            }
            _ => dout.clone(),
        };
        // The residual's gradient (sequential adapters): before the adapter's LayerNorm or after.
        let dr = (!pl.parallel).then(|| if before { dscaled.clone() } else { dout.clone() });
        let dcore = match (&ad.scaling, &opts.u) {
            (Some(s), Some(u)) => {
                scale_grad(b, &dscaled, u, accumulate, &s.grad)?;
                let d = t(gpu, &shape)?;
                channel_scale(b, &dscaled, &s.w, ChannelAdd::Nothing, &d)?;
                d
            }
            _ => dscaled,
        };
        let x = opts.xb.as_ref().unwrap_or(&around.hs);
        let dxb = t(gpu, &shape)?;
        self.bottleneck_backward(b, ad, x, (&acts.a, None), &dcore, &dxb, DxMode::Separate, accumulate)?;
        let dhs_adapter = match &ad.norm_before {
            Some(n) => {
                let d = t(gpu, &shape)?;
                let (gg, gb) = (&n.gamma.grad, &n.beta.grad);
                trainable_layer_norm_backward(
                    b,
                    &around.hs,
                    &n.gamma.w,
                    &n.unit,
                    &n.zero,
                    ADAPTER_LN_EPS,
                    &dxb,
                    &d,
                    false,
                    gg,
                    gb,
                    accumulate,
                )?;
                d
            }
            None => dxb,
        };
        if pl.parallel {
            // out = h + adapter(x_in): h gets dout; x_in the adapter's input gradient (+ du).
            elementwise::copy(b, dout, dh)?;
            return self.sum_into(b, &[Some(&dhs_adapter), du], dx_in);
        }
        let dr = dr.expect("sequential");
        let separate = pl.separate_residual();
        let dhs = if separate { dhs_adapter } else { self.sum(b, &[dhs_adapter, dr.clone()])? };
        let ds1 = match &around.s1 {
            Some(s1) => {
                let d = t(gpu, &shape)?;
                layernorm::layer_norm_backward(b, s1, ln_g, self.dims.eps, &dhs, &d, false)?;
                Some(d)
            }
            None => None,
        };
        let to_h = ds1.as_ref().unwrap_or(&dhs);
        self.sum_into(b, &[Some(to_h), separate.then_some(&dr)], dh)?;
        self.sum_into(b, &[ds1.as_ref(), du], dx_in)
    }

    /// The bottleneck's backward from `dy` (its output's gradient, scale included) to `dx` (only
    /// through the bottleneck with `separate`, else plus `dy` for the adapter's input as its
    /// residual), its weight gradients written or, with `accumulate`, added to.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn bottleneck_backward(
        &self,
        b: &mut CommandRecorder,
        ad: &AdapterModule,
        x: &GpuTensor,
        (a, pre): (&GpuTensor, Option<&GpuTensor>),
        dy: &GpuTensor,
        dx: &GpuTensor,
        mode: DxMode,
        accumulate: bool,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let scratch = AdapterScratch::new(gpu, dy.shape[0], ad.shape.m)?;
        let grads = if accumulate { AdapterWeights::zeros(gpu, ad.shape.d, ad.shape.m)? } else { ad.grad.clone() };
        let kernel = AdapterKernel::for_gpu(gpu);
        ad.shape.backward_mode(kernel, b, &ad.w, x, (mode, pre), a, dy, dx, &grads, &scratch)?;
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
        Ok(())
    }

    /// `out` = the sum of the present terms (0 when none is).
    fn sum_into(&self, b: &mut CommandRecorder, terms: &[Option<&GpuTensor>], out: &GpuTensor) -> Result<()> {
        let present: Vec<GpuTensor> = terms.iter().flatten().map(|&x| x.clone()).collect();
        match present.len() {
            0 => elementwise::fill(b, out, 0.0),
            1 => elementwise::copy(b, &present[0], out),
            _ => {
                let s = self.sum(b, &present)?;
                elementwise::copy(b, &s, out)
            }
        }
    }
}
