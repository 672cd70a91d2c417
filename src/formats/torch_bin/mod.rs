//! PyTorch's checkpoint format (`torch.save` of a state dict: a zip archive with `data.pkl`, the
//! storages `data/<key>`, `byteorder`, `version`), read and written without Python.
//!
//! Reading interprets only the pickle opcodes and globals a state dict of tensors needs
//! ([`pickle`]): an `OrderedDict` of `torch._utils._rebuild_tensor_v2` over `FloatStorage`,
//! `HalfStorage` or `BFloat16Storage`. Anything else (another opcode, a global like `os.system`,
//! another storage type) is refused with an error naming it; nothing is ever executed. Views with
//! offsets and strides are gathered into contiguous tensors; big-endian files are swapped.
//!
//! [`open`] gives the same [`WeightFile`] the safetensors reader gives (the tensors keep their
//! dtype), so callers do not care which format a folder holds. Writing ([`write_tensors`]) makes
//! what `torch.save` makes, so `torch.load(path, weights_only=True)` reads it.
//!
//! Files: `pickle/` (the interpreter), `reader.rs` (the archive and storages), `writer.rs`.

mod pickle;
mod reader;
mod writer;

use super::weights::{Tensor, TensorMap, WeightFile};
use anyhow::{Context, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::Path;

/// One tensor of a checkpoint: its storage dtype (F32, F16 or BF16), shape and contiguous
/// little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// The tensors of a checkpoint in memory, in the state dict's order. Errors say what is wrong
/// but not where the bytes came from (see [`read`]).
pub fn read_bytes(bytes: &[u8]) -> Result<Vec<RawTensor>> {
    reader::read_bytes(bytes)
}

/// The tensors of the checkpoint at `path`; errors name the file.
pub fn read(path: &Path) -> Result<Vec<RawTensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("opening torch checkpoint {}", path.display()))?;
    read_bytes(&bytes).with_context(|| format!("{}: invalid torch checkpoint", path.display()))
}

/// The checkpoint at `path` as a [`WeightFile`] (held in memory; names, shapes and dtypes as in
/// the checkpoint), so it serves wherever a safetensors file does.
pub fn open(path: &Path) -> Result<WeightFile> {
    let tensors = read(path)?;
    let bytes = to_safetensors(&tensors).with_context(|| format!("{}", path.display()))?;
    WeightFile::from_bytes(path, bytes)
}

/// The checkpoint's tensors as f32 (F16 and BF16 converted exactly).
pub fn read_map(path: &Path) -> Result<TensorMap> {
    open(path)?.to_map()
}

fn to_safetensors(tensors: &[RawTensor]) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|v| (t.name.as_str(), v))
                .map_err(|e| anyhow::anyhow!("tensor {:?}: {e}", t.name))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A checkpoint's bytes for `tensors` (any dtype of F32, F16, BF16), in the given order.
pub fn serialize_raw(tensors: &[RawTensor]) -> Result<Vec<u8>> {
    writer::serialize(tensors)
}

/// f32 tensors as checkpoint bytes (sorted by name, as the map holds them).
pub fn serialize(tensors: &TensorMap) -> Result<Vec<u8>> {
    let raw: Vec<RawTensor> = tensors
        .iter()
        .map(|(name, t): (&String, &Tensor)| RawTensor {
            name: name.clone(),
            dtype: Dtype::F32,
            shape: t.shape.clone(),
            data: t.to_le_bytes(),
        })
        .collect();
    serialize_raw(&raw)
}

/// Writes f32 tensors as a torch checkpoint atomically (temporary file, fsync, rename).
pub fn write_tensors(path: &Path, tensors: &TensorMap) -> Result<()> {
    let bytes = serialize(tensors).with_context(|| format!("writing {}", path.display()))?;
    super::write_atomic(path, &bytes)
}
