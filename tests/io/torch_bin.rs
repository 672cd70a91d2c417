//! torch `.bin` checkpoints (`formats::torch_bin`): the `adapters` library's default files read to
//! exactly the tensors of the same adapter's safetensors, our writer read back bit for bit,
//! AdapterHub folders with only `.bin` weights, and hostile files refused with clear errors.

use super::*;
use peft_wgpu::formats::torch_bin::{self, RawTensor};
use safetensors::Dtype;
use std::io::Write;

fn bin_fixtures() -> std::path::PathBuf {
    fixtures().join("torch-bin")
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// The `.bin` at `bin` holds exactly the tensors (names, dtypes, shapes, bytes) of the
/// safetensors file at `st`.
fn assert_same_tensors(bin: &Path, st: &Path) {
    let ours: std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> =
        torch_bin::read(bin).unwrap().into_iter().map(|t| (t.name, (dtype_name(t.dtype), t.shape, t.data))).collect();
    let want = raw_tensors(st);
    assert!(!want.is_empty());
    assert_eq!(ours, want, "{} against {}", bin.display(), st.display());
}

#[test]
fn library_bin_files_hold_the_safetensors_tensors() {
    let d = bin_fixtures();
    assert_same_tensors(&d.join("adapter/pytorch_adapter.bin"), &d.join("adapter/adapter.safetensors"));
    assert_same_tensors(&d.join("adapter/pytorch_model_head.bin"), &d.join("adapter/model_head.safetensors"));
    assert_same_tensors(
        &d.join("fusion/pytorch_model_adapter_fusion.bin"),
        &d.join("fusion/model_adapter_fusion.safetensors"),
    );
}

#[test]
fn half_types_views_and_offsets_read_as_torch_saved_them() {
    let d = bin_fixtures();
    // f16 / bf16 storages; a transposed view (stride (1, 6)), an offset slice and a 0-d tensor.
    assert_same_tensors(&d.join("dtypes.bin"), &d.join("dtypes.safetensors"));
    let f = torch_bin::open(&d.join("dtypes.bin")).unwrap();
    assert_eq!(f.dtype("half").unwrap(), Dtype::F16);
    assert_eq!(f.shape("transposed").unwrap(), &[6, 4]);
    assert_eq!(f.shape("scalar").unwrap(), &[] as &[usize]);
    assert_eq!(f.get("scalar").unwrap().1, vec![1.5]);
}

/// An adapter folder with only the `.bin` files loads to the same adapter and head as the same
/// folder with only the safetensors files; safetensors is preferred when both are there.
#[test]
fn adapterhub_folders_fall_back_to_bin() {
    let src = bin_fixtures().join("adapter");
    let tmp = tempfile::tempdir().unwrap();
    let (bin_only, st_only) = (tmp.path().join("bin"), tmp.path().join("st"));
    copy_dir(&src, &bin_only);
    copy_dir(&src, &st_only);
    fs::remove_file(bin_only.join(ADAPTER_WEIGHTS_FILE)).unwrap();
    fs::remove_file(bin_only.join(HEAD_WEIGHTS_FILE)).unwrap();
    fs::remove_file(st_only.join(ADAPTER_WEIGHTS_BIN)).unwrap();
    fs::remove_file(st_only.join(HEAD_WEIGHTS_BIN)).unwrap();
    let cfg = tiny_config();
    let a = Adapter::load(&bin_only, &cfg).unwrap();
    let b = Adapter::load(&st_only, &cfg).unwrap();
    assert!(a.head.is_some());
    assert_eq!(a, b);
    assert_eq!(Adapter::load(&src, &cfg).unwrap(), b);

    let fsrc = bin_fixtures().join("fusion");
    let fbin = tmp.path().join("fbin");
    copy_dir(&fsrc, &fbin);
    fs::remove_file(fbin.join(FUSION_WEIGHTS_FILE)).unwrap();
    assert_eq!(Fusion::load(&fbin, &cfg).unwrap(), Fusion::load(&fsrc, &cfg).unwrap());

    // Neither file: the error names both.
    fs::remove_file(bin_only.join(ADAPTER_WEIGHTS_BIN)).unwrap();
    assert_err_contains(Adapter::load(&bin_only, &cfg), &[ADAPTER_WEIGHTS_FILE, ADAPTER_WEIGHTS_BIN]);
}

/// `save_as` writes the files of the format asked for (both by default), removes a stale file of
/// the other, and what it writes loads back to the same adapter.
#[test]
fn saving_writes_the_formats_asked_for() {
    let cfg = tiny_config();
    let a = Adapter::load(bin_fixtures().join("adapter"), &cfg).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("a");
    let has = |n: &str| d.join(n).exists();
    a.save(&d).unwrap();
    assert!(has(ADAPTER_WEIGHTS_FILE) && has(ADAPTER_WEIGHTS_BIN) && has(HEAD_WEIGHTS_FILE) && has(HEAD_WEIGHTS_BIN));
    a.save_as(&d, WeightsFormat::Bin).unwrap();
    assert!(!has(ADAPTER_WEIGHTS_FILE) && has(ADAPTER_WEIGHTS_BIN) && !has(HEAD_WEIGHTS_FILE) && has(HEAD_WEIGHTS_BIN));
    assert_eq!(Adapter::load(&d, &cfg).unwrap(), a);
    a.save_as(&d, WeightsFormat::Safetensors).unwrap();
    assert!(has(ADAPTER_WEIGHTS_FILE) && !has(ADAPTER_WEIGHTS_BIN) && has(HEAD_WEIGHTS_FILE) && !has(HEAD_WEIGHTS_BIN));
    assert_eq!(Adapter::load(&d, &cfg).unwrap(), a);
    // Ours is what the library wrote: the same tensors as its .bin.
    a.save_as(&d, WeightsFormat::Both).unwrap();
    assert_same_tensors(&d.join(ADAPTER_WEIGHTS_BIN), &bin_fixtures().join("adapter/adapter.safetensors"));
    assert_same_tensors(&d.join(HEAD_WEIGHTS_BIN), &bin_fixtures().join("adapter/model_head.safetensors"));
    assert_eq!("bin".parse::<WeightsFormat>().unwrap(), WeightsFormat::Bin);
    assert_err_contains("pt".parse::<WeightsFormat>(), &["\"pt\"", "safetensors, bin or both"]);
}

fn raw(name: &str, dtype: Dtype, shape: &[usize], seed: u32) -> RawTensor {
    let es = if dtype == Dtype::F32 { 4 } else { 2 };
    let n: usize = shape.iter().product();
    let data = (0..n * es).map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed).to_le_bytes()[3]).collect();
    RawTensor { name: name.into(), dtype, shape: shape.to_vec(), data }
}

#[test]
fn our_writer_round_trips_bit_exact() {
    let tensors = vec![
        raw("b.weight", Dtype::F32, &[3, 5], 1),
        raw("a", Dtype::F16, &[7], 2),
        raw("c.half", Dtype::BF16, &[2, 3, 4, 5], 3),
        raw("scalar", Dtype::F32, &[], 4),
        raw("empty", Dtype::F32, &[0, 3], 5),
        raw("wide", Dtype::F16, &[70000], 6), // sizes past BININT2
    ];
    let bytes = torch_bin::serialize_raw(&tensors).unwrap();
    assert_eq!(torch_bin::read_bytes(&bytes).unwrap(), tensors);
    // Deterministic: the same tensors give the same file.
    assert_eq!(torch_bin::serialize_raw(&tensors).unwrap(), bytes);

    // f32 maps through the file API, NaN payloads and signed zeros included.
    let mut m = TensorMap::new();
    let odd = vec![f32::from_bits(0x7fc0_1234), -0.0, f32::MIN_POSITIVE / 2.0, f32::INFINITY, 1.0 / 3.0, -7.5];
    m.insert("x".into(), Tensor::new(vec![2, 3], odd).unwrap());
    m.insert("y".into(), Tensor::new(vec![1], vec![42.0]).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("t.bin");
    torch_bin::write_tensors(&p, &m).unwrap();
    let back = torch_bin::read_map(&p).unwrap();
    assert_eq!(back.keys().collect::<Vec<_>>(), m.keys().collect::<Vec<_>>());
    for (k, t) in &m {
        assert_eq!(back[k].shape, t.shape);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back[k].data), bits(&t.data), "{k}");
    }
}

// ---- hostile inputs: a minimal pickle builder and zip around it

/// A zip with `archive/data.pkl` = `pkl` and the given `archive/data/<key>` entries.
fn archive(pkl: &[u8], storages: &[(&str, &[u8])], method: zip::CompressionMethod) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default().compression_method(method);
    z.start_file("archive/data.pkl", o).unwrap();
    z.write_all(pkl).unwrap();
    for (k, d) in storages {
        z.start_file(format!("archive/data/{k}"), o).unwrap();
        z.write_all(d).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fn bin_str(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend_from_slice(&(s.len() as u32).to_le_bytes());
    v.extend_from_slice(s.as_bytes());
    v
}

fn int_tuple(v: &[u8]) -> Vec<u8> {
    let mut o = vec![b'('];
    for &x in v {
        o.extend_from_slice(&[b'K', x]);
    }
    o.push(b't');
    o
}

/// `{"t": _rebuild_tensor_v2(storage('0', storage_type, numel), offset, size, stride, False, OrderedDict())}`.
fn tensor_pickle(storage_type: &str, numel: u8, offset: u8, size: &[u8], stride: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    p.extend(bin_str("t"));
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.push(b'(');
    p.extend(bin_str("storage"));
    p.extend_from_slice(format!("ctorch\n{storage_type}\n").as_bytes());
    p.extend(bin_str("0"));
    p.extend(bin_str("cpu"));
    p.extend_from_slice(&[b'K', numel, b't', b'Q', b'K', offset]);
    p.extend(int_tuple(size));
    p.extend(int_tuple(stride));
    p.push(0x89);
    p.extend_from_slice(b"ccollections\nOrderedDict\n)R");
    p.extend_from_slice(b"tRu.");
    p
}

fn read_err(bytes: &[u8]) -> String {
    err_string(torch_bin::read_bytes(bytes))
}

#[test]
fn the_builder_makes_a_readable_file() {
    let data: Vec<u8> = (0..24).collect();
    let ok = archive(
        &tensor_pickle("FloatStorage", 6, 2, &[2, 2], &[2, 1]),
        &[("0", &data)],
        zip::CompressionMethod::Stored,
    );
    let t = torch_bin::read_bytes(&ok).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].shape.clone(), t[0].data.clone()), (vec![2, 2], data[8..24].to_vec()));
}

#[test]
fn hostile_files_are_refused_clearly() {
    let data: Vec<u8> = (0..24).collect();
    let st = zip::CompressionMethod::Stored;
    // An opcode outside the subset (FLOAT), and the dangerous ones.
    assert_err_contains(torch_bin::read_bytes(&archive(b"\x80\x02F1.0\n.", &[], st)), &["FLOAT", "not allowed"]);
    assert_err_contains(torch_bin::read_bytes(&archive(b"\x80\x02(i__builtin__\neval\n.", &[], st)), &["INST"]);
    assert_err_contains(torch_bin::read_bytes(&archive(b"\x80\x02\xfe.", &[], st)), &["0xfe", "not allowed"]);
    // A global like os.system is refused by name, before anything could call it.
    let mut evil = b"\x80\x02cos\nsystem\n".to_vec();
    evil.extend(bin_str("touch /tmp/pwned"));
    evil.extend_from_slice(b"\x85R.");
    let e = read_err(&archive(&evil, &[], st));
    assert!(e.contains("os.system") && e.contains("not allowed"), "{e}");
    let e = read_err(&archive(b"\x80\x02X\x05\x00\x00\x00posixX\x06\x00\x00\x00system\x93.", &[], st));
    assert!(e.contains("posix.system") && e.contains("STACK_GLOBAL"), "{e}");
    // Another storage type.
    let e = read_err(&archive(&tensor_pickle("DoubleStorage", 3, 0, &[3], &[1]), &[("0", &data)], st));
    assert!(e.contains("torch.DoubleStorage") && e.contains("FloatStorage (f32)"), "{e}");
    // Offsets and strides past the storage's end.
    let e = read_err(&archive(&tensor_pickle("FloatStorage", 6, 3, &[2, 2], &[2, 1]), &[("0", &data)], st));
    assert!(e.contains("past the end of its storage") && e.contains("\"t\""), "{e}");
    let e = read_err(&archive(&tensor_pickle("FloatStorage", 6, 0, &[2, 2], &[3, 5]), &[("0", &data)], st));
    assert!(e.contains("past the end"), "{e}");
    // An expanded view (stride 0) that would repeat storage.
    let e = read_err(&archive(&tensor_pickle("FloatStorage", 6, 0, &[9, 6], &[0, 1]), &[("0", &data)], st));
    assert!(e.contains("expanded"), "{e}");
    // The storage's record disagrees with the pickle; a storage that is not there.
    let e = read_err(&archive(&tensor_pickle("FloatStorage", 7, 0, &[2], &[1]), &[("0", &data)], st));
    assert!(e.contains("has 24 bytes") && e.contains("7 elements"), "{e}");
    let e = read_err(&archive(&tensor_pickle("FloatStorage", 6, 0, &[2], &[1]), &[], st));
    assert!(e.contains("archive/data/0"), "{e}");
    // Compressed entries (torch never writes them; a declared size could be anything).
    let e = read_err(&archive(
        &tensor_pickle("FloatStorage", 6, 0, &[2], &[1]),
        &[("0", &data)],
        zip::CompressionMethod::Deflated,
    ));
    assert!(e.contains("compressed"), "{e}");
    // Not a state dict of tensors.
    assert_err_contains(torch_bin::read_bytes(&archive(b"\x80\x02K\x05.", &[], st)), &["int, not a state dict"]);
    assert_err_contains(torch_bin::read_bytes(&archive(b"\x80\x02}(K\x01K\x02u.", &[], st)), &["key is a int"]);
    // Truncated pickles, stack underflow, missing STOP.
    assert_err_contains(torch_bin::read_bytes(&archive(b"\x80\x02X\xff\x00\x00\x00ab", &[], st)), &["ends inside"]);
    assert_err_contains(torch_bin::read_bytes(&archive(b"\x80\x02t.", &[], st)), &["MARK"]);
    assert_err_contains(torch_bin::read_bytes(&archive(b"\x80\x02R.", &[], st)), &["underflow"]);
    assert_err_contains(torch_bin::read_bytes(&archive(b"\x80\x02}", &[], st)), &["before STOP"]);
    assert_err_contains(torch_bin::read_bytes(&archive(b"\x80\x02h\x07.", &[], st)), &["memo entry 7"]);
}

#[test]
fn broken_archives_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let good = fs::read(bin_fixtures().join("dtypes.bin")).unwrap();
    for cut in [good.len() / 2, good.len() - 10, 30] {
        let p = tmp.path().join(format!("cut{cut}.bin"));
        fs::write(&p, &good[..cut]).unwrap();
        let e = err_string(torch_bin::read(&p));
        assert!(e.contains(&format!("cut{cut}.bin")) && e.contains("invalid torch checkpoint"), "{e}");
    }
    // Every single-byte flip somewhere in the file is either read or refused, never a panic.
    for i in (0..good.len()).step_by(7) {
        let mut b = good.clone();
        b[i] ^= 0x5a;
        let _ = torch_bin::read_bytes(&b);
    }
    // The same for the pickle itself (re-zipped, so the zip's checksums pass): every byte of the
    // library's data.pkl flipped four ways, each read or refused, never a panic.
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(&good[..])).unwrap();
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut b).unwrap();
        entries.push((f.name().rsplit_once("/data/").map_or(String::new(), |(_, k)| k.to_string()), b));
    }
    let pkl = {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(&good[..])).unwrap();
        let name = z.file_names().find(|n| n.ends_with("/data.pkl")).unwrap().to_string();
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut z.by_name(&name).unwrap(), &mut b).unwrap();
        b
    };
    let storages: Vec<(&str, &[u8])> =
        entries.iter().filter(|(k, _)| !k.is_empty()).map(|(k, b)| (k.as_str(), b.as_slice())).collect();
    let (mut read, mut refused) = (0, 0);
    for i in 0..pkl.len() {
        for x in [0x01u8, 0x10, 0x80, 0xff] {
            let mut p = pkl.clone();
            p[i] ^= x;
            match torch_bin::read_bytes(&archive(&p, &storages, zip::CompressionMethod::Stored)) {
                Ok(_) => read += 1,
                Err(_) => refused += 1,
            }
        }
    }
    assert!(refused > read, "{read} read, {refused} refused");
    assert_err_contains(torch_bin::read_bytes(b"\x80\x02}."), &["legacy", "pre-1.6"]);
    assert_err_contains(torch_bin::read_bytes(b"hello"), &["not a torch checkpoint"]);
    assert_err_contains(torch_bin::read_bytes(&archive(b".", &[], zip::CompressionMethod::Stored)), &["underflow"]);
    let p = tmp.path().join("absent.bin");
    assert_err_contains(torch_bin::read(&p), &["absent.bin"]);
}
