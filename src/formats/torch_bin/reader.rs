//! Reading torch's zip checkpoint: `<archive>/data.pkl` (see [`super::pickle`]), the storages
//! `<archive>/data/<key>` and `<archive>/byteorder`.

use super::pickle::{state_dict, TensorDesc};
use super::RawTensor;
use anyhow::{bail, Context, Result};
use safetensors::Dtype;
use std::collections::HashMap;
use std::io::{Cursor, Read};
use zip::{CompressionMethod, ZipArchive};

fn elem_size(d: Dtype) -> usize {
    match d {
        Dtype::F32 => 4,
        _ => 2,
    }
}

/// Reads one entry whole; torch writes them stored (uncompressed), and anything else is refused
/// (so a declared size cannot make us inflate more than the file holds).
fn read_entry(zip: &mut ZipArchive<Cursor<&[u8]>>, name: &str, file_len: usize) -> Result<Vec<u8>> {
    let mut f = zip.by_name(name).with_context(|| format!("no entry {name:?} in the archive"))?;
    if f.compression() != CompressionMethod::Stored {
        bail!("entry {name:?} is compressed ({:?}); torch.save writes entries uncompressed", f.compression());
    }
    let size = f.size();
    if size > file_len as u64 {
        bail!("entry {name:?} claims {size} bytes, more than the file's {file_len}");
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.read_to_end(&mut buf).with_context(|| format!("reading entry {name:?}"))?;
    Ok(buf)
}

/// The tensors of a torch checkpoint held in `bytes`, in the state dict's order, with their
/// storage dtype (F32, F16 or BF16) and little-endian bytes, contiguous.
pub fn read_bytes(bytes: &[u8]) -> Result<Vec<RawTensor>> {
    if !bytes.starts_with(b"PK") {
        if bytes.first() == Some(&0x80) {
            bail!("a legacy (pre-1.6, non-zip) torch checkpoint: not supported; re-save it with a current torch.save");
        }
        bail!("not a torch checkpoint (a zip archive starting with \"PK\")");
    }
    let mut zip = ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| anyhow::anyhow!("not a readable zip archive ({e}): truncated or not a torch.save file"))?;
    let pkl: Vec<String> = zip
        .file_names()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(String::from)
        .collect();
    let prefix = match pkl.as_slice() {
        [one] => one.trim_end_matches("data.pkl").to_string(),
        [] => bail!("no <archive>/data.pkl entry: not a torch.save checkpoint"),
        _ => bail!("{} data.pkl entries ({}): ambiguous", pkl.len(), pkl.join(", ")),
    };
    let little = match zip.index_for_name(&format!("{prefix}byteorder")) {
        None => true,
        Some(_) => {
            let b = read_entry(&mut zip, &format!("{prefix}byteorder"), bytes.len())?;
            match b.as_slice() {
                b"little" => true,
                b"big" => false,
                other => bail!("byteorder {:?}: expected \"little\" or \"big\"", String::from_utf8_lossy(other)),
            }
        }
    };
    let pickle = read_entry(&mut zip, &format!("{prefix}data.pkl"), bytes.len())?;
    let entries = state_dict(&pickle).context("data.pkl")?;
    // A bound on what we produce, so a pickle cannot make one small storage into a huge output
    // (tied weights share storages; this leaves room for them).
    let mut budget = bytes.len().saturating_mul(4).saturating_add(1 << 20);
    let mut storages: HashMap<String, (Dtype, Vec<u8>)> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (name, t) in entries {
        let data = (|| -> Result<Vec<u8>> {
            if !storages.contains_key(&t.key) {
                let mut b = read_entry(&mut zip, &format!("{prefix}data/{}", t.key), bytes.len())?;
                let want = t.storage_numel.checked_mul(elem_size(t.dtype) as u64);
                if want != Some(b.len() as u64) {
                    bail!(
                        "storage {:?} has {} bytes; the pickle says {} elements of {:?}",
                        t.key,
                        b.len(),
                        t.storage_numel,
                        t.dtype
                    );
                }
                if !little {
                    for c in b.chunks_exact_mut(elem_size(t.dtype)) {
                        c.reverse();
                    }
                }
                storages.insert(t.key.clone(), (t.dtype, b));
            }
            let (dtype, storage) = &storages[&t.key];
            if *dtype != t.dtype {
                bail!("storage {:?} is used as {dtype:?} and as {:?}", t.key, t.dtype);
            }
            gather(&t, storage)
        })()
        .with_context(|| format!("tensor {name:?}"))?;
        budget = budget.checked_sub(data.len()).context("the tensors add up to far more data than the file holds")?;
        let shape = t.shape.iter().map(|&s| s as usize).collect();
        out.push(RawTensor { name, dtype: t.dtype, shape, data });
    }
    Ok(out)
}

/// The view's elements, contiguous, from its storage (any strides, each element bounds-checked
/// once through the view's extent).
fn gather(t: &TensorDesc, storage: &[u8]) -> Result<Vec<u8>> {
    let es = elem_size(t.dtype);
    let numel_storage = (storage.len() / es) as u64;
    let mut numel: u64 = 1;
    let mut last: u64 = t.offset;
    for (&n, &s) in t.shape.iter().zip(&t.stride) {
        numel = numel.checked_mul(n).context("the tensor's size overflows")?;
        if n > 0 {
            last = (n - 1).checked_mul(s).and_then(|x| x.checked_add(last)).context("the tensor's extent overflows")?;
        }
    }
    if numel == 0 {
        return Ok(Vec::new());
    }
    if last >= numel_storage {
        bail!(
            "size {:?}, stride {:?}, offset {} reach element {last}, past the end of its storage ({numel_storage} elements)",
            t.shape,
            t.stride,
            t.offset
        );
    }
    if numel > numel_storage {
        bail!(
            "size {:?} with stride {:?} repeats storage elements (an expanded view): not supported",
            t.shape,
            t.stride
        );
    }
    let contiguous = {
        let mut expect = 1u64;
        let mut ok = true;
        for (&n, &s) in t.shape.iter().zip(&t.stride).rev() {
            if n != 1 && s != expect {
                ok = false;
            }
            expect *= n;
        }
        ok
    };
    let start = t.offset as usize * es;
    if contiguous {
        return Ok(storage[start..start + numel as usize * es].to_vec());
    }
    let mut out = Vec::with_capacity(numel as usize * es);
    let nd = t.shape.len();
    let mut idx = vec![0u64; nd];
    for _ in 0..numel {
        let e = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<u64>();
        let b = e as usize * es;
        out.extend_from_slice(&storage[b..b + es]);
        for d in (0..nd).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}
