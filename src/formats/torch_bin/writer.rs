//! Writing torch's zip checkpoint as `torch.save(state_dict)` does (pickle protocol 2, one storage
//! per tensor, entries stored uncompressed and their data 64-byte aligned), so `torch.load(path,
//! weights_only=True)` reads it.

use super::RawTensor;
use anyhow::{bail, Result};
use safetensors::Dtype;
use std::io::{Cursor, Write};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// The folder inside the archive (what `torch.save` uses for a file-like target).
const ARCHIVE: &str = "archive";

struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, op: u8) {
        self.0.push(op);
    }

    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    fn str(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: u64) {
        if v < 256 {
            self.0.extend_from_slice(&[b'K', v as u8]);
        } else if v < 65536 {
            self.0.push(b'M');
            self.0.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v < (1 << 31) {
            self.0.push(b'J');
            self.0.extend_from_slice(&(v as u32).to_le_bytes());
        } else {
            // LONG1, 8 bytes little-endian two's complement (sizes stay far below 2^63).
            self.0.extend_from_slice(&[0x8a, 8]);
            self.0.extend_from_slice(&v.min(i64::MAX as u64).to_le_bytes());
        }
    }

    fn tuple(&mut self, items: &[u64]) {
        match items.len() {
            0 => self.op(b')'),
            1..=3 => {
                for &v in items {
                    self.int(v);
                }
                self.op(0x84 + items.len() as u8);
            }
            _ => {
                self.op(b'(');
                for &v in items {
                    self.int(v);
                }
                self.op(b't');
            }
        }
    }
}

fn storage_name(d: Dtype) -> Result<&'static str> {
    Ok(match d {
        Dtype::F32 => "FloatStorage",
        Dtype::F16 => "HalfStorage",
        Dtype::BF16 => "BFloat16Storage",
        other => bail!("dtype {other:?} cannot be written (F32, F16, BF16 only)"),
    })
}

/// `data.pkl` for `tensors`: an `OrderedDict` of `_rebuild_tensor_v2` calls, storage `i` for
/// the i-th tensor.
fn pickle(tensors: &[RawTensor]) -> Result<Vec<u8>> {
    let mut p = Pickle(Vec::new());
    p.0.extend_from_slice(&[0x80, 2]);
    p.global("collections", "OrderedDict");
    p.op(b')');
    p.op(b'R');
    p.op(b'(');
    for (i, t) in tensors.iter().enumerate() {
        let numel: usize = t.shape.iter().product();
        let es = if t.dtype == Dtype::F32 { 4 } else { 2 };
        if numel * es != t.data.len() {
            bail!("tensor {:?}: shape {:?} needs {} bytes, has {}", t.name, t.shape, numel * es, t.data.len());
        }
        p.str(&t.name);
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(b'(');
        // The persistent id: ('storage', torch.<Type>Storage, key, location, numel).
        p.op(b'(');
        p.str("storage");
        p.global("torch", storage_name(t.dtype)?);
        p.str(&i.to_string());
        p.str("cpu");
        p.int(numel as u64);
        p.op(b't');
        p.op(b'Q');
        p.int(0);
        let shape: Vec<u64> = t.shape.iter().map(|&s| s as u64).collect();
        let mut stride = vec![1u64; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        p.tuple(&shape);
        p.tuple(&stride);
        p.op(0x89); // requires_grad False
        p.global("collections", "OrderedDict"); // backward_hooks: OrderedDict()
        p.op(b')');
        p.op(b'R');
        p.op(b't');
        p.op(b'R');
    }
    p.op(b'u');
    p.op(b'.');
    Ok(p.0)
}

/// The checkpoint's bytes.
pub fn serialize(tensors: &[RawTensor]) -> Result<Vec<u8>> {
    let pkl = pickle(tensors)?;
    let mut z = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Stored).with_alignment(64);
    let entry = |z: &mut ZipWriter<Cursor<Vec<u8>>>, name: &str, data: &[u8]| -> Result<()> {
        z.start_file(format!("{ARCHIVE}/{name}"), opts).map_err(|e| anyhow::anyhow!("zip: {e}"))?;
        z.write_all(data)?;
        Ok(())
    };
    entry(&mut z, "data.pkl", &pkl)?;
    entry(&mut z, ".format_version", b"1")?;
    entry(&mut z, ".storage_alignment", b"64")?;
    entry(&mut z, "byteorder", b"little")?;
    for (i, t) in tensors.iter().enumerate() {
        entry(&mut z, &format!("data/{i}"), &t.data)?;
    }
    entry(&mut z, "version", b"3\n")?;
    Ok(z.finish().map_err(|e| anyhow::anyhow!("zip: {e}"))?.into_inner())
}
