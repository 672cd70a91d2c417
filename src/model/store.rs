//! Frozen base weights on the GPU, streamed from their file when they do not all stay resident.
//!
//! With `resident_layers >= layers` every layer is uploaded once. Otherwise layers share a ring of
//! `max(resident_layers, 1)` slots and are uploaded just in time (`queue.write_buffer`, executed in
//! queue order before the next submit), and the encoder submits once per layer so that a slot is
//! never overwritten before the work that reads it was submitted. Results are bit-identical either
//! way: the same kernels read the same values.
//!
//! With [`WeightPrecision::F16`] the slots hold each layer's four matrices as f16 (packed two to a
//! word, [`elementwise::pack_f16`]) and [`LayerStore::layer`] records their exact widening to f32
//! into one shared set of f32 matrices just before the layer's products: the same kernels then read
//! the f16-rounded values, so the results equal the f32 path run on f16-rounded weights, bit for
//! bit.

use crate::gpu::{CommandRecorder, Gpu, GpuTensor};
use crate::kernels::elementwise;
use crate::types::WeightPrecision;
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

/// Row stride (in elements) of the FFN's intermediate width `ffn` on the GPU: the FFN output
/// weight `[d, ffn]` and the intermediate activations `[tokens, ffn]` (and their gradients) are
/// stored with rows this long. Rows a multiple of 2 KiB apart map every row to the same few L1
/// cache sets of a CPU (lavapipe: 512×384×1536 products ran 20 % slower than with a stride of 1540),
/// so such widths get 4 more elements a row (16 bytes: vec4 loads stay aligned); the padding is
/// never read by a product.
pub fn ffn_row_stride(ffn: usize) -> usize {
    if ffn > 0 && (ffn * 4) % 2048 == 0 {
        ffn + 4
    } else {
        ffn
    }
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

    /// Element counts of the fields, in field order, and whether each is one of the four matrices
    /// (stored as f16 with [`WeightPrecision::F16`]).
    fn field_sizes(d: usize, ffn: usize) -> [(usize, bool); 12] {
        let t = layer_tensors(d, ffn);
        let n = |i: usize| t[i].1.iter().product::<usize>();
        [
            (3 * d * d, true),
            (3 * d, false),
            (n(6), true),
            (n(7), false),
            (n(8), false),
            (n(9), false),
            (n(10), true),
            (n(11), false),
            // Rows of ffn_row_stride(ffn) values (see there).
            (d * ffn_row_stride(ffn), true),
            (n(13), false),
            (n(14), false),
            (n(15), false),
        ]
    }

    /// The fields' GPU shapes: f32 tensors, or a matrix's packed f16 words `[⌈n/2⌉]`.
    fn alloc(gpu: &Gpu, d: usize, ffn: usize, precision: WeightPrecision) -> Result<Self> {
        let shapes: [Vec<usize>; 4] = [vec![3 * d, d], vec![d, d], vec![ffn, d], vec![d, ffn_row_stride(ffn)]];
        let mut matrices = shapes.into_iter();
        let mut fields = Self::field_sizes(d, ffn).into_iter().map(|(n, matrix)| match (matrix, precision) {
            (true, WeightPrecision::F16) => GpuTensor::zeros(gpu, &[n.div_ceil(2)]),
            (true, WeightPrecision::F32) => GpuTensor::zeros(gpu, &matrices.next().expect("four matrices")),
            (false, _) => GpuTensor::zeros(gpu, &[n]),
        });
        let mut next = || fields.next().expect("twelve fields");
        Ok(Self {
            qkv_w: next()?,
            qkv_b: next()?,
            ao_w: next()?,
            ao_b: next()?,
            ln1_g: next()?,
            ln1_b: next()?,
            i_w: next()?,
            i_b: next()?,
            o_w: next()?,
            o_b: next()?,
            ln2_g: next()?,
            ln2_b: next()?,
        })
    }

    /// The four matrices as f32 (the widening target of f16 slots).
    fn alloc_matrices(gpu: &Gpu, d: usize, ffn: usize) -> Result<[GpuTensor; 4]> {
        Ok([
            GpuTensor::zeros(gpu, &[3 * d, d])?,
            GpuTensor::zeros(gpu, &[d, d])?,
            GpuTensor::zeros(gpu, &[ffn, d])?,
            GpuTensor::zeros(gpu, &[d, ffn_row_stride(ffn)])?,
        ])
    }

    /// Bytes of each field in a slot, in field order (the FFN output weight's rows padded;
    /// matrices as packed f16 words with [`WeightPrecision::F16`]).
    pub fn field_bytes(d: usize, ffn: usize, precision: WeightPrecision) -> [u64; 12] {
        Self::field_sizes(d, ffn).map(|(n, matrix)| match (matrix, precision) {
            (true, WeightPrecision::F16) => n.div_ceil(2) as u64 * 4,
            _ => n as u64 * 4,
        })
    }

    /// Bytes of one layer's weights in a slot ([`field_bytes`](Self::field_bytes) summed).
    pub fn bytes(d: usize, ffn: usize, precision: WeightPrecision) -> u64 {
        Self::field_bytes(d, ffn, precision).iter().sum()
    }

    /// Bytes of the f32 matrices f16 slots widen into (one layer's; none for f32 slots).
    pub fn widened_bytes(d: usize, ffn: usize, precision: WeightPrecision) -> u64 {
        match precision {
            WeightPrecision::F32 => 0,
            WeightPrecision::F16 => Self::field_sizes(d, ffn).iter().filter(|f| f.1).map(|f| f.0 as u64 * 4).sum(),
        }
    }

    /// The matrices' fields, in order.
    fn matrices(&self) -> [&GpuTensor; 4] {
        [&self.qkv_w, &self.ao_w, &self.i_w, &self.o_w]
    }
}

/// Row-major f32 rows of `cols` values (`bytes`) laid out `stride` values apart, zero-padded.
fn padded_rows(bytes: &[u8], cols: usize, stride: usize) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len() / cols * stride];
    for (src, dst) in bytes.chunks(cols * 4).zip(out.chunks_mut(stride * 4)) {
        dst[..src.len()].copy_from_slice(src);
    }
    out
}

/// Per-layer frozen weights: resident, or streamed through a ring of slots.
pub struct LayerStore {
    gpu: Arc<Gpu>,
    source: Arc<dyn TensorSource>,
    d: usize,
    ffn: usize,
    layers: usize,
    resident: bool,
    precision: WeightPrecision,
    slots: Vec<LayerWeights>,
    /// With f16 slots: the f32 matrices the layer in use is widened into.
    widened: Option<[GpuTensor; 4]>,
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
        precision: WeightPrecision,
    ) -> Result<Self> {
        let resident = resident_layers >= layers;
        let n = if resident { layers } else { resident_layers.max(1) };
        let slots = (0..n).map(|_| LayerWeights::alloc(&gpu, d, ffn, precision)).collect::<Result<Vec<_>>>()?;
        let widened = match precision {
            WeightPrecision::F32 => None,
            WeightPrecision::F16 => Some(LayerWeights::alloc_matrices(&gpu, d, ffn)?),
        };
        let slot_layer = vec![None; n];
        let mut s = Self { gpu, source, d, ffn, layers, resident, precision, slots, widened, slot_layer, uploaded: 0 };
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

    /// How the matrices are stored.
    pub fn precision(&self) -> WeightPrecision {
        self.precision
    }

    fn upload(&mut self, layer: usize, slot: usize) -> Result<()> {
        if layer >= self.layers {
            bail!("layer {layer} out of range ({} layers)", self.layers);
        }
        let names = layer_tensors(self.d, self.ffn);
        let targets = self.slots[slot].targets(self.d);
        let f16 = self.precision == WeightPrecision::F16;
        // With f16 slots, each matrix's f32 values (Q, K, V one after the other), packed at the end.
        let mut matrices: Vec<(GpuTensor, Vec<f32>)> = vec![];
        for ((suffix, shape), (t, offset)) in names.iter().zip(targets) {
            let name = format!("encoder.layer.{layer}.{suffix}");
            let mut bytes = self.source.bytes(&name, shape).with_context(|| format!("loading layer {layer}"))?;
            if *suffix == "output.dense.weight" && self.ffn_row_stride() != self.ffn {
                // A padded row stride (the FFN output weight): each row, then zeros.
                bytes = padded_rows(&bytes, shape[1], self.ffn_row_stride()).into();
            }
            if f16 && shape.len() == 2 {
                let values = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                match matrices.last_mut() {
                    Some((m, v)) if Arc::ptr_eq(&m.buffer, &t.buffer) => v.extend(values),
                    _ => matrices.push((t.clone(), values.collect())),
                }
                continue;
            }
            self.gpu.write_buffer(&t.buffer, offset, &bytes);
            self.uploaded += bytes.len() as u64;
        }
        for (t, values) in matrices {
            let words = elementwise::pack_f16(&values).with_context(|| format!("layer {layer}: weights as f16"))?;
            self.gpu.write_buffer(&t.buffer, 0, bytemuck::cast_slice(&words));
            self.uploaded += words.len() as u64 * 4;
        }
        self.slot_layer[slot] = Some(layer);
        Ok(())
    }

    fn ffn_row_stride(&self) -> usize {
        ffn_row_stride(self.ffn)
    }

    /// The weights of `layer`, uploading them first when streaming; with f16 slots, their matrices
    /// are widened to f32 by work recorded into `b` (shared by every layer: the caller uses one
    /// layer's weights at a time, in recording order). When streaming, the caller must submit the
    /// work that uses them before asking for another layer that maps to the same slot.
    pub fn layer(&mut self, b: &mut CommandRecorder, layer: usize) -> Result<LayerWeights> {
        let slot = if self.resident { layer } else { layer % self.slots.len() };
        if self.slot_layer[slot] != Some(layer) {
            self.upload(layer, slot)?;
        }
        let w = self.slots[slot].clone();
        let Some(wide) = &self.widened else { return Ok(w) };
        b.phase(format_args!("layer {layer} / f16 weights"));
        for (packed, out) in w.matrices().into_iter().zip(wide) {
            elementwise::unpack_f16(b, packed, out)?;
        }
        let [qkv_w, ao_w, i_w, o_w] = wide.clone();
        Ok(LayerWeights { qkv_w, ao_w, i_w, o_w, ..w })
    }

    pub fn take_uploaded(&mut self) -> u64 {
        std::mem::take(&mut self.uploaded)
    }

    /// GPU bytes held by the layer slots (and the f32 matrices f16 slots widen into).
    pub fn gpu_bytes(&self) -> u64 {
        self.slots.len() as u64 * LayerWeights::bytes(self.d, self.ffn, self.precision)
            + LayerWeights::widened_bytes(self.d, self.ffn, self.precision)
    }
}

#[cfg(test)]
mod tests {
    use super::{ffn_row_stride, padded_rows};

    #[test]
    fn ffn_rows_are_padded_only_at_multiples_of_2_kib() {
        // MiniLM, BERT-base, BERT-large, a 2 KiB row; then widths left alone.
        for (ffn, stride) in [(1536, 1540), (3072, 3076), (4096, 4100), (512, 516)] {
            assert_eq!(ffn_row_stride(ffn), stride);
        }
        for ffn in [0, 1, 37, 768 + 4, 1000, 1280] {
            assert_eq!(ffn_row_stride(ffn), ffn, "{ffn}");
        }
    }

    #[test]
    fn padded_rows_keep_each_row_and_zero_the_rest() {
        let values: Vec<f32> = (1..=6).map(|x| x as f32).collect();
        let out = padded_rows(bytemuck::cast_slice(&values), 3, 5);
        let got: &[f32] = bytemuck::cast_slice(&out);
        assert_eq!(got, &[1.0, 2.0, 3.0, 0.0, 0.0, 4.0, 5.0, 6.0, 0.0, 0.0]);
    }
}
