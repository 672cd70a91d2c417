//! Checkpoints in AdapterHub's format: the GPU tensors gathered into [`Adapter`] (with its head),
//! which writes each file atomically (temp file + fsync + rename).

use crate::formats::adapterhub::{
    Adapter, BottleneckConfig, BottleneckWeights, Head, HeadLinear, LayerAdapters, SavedConfig,
};
use crate::formats::weights::{Tensor, TensorMap};
use crate::gpu::{Gpu, GpuTensor};
use crate::model::adapters::{AdapterSet, ClassificationHead, Location};
use anyhow::Result;

/// Reads a GPU tensor's values to the host: [`GpuTensor::to_vec`] natively; the browser build,
/// which cannot block, passes the values it has read back already.
pub type HostRead<'a> = dyn Fn(&GpuTensor) -> Result<Vec<f32>> + 'a;

fn host(read: &HostRead, t: &GpuTensor) -> Result<Tensor> {
    Tensor::new(t.shape.clone(), read(t)?)
}

/// Builds AdapterHub's in-memory adapter + head (for saving) from the GPU tensors.
pub fn to_adapterhub(
    gpu: &Gpu,
    set: &AdapterSet,
    config: &BottleneckConfig,
    head: &ClassificationHead,
    labels: &[String],
    hidden: usize,
    model_name: &str,
) -> Result<Adapter> {
    to_adapterhub_with(&|t| t.to_vec(gpu), set, config, head, labels, hidden, model_name)
}

/// [`to_adapterhub`] with the tensors' values from `read`.
pub fn to_adapterhub_with(
    read: &HostRead,
    set: &AdapterSet,
    config: &BottleneckConfig,
    head: &ClassificationHead,
    labels: &[String],
    hidden: usize,
    model_name: &str,
) -> Result<Adapter> {
    let mut layers = vec![];
    for l in 0..set.attention.len() {
        let w = |loc| -> Result<Option<BottleneckWeights>> {
            match set.at(l, loc) {
                None => Ok(None),
                Some(a) => Ok(Some(BottleneckWeights {
                    down_weight: host(read, &a.w.w_down)?,
                    down_bias: host(read, &a.w.b_down)?,
                    up_weight: host(read, &a.w.w_up)?,
                    up_bias: host(read, &a.w.b_up)?,
                })),
            }
        };
        layers.push(LayerAdapters { attention: w(Location::Attention)?, output: w(Location::Output)? });
    }
    let saved = SavedConfig::new(&set.name, hidden, model_name, config.to_config());
    let head = head_to_adapterhub_with(read, head, labels, hidden, model_name)?;
    let mut options = TensorMap::new();
    for (n, w) in set.named_options() {
        options.insert(n, host(read, w)?);
    }
    Ok(Adapter { saved, config: config.clone(), layers, options, head: Some(head) })
}

/// AdapterHub's in-memory classification head (for saving) from the GPU tensors.
pub fn head_to_adapterhub(
    gpu: &Gpu,
    head: &ClassificationHead,
    labels: &[String],
    hidden: usize,
    model_name: &str,
) -> Result<Head> {
    head_to_adapterhub_with(&|t| t.to_vec(gpu), head, labels, hidden, model_name)
}

/// [`head_to_adapterhub`] with the tensors' values from `read`.
pub fn head_to_adapterhub_with(
    read: &HostRead,
    head: &ClassificationHead,
    labels: &[String],
    hidden: usize,
    model_name: &str,
) -> Result<Head> {
    let mut head_config = head.config.clone();
    if labels.len() == head_config.num_labels {
        head_config.id2label = labels.to_vec();
    }
    let head_saved = SavedConfig::new(&head.name, hidden, model_name, head_config.to_config());
    let linears = head
        .linears
        .iter()
        .map(|l| Ok(HeadLinear { weight: host(read, &l.w)?, bias: l.b.as_ref().map(|b| host(read, b)).transpose()? }))
        .collect::<Result<Vec<_>>>()?;
    Ok(Head { saved: head_saved, config: head_config, linears })
}
