//! AdapterFusion layers of a whole model on the GPU, with their gradients, named as AdapterHub
//! names them: one per layer at the FFN output, and one at the attention output where every
//! fused adapter has a module there (Houlsby / `double_seq_bn` adapters), as the library does.

use super::adapters::Location;
use crate::formats::adapterhub::{Fusion, FusionConfig, FusionLayer, SavedConfig};
use crate::formats::weights::{Tensor, TensorMap};
use crate::gpu::GpuTensor;
use crate::gpu::{CommandRecorder, Gpu};
use crate::kernels::fusion::{FusionHostWeights, FusionShape, FusionWeights};
use crate::kernels::matmul::{Matmul, View};
use anyhow::{anyhow, bail, Result};
use rand::SeedableRng;
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
    /// At the FFN output, per layer (`None`: no fusion layer there).
    pub layers: Vec<Option<FusionLayerGpu>>,
    /// At the attention output, per layer (all `None` over Pfeiffer / `seq_bn` adapters).
    pub attention_layers: Vec<Option<FusionLayerGpu>>,
    /// AdapterHub's options (saved with the weights).
    pub config: FusionConfig,
    /// Fusion layers that never run, kept on the host for saving: `(layer, site, initial weights)`
    /// at a site where the fused adapters have modules in other layers but are left out of this
    /// one (`leave_out`). The `adapters` library creates a fusion layer at that site of every
    /// layer and saves those at their initial values (its plain `load_adapter_fusion` then finds
    /// every tensor it creates); so does `peft fuse`.
    pub left_out: Vec<(usize, Location, FusionLayer)>,
    /// When set, `[2·layers, N]` (rows `l`: FFN output, `layers + l`: attention output): every
    /// forward pass adds each fusion layer's softmax weights summed over the batch's real tokens
    /// (see [`FusionModel::record_weights`]).
    pub weight_sums: Option<GpuTensor>,
}

fn names(name: &str, layer: usize, loc: Location) -> [String; 5] {
    let p = format!("{}.adapter_fusion_layer.{name}", loc.module_path(layer));
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
        let upload_site = |site: &[Option<FusionLayer>], loc: Location| -> Result<Vec<Option<FusionLayerGpu>>> {
            let mut layers = vec![];
            for (l, present) in site.iter().enumerate() {
                if present.is_none() {
                    layers.push(None);
                    continue;
                }
                let [qw, qb, kw, kb, vw] = names(&name, l, loc);
                let w = FusionWeights {
                    w_q: get(&qw, &[d, d])?,
                    b_q: get(&qb, &[d])?,
                    w_k: get(&kw, &[d, d])?,
                    b_k: get(&kb, &[d])?,
                    w_v: if c.value { Some(get(&vw, &[d, d])?) } else { None },
                };
                layers.push(Some(FusionLayerGpu { w, grad: FusionWeights::zeros(gpu, &shape)? }));
            }
            Ok(layers)
        };
        let layers = upload_site(&f.layers, Location::Output)?;
        let attention_layers = upload_site(&f.attention_layers, Location::Attention)?;
        Ok(Self {
            name,
            adapter_names: f.adapter_names.clone(),
            shape,
            query_before_ln: c.query_before_ln,
            temperature: 1.0,
            layers,
            attention_layers,
            left_out: vec![],
            config: c.clone(),
            weight_sums: None,
        })
    }

    /// A new fusion over `adapter_names` with AdapterHub's initialisation
    /// ([`FusionHostWeights::adapterhub_init`]: W_Q, W_K ~ N(0, 0.02), biases 0, W_V the identity
    /// with 1e-6 elsewhere when `value_initialized`, else N(0, 0.02)), at the sites where
    /// `present(l, loc)` (drawn FFN-output layers first, then attention-output ones).
    pub fn new_initialized<R: rand::Rng>(
        gpu: &Arc<Gpu>,
        adapter_names: &[String],
        config: &FusionConfig,
        layers: usize,
        present: &dyn Fn(usize, Location) -> bool,
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
        let mut init_site = |loc: Location| -> Result<Vec<Option<FusionLayerGpu>>> {
            let mut out = vec![];
            for l in 0..layers {
                if !present(l, loc) {
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
            Ok(out)
        };
        let out = init_site(Location::Output)?;
        let attention_layers = init_site(Location::Attention)?;
        if out.iter().chain(&attention_layers).all(Option::is_none) {
            bail!("fusion {name:?}: no layer has all of its adapters");
        }
        let left_out = left_out_initialized(config, layers, present, d, rng);
        Ok(Self {
            name,
            adapter_names: adapter_names.to_vec(),
            shape,
            query_before_ln: config.query_before_ln,
            temperature: 1.0,
            layers: out,
            attention_layers,
            left_out,
            config: config.clone(),
            weight_sums: None,
        })
    }

    /// AdapterHub's in-memory fusion (for saving), with the weights read back from the GPU.
    pub fn to_fusion(&self, gpu: &Gpu, hidden: usize, model_name: &str) -> Result<Fusion> {
        let host = |t: &GpuTensor| -> Result<Tensor> { Tensor::new(t.shape.clone(), t.to_vec(gpu)?) };
        let download = |site: &[Option<FusionLayerGpu>]| -> Result<Vec<Option<FusionLayer>>> {
            let mut layers = vec![];
            for layer in site {
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
            Ok(layers)
        };
        let (mut layers, mut attention_layers) = (download(&self.layers)?, download(&self.attention_layers)?);
        for (l, loc, layer) in &self.left_out {
            let site = if *loc == Location::Output { &mut layers } else { &mut attention_layers };
            if let Some(slot) = site.get_mut(*l) {
                *slot = Some(layer.clone());
            }
        }
        let saved: SavedConfig = Fusion::new_saved_config(&self.adapter_names, hidden, model_name, &self.config);
        Ok(Fusion {
            saved,
            config: self.config.clone(),
            adapter_names: self.adapter_names.clone(),
            layers,
            attention_layers,
            head: None,
        })
    }

    /// Every fusion layer, both sites.
    pub fn all_layers(&self) -> impl Iterator<Item = &FusionLayerGpu> {
        self.layers.iter().chain(&self.attention_layers).flatten()
    }

    /// Trainable parameters (all fusion layers).
    pub fn parameters(&self) -> usize {
        self.all_layers().count() * self.shape.parameters()
    }

    /// Starts (or restarts) recording the softmax weights: zeroes [`FusionModel::weight_sums`].
    pub fn start_recording(&mut self, gpu: &Gpu) -> Result<()> {
        self.weight_sums = Some(GpuTensor::zeros(gpu, &[2 * self.layers.len(), self.shape.n])?);
        Ok(())
    }

    /// Stops recording (the sums are dropped).
    pub fn stop_recording(&mut self) {
        self.weight_sums = None;
    }

    /// Called by the encoder after the fusion forward at `loc` of layer `layer`: when recording,
    /// adds `maskᵀ · p` (the softmax weights `p` `[T, N]` summed over real tokens; `mask` `[T]` is
    /// 1 for real tokens, 0 for padding) to that site's row of the sums, on the GPU.
    pub fn record_weights(
        &self,
        b: &mut CommandRecorder,
        p: &GpuTensor,
        mask: &GpuTensor,
        layer: usize,
        loc: Location,
    ) -> Result<()> {
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
            View::rows(sums, n).offset(self.sum_row(layer, loc) * n),
        )
    }

    fn sum_row(&self, layer: usize, loc: Location) -> usize {
        match loc {
            Location::Output => layer,
            Location::Attention => self.layers.len() + layer,
        }
    }

    /// The recorded sums divided by `tokens` (the real tokens the recorded passes saw), per
    /// fusion layer at `loc`: `(layer, mean weight per adapter)`.
    pub fn recorded_means(&self, gpu: &Gpu, tokens: usize, loc: Location) -> Result<Vec<(usize, Vec<f64>)>> {
        let sums = self.weight_sums.as_ref().ok_or_else(|| anyhow!("fusion weights were not recorded"))?;
        if tokens == 0 {
            bail!("fusion weights: no tokens were recorded");
        }
        let v = sums.to_vec(gpu)?;
        let n = self.shape.n;
        Ok((0..self.layers.len())
            .filter(|&l| self.at(l, loc).is_some())
            .map(|l| {
                let r = self.sum_row(l, loc);
                (l, v[r * n..(r + 1) * n].iter().map(|&x| x as f64 / tokens as f64).collect())
            })
            .collect())
    }

    /// The fusion layer at `loc` of `layer`, if any.
    pub fn at(&self, layer: usize, loc: Location) -> Option<&FusionLayerGpu> {
        let site = match loc {
            Location::Output => &self.layers,
            Location::Attention => &self.attention_layers,
        };
        site.get(layer).and_then(|l| l.as_ref())
    }

    /// Every (AdapterHub name, weight, gradient), in a stable order (layer by layer, the
    /// attention output's before the FFN output's).
    pub fn named(&self) -> Vec<(String, &GpuTensor, &GpuTensor)> {
        let mut out = vec![];
        let sites = (0..self.layers.len()).flat_map(|l| [(l, Location::Attention), (l, Location::Output)]);
        for (l, loc) in sites {
            let Some(x) = self.at(l, loc) else { continue };
            let [qw, qb, kw, kb, vw] = names(&self.name, l, loc);
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

/// The fusion layers the `adapters` library creates where no fused adapter has a module although
/// they have one at that site in other layers (`leave_out`), with its initialisation (as
/// [`FusionModel::new_initialized`]'s), drawn from their own generator (seeded from `rng` only when
/// there are some, so fusions without left-out layers draw as before).
fn left_out_initialized<R: rand::Rng>(
    config: &FusionConfig,
    layers: usize,
    present: &dyn Fn(usize, Location) -> bool,
    d: usize,
    rng: &mut R,
) -> Vec<(usize, Location, FusionLayer)> {
    let sites: Vec<(usize, Location)> = [Location::Output, Location::Attention]
        .into_iter()
        .filter(|&loc| (0..layers).any(|l| present(l, loc)))
        .flat_map(|loc| (0..layers).filter(move |&l| !present(l, loc)).map(move |l| (l, loc)))
        .collect();
    if sites.is_empty() {
        return vec![];
    }
    let mut side = rand::rngs::StdRng::seed_from_u64(rng.random());
    let tensor = |shape: &[usize], data: Vec<f32>| Tensor { shape: shape.to_vec(), data };
    sites
        .into_iter()
        .map(|(l, loc)| {
            let mut host = FusionHostWeights::adapterhub_init(d, config.value && config.value_initialized, &mut side);
            if config.value && !config.value_initialized {
                let normal = Normal::new(0.0f32, 0.02).expect("valid normal");
                host.w_v = Some((0..d * d).map(|_| normal.sample(&mut side)).collect());
            }
            let layer = FusionLayer {
                query_weight: Some(tensor(&[d, d], host.w_q)),
                query_bias: Some(tensor(&[d], host.b_q)),
                key_weight: Some(tensor(&[d, d], host.w_k)),
                key_bias: Some(tensor(&[d], host.b_k)),
                value_weight: host.w_v.map(|v| tensor(&[d, d], v)),
            };
            (l, loc, layer)
        })
        .collect()
}

/// What the kernels support of AdapterHub's `AdapterFusionConfig`.
fn check_config(c: &FusionConfig, name: &str) -> Result<()> {
    if !c.query || !c.key {
        bail!("fusion {name:?}: configs without query or key projections are not supported");
    }
    Ok(())
}
