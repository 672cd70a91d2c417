//! Trainable (or frozen, under fusion) bottleneck adapters of a whole model, and the task head,
//! on the GPU with their gradients, named as AdapterHub names them.

use crate::gpu::{Gpu, GpuTensor};
use crate::kernels::adapter::{AdapterShape, AdapterWeights};
use crate::types::Activation;
use anyhow::Result;
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

/// AdapterHub's default classification head: CLS → Linear(d, d) → tanh → Linear(d, labels)
/// (`heads.<name>.1.*`, `heads.<name>.4.*`).
pub struct ClassificationHead {
    pub name: String,
    pub labels: usize,
    pub w1: GpuTensor,
    pub b1: GpuTensor,
    pub w4: GpuTensor,
    pub b4: GpuTensor,
    pub g_w1: GpuTensor,
    pub g_b1: GpuTensor,
    pub g_w4: GpuTensor,
    pub g_b4: GpuTensor,
}

impl ClassificationHead {
    pub fn tensor_names(name: &str) -> [String; 4] {
        [
            format!("heads.{name}.1.weight"),
            format!("heads.{name}.1.bias"),
            format!("heads.{name}.4.weight"),
            format!("heads.{name}.4.bias"),
        ]
    }

    pub fn from_tensors(gpu: &Arc<Gpu>, name: &str, d: usize, labels: usize, get: TensorGetter) -> Result<Self> {
        let [n1w, n1b, n4w, n4b] = Self::tensor_names(name);
        Ok(Self {
            name: name.to_string(),
            labels,
            w1: GpuTensor::from_slice(gpu, &[d, d], &get(&n1w, &[d, d])?)?,
            b1: GpuTensor::from_slice(gpu, &[d], &get(&n1b, &[d])?)?,
            w4: GpuTensor::from_slice(gpu, &[labels, d], &get(&n4w, &[labels, d])?)?,
            b4: GpuTensor::from_slice(gpu, &[labels], &get(&n4b, &[labels])?)?,
            g_w1: GpuTensor::zeros(gpu, &[d, d])?,
            g_b1: GpuTensor::zeros(gpu, &[d])?,
            g_w4: GpuTensor::zeros(gpu, &[labels, d])?,
            g_b4: GpuTensor::zeros(gpu, &[labels])?,
        })
    }

    pub fn named(&self) -> Vec<(String, &GpuTensor, &GpuTensor)> {
        let names = Self::tensor_names(&self.name);
        let w = [&self.w1, &self.b1, &self.w4, &self.b4];
        let g = [&self.g_w1, &self.g_b1, &self.g_w4, &self.g_b4];
        names.into_iter().zip(w).zip(g).map(|((n, w), g)| (n, w, g)).collect()
    }

    pub fn parameters(&self) -> usize {
        [&self.w1, &self.b1, &self.w4, &self.b4].iter().map(|t| t.numel()).sum()
    }
}
