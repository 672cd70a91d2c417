//! Frozen base weights on the GPU, streamed from their file when they do not all stay resident.
//!
//! With `resident_layers >= layers` every layer is uploaded once. Otherwise layers share a ring of
//! `max(resident_layers, 1)` slots and are uploaded just in time (`queue.write_buffer`, executed in
//! queue order before the next submit), and the encoder submits once per layer so that a slot is
//! never overwritten before the work that reads it was submitted. Results are bit-identical either
//! way: the same kernels read the same values.

use crate::gpu::{Gpu, GpuTensor};
use anyhow::{bail, Context, Result};
use std::borrow::Cow;
use std::sync::Arc;

/// Where frozen tensors come from (a memory-mapped safetensors file, in practice). `bytes` returns
/// the tensor as little-endian f32 bytes, already checked against `shape`.
pub trait TensorSource: Send + Sync {
    fn bytes(&self, name: &str, shape: &[usize]) -> Result<Cow<'_, [u8]>>;
}

/// Tensors of one encoder layer, nn.Linear layouts. The query, key and value projections are
/// stored concatenated (rows 0..d query, d..2d key, 2d..3d value), so that Q, K and V come from one
/// product `x · qkv_wᵀ + qkv_b` into `[tokens, 3d]`; they are assembled at upload.
#[derive(Clone)]
pub struct LayerWeights {
    /// `[3d, d]`: the query, key and value weights, one after the other.
    pub qkv_w: GpuTensor,
    /// `[3d]`: their biases, in the same order.
    pub qkv_b: GpuTensor,
    pub ao_w: GpuTensor,
    pub ao_b: GpuTensor,
    pub ln1_g: GpuTensor,
    pub ln1_b: GpuTensor,
    pub i_w: GpuTensor,
    pub i_b: GpuTensor,
    pub o_w: GpuTensor,
    pub o_b: GpuTensor,
    pub ln2_g: GpuTensor,
    pub ln2_b: GpuTensor,
}

/// (name suffix under `encoder.layer.L.`, shape) of every tensor of one layer, in the order of
/// [`LayerWeights`]'s fields.
pub(crate) fn layer_tensors(d: usize, ffn: usize) -> [(&'static str, Vec<usize>); 16] {
    [
        ("attention.self.query.weight", vec![d, d]),
        ("attention.self.query.bias", vec![d]),
        ("attention.self.key.weight", vec![d, d]),
        ("attention.self.key.bias", vec![d]),
        ("attention.self.value.weight", vec![d, d]),
        ("attention.self.value.bias", vec![d]),
        ("attention.output.dense.weight", vec![d, d]),
        ("attention.output.dense.bias", vec![d]),
        ("attention.output.LayerNorm.weight", vec![d]),
        ("attention.output.LayerNorm.bias", vec![d]),
        ("intermediate.dense.weight", vec![ffn, d]),
        ("intermediate.dense.bias", vec![ffn]),
        ("output.dense.weight", vec![d, ffn]),
        ("output.dense.bias", vec![d]),
        ("output.LayerNorm.weight", vec![d]),
        ("output.LayerNorm.bias", vec![d]),
    ]
}

impl LayerWeights {
    /// Where each tensor of [`layer_tensors`] goes: its GPU tensor and the byte offset in it (the
    /// query, key and value weights and biases share `qkv_w` / `qkv_b`).
    fn targets(&self, d: usize) -> [(&GpuTensor, u64); 16] {
        let (w, b) = ((d * d * 4) as u64, (d * 4) as u64);
        [
            (&self.qkv_w, 0),
            (&self.qkv_b, 0),
            (&self.qkv_w, w),
            (&self.qkv_b, b),
            (&self.qkv_w, 2 * w),
            (&self.qkv_b, 2 * b),
            (&self.ao_w, 0),
            (&self.ao_b, 0),
            (&self.ln1_g, 0),
            (&self.ln1_b, 0),
            (&self.i_w, 0),
            (&self.i_b, 0),
            (&self.o_w, 0),
            (&self.o_b, 0),
            (&self.ln2_g, 0),
            (&self.ln2_b, 0),
        ]
    }

    fn alloc(gpu: &Gpu, d: usize, ffn: usize) -> Result<Self> {
        let t = layer_tensors(d, ffn);
        let z = |i: usize| GpuTensor::zeros(gpu, &t[i].1);
        Ok(Self {
            qkv_w: GpuTensor::zeros(gpu, &[3 * d, d])?,
            qkv_b: GpuTensor::zeros(gpu, &[3 * d])?,
            ao_w: z(6)?,
            ao_b: z(7)?,
            ln1_g: z(8)?,
            ln1_b: z(9)?,
            i_w: z(10)?,
            i_b: z(11)?,
            o_w: z(12)?,
            o_b: z(13)?,
            ln2_g: z(14)?,
            ln2_b: z(15)?,
        })
    }

    /// Bytes of one layer's weights on the GPU.
    pub fn bytes(d: usize, ffn: usize) -> u64 {
        layer_tensors(d, ffn).iter().map(|(_, s)| s.iter().product::<usize>() as u64 * 4).sum()
    }
}

/// Per-layer frozen weights: resident, or streamed through a ring of slots.
pub struct LayerStore {
    gpu: Arc<Gpu>,
    source: Arc<dyn TensorSource>,
    d: usize,
    ffn: usize,
    layers: usize,
    resident: bool,
    slots: Vec<LayerWeights>,
    /// Which layer each slot holds now.
    slot_layer: Vec<Option<usize>>,
    /// Bytes written to the GPU by uploads since the last [`take_uploaded`](Self::take_uploaded).
    uploaded: u64,
}

impl LayerStore {
    pub fn new(
        gpu: Arc<Gpu>,
        source: Arc<dyn TensorSource>,
        d: usize,
        ffn: usize,
        layers: usize,
        resident_layers: usize,
    ) -> Result<Self> {
        let resident = resident_layers >= layers;
        let n = if resident { layers } else { resident_layers.max(1) };
        let slots = (0..n).map(|_| LayerWeights::alloc(&gpu, d, ffn)).collect::<Result<Vec<_>>>()?;
        let mut s = Self { gpu, source, d, ffn, layers, resident, slots, slot_layer: vec![None; n], uploaded: 0 };
        if resident {
            for l in 0..layers {
                s.upload(l, l)?;
            }
            // The one-time load is not streaming traffic.
            s.uploaded = 0;
        }
        Ok(s)
    }

    /// True when every layer stays on the GPU (no streaming).
    pub fn is_resident(&self) -> bool {
        self.resident
    }

    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    fn upload(&mut self, layer: usize, slot: usize) -> Result<()> {
        if layer >= self.layers {
            bail!("layer {layer} out of range ({} layers)", self.layers);
        }
        let names = layer_tensors(self.d, self.ffn);
        let targets = self.slots[slot].targets(self.d);
        for ((suffix, shape), (t, offset)) in names.iter().zip(targets) {
            let name = format!("encoder.layer.{layer}.{suffix}");
            let bytes = self.source.bytes(&name, shape).with_context(|| format!("loading layer {layer}"))?;
            self.gpu.queue.write_buffer(&t.buffer, offset, &bytes);
            self.uploaded += bytes.len() as u64;
        }
        self.slot_layer[slot] = Some(layer);
        Ok(())
    }

    /// The weights of `layer`, uploading them first when streaming. When streaming, the caller must
    /// submit the work that uses them before asking for another layer that maps to the same slot.
    pub fn layer(&mut self, layer: usize) -> Result<LayerWeights> {
        let slot = if self.resident { layer } else { layer % self.slots.len() };
        if self.slot_layer[slot] != Some(layer) {
            self.upload(layer, slot)?;
        }
        Ok(self.slots[slot].clone())
    }

    pub fn take_uploaded(&mut self) -> u64 {
        std::mem::take(&mut self.uploaded)
    }

    /// GPU bytes held by the layer slots.
    pub fn gpu_bytes(&self) -> u64 {
        self.slots.len() as u64 * LayerWeights::bytes(self.d, self.ffn)
    }
}
