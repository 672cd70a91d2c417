//! The embedding tables (resident, or streamed for each pass) and the lookup + LayerNorm that
//! feeds the first layer, for every family ([`EmbeddingLayout`]): BERT's word + position +
//! token type; RoBERTa's positions counted after the padding id; DistilBERT's missing token
//! types; ELECTRA's narrower tables projected to the layers' width.

pub use super::super::embedding_layout::EmbeddingLayout;
use super::super::store::TensorSource;
use super::{t, Dims, Encoder, Inputs};
use crate::gpu::{CommandRecorder, Gpu, GpuTensor};
use crate::kernels::matmul::linear;
use crate::kernels::{elementwise, layernorm};
use crate::types::WeightPrecision;
use anyhow::{bail, Result};
use std::sync::Arc;

impl EmbeddingLayout {
    /// BERT's: word + position (the token's index) + token type, as wide as the layers.
    pub fn bert(dims: &Dims) -> Self {
        Self {
            width: dims.hidden,
            positions: dims.max_positions,
            token_types: dims.type_vocab,
            padding_positions: None,
            project: false,
        }
    }
}

/// The three tables as the lookup kernel reads them; the word table in blocks of consecutive
/// rows, each within one storage binding (one block unless the table is larger: RoBERTa-base's
/// and XLM-R's are, under WebGPU's and lavapipe's 128 MiB).
///
/// BERT: word, position, token type. DistilBERT: `token_type` is one row of zeros. RoBERTa:
/// `position` is zeros and `token_type` holds `position[p] + token_type[t]` at row `p · types + t`
/// (so that padding-aware position ids go through the kernel's per-token index).
#[derive(Clone)]
pub struct EmbeddingTables {
    pub word: Vec<GpuTensor>,
    pub position: GpuTensor,
    pub token_type: GpuTensor,
}

/// Embedding tables (resident, or uploaded for each pass and dropped once looked up, when the
/// layers stream too), their LayerNorm and ELECTRA's projection (resident).
pub struct Embeddings {
    tables: Option<EmbeddingTables>,
    source: Arc<dyn TensorSource>,
    dims: Dims,
    pub layout: EmbeddingLayout,
    pub ln_g: GpuTensor,
    pub ln_b: GpuTensor,
    /// ELECTRA's `embeddings_project` weight `[hidden, width]` and bias.
    pub project: Option<(GpuTensor, GpuTensor)>,
    /// Bytes uploaded for streamed tables since the last [`take_uploaded`](Self::take_uploaded).
    uploaded: u64,
}

fn read(source: &dyn TensorSource, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let bytes = source.bytes(name, shape)?;
    Ok(bytemuck::pod_collect_to_vec(&bytes))
}

fn upload(gpu: &Gpu, source: &dyn TensorSource, name: &str, shape: &[usize]) -> Result<GpuTensor> {
    GpuTensor::from_slice(gpu, shape, &read(source, name, shape)?)
}

/// The largest block of a table the device binds: one storage binding, one buffer.
fn max_block_bytes(gpu: &Gpu) -> u64 {
    gpu.max_binding_bytes().min(gpu.limits.max_buffer_size)
}

/// `values`, a `[rows, width]` table, uploaded in blocks of whole rows of at most `max_bytes`.
fn upload_blocks(gpu: &Gpu, values: &[f32], width: usize, max_bytes: u64) -> Result<Vec<GpuTensor>> {
    let rows = ((max_bytes / (4 * width as u64)) as usize).max(1);
    values.chunks(rows * width).map(|block| GpuTensor::from_slice(gpu, &[block.len() / width, width], block)).collect()
}

impl Embeddings {
    pub(super) fn load(
        gpu: &Gpu,
        dims: Dims,
        layout: EmbeddingLayout,
        source: Arc<dyn TensorSource>,
        resident: bool,
    ) -> Result<Self> {
        let w = layout.width;
        if !layout.project && w != dims.hidden {
            bail!("embedding tables {w} wide for a {}-wide encoder, and no projection", dims.hidden);
        }
        let tables = if resident {
            Some(Self::upload_tables(gpu, &*source, &dims, &layout, max_block_bytes(gpu))?)
        } else {
            None
        };
        let project = if layout.project {
            Some((
                upload(gpu, &*source, "embeddings_project.weight", &[dims.hidden, w])?,
                upload(gpu, &*source, "embeddings_project.bias", &[dims.hidden])?,
            ))
        } else {
            None
        };
        Ok(Self {
            tables,
            ln_g: upload(gpu, &*source, "embeddings.LayerNorm.weight", &[w])?,
            ln_b: upload(gpu, &*source, "embeddings.LayerNorm.bias", &[w])?,
            project,
            source,
            dims,
            layout,
            uploaded: 0,
        })
    }

    /// The tables, the word table in blocks of at most `max_block_bytes`.
    fn upload_tables(
        gpu: &Gpu,
        source: &dyn TensorSource,
        dims: &Dims,
        layout: &EmbeddingLayout,
        max_block_bytes: u64,
    ) -> Result<EmbeddingTables> {
        let w = layout.width;
        let word = read(source, "embeddings.word_embeddings.weight", &[dims.vocab, w])?;
        let word = upload_blocks(gpu, &word, w, max_block_bytes)?;
        let position_name = "embeddings.position_embeddings.weight";
        let type_name = "embeddings.token_type_embeddings.weight";
        let (position, token_type) = match (layout.padding_positions, layout.token_types) {
            (None, 0) => (upload(gpu, source, position_name, &[layout.positions, w])?, GpuTensor::zeros(gpu, &[1, w])?),
            (None, types) => (
                upload(gpu, source, position_name, &[layout.positions, w])?,
                upload(gpu, source, type_name, &[types, w])?,
            ),
            (Some(_), types) => {
                let pos = read(source, position_name, &[layout.positions, w])?;
                let typ = if types == 0 { vec![0.0; w] } else { read(source, type_name, &[types, w])? };
                let types = types.max(1);
                let mut combined = Vec::with_capacity(layout.positions * types * w);
                for p in pos.chunks(w) {
                    for t in typ.chunks(w) {
                        combined.extend(p.iter().zip(t).map(|(a, b)| a + b));
                    }
                }
                (
                    GpuTensor::zeros(gpu, &[layout.positions, w])?,
                    GpuTensor::from_slice(gpu, &[layout.positions * types, w], &combined)?,
                )
            }
        };
        Ok(EmbeddingTables { word, position, token_type })
    }

    /// True when the tables stay on the GPU.
    pub fn is_resident(&self) -> bool {
        self.tables.is_some()
    }

    /// The tables: the resident ones, or freshly uploaded ones (dropped by the caller after use).
    pub fn tables(&mut self, gpu: &Gpu) -> Result<EmbeddingTables> {
        match &self.tables {
            Some(t) => Ok(t.clone()),
            None => {
                let t = Self::upload_tables(gpu, &*self.source, &self.dims, &self.layout, max_block_bytes(gpu))?;
                self.uploaded +=
                    t.word.iter().map(GpuTensor::bytes).sum::<u64>() + t.position.bytes() + t.token_type.bytes();
                Ok(t)
            }
        }
    }

    pub fn take_uploaded(&mut self) -> u64 {
        std::mem::take(&mut self.uploaded)
    }
}

impl Encoder {
    /// Loads the embeddings (laid out as `layout` says) and the layer store from `source`; as
    /// [`Encoder::new`] otherwise.
    pub fn with_layout(
        gpu: Arc<Gpu>,
        dims: Dims,
        layout: EmbeddingLayout,
        source: Arc<dyn TensorSource>,
        resident_layers: usize,
        precision: WeightPrecision,
    ) -> Result<Self> {
        let resident = resident_layers >= dims.layers;
        let embeddings = Embeddings::load(&gpu, dims, layout, source.clone(), resident)?;
        let store = super::super::store::LayerStore::new(
            gpu.clone(),
            source,
            dims.hidden,
            dims.ffn,
            dims.layers,
            resident_layers,
            precision,
        )?;
        Ok(Self {
            gpu,
            dims,
            embeddings,
            store,
            recompute: false,
            layer_chunk: 0,
            keep_ffn_output: false,
            head_rows_only: true,
        })
    }

    /// The same frozen base with `resident_layers` layer slots (streamed below the layer count) and
    /// its matrices stored in `precision`, loaded again from the source this one was loaded from,
    /// once this one's GPU buffers are gone (never both on the GPU). Recompute and layer chunks
    /// start off, as in [`Encoder::new`].
    pub fn reload(self, resident_layers: usize, precision: WeightPrecision) -> Result<Self> {
        let (gpu, dims) = (self.gpu.clone(), self.dims);
        let (source, layout) = (self.embeddings.source.clone(), self.embeddings.layout);
        drop(self);
        // The old buffers are dropped; natively, wait until the work that used them is done.
        #[cfg(not(target_arch = "wasm32"))]
        gpu.sync()?;
        Self::with_layout(gpu, dims, layout, source, resident_layers, precision)
    }

    /// The first layer's input: embeddings looked up for `ids`/`types` (the batch `inp` on the
    /// GPU), then LayerNorm (then ELECTRA's projection). Streamed tables are freed (a wait) before
    /// any layer allocates.
    pub(super) fn embed(
        &mut self,
        b: &mut CommandRecorder,
        ids: &GpuTensor,
        types: &GpuTensor,
        inp: &Inputs,
    ) -> Result<GpuTensor> {
        let gpu = self.gpu.clone();
        let (tok, d) = (ids.shape[0], self.dims.hidden);
        let layout = self.embeddings.layout;
        let w = layout.width;
        let x = t(&gpu, &[tok, d])?;
        b.phase("embeddings");
        {
            let tables = self.embeddings.tables(&gpu)?;
            let rows = match layout.padding_positions {
                Some(pad) => {
                    let rows = layout.combined_rows(pad, &inp.ids, &inp.token_types, inp.seq);
                    Some(GpuTensor::from_u32(&gpu, &[tok], &rows)?)
                }
                None => None,
            };
            let emb = t(&gpu, &[tok, w])?;
            let (word, pos, typ) = (&tables.word, &tables.position, &tables.token_type);
            elementwise::embeddings(b, ids, rows.as_ref().unwrap_or(types), inp.seq, word, pos, typ, &emb)?;
            let e = &self.embeddings;
            match &e.project {
                None => layernorm::layer_norm(b, &emb, None, &e.ln_g, &e.ln_b, self.dims.eps, None, &x)?,
                Some((pw, pb)) => {
                    let normed = t(&gpu, &[tok, w])?;
                    layernorm::layer_norm(b, &emb, None, &e.ln_g, &e.ln_b, self.dims.eps, None, &normed)?;
                    linear(b, &normed, pw, Some(pb), &x)?;
                }
            }
        }
        if !self.embeddings.is_resident() {
            // Free the streamed tables before the first layer allocates.
            b.finish()?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::gpu;
    use crate::types::Activation;
    use std::borrow::Cow;
    use std::collections::HashMap;

    /// Tensors by name, as f32 bytes.
    struct InMemory(HashMap<&'static str, Vec<f32>>);

    impl TensorSource for InMemory {
        fn bytes(&self, name: &str, shape: &[usize]) -> Result<Cow<'_, [u8]>> {
            let v = self.0.get(name).ok_or_else(|| anyhow::anyhow!("no tensor {name}"))?;
            assert_eq!(v.len(), shape.iter().product::<usize>(), "{name}");
            Ok(Cow::Borrowed(bytemuck::cast_slice(v)))
        }
    }

    /// A word table larger than a block is uploaded in blocks of whole rows, each within the
    /// limit, that hold the table in order; the other tables stay whole.
    #[test]
    fn word_table_is_split_into_blocks_within_the_limit() {
        let g = gpu();
        let (vocab, w, positions, types) = (37, 6, 9, 2);
        let dims = Dims {
            hidden: w,
            layers: 1,
            heads: 1,
            ffn: 4 * w,
            act: Activation::Gelu,
            eps: 1e-12,
            max_positions: positions,
            type_vocab: types,
            vocab,
        };
        let table = |rows: usize, base: f32| (0..rows * w).map(|i| base + i as f32).collect::<Vec<f32>>();
        let word = table(vocab, 0.5);
        let source = InMemory(HashMap::from([
            ("embeddings.word_embeddings.weight", word.clone()),
            ("embeddings.position_embeddings.weight", table(positions, 1000.25)),
            ("embeddings.token_type_embeddings.weight", table(types, 2000.75)),
        ]));
        let layout = EmbeddingLayout::bert(&dims);
        for (max_bytes, want_rows) in
            [(u64::MAX, vec![37]), (10 * 4 * 6, vec![10, 10, 10, 7]), (4 * 6 + 5, vec![1; 37])]
        {
            let t = Embeddings::upload_tables(&g, &source, &dims, &layout, max_bytes).unwrap();
            let rows: Vec<usize> = t.word.iter().map(|b| b.shape[0]).collect();
            assert_eq!(rows, want_rows, "blocks of at most {max_bytes} bytes");
            assert!(t.word.iter().all(|b| b.shape[1] == w && b.bytes() <= max_bytes));
            let joined: Vec<f32> = t.word.iter().flat_map(|b| b.to_vec(&g).unwrap()).collect();
            assert_eq!(joined, word);
            assert_eq!(t.position.shape, [positions, w]);
            assert_eq!(t.token_type.shape, [types, w]);
        }
    }
}
