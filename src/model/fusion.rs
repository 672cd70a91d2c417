//! AdapterFusion layers of a whole model on the GPU (one per layer at the FFN output), with
//! their gradients, named as AdapterHub names them.

use crate::formats::adapterhub::{Fusion, FusionConfig, FusionLayer, SavedConfig};
use crate::formats::weights::{Tensor, TensorMap};
use crate::gpu::GpuTensor;
use crate::gpu::{CommandRecorder, Gpu};
use crate::kernels::fusion::{FusionHostWeights, FusionShape, FusionWeights};
use crate::kernels::matmul::{Matmul, View};
use anyhow::{anyhow, bail, Result};
use rand_distr::{Distribution, Normal};
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
    /// AdapterHub's options (saved with the weights).
    pub config: FusionConfig,
    /// When set, `[layers, N]`: every forward pass adds each layer's softmax weights summed over
    /// the batch's real tokens (see [`FusionModel::record_weights`]).
    pub weight_sums: Option<GpuTensor>,
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
    /// Uploads a fusion read from an AdapterHub folder (refuses temperature annealing, whose T
    /// depends on how many forward passes ran: for the parity interface).
    pub fn from_fusion(gpu: &Arc<Gpu>, f: &Fusion, d: usize) -> Result<Self> {
        if f.config.temperature {
            bail!(
                "fusion {:?}: temperature annealing is a training-time option; not supported by `peft grads`",
                f.fusion_name()
            );
        }
        Self::upload(gpu, f, d)
    }

    /// Uploads a fusion for inference: with temperature annealing (`temperature: true`) the
    /// softmax uses T = 1, the value the annealing ends at.
    pub fn for_inference(gpu: &Arc<Gpu>, f: &Fusion, d: usize) -> Result<Self> {
        Self::upload(gpu, f, d)
    }

    fn upload(gpu: &Arc<Gpu>, f: &Fusion, d: usize) -> Result<Self> {
        let c = &f.config;
        check_config(c, &f.fusion_name())?;
        let shape = FusionShape { d, n: f.adapter_names.len(), value: c.value, residual_before: c.residual_before };
        // Under BERT's names, whatever the model's family (the engine's names).
        let map: TensorMap = f.tensors_named_for(crate::formats::family::Family::Bert);
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
            config: c.clone(),
            weight_sums: None,
        })
    }

    /// A new fusion over `adapter_names` with AdapterHub's initialisation
    /// ([`FusionHostWeights::adapterhub_init`]: W_Q, W_K ~ N(0, 0.02), biases 0, W_V the identity
    /// with 1e-6 elsewhere when `value_initialized`, else N(0, 0.02)), in the layers where
    /// `present(l)`.
    pub fn new_initialized<R: rand::Rng>(
        gpu: &Arc<Gpu>,
        adapter_names: &[String],
        config: &FusionConfig,
        layers: usize,
        present: &dyn Fn(usize) -> bool,
        d: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let name = adapter_names.join(",");
        check_config(config, &name)?;
        if adapter_names.is_empty() {
            bail!("a fusion needs at least one adapter");
        }
        let shape =
            FusionShape { d, n: adapter_names.len(), value: config.value, residual_before: config.residual_before };
        let mut out = vec![];
        for l in 0..layers {
            if !present(l) {
                out.push(None);
                continue;
            }
            let mut host = FusionHostWeights::adapterhub_init(d, config.value && config.value_initialized, rng);
            if config.value && !config.value_initialized {
                let normal = Normal::new(0.0f32, 0.02).expect("valid normal");
                host.w_v = Some((0..d * d).map(|_| normal.sample(rng)).collect());
            }
            out.push(Some(FusionLayerGpu { w: host.upload(gpu)?, grad: FusionWeights::zeros(gpu, &shape)? }));
        }
        if out.iter().all(Option::is_none) {
            bail!("fusion {name:?}: no layer has all of its adapters");
        }
        Ok(Self {
            name,
            adapter_names: adapter_names.to_vec(),
            shape,
            query_before_ln: config.query_before_ln,
            temperature: 1.0,
            layers: out,
            config: config.clone(),
            weight_sums: None,
        })
    }

    /// AdapterHub's in-memory fusion (for saving), with the weights read back from the GPU.
    pub fn to_fusion(&self, gpu: &Gpu, hidden: usize, model_name: &str) -> Result<Fusion> {
        let host = |t: &GpuTensor| -> Result<Tensor> { Tensor::new(t.shape.clone(), t.to_vec(gpu)?) };
        let mut layers = vec![];
        for layer in &self.layers {
            let Some(x) = layer else {
                layers.push(None);
                continue;
            };
            layers.push(Some(FusionLayer {
                query_weight: Some(host(&x.w.w_q)?),
                query_bias: Some(host(&x.w.b_q)?),
                key_weight: Some(host(&x.w.w_k)?),
                key_bias: Some(host(&x.w.b_k)?),
                value_weight: x.w.w_v.as_ref().map(host).transpose()?,
            }));
        }
        let saved: SavedConfig = Fusion::new_saved_config(&self.adapter_names, hidden, model_name, &self.config);
        Ok(Fusion { saved, config: self.config.clone(), adapter_names: self.adapter_names.clone(), layers, head: None })
    }

    /// Trainable parameters (all fusion layers).
    pub fn parameters(&self) -> usize {
        self.layers.iter().flatten().count() * self.shape.parameters()
    }

    /// Starts (or restarts) recording the softmax weights: zeroes [`FusionModel::weight_sums`].
    pub fn start_recording(&mut self, gpu: &Gpu) -> Result<()> {
        self.weight_sums = Some(GpuTensor::zeros(gpu, &[self.layers.len(), self.shape.n])?);
        Ok(())
    }

    /// Stops recording (the sums are dropped).
    pub fn stop_recording(&mut self) {
        self.weight_sums = None;
    }

    /// Called by the encoder after layer `layer`'s fusion forward: when recording, adds
    /// `maskᵀ · p` (the softmax weights `p` `[T, N]` summed over real tokens; `mask` `[T]` is 1 for
    /// real tokens, 0 for padding) to row `layer` of the sums, on the GPU.
    pub fn record_weights(&self, b: &mut CommandRecorder, p: &GpuTensor, mask: &GpuTensor, layer: usize) -> Result<()> {
        let Some(sums) = &self.weight_sums else { return Ok(()) };
        let (n, t) = (self.shape.n, mask.numel());
        if p.numel() != t * n {
            bail!("fusion weights: p has shape {:?}, expected [{t}, {n}]", p.shape);
        }
        Matmul::new(1, n, t).beta(1.0).run(
            b,
            View::rows(mask, t),
            View::rows(p, n),
            None,
            View::rows(sums, n).offset(layer * n),
        )
    }

    /// The recorded sums divided by `tokens` (the real tokens the recorded passes saw), per layer
    /// with a fusion layer: `(layer, mean weight per adapter)`.
    pub fn recorded_means(&self, gpu: &Gpu, tokens: usize) -> Result<Vec<(usize, Vec<f64>)>> {
        let sums = self.weight_sums.as_ref().ok_or_else(|| anyhow!("fusion weights were not recorded"))?;
        if tokens == 0 {
            bail!("fusion weights: no tokens were recorded");
        }
        let v = sums.to_vec(gpu)?;
        let n = self.shape.n;
        Ok((0..self.layers.len())
            .filter(|&l| self.layers[l].is_some())
            .map(|l| (l, v[l * n..(l + 1) * n].iter().map(|&x| x as f64 / tokens as f64).collect()))
            .collect())
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

/// What the kernels support of AdapterHub's `AdapterFusionConfig`.
fn check_config(c: &FusionConfig, name: &str) -> Result<()> {
    if !c.query || !c.key {
        bail!("fusion {name:?}: configs without query or key projections are not supported");
    }
    Ok(())
}
