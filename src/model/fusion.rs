//! AdapterFusion layers of a whole model on the GPU (one per layer at the FFN output), with
//! their gradients, named as AdapterHub names them.

use crate::gpu::Gpu;
use crate::gpu::GpuTensor;
use crate::io::adapterhub::Fusion;
use crate::io::weights::TensorMap;
use crate::kernels::fusion::{FusionShape, FusionWeights};
use anyhow::{anyhow, bail, Result};
use std::sync::Arc;

pub struct FusionLayerGpu {
    pub w: FusionWeights,
    pub grad: FusionWeights,
}

pub struct FusionModel {
    /// AdapterHub's fusion name: the adapter names joined by commas.
    pub name: String,
    pub adapter_names: Vec<String>,
    pub shape: FusionShape,
    pub query_before_ln: bool,
    pub temperature: f32,
    pub layers: Vec<Option<FusionLayerGpu>>,
}

fn names(name: &str, layer: usize) -> [String; 5] {
    let p = format!("bert.encoder.layer.{layer}.output.adapter_fusion_layer.{name}");
    [
        format!("{p}.query.weight"),
        format!("{p}.query.bias"),
        format!("{p}.key.weight"),
        format!("{p}.key.bias"),
        format!("{p}.value.weight"),
    ]
}

impl FusionModel {
    /// Uploads a fusion read from an AdapterHub folder.
    pub fn from_fusion(gpu: &Arc<Gpu>, f: &Fusion, d: usize) -> Result<Self> {
        let c = &f.config;
        if !c.query || !c.key {
            bail!("fusion {:?}: configs without query or key projections are not supported", f.fusion_name());
        }
        if c.temperature {
            bail!(
                "fusion {:?}: temperature annealing is a training-time option; not supported by `peft grads`",
                f.fusion_name()
            );
        }
        let shape = FusionShape { d, n: f.adapter_names.len(), value: c.value, residual_before: c.residual_before };
        let map: TensorMap = f.tensors();
        let get = |n: &str, shape: &[usize]| -> Result<GpuTensor> {
            let t = map
                .get(n)
                .or_else(|| n.strip_prefix("bert.").and_then(|x| map.get(x)))
                .ok_or_else(|| anyhow!("fusion: tensor {n:?} is missing"))?;
            if t.shape != shape {
                bail!("fusion: tensor {n:?} has shape {:?}, expected {shape:?}", t.shape);
            }
            GpuTensor::from_slice(gpu, shape, &t.data)
        };
        let name = f.fusion_name();
        let mut layers = vec![];
        for (l, present) in f.layers.iter().enumerate() {
            if present.is_none() {
                layers.push(None);
                continue;
            }
            let [qw, qb, kw, kb, vw] = names(&name, l);
            let w = FusionWeights {
                w_q: get(&qw, &[d, d])?,
                b_q: get(&qb, &[d])?,
                w_k: get(&kw, &[d, d])?,
                b_k: get(&kb, &[d])?,
                w_v: if c.value { Some(get(&vw, &[d, d])?) } else { None },
            };
            layers.push(Some(FusionLayerGpu { w, grad: FusionWeights::zeros(gpu, &shape)? }));
        }
        Ok(Self {
            name,
            adapter_names: f.adapter_names.clone(),
            shape,
            query_before_ln: c.query_before_ln,
            temperature: 1.0,
            layers,
        })
    }

    pub fn at(&self, layer: usize) -> Option<&FusionLayerGpu> {
        self.layers.get(layer).and_then(|l| l.as_ref())
    }

    /// Every (AdapterHub name, weight, gradient), in a stable order.
    pub fn named(&self) -> Vec<(String, &GpuTensor, &GpuTensor)> {
        let mut out = vec![];
        for (l, layer) in self.layers.iter().enumerate() {
            let Some(x) = layer else { continue };
            let [qw, qb, kw, kb, vw] = names(&self.name, l);
            out.push((qw, &x.w.w_q, &x.grad.w_q));
            out.push((qb, &x.w.b_q, &x.grad.b_q));
            out.push((kw, &x.w.w_k, &x.grad.w_k));
            out.push((kb, &x.w.b_k, &x.grad.b_k));
            if let (Some(w), Some(g)) = (&x.w.w_v, &x.grad.w_v) {
                out.push((vw, w, g));
            }
        }
        out
    }
}
