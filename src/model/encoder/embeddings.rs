//! The embedding tables (resident, or streamed for each pass) and the lookup + LayerNorm that
//! feeds the first layer.

use super::super::store::TensorSource;
use super::{t, Dims, Encoder};
use crate::gpu::{CommandRecorder, Gpu, GpuTensor};
use crate::kernels::{elementwise, layernorm};
use anyhow::Result;
use std::sync::Arc;

/// The three embedding tables.
#[derive(Clone)]
pub struct EmbeddingTables {
    pub word: GpuTensor,
    pub position: GpuTensor,
    pub token_type: GpuTensor,
}

/// Embedding tables (resident, or uploaded for each pass and dropped once looked up, when the
/// layers stream too) and their LayerNorm (resident).
pub struct Embeddings {
    tables: Option<EmbeddingTables>,
    source: Arc<dyn TensorSource>,
    dims: Dims,
    pub ln_g: GpuTensor,
    pub ln_b: GpuTensor,
    /// Bytes uploaded for streamed tables since the last [`take_uploaded`](Self::take_uploaded).
    uploaded: u64,
}

impl Embeddings {
    /// Names and shapes of the three tables.
    fn table_shapes(dims: &Dims) -> [(&'static str, [usize; 2]); 3] {
        [
            ("embeddings.word_embeddings.weight", [dims.vocab, dims.hidden]),
            ("embeddings.position_embeddings.weight", [dims.max_positions, dims.hidden]),
            ("embeddings.token_type_embeddings.weight", [dims.type_vocab, dims.hidden]),
        ]
    }

    fn upload(gpu: &Gpu, source: &dyn TensorSource, name: &str, shape: &[usize]) -> Result<GpuTensor> {
        let bytes = source.bytes(name, shape)?;
        let v: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        GpuTensor::from_slice(gpu, shape, &v)
    }

    pub(super) fn load(gpu: &Gpu, dims: Dims, source: Arc<dyn TensorSource>, resident: bool) -> Result<Self> {
        let d = dims.hidden;
        let tables = if resident { Some(Self::upload_tables(gpu, &*source, &dims)?) } else { None };
        Ok(Self {
            tables,
            ln_g: Self::upload(gpu, &*source, "embeddings.LayerNorm.weight", &[d])?,
            ln_b: Self::upload(gpu, &*source, "embeddings.LayerNorm.bias", &[d])?,
            source,
            dims,
            uploaded: 0,
        })
    }

    fn upload_tables(gpu: &Gpu, source: &dyn TensorSource, dims: &Dims) -> Result<EmbeddingTables> {
        let [w, p, t] = Self::table_shapes(dims).map(|(name, shape)| Self::upload(gpu, source, name, &shape));
        Ok(EmbeddingTables { word: w?, position: p?, token_type: t? })
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
                let t = Self::upload_tables(gpu, &*self.source, &self.dims)?;
                self.uploaded += t.word.bytes() + t.position.bytes() + t.token_type.bytes();
                Ok(t)
            }
        }
    }

    pub fn take_uploaded(&mut self) -> u64 {
        std::mem::take(&mut self.uploaded)
    }
}

impl Encoder {
    /// The first layer's input: embeddings looked up for `ids`/`types` (`seq` tokens per
    /// sequence), then LayerNorm. Streamed tables are freed (a wait) before any layer allocates.
    pub(super) fn embed(
        &mut self,
        b: &mut CommandRecorder,
        ids: &GpuTensor,
        types: &GpuTensor,
        seq: usize,
    ) -> Result<GpuTensor> {
        let gpu = self.gpu.clone();
        let (tok, d) = (ids.shape[0], self.dims.hidden);
        let x = t(&gpu, &[tok, d])?;
        b.phase("embeddings");
        {
            let tables = self.embeddings.tables(&gpu)?;
            let emb = t(&gpu, &[tok, d])?;
            elementwise::embeddings(b, ids, types, seq, &tables.word, &tables.position, &tables.token_type, &emb)?;
            let e = &self.embeddings;
            layernorm::layer_norm(b, &emb, None, &e.ln_g, &e.ln_b, self.dims.eps, None, &x)?;
        }
        if !self.embeddings.is_resident() {
            // Free the streamed tables before the first layer allocates.
            b.finish()?;
        }
        Ok(x)
    }
}
