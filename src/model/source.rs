//! [`FileSource`]: a memory-mapped safetensors checkpoint as a [`TensorSource`] for the encoder,
//! resolving BERT's names as the checkpoint's family writes them (with or without its `bert.` /
//! `roberta.` / ... prefix) and converting f16/bf16 to f32.

use super::config::Family;
use super::store::TensorSource;
use super::weights::find;
use crate::formats::weights::{decode_f32, WeightFile};
use anyhow::{anyhow, bail, Result};
use std::borrow::Cow;

pub struct FileSource {
    pub file: WeightFile,
    pub family: Family,
}

impl FileSource {
    /// A BERT checkpoint.
    pub fn new(file: WeightFile) -> Self {
        Self::for_family(file, Family::Bert)
    }

    /// A checkpoint of `family` (its tensors named as [`Family::file_name`] says).
    pub fn for_family(file: WeightFile, family: Family) -> Self {
        Self { file, family }
    }
}

impl TensorSource for FileSource {
    fn bytes(&self, name: &str, shape: &[usize]) -> Result<Cow<'_, [u8]>> {
        let actual = find(&self.file, name, self.family)
            .ok_or_else(|| anyhow!("tensor {name:?} is missing from {}", self.file.path().display()))?;
        let (dtype, got, bytes) = self.file.raw(&actual)?;
        if got != shape {
            bail!("tensor {actual:?} in {} has shape {got:?}, expected {shape:?}", self.file.path().display());
        }
        if dtype == safetensors::Dtype::F32 {
            return Ok(Cow::Borrowed(bytes));
        }
        let v = decode_f32(dtype, bytes)?;
        Ok(Cow::Owned(bytemuck::cast_slice(&v).to_vec()))
    }
}
