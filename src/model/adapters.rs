//! Trainable (or frozen, under fusion) bottleneck adapters of a whole model, and the task head,
//! on the GPU with their gradients, named as AdapterHub names them.

use crate::formats::adapterhub::{
    adapter_tensor_name, head_param_name, AdapterSite, BottleneckConfig, BottleneckParam, HeadConfig, HeadKind,
    OptionParam, ResidualBeforeLn, TrainedScaling,
};
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
    fn site(self) -> AdapterSite {
        match self {
            Location::Attention => AdapterSite::Attention,
            Location::Output => AdapterSite::Output,
        }
    }

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
/// A parallel adapter (`par_bn`) reads `x_in` instead and `out = h + s·adapter(x_in)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub original_ln_before: bool,
    pub original_ln_after: bool,
    pub residual_before_ln: bool,
    /// `is_parallel` (`par_bn`, AdapterHub's `ParallelAdapter`).
    pub parallel: bool,
    /// With an adapter LayerNorm after: the residual is added before it (`adapter_residual_before_ln`).
    pub adapter_residual_before_ln: bool,
}

impl Placement {
    /// Houlsby (`double_seq_bn`).
    pub const HOULSBY: Self = Self {
        original_ln_before: false,
        original_ln_after: true,
        residual_before_ln: true,
        parallel: false,
        adapter_residual_before_ln: false,
    };
    /// Pfeiffer (`seq_bn`).
    pub const PFEIFFER: Self = Self { original_ln_before: true, ..Self::HOULSBY };

    /// The placement an AdapterHub config describes.
    pub fn of(c: &BottleneckConfig) -> Result<Self> {
        Ok(Self {
            // A parallel adapter reads the sub-layer's input: the LayerNorm before does not apply.
            original_ln_before: c.original_ln_before && !c.is_parallel,
            original_ln_after: c.original_ln_after,
            residual_before_ln: match c.residual_before_ln {
                ResidualBeforeLn::True => true,
                ResidualBeforeLn::False => false,
                ResidualBeforeLn::PostAdd => bail!("option \"residual_before_ln\": \"post_add\" is not supported"),
            },
            parallel: c.is_parallel,
            adapter_residual_before_ln: c.adapter_residual_before_ln,
        })
    }

    /// The adapter's residual is the dense output `h`, not the adapter's own input.
    pub fn separate_residual(&self) -> bool {
        self.original_ln_before && self.residual_before_ln
    }
}

/// A trainable tensor and its gradient.
pub struct Param {
    pub w: GpuTensor,
    pub grad: GpuTensor,
}

impl Param {
    fn new(gpu: &Gpu, shape: &[usize], values: &[f32]) -> Result<Self> {
        Ok(Self { w: GpuTensor::from_slice(gpu, shape, values)?, grad: GpuTensor::zeros(gpu, shape)? })
    }
}

/// An adapter's own LayerNorm (`ln_before` / `ln_after`): trainable gamma and beta, and the unit
/// gamma / zero beta the LayerNorm kernel normalises with (the affine part runs apart).
pub struct AdapterNorm {
    pub gamma: Param,
    pub beta: Param,
    pub unit: GpuTensor,
    pub zero: GpuTensor,
}

/// The options of an adapter module beyond its bottleneck (AdapterHub's `BnConfig`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModuleOptions {
    pub trained_scaling: Option<TrainedScaling>,
    pub ln_before: bool,
    pub ln_after: bool,
}

impl ModuleOptions {
    pub fn of(c: &BottleneckConfig) -> Self {
        Self { trained_scaling: c.trained_scaling, ln_before: c.ln_before, ln_after: c.ln_after }
    }

    /// The number of values of each option tensor of one module.
    pub fn tensor_sizes(&self, d: usize) -> Vec<usize> {
        self.params(d).into_iter().map(|(_, s)| s.iter().product()).collect()
    }

    /// The option tensors (in [`OptionParam`]'s order) with their shapes.
    fn params(&self, d: usize) -> Vec<(OptionParam, Vec<usize>)> {
        let mut v = vec![];
        if self.ln_before {
            v.push((OptionParam::NormBeforeWeight, vec![d]));
            v.push((OptionParam::NormBeforeBias, vec![d]));
        }
        if self.ln_after {
            v.push((OptionParam::NormAfterWeight, vec![d]));
            v.push((OptionParam::NormAfterBias, vec![d]));
        }
        match self.trained_scaling {
            Some(TrainedScaling::Learned) => v.push((OptionParam::Scaling, vec![1])),
            Some(TrainedScaling::Channel) => v.push((OptionParam::Scaling, vec![d])),
            None => {}
        }
        v
    }
}

/// One bottleneck adapter with its gradients.
pub struct AdapterModule {
    /// The bottleneck; its `scale` is the fixed scaling (1 with a trained one).
    pub shape: AdapterShape,
    pub w: AdapterWeights,
    pub grad: AdapterWeights,
    /// `scaling: "learned"` (`[1]`) or `"channel"` (`[d]`).
    pub scaling: Option<Param>,
    pub norm_before: Option<AdapterNorm>,
    pub norm_after: Option<AdapterNorm>,
}

/// A named adapter across all layers (Houlsby: two per layer; Pfeiffer: one).
pub struct AdapterSet {
    pub name: String,
    pub placement: Placement,
    pub options: ModuleOptions,
    pub attention: Vec<Option<AdapterModule>>,
    pub output: Vec<Option<AdapterModule>>,
}

/// The four AdapterHub tensor names of the bottleneck at `loc` in `layer` (`ln_before` moves the
/// down-projection to `adapter_down.1`).
pub fn adapter_tensor_names(name: &str, layer: usize, loc: Location, ln_before: bool) -> [String; 4] {
    BottleneckParam::ALL.map(|p| adapter_tensor_name(name, layer, loc.site(), p.suffix_in(ln_before)))
}

/// The AdapterHub names and shapes of the option tensors of the module at `loc` in `layer`.
pub fn option_tensor_names(
    name: &str,
    layer: usize,
    loc: Location,
    options: ModuleOptions,
    d: usize,
) -> Vec<(OptionParam, String, Vec<usize>)> {
    options
        .params(d)
        .into_iter()
        .map(|(p, s)| (p, adapter_tensor_name(name, layer, loc.site(), p.suffix()), s))
        .collect()
}

impl AdapterModule {
    fn tensors(w: &AdapterWeights) -> [&GpuTensor; 4] {
        [&w.w_down, &w.b_down, &w.w_up, &w.b_up]
    }

    /// A plain bottleneck: no trained scaling, no adapter LayerNorm.
    pub fn is_plain(&self) -> bool {
        self.scaling.is_none() && self.norm_before.is_none() && self.norm_after.is_none()
    }

    /// The option tensors (weight, gradient) in [`OptionParam`]'s order.
    fn option_tensors(&self) -> Vec<(&GpuTensor, &GpuTensor)> {
        let mut v = vec![];
        for n in [&self.norm_before, &self.norm_after].into_iter().flatten() {
            v.push((&n.gamma.w, &n.gamma.grad));
            v.push((&n.beta.w, &n.beta.grad));
        }
        if let Some(s) = &self.scaling {
            v.push((&s.w, &s.grad));
        }
        v
    }

    /// Trainable parameters: the bottleneck's and the options'.
    pub fn parameters(&self) -> usize {
        self.shape.parameters() + self.option_tensors().iter().map(|(w, _)| w.numel()).sum::<usize>()
    }
}

impl AdapterSet {
    /// Builds the set from host tensors looked up by AdapterHub name (`get(name)` → row-major
    /// values). `locations` says which adapters exist per layer (`leave_out` removes layers).
    pub fn from_tensors(
        gpu: &Arc<Gpu>,
        name: &str,
        placement: Placement,
        options: ModuleOptions,
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
            let [wd, bd, wu, bu] = adapter_tensor_names(name, l, loc, options.ln_before);
            let w = AdapterWeights {
                w_down: GpuTensor::from_slice(gpu, &[m, d], &get(&wd, &[m, d])?)?,
                b_down: GpuTensor::from_slice(gpu, &[m], &get(&bd, &[m])?)?,
                w_up: GpuTensor::from_slice(gpu, &[d, m], &get(&wu, &[d, m])?)?,
                b_up: GpuTensor::from_slice(gpu, &[d], &get(&bu, &[d])?)?,
            };
            let mut module = AdapterModule {
                shape,
                w,
                grad: AdapterWeights::zeros(gpu, d, m)?,
                scaling: None,
                norm_before: None,
                norm_after: None,
            };
            let mut gamma = None;
            for (p, n, s) in option_tensor_names(name, l, loc, options, d) {
                let param = Param::new(gpu, &s, &get(&n, &s)?)?;
                match p {
                    OptionParam::Scaling => module.scaling = Some(param),
                    OptionParam::NormBeforeWeight | OptionParam::NormAfterWeight => gamma = Some(param),
                    OptionParam::NormBeforeBias | OptionParam::NormAfterBias => {
                        let gamma = gamma.take().expect("the weight comes before the bias");
                        let norm = AdapterNorm {
                            gamma,
                            beta: param,
                            unit: GpuTensor::from_slice(gpu, &[d], &vec![1.0; d])?,
                            zero: GpuTensor::zeros(gpu, &[d])?,
                        };
                        if p == OptionParam::NormBeforeBias {
                            module.norm_before = Some(norm);
                        } else {
                            module.norm_after = Some(norm);
                        }
                    }
                }
            }
            Ok(Some(module))
        };
        let attention = (0..layers).map(|l| make(l, Location::Attention)).collect::<Result<Vec<_>>>()?;
        let output = (0..layers).map(|l| make(l, Location::Output)).collect::<Result<Vec<_>>>()?;
        // A set with no module at all (every layer left out) leaves the base unchanged: that is
        // `peft train --config none`, where only the head trains.
        Ok(Self { name: name.to_string(), placement, options, attention, output })
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
                    let names = adapter_tensor_names(&self.name, l, loc, self.options.ln_before);
                    for ((n, w), g) in
                        names.into_iter().zip(AdapterModule::tensors(&a.w)).zip(AdapterModule::tensors(&a.grad))
                    {
                        out.push((n, w, g));
                    }
                    let d = a.shape.d;
                    for ((_, n, _), (w, g)) in
                        option_tensor_names(&self.name, l, loc, self.options, d).into_iter().zip(a.option_tensors())
                    {
                        out.push((n, w, g));
                    }
                }
            }
        }
        out
    }

    /// The option tensors (adapter LayerNorms, trained scaling) under their AdapterHub names.
    pub fn named_options(&self) -> Vec<(String, &GpuTensor)> {
        let mut out = vec![];
        for l in 0..self.attention.len() {
            for loc in [Location::Attention, Location::Output] {
                if let Some(a) = self.at(l, loc) {
                    let names = option_tensor_names(&self.name, l, loc, self.options, a.shape.d);
                    out.extend(names.into_iter().zip(a.option_tensors()).map(|((_, n, _), (w, _))| (n, w)));
                }
            }
        }
        out
    }

    /// Trainable parameter count.
    pub fn parameters(&self) -> usize {
        self.attention.iter().chain(&self.output).flatten().map(|a| a.parameters()).sum()
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
