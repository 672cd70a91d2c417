//! Memory-mapped safetensors files: names, shapes, f32 views (F32 / F16 / BF16 / F64 converted),
//! a zero-copy byte path for streaming F32 tensors to the GPU, and atomic writing.

use anyhow::{bail, Context, Result};
#[cfg(not(target_arch = "wasm32"))]
use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorInfo, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// An owned f32 tensor (row-major, PyTorch layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// Fails when `data.len()` is not the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!("tensor of shape {shape:?} needs {n} values, got {}", data.len());
        }
        Ok(Self { shape, data })
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The values as little-endian bytes (what safetensors stores).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() * 4);
        for v in &self.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }
}

/// Tensors by name, sorted (the order safetensors writes them in).
pub type TensorMap = BTreeMap<String, Tensor>;

/// A safetensors file, memory-mapped. The header is parsed and validated once at open; tensor
/// data is only touched when asked for.
///
/// The mapping assumes the file is not modified while it is open (true of model files; our own
/// writers replace files by rename, which leaves existing maps intact).
pub struct WeightFile {
    path: PathBuf,
    mmap: Bytes,
    header_len: usize,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: Option<HashMap<String, String>>,
}

impl std::fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightFile").field("path", &self.path).field("tensors", &self.len()).finish()
    }
}

impl WeightFile {
    /// Maps `path` and parses its header. Errors name the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).with_context(|| format!("opening safetensors file {}", path.display()))?;
        let len = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
        if len < 8 {
            bail!("{}: not a safetensors file ({len} bytes, shorter than the 8-byte header length)", path.display());
        }
        // SAFETY: the map is read-only; see the type's doc on concurrent modification.
        #[cfg(not(target_arch = "wasm32"))]
        let bytes =
            Bytes::Map(unsafe { Mmap::map(&file) }.with_context(|| format!("memory-mapping {}", path.display()))?);
        // No memory maps in the browser build: the file is read (pages pass bytes to `from_bytes`).
        #[cfg(target_arch = "wasm32")]
        let bytes = Bytes::Owned(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
        Self::parse(path, bytes)
    }

    /// A safetensors file already in memory; `origin` names it in errors. Validates the header
    /// exactly as [`open`](Self::open) does (this is what the fuzz target drives).
    pub fn from_bytes(origin: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        let path = origin.into();
        if bytes.len() < 8 {
            bail!(
                "{}: not a safetensors file ({} bytes, shorter than the 8-byte header length)",
                path.display(),
                bytes.len()
            );
        }
        Self::parse(path, Bytes::Owned(bytes))
    }

    /// Parses and validates the header: its length within the file, valid JSON, known dtypes,
    /// each tensor's byte range matching its dtype and shape, ranges contiguous and in bounds
    /// (no gap, no overlap, nothing past the end).
    fn parse(path: PathBuf, mmap: Bytes) -> Result<Self> {
        let (header_len, meta) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| anyhow::anyhow!("{}: invalid safetensors file: {}", path.display(), describe_error(&e)))?;
        let tensors = meta.tensors().into_iter().map(|(k, v)| (k, v.clone())).collect();
        let metadata = meta.metadata().clone();
        Ok(Self { path, mmap, header_len, tensors, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The free-form `__metadata__` map of the header, if any.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.as_ref()
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        match self.tensors.get(name) {
            Some(i) => Ok(i),
            None => {
                let mut near: Vec<&str> = self
                    .names()
                    .into_iter()
                    .filter(|n| {
                        // Same last two components ("query.weight"): a prefix or layer mix-up.
                        let tail: Vec<&str> = name.rsplitn(3, '.').take(2).collect();
                        tail.len() == 2 && n.ends_with(&format!(".{}.{}", tail[1], tail[0]))
                    })
                    .take(3)
                    .collect();
                near.sort_unstable();
                let hint = if near.is_empty() { String::new() } else { format!(" (it has e.g. {})", near.join(", ")) };
                bail!("{}: missing tensor {name:?}; the file has {} tensors{hint}", self.path.display(), self.len())
            }
        }
    }

    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.info(name)?.shape)
    }

    pub fn dtype(&self, name: &str) -> Result<Dtype> {
        Ok(self.info(name)?.dtype)
    }

    /// Dtype, shape and raw little-endian bytes of a tensor, straight from the map.
    pub fn raw(&self, name: &str) -> Result<(Dtype, &[usize], &[u8])> {
        let info = self.info(name)?;
        let start = 8 + self.header_len;
        let (a, b) = info.data_offsets;
        // read_metadata validated the offsets against the buffer length.
        Ok((info.dtype, &info.shape, &self.mmap[start + a..start + b]))
    }

    /// Zero-copy bytes of an F32 tensor (little-endian f32s), for streaming uploads from the map.
    /// Not necessarily 4-byte aligned. Errors for another dtype.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let (dtype, _, bytes) = self.raw(name)?;
        if dtype != Dtype::F32 {
            bail!(
                "{}: tensor {name:?} is {dtype:?}, the zero-copy path needs F32 (use get() to convert)",
                self.path.display()
            );
        }
        Ok(bytes)
    }

    /// Shape and values of a tensor as f32 (F32 copied bit for bit; F16, BF16, F64 converted).
    pub fn get(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (dtype, shape, bytes) = self.raw(name)?;
        let data = decode_f32(dtype, bytes).with_context(|| format!("{}: tensor {name:?}", self.path.display()))?;
        Ok((shape.to_vec(), data))
    }

    /// Like [`get`](Self::get), as a [`Tensor`].
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let (shape, data) = self.get(name)?;
        Ok(Tensor { shape, data })
    }

    /// The values of a tensor whose shape must be `expected`; the error names the tensor, the file
    /// and both shapes.
    pub fn get_checked(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        self.check_shape(name, expected)?;
        Ok(self.get(name)?.1)
    }

    /// Checks presence and shape without reading the data.
    pub fn check_shape(&self, name: &str, expected: &[usize]) -> Result<()> {
        let shape = self.shape(name)?;
        if shape != expected {
            bail!("{}: tensor {name:?} has shape {shape:?}, expected {expected:?}", self.path.display());
        }
        Ok(())
    }

    /// Every tensor, converted to f32.
    pub fn to_map(&self) -> Result<TensorMap> {
        let mut m = TensorMap::new();
        for n in self.names() {
            m.insert(n.to_string(), self.tensor(n)?);
        }
        Ok(m)
    }
}

/// A file's bytes: memory-mapped, or owned (files parsed from memory).
enum Bytes {
    #[cfg(not(target_arch = "wasm32"))]
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// The safetensors crate's error, with what it means for a file on disk.
fn describe_error(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    let what = match e {
        E::HeaderTooLarge => {
            "the header length (first 8 bytes) is over safetensors' 100 MB limit: corrupt or not a safetensors file"
        }
        E::InvalidHeaderLength => {
            "the header length (first 8 bytes) points past the end of the file: truncated or not a safetensors file"
        }
        E::ValidationOverflow => "a tensor's shape overflows the address space",
        E::MetadataIncompleteBuffer => {
            "the tensor data does not end where the file ends; the file is truncated or has trailing bytes"
        }
        E::InvalidOffset(_) => "tensor byte ranges overlap, leave gaps or are out of range",
        E::TensorInvalidInfo => "a tensor's byte range does not match its dtype and shape",
        E::InvalidHeader(_) | E::InvalidHeaderDeserialization(_) => "the header is not valid safetensors JSON",
        _ => "",
    };
    if what.is_empty() {
        e.to_string()
    } else {
        format!("{what} ({e})")
    }
}

/// Converts little-endian element bytes of a float dtype to f32.
pub fn decode_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F64 => {
            bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()
        }
        other => bail!("dtype {other:?} is not a float type (supported: F32, F16, BF16, F64)"),
    })
}

/// Serializes f32 tensors into safetensors bytes (tensors sorted by name, as the reference
/// implementation orders same-dtype tensors, so Python's `save_file` and this give the same file).
pub fn serialize_tensors(tensors: &TensorMap, metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let mut bufs: Vec<(&str, &Tensor, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let n: usize = t.shape.iter().product();
        if n != t.data.len() {
            bail!("tensor {name:?}: shape {:?} needs {n} values, has {}", t.shape, t.data.len());
        }
        bufs.push((name.as_str(), t, t.to_le_bytes()));
    }
    let mut views = Vec::with_capacity(bufs.len());
    for (name, t, bytes) in &bufs {
        let view =
            TensorView::new(Dtype::F32, t.shape.clone(), bytes).map_err(|e| anyhow::anyhow!("tensor {name:?}: {e}"))?;
        views.push((*name, view));
    }
    safetensors::serialize(views, metadata).map_err(|e| anyhow::anyhow!("serializing safetensors: {e}"))
}

/// Writes f32 tensors to a safetensors file atomically (temporary file, fsync, rename).
pub fn write_tensors(path: &Path, tensors: &TensorMap, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let bytes = serialize_tensors(tensors, metadata).with_context(|| format!("writing {}", path.display()))?;
    super::write_atomic(path, &bytes)
}
