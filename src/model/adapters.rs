//! Trainable (or frozen, under fusion) bottleneck adapters of a whole model, and the task head,
//! on the GPU with their gradients, named as AdapterHub names them.

use crate::formats::adapterhub::{head_param_name, HeadConfig, HeadKind};
use crate::gpu::{Gpu, GpuTensor};
use crate::kernels::adapter::{AdapterShape, AdapterWeights};
use crate::types::Activation;
use anyhow::{bail, Result};
use std::sync::Arc;

/// Looks a host tensor up by name, checking its shape.
pub type TensorGetter<'a> = &'a dyn Fn(&str, &[usize]) -> Result<Vec<f32>>;

/// Where AdapterHub puts a bottleneck adapter inside a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// After the attention output dense (`attention.output.adapters.*`, AdapterHub `mh_adapter`).
    Attention,
    /// After the FFN output dense (`output.adapters.*`, AdapterHub `output_adapter`).
    Output,
}

impl Location {
    pub fn module_path(self, layer: usize) -> String {
        match self {
            Location::Attention => format!("bert.encoder.layer.{layer}.attention.output"),
            Location::Output => format!("bert.encoder.layer.{layer}.output"),
        }
    }
}

/// The residual/LayerNorm options of AdapterHub's `BnConfig` that decide how an adapter sits
/// between a sub-layer's dense output `h`, its input `x_in` and its LayerNorm:
/// `hs = original_ln_before ? LN(h + x_in) : h`; residual = `residual_before_ln ? h : hs`;
/// `out = residual + s·adapter(hs)`; `final = original_ln_after ? LN(out + x_in) : out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub original_ln_before: bool,
    pub original_ln_after: bool,
    pub residual_before_ln: bool,
}

impl Placement {
    /// Houlsby (`double_seq_bn`).
    pub const HOULSBY: Self = Self { original_ln_before: false, original_ln_after: true, residual_before_ln: true };
    /// Pfeiffer (`seq_bn`).
    pub const PFEIFFER: Self = Self { original_ln_before: true, original_ln_after: true, residual_before_ln: true };

    /// The adapter's residual is the dense output `h`, not the adapter's own input.
    pub fn separate_residual(&self) -> bool {
        self.original_ln_before && self.residual_before_ln
    }
}

/// One bottleneck adapter with its gradients.
pub struct AdapterModule {
    pub shape: AdapterShape,
    pub w: AdapterWeights,
    pub grad: AdapterWeights,
}

/// A named adapter across all layers (Houlsby: two per layer; Pfeiffer: one).
pub struct AdapterSet {
    pub name: String,
    pub placement: Placement,
    pub attention: Vec<Option<AdapterModule>>,
    pub output: Vec<Option<AdapterModule>>,
}

/// The four AdapterHub tensor names of the adapter at `loc` in `layer`.
pub fn adapter_tensor_names(name: &str, layer: usize, loc: Location) -> [String; 4] {
    let p = format!("{}.adapters.{name}", loc.module_path(layer));
    [
        format!("{p}.adapter_down.0.weight"),
        format!("{p}.adapter_down.0.bias"),
        format!("{p}.adapter_up.weight"),
        format!("{p}.adapter_up.bias"),
    ]
}

impl AdapterModule {
    fn tensors(w: &AdapterWeights) -> [&GpuTensor; 4] {
        [&w.w_down, &w.b_down, &w.w_up, &w.b_up]
    }
}

impl AdapterSet {
    /// Builds the set from host tensors looked up by AdapterHub name (`get(name)` → row-major
    /// values). `locations` says which adapters exist per layer (`leave_out` removes layers).
    pub fn from_tensors(
        gpu: &Arc<Gpu>,
        name: &str,
        placement: Placement,
        act: Activation,
        scale: f32,
        d: usize,
        m: usize,
        layers: usize,
        locations: &dyn Fn(usize, Location) -> bool,
        get: TensorGetter,
    ) -> Result<Self> {
        let shape = AdapterShape { d, m, act, scale };
        let make = |l: usize, loc: Location| -> Result<Option<AdapterModule>> {
            if !locations(l, loc) {
                return Ok(None);
            }
            let [wd, bd, wu, bu] = adapter_tensor_names(name, l, loc);
            let w = AdapterWeights {
                w_down: GpuTensor::from_slice(gpu, &[m, d], &get(&wd, &[m, d])?)?,
                b_down: GpuTensor::from_slice(gpu, &[m], &get(&bd, &[m])?)?,
                w_up: GpuTensor::from_slice(gpu, &[d, m], &get(&wu, &[d, m])?)?,
                b_up: GpuTensor::from_slice(gpu, &[d], &get(&bu, &[d])?)?,
            };
            Ok(Some(AdapterModule { shape, w, grad: AdapterWeights::zeros(gpu, d, m)? }))
        };
        let attention = (0..layers).map(|l| make(l, Location::Attention)).collect::<Result<Vec<_>>>()?;
        let output = (0..layers).map(|l| make(l, Location::Output)).collect::<Result<Vec<_>>>()?;
        // A set with no module at all (every layer left out) leaves the base unchanged: that is
        // `peft train --config none`, where only the head trains.
        Ok(Self { name: name.to_string(), placement, attention, output })
    }

    pub fn at(&self, layer: usize, loc: Location) -> Option<&AdapterModule> {
        match loc {
            Location::Attention => self.attention.get(layer).and_then(|a| a.as_ref()),
            Location::Output => self.output.get(layer).and_then(|a| a.as_ref()),
        }
    }

    /// Every (AdapterHub name, weight, gradient) triple, in a stable order.
    pub fn named(&self) -> Vec<(String, &GpuTensor, &GpuTensor)> {
        let mut out = vec![];
        for l in 0..self.attention.len() {
            for loc in [Location::Attention, Location::Output] {
                if let Some(a) = self.at(l, loc) {
                    let names = adapter_tensor_names(&self.name, l, loc);
                    for ((n, w), g) in
                        names.into_iter().zip(AdapterModule::tensors(&a.w)).zip(AdapterModule::tensors(&a.grad))
                    {
                        out.push((n, w, g));
                    }
                }
            }
        }
        out
    }

    /// Trainable parameter count.
    pub fn parameters(&self) -> usize {
        self.attention.iter().chain(&self.output).flatten().map(|a| a.shape.parameters()).sum()
    }
}

/// One Linear of a head on the GPU with its gradients; `index` is its position in the head's
/// `nn.Sequential` (`heads.<name>.<index>.weight`).
pub struct HeadLinearGpu {
    pub index: usize,
    /// `[out, in]`
    pub w: GpuTensor,
    pub b: Option<GpuTensor>,
    pub g_w: GpuTensor,
    pub g_b: Option<GpuTensor>,
}

/// An AdapterHub prediction head on the GPU (the name is historical: every kind the project
/// trains). Classification, regression and multi-label heads read the `[CLS]` row, tagging heads
/// every token; one or two Linear layers (dropout before each), `config.activation_function`
/// between them. AdapterHub's default classification head: CLS → Linear(d, d) → tanh →
/// Linear(d, labels) (`heads.<name>.1.*`, `heads.<name>.4.*`).
pub struct ClassificationHead {
    pub name: String,
    /// Kind, layers, activation, bias and label names as saved in `head_config.json`.
    pub config: HeadConfig,
    /// Logits per row: `num_labels`.
    pub labels: usize,
    /// In order; the last one gives the logits.
    pub linears: Vec<HeadLinearGpu>,
}

impl ClassificationHead {
    /// AdapterHub names of the default classification head's four tensors.
    pub fn tensor_names(name: &str) -> [String; 4] {
        [
            format!("heads.{name}.1.weight"),
            format!("heads.{name}.1.bias"),
            format!("heads.{name}.4.weight"),
            format!("heads.{name}.4.bias"),
        ]
    }

    /// `(AdapterHub name, shape)` of every tensor of a head with `config` over `d` hidden units.
    pub fn tensor_specs(name: &str, d: usize, config: &HeadConfig) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![];
        for (idx, (wshape, has_bias)) in config.linear_indices().into_iter().zip(config.linear_shapes(d)) {
            out.push((head_param_name(name, idx, "weight"), wshape.clone()));
            if has_bias {
                out.push((head_param_name(name, idx, "bias"), vec![wshape[0]]));
            }
        }
        out
    }

    /// The layouts the GPU head runs: one or two Linear layers, the `[CLS]` row (not the pooler).
    pub fn check_supported(name: &str, config: &HeadConfig) -> Result<()> {
        if !(1..=2).contains(&config.layers) || config.use_pooler {
            bail!(
                "head {name:?}: {} heads with layers {} and use_pooler {} are not supported \
                 (supported: layers 1 or 2, the [CLS] token's hidden state, use_pooler false)",
                config.kind,
                config.layers,
                config.use_pooler
            );
        }
        Ok(())
    }

    /// AdapterHub's default classification head with `labels` labels (named `LABEL_i`).
    pub fn from_tensors(gpu: &Arc<Gpu>, name: &str, d: usize, labels: usize, get: TensorGetter) -> Result<Self> {
        let names: Vec<String> = (0..labels).map(|i| format!("LABEL_{i}")).collect();
        Self::from_config(gpu, name, d, &HeadConfig::classification(&names), get)
    }

    /// The head `config` describes, its tensors looked up by AdapterHub name.
    pub fn from_config(gpu: &Arc<Gpu>, name: &str, d: usize, config: &HeadConfig, get: TensorGetter) -> Result<Self> {
        Self::check_supported(name, config)?;
        let mut linears = vec![];
        for (index, (wshape, has_bias)) in config.linear_indices().into_iter().zip(config.linear_shapes(d)) {
            let out = wshape[0];
            let (b, g_b) = if has_bias {
                let bn = head_param_name(name, index, "bias");
                (Some(GpuTensor::from_slice(gpu, &[out], &get(&bn, &[out])?)?), Some(GpuTensor::zeros(gpu, &[out])?))
            } else {
                (None, None)
            };
            let wn = head_param_name(name, index, "weight");
            linears.push(HeadLinearGpu {
                index,
                w: GpuTensor::from_slice(gpu, &wshape, &get(&wn, &wshape)?)?,
                b,
                g_w: GpuTensor::zeros(gpu, &wshape)?,
                g_b,
            });
        }
        Ok(Self { name: name.to_string(), config: config.clone(), labels: config.num_labels, linears })
    }

    /// What the head predicts.
    pub fn kind(&self) -> HeadKind {
        self.config.kind
    }

    /// The activation between the Linear layers (identity when the config has none).
    pub fn activation(&self) -> Activation {
        self.config.activation_function.unwrap_or(Activation::Identity)
    }

    pub fn named(&self) -> Vec<(String, &GpuTensor, &GpuTensor)> {
        let mut out = vec![];
        for l in &self.linears {
            out.push((head_param_name(&self.name, l.index, "weight"), &l.w, &l.g_w));
            if let (Some(b), Some(g)) = (&l.b, &l.g_b) {
                out.push((head_param_name(&self.name, l.index, "bias"), b, g));
            }
        }
        out
    }

    pub fn parameters(&self) -> usize {
        self.named().iter().map(|(_, w, _)| w.numel()).sum()
    }
}
