//! A sub-layer's output (FFN or attention) with AdapterFusion over frozen adapters: forward and
//! backward.

use super::super::adapters::{AdapterSet, Location};
use super::super::fusion::{FusionLayerGpu, FusionModel};
use super::acts::{Around, FusionActs, SubActs};
use super::{t, Encoder};
use crate::gpu::{CommandRecorder, GpuTensor};
use crate::kernels::adapter::{AdapterScratch, AdapterWeights, Residual};
use crate::kernels::fusion::{FusionSaved, FusionScratch};
use crate::kernels::{elementwise, layernorm};
use anyhow::Result;
use std::sync::Arc;

impl Encoder {
    /// A sub-layer's output (at `loc`: the FFN's, or the attention's over Houlsby adapters) with
    /// AdapterFusion: the last adapter's placement decides the LayerNorms and the residual
    /// (AdapterHub's `compose_fuse`, the same at each site); each frozen adapter's scaled
    /// up-projection `z_n` at `loc` is mixed by the fusion attention. With `record`, the mask of
    /// real tokens, the softmax weights are summed for the caller (see
    /// [`FusionModel::record_weights`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fusion_forward<'s>(
        &self,
        b: &mut CommandRecorder,
        h: GpuTensor,
        x_in: &GpuTensor,
        ln_g: &GpuTensor,
        ln_b: &GpuTensor,
        (adapters, fusion, fl): (&'s [&'s AdapterSet], &'s FusionModel, &'s FusionLayerGpu),
        (l, loc): (usize, Location),
        record: Option<&GpuTensor>,
    ) -> Result<SubActs<'s>> {
        let gpu = &self.gpu;
        let shape = h.shape.clone();
        let tok = shape[0];
        let d = self.dims.hidden;
        let last = adapters.last().ok_or_else(|| anyhow::anyhow!("fusion without adapters"))?;
        let pl = last.placement;
        if let Some(o) = adapters.iter().find(|a| a.placement.parallel || a.options != Default::default()) {
            anyhow::bail!(
                "fusion: adapter {:?} is parallel (par_bn) or has a trained scaling / adapter LayerNorms: \
                 AdapterFusion over such adapters is not supported",
                o.name
            );
        }
        let (s1, hs) = self.adapter_input(b, pl, &h, x_in, ln_g, ln_b)?;
        let residual = if pl.residual_before_ln { h.clone() } else { hs.clone() };
        let query = if fusion.query_before_ln { h.clone() } else { hs.clone() };
        let z = t(gpu, &[adapters.len(), tok, d])?;
        let mut a_saved = vec![];
        let mut modules = vec![];
        for (n, set) in adapters.iter().enumerate() {
            let ad = set.at(l, loc).ok_or_else(|| {
                anyhow::anyhow!("fusion: adapter {:?} has no adapter at {} in layer {l}", set.name, loc.module_path(l))
            })?;
            let a = t(gpu, &[tok, ad.shape.m])?;
            let zn = t(gpu, &shape)?;
            ad.shape.forward_residual(b, &ad.w, &hs, Residual::None, &zn, &a)?;
            elementwise::copy_range(b, &zn, 0, &z, n * tok * d, tok * d)?;
            a_saved.push(a);
            modules.push(ad);
        }
        let saved = FusionSaved::new(gpu, &fusion.shape, tok)?;
        let o = t(gpu, &shape)?;
        fusion.shape.forward(b, &fl.w, &query, &z, &residual, fusion.temperature, &o, &saved)?;
        let (u, out) = self.adapter_output(b, pl, o, x_in, ln_g, ln_b)?;
        if let Some(mask) = record {
            fusion.record_weights(b, &saved.p, mask, l, loc)?;
        }
        let around = Around { s1, hs, u };
        let acts = FusionActs { fusion, layer: fl, modules, around, query, residual, z, a: a_saved, saved };
        Ok(SubActs::Fusion { acts: Box::new(acts), out })
    }

    /// Gradient of a fused sub-layer output: from `dfinal` to `dh` (the dense output) and `dx_in`
    /// (written), and the fusion layer's gradients (written).
    pub(super) fn fusion_backward(
        &self,
        b: &mut CommandRecorder,
        fa: &FusionActs,
        ln_g: &GpuTensor,
        dfinal: &GpuTensor,
        dh: &GpuTensor,
        dx_in: &GpuTensor,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let eps = self.dims.eps;
        let shape = dfinal.shape.clone();
        let (tok, d) = (shape[0], self.dims.hidden);
        let (fusion, hs) = (fa.fusion, &fa.around.hs);
        let du = self.final_ln_backward(b, fa.around.u.as_ref(), ln_g, dfinal)?;
        let d_o = du.as_ref().unwrap_or(dfinal);
        let (dquery, dz, dr) = (t(gpu, &shape)?, t(gpu, &[fa.modules.len(), tok, d])?, t(gpu, &shape)?);
        let scratch = FusionScratch::new(gpu, &fusion.shape, tok)?;
        let fl = fa.layer;
        fusion.shape.backward(
            b,
            &fl.w,
            &fa.query,
            &fa.z,
            &fa.saved,
            fusion.temperature,
            d_o,
            &dquery,
            &dz,
            &dr,
            &fl.grad,
            &scratch,
        )?;
        // Gradients reaching the adapters' common input hs, and the dense output h.
        let same = |x: &GpuTensor, y: &GpuTensor| Arc::ptr_eq(&x.buffer, &y.buffer);
        let mut to_hs: Vec<GpuTensor> = vec![];
        let mut to_h: Vec<GpuTensor> = vec![];
        for (g, src) in [(&dquery, &fa.query), (&dr, &fa.residual)] {
            if same(src, hs) {
                to_hs.push(g.clone());
            } else {
                to_h.push(g.clone());
            }
        }
        for (n, ad) in fa.modules.iter().enumerate() {
            let dzn = t(gpu, &shape)?;
            elementwise::copy_range(b, &dz, n * tok * d, &dzn, 0, tok * d)?;
            let dxn = t(gpu, &shape)?;
            let frozen_grads = AdapterWeights::zeros(gpu, d, ad.shape.m)?;
            let sc = AdapterScratch::new(gpu, tok, ad.shape.m)?;
            ad.shape.backward_residual(b, &ad.w, hs, true, &fa.a[n], &dzn, &dxn, &frozen_grads, &sc)?;
            to_hs.push(dxn);
        }
        let dhs = self.sum(b, &to_hs)?;
        match &fa.around.s1 {
            Some(s1) => {
                let ds1 = t(gpu, &shape)?;
                layernorm::layer_norm_backward(b, s1, ln_g, eps, &dhs, &ds1, false)?;
                to_h.push(ds1.clone());
                let mut to_x = vec![ds1];
                if let Some(du) = &du {
                    to_x.push(du.clone());
                }
                let sx = self.sum(b, &to_x)?;
                elementwise::copy(b, &sx, dx_in)?;
            }
            None => {
                to_h.push(dhs);
                match &du {
                    Some(du) => elementwise::copy(b, du, dx_in)?,
                    None => elementwise::fill(b, dx_in, 0.0)?,
                }
            }
        }
        let sh = self.sum(b, &to_h)?;
        elementwise::copy(b, &sh, dh)?;
        Ok(())
    }
}
