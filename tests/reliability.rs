//! Reliability: bad inputs give one clear error (never a panic, never a partial output file),
//! half-precision checkpoints load, GPU faults become errors, and training survives NaNs, Ctrl-C,
//! a lost device and being stopped: `peft train --resume` continues bit-exactly.
//!
//! Library-level cases first, then the CLI (the built `peft` binary on the tiny fixture model with
//! a generated vocabulary and toy data).

mod common;
use common::*;
use peft_wgpu::formats::adapterhub::{BottleneckConfig, FusionConfig, HeadConfig, SavedConfig};
use peft_wgpu::formats::weights::{write_tensors, Tensor, TensorMap, WeightFile};
use peft_wgpu::model::config::BertConfig;
use peft_wgpu::model::encoder::Setup;
use peft_wgpu::model::load;
use peft_wgpu::model::weights::BertWeightNames;
use peft_wgpu::train::data::{self, DataOptions, Example};
use peft_wgpu::train::tokenizer::{BertVocabOptions, Tokenizer};
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tiny() -> PathBuf {
    fixtures().join("tiny-bert")
}

fn tiny_config() -> BertConfig {
    BertConfig::from_model_dir(tiny().join("base")).unwrap()
}

#[track_caller]
fn assert_err_contains<T>(r: anyhow::Result<T>, parts: &[&str]) -> String {
    let e = match r {
        Ok(_) => panic!("expected an error mentioning {parts:?}"),
        Err(e) => format!("{e:#}"),
    };
    for p in parts {
        assert!(e.contains(p), "error {e:?} does not mention {p:?}");
    }
    e
}

// ------------------------------------------------------------------------------------------------
// safetensors: corrupt files
// ------------------------------------------------------------------------------------------------

/// A safetensors file from a header (as JSON) and a data section, the header padded to 8 bytes.
fn st_bytes(header: &Value, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string().into_bytes();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend_from_slice(data);
    out
}

/// Opens `bytes` written to a file and returns the error (the file's name must be in it).
fn open_error(bytes: &[u8], parts: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.safetensors");
    fs::write(&p, bytes).unwrap();
    let mut all = vec!["broken.safetensors", "invalid safetensors file"];
    all.extend_from_slice(parts);
    let e = assert_err_contains(WeightFile::open(&p), &all);
    // The in-memory path validates the same way.
    assert_err_contains(WeightFile::from_bytes("mem.safetensors", bytes.to_vec()), &["mem.safetensors"]);
    e
}

fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

#[test]
fn safetensors_header_length_past_the_end() {
    let mut bytes = st_bytes(&json!({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}), &f32_bytes(2));
    bytes[..8].copy_from_slice(&10_000u64.to_le_bytes());
    open_error(&bytes, &["header length", "past the end"]);
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    open_error(&bytes, &["header length"]);
    // Only the length, no header at all.
    open_error(&500u64.to_le_bytes(), &["past the end"]);
}

#[test]
fn safetensors_truncated_or_padded_data() {
    let header = json!({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}});
    let full = st_bytes(&header, &f32_bytes(6));
    assert_eq!(WeightFile::from_bytes("ok.safetensors", full.clone()).unwrap().get("a").unwrap().1.len(), 6);
    open_error(&full[..full.len() - 4], &["truncated"]);
    let mut padded = full.clone();
    padded.extend_from_slice(&[0; 4]);
    open_error(&padded, &["trailing bytes"]);
}

#[test]
fn safetensors_offsets_out_of_range_or_overlapping() {
    // Offsets past the data section.
    let h = json!({"a": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}});
    open_error(&st_bytes(&h, &f32_bytes(4)), &[]);
    // Two tensors sharing bytes.
    let h = json!({
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    });
    open_error(&st_bytes(&h, &f32_bytes(6)), &["overlap"]);
    // A gap between tensors.
    let h = json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
    });
    open_error(&st_bytes(&h, &f32_bytes(5)), &["gaps"]);
    // End before start.
    let h = json!({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}});
    open_error(&st_bytes(&h, &f32_bytes(2)), &[]);
}

#[test]
fn safetensors_dtype_shape_and_bytes_disagree() {
    let h = json!({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}});
    open_error(&st_bytes(&h, &f32_bytes(2)), &["does not match its dtype and shape"]);
    let h = json!({"a": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 8]}});
    open_error(&st_bytes(&h, &f32_bytes(2)), &["not valid safetensors JSON"]);
    open_error(b"\x08\0\0\0\0\0\0\0not json", &["not valid safetensors JSON"]);
    let h = json!({"a": {"dtype": "F32", "shape": [usize::MAX, 4], "data_offsets": [0, 8]}});
    open_error(&st_bytes(&h, &f32_bytes(2)), &[]);
}

/// tiny-bert's tensors through `edit`, written as a model folder (config.json beside).
fn edited_model(dir: &Path, edit: impl FnOnce(&mut TensorMap)) {
    let mut m = WeightFile::open(tiny().join("base/model.safetensors")).unwrap().to_map().unwrap();
    edit(&mut m);
    write_tensors(&dir.join("model.safetensors"), &m, None).unwrap();
    fs::copy(tiny().join("base/config.json"), dir.join("config.json")).unwrap();
}

#[test]
fn base_tensor_of_wrong_dtype_missing_or_misshapen() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let cfg = tiny_config();
    // An integer tensor where a float one belongs.
    let src = WeightFile::open(tiny().join("base/model.safetensors")).unwrap();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![];
    for n in src.names() {
        let (dtype, shape, bytes) = src.raw(n).unwrap();
        let (dtype, bytes) = if n == "encoder.layer.1.output.dense.bias" {
            (Dtype::I32, bytes.to_vec())
        } else {
            (dtype, bytes.to_vec())
        };
        owned.push((n.to_string(), dtype, shape.to_vec(), bytes));
    }
    let views: Vec<(String, TensorView)> =
        owned.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
    let f = WeightFile::open(&p).unwrap();
    assert_err_contains(
        BertWeightNames::resolve(&f, &cfg),
        &["model.safetensors", "encoder.layer.1.output.dense.bias", "dtype I32", "float"],
    );
    assert_err_contains(f.get("encoder.layer.1.output.dense.bias"), &["I32", "not a float type"]);

    // Missing and misshapen tensors through the loader the CLI uses.
    let g = gpu();
    let d = tempfile::tempdir().unwrap();
    edited_model(d.path(), |m| drop(m.remove("encoder.layer.0.attention.self.value.weight")));
    assert_err_contains(
        load::load_encoder(&g, d.path(), None),
        &["model.safetensors", "missing tensor", "encoder.layer.0.attention.self.value.weight"],
    );
    let d = tempfile::tempdir().unwrap();
    edited_model(d.path(), |m| {
        m.insert("encoder.layer.1.intermediate.dense.bias".into(), Tensor::new(vec![63], vec![0.0; 63]).unwrap());
    });
    assert_err_contains(
        load::load_encoder(&g, d.path(), None),
        &["encoder.layer.1.intermediate.dense.bias", "[63]", "[64]"],
    );
}

// ------------------------------------------------------------------------------------------------
// config.json and AdapterHub configs
// ------------------------------------------------------------------------------------------------

#[test]
fn model_config_absent_or_unsupported() {
    let g = gpu();
    let d = tempfile::tempdir().unwrap();
    fs::copy(tiny().join("base/model.safetensors"), d.path().join("model.safetensors")).unwrap();
    assert_err_contains(load::load_encoder(&g, d.path(), None), &["config.json"]);
    let edit = |k: &str, v: Value| {
        let mut c: Value = serde_json::from_str(&fs::read_to_string(tiny().join("base/config.json")).unwrap()).unwrap();
        c[k] = v;
        fs::write(d.path().join("config.json"), c.to_string()).unwrap();
    };
    edit("model_type", json!("gpt2"));
    assert_err_contains(load::load_encoder(&g, d.path(), None), &["config.json", "model_type", "gpt2"]);
    edit("model_type", json!("bert"));
    for act in ["gelu_new", "gelu_pytorch_tanh", "quick_gelu"] {
        edit("hidden_act", json!(act));
        assert_err_contains(load::load_encoder(&g, d.path(), None), &["config.json", "hidden_act", act]);
    }
}

#[test]
fn unknown_adapterhub_options_are_named_not_ignored() {
    let base = BottleneckConfig::houlsby(4.0, peft_wgpu::Activation::Gelu).to_config();
    for (k, v) in [("phm_layer", json!(true)), ("is_parallel", json!(true)), ("use_gating", json!(true))] {
        let mut m = base.clone();
        m.insert(k.into(), v);
        assert_err_contains(BottleneckConfig::from_config(&m), &[k, "not supported"]);
    }
    // A key no adapters version writes: refused by name, not silently dropped.
    let mut m = base.clone();
    m.insert("lora_alpha".into(), json!(8));
    m.insert("adapter_gate".into(), json!(false));
    assert_err_contains(BottleneckConfig::from_config(&m), &["unknown", "\"lora_alpha\"", "\"adapter_gate\""]);
    // Every key of the real fixtures is known.
    for f in ["houlsby/adapter", "pfeiffer/adapter"] {
        let s = SavedConfig::read(&tiny().join(f).join("adapter_config.json")).unwrap();
        BottleneckConfig::from_config(s.config()).unwrap();
        let h = SavedConfig::read(&tiny().join(f).join("head_config.json")).unwrap();
        HeadConfig::from_config(h.config()).unwrap();
    }
    let mut h = SavedConfig::read(&tiny().join("houlsby/adapter/head_config.json")).unwrap();
    h.config_mut().insert("multilabel".into(), json!(true));
    assert_err_contains(HeadConfig::from_config(h.config()), &["unknown head option", "multilabel"]);
    let mut f = SavedConfig::read(&tiny().join("fusion/fusion/adapter_fusion_config.json")).unwrap();
    FusionConfig::from_config(f.config()).unwrap();
    f.config_mut().insert("attention_heads".into(), json!(4));
    assert_err_contains(FusionConfig::from_config(f.config()), &["unknown fusion option", "attention_heads"]);
}

// ------------------------------------------------------------------------------------------------
// Half-precision base checkpoints
// ------------------------------------------------------------------------------------------------

/// tiny-bert's base rewritten with every tensor as `dtype` (F16 or BF16).
fn half_model(dir: &Path, dtype: safetensors::Dtype) {
    use safetensors::tensor::TensorView;
    let src = WeightFile::open(tiny().join("base/model.safetensors")).unwrap();
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = src
        .names()
        .into_iter()
        .map(|n| {
            let (shape, v) = src.get(n).unwrap();
            let bytes: Vec<u8> = match dtype {
                safetensors::Dtype::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
                safetensors::Dtype::BF16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
                other => panic!("{other:?}"),
            };
            (n.to_string(), shape, bytes)
        })
        .collect();
    let views: Vec<(&str, TensorView)> =
        owned.iter().map(|(n, s, b)| (n.as_str(), TensorView::new(dtype, s.clone(), b).unwrap())).collect();
    fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    fs::copy(tiny().join("base/config.json"), dir.join("config.json")).unwrap();
}

/// The same base with its values rounded through `round` and stored as F32.
fn rounded_f32_model(dir: &Path, round: impl Fn(f32) -> f32) {
    let mut m = WeightFile::open(tiny().join("base/model.safetensors")).unwrap().to_map().unwrap();
    for t in m.values_mut() {
        t.data.iter_mut().for_each(|x| *x = round(*x));
    }
    write_tensors(&dir.join("model.safetensors"), &m, None).unwrap();
    fs::copy(tiny().join("base/config.json"), dir.join("config.json")).unwrap();
}

#[test]
fn f16_and_bf16_base_checkpoints_load_as_f32() {
    let g = gpu();
    let cfg = tiny_config();
    let (inputs, labels) = peft_wgpu::train::grads::read_inputs_json(&tiny().join("houlsby/inputs.json")).unwrap();
    let adapter = tiny().join("houlsby/adapter");
    let logits = |model: &Path, resident: Option<usize>| -> Vec<f32> {
        let (_, mut enc) = load::load_encoder(&g, model, resident).unwrap();
        let (set, head) = load::load_adapter(&g, &adapter, &cfg).unwrap();
        let head = head.unwrap();
        enc.pass(&Setup::Adapter(&set), &head, &inputs, Some(&labels), false, false).unwrap().logits
    };
    let reference = logits(&tiny().join("base"), None);
    let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (dtype, tol) in [(safetensors::Dtype::F16, 5e-3f32), (safetensors::Dtype::BF16, 5e-2)] {
        let d = tempfile::tempdir().unwrap();
        half_model(d.path(), dtype);
        let f = WeightFile::open(d.path().join("model.safetensors")).unwrap();
        assert_eq!(f.dtype("encoder.layer.0.attention.self.query.weight").unwrap(), dtype);
        // Resident and streamed layers read the half-precision file the same way.
        let ours = logits(d.path(), None);
        assert_eq!(ours, logits(d.path(), Some(1)), "{dtype:?}: streaming changed the logits");
        let err = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
        println!("{dtype:?}: max |logit - f32 logit| / max |logit| = {err:.2e}");
        assert!(err <= tol, "{dtype:?}: logits differ from the f32 model's by {err:.2e} (relative)");
        assert!(err > 0.0, "{dtype:?}: rounding the weights should change the logits a little");
        // Exactly the f32 model whose weights were rounded the same way: the conversion is exact.
        let r = tempfile::tempdir().unwrap();
        match dtype {
            safetensors::Dtype::F16 => rounded_f32_model(r.path(), |x| half::f16::from_f32(x).to_f32()),
            _ => rounded_f32_model(r.path(), |x| half::bf16::from_f32(x).to_f32()),
        }
        assert_eq!(ours, logits(r.path(), None), "{dtype:?}: not the f32 model with rounded weights");
    }
}

// ------------------------------------------------------------------------------------------------
// Data: truncation, labels
// ------------------------------------------------------------------------------------------------

fn vocab_tokenizer(dir: &Path, max_length: usize) -> Tokenizer {
    let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "a", "very", "!"];
    let p = dir.join("vocab.txt");
    fs::write(&p, vocab.join("\n") + "\n").unwrap();
    Tokenizer::from_vocab_txt(&p, &BertVocabOptions::default(), max_length).unwrap()
}

#[test]
fn truncation_is_counted_and_noted_once() {
    let d = tempfile::tempdir().unwrap();
    let tok = vocab_tokenizer(d.path(), 6);
    let ex = vec![
        Example::new("good movie", "1"),
        Example::new("a very very very very good movie !", "1"),
        Example { text: "good".into(), pair: Some("bad movie".into()), label: Some("0".into()), line: 3 },
        Example { text: "very very good".into(), pair: Some("bad bad movie".into()), label: Some("0".into()), line: 4 },
        Example::new("bad !", "0"),
    ];
    let (toks, truncated) = data::tokenize_counting(&tok, &ex).unwrap();
    assert_eq!(truncated, 2, "the long single and the long pair");
    assert!(toks.iter().all(|t| t.len() <= 6));
    assert_eq!(toks[1].len(), 6);
    assert_eq!(toks[0].len(), 4);
    assert_eq!(toks, data::tokenize(&tok, &ex).unwrap());
    let note = data::truncation_note("train.csv", truncated, ex.len(), 6).unwrap();
    assert!(note.contains("2 of 5") && note.contains("train.csv") && note.contains("truncated"), "{note}");
    assert!(data::truncation_note("x", 0, 5, 6).is_none());
}

#[test]
fn empty_and_malformed_data_files_name_the_line() {
    let d = tempfile::tempdir().unwrap();
    let o = DataOptions::default();
    let cases: [(&str, &str, &[&str]); 6] = [
        ("empty.csv", "", &["empty.csv", "empty file"]),
        ("header.csv", "text,label\n", &["header.csv", "no examples"]),
        ("ragged.csv", "text,label\nfine,1\n\"open quote,1\nx,1,extra\n", &["ragged.csv:"]),
        ("fields.csv", "text,label\nok,1\ntoo,many,fields\n", &["fields.csv:3", "3 fields", "2"]),
        (
            "bad.jsonl",
            "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": \n",
            &["bad.jsonl:2", "invalid JSON"],
        ),
        ("nolabel.jsonl", "{\"text\": \"a\", \"label\": 1}\n\n{\"text\": \"b\"}\n", &["nolabel.jsonl:3", "label"]),
    ];
    for (name, text, parts) in cases {
        let p = d.path().join(name);
        fs::write(&p, text).unwrap();
        assert_err_contains(data::load_examples(&p, &o), parts);
    }
}

// ------------------------------------------------------------------------------------------------
// GPU limits and faults
// ------------------------------------------------------------------------------------------------

#[test]
fn batch_too_large_for_the_gpu_is_refused_before_dispatch() {
    use peft_wgpu::train::guard;
    let g = gpu();
    let dims = load::dims(&tiny_config());
    guard::check_batch_fits(&g, &dims, 8, 40).unwrap();
    let limit = g.max_binding_bytes().min(g.limits.max_buffer_size);
    let fits = guard::max_batch(&g, &dims, 40);
    assert!(fits >= 8);
    // The largest batch that fits passes; one more does not, and the message says what to do.
    let biggest = guard::largest_buffers(&dims, fits, 40).iter().map(|x| x.1).max().unwrap();
    assert!(biggest <= limit);
    guard::check_batch_fits(&g, &dims, fits, 40).unwrap();
    let e = assert_err_contains(
        guard::check_batch_fits(&g, &dims, fits + 1, 40),
        &["--batch-size", &format!("{fits} or less"), "--resident-layers", "MiB"],
    );
    println!("{e}");
    // A sequence so long that one example does not fit.
    let mut wide = dims;
    wide.heads = 4096;
    assert_err_contains(guard::check_batch_fits(&g, &wide, 1, 4096), &["--max-length"]);
}

#[test]
fn gpu_errors_and_device_loss_become_errors_not_panics() {
    // A GPU of its own: this test breaks it.
    let g = peft_wgpu::Gpu::new(&Default::default()).unwrap();
    g.check().unwrap();
    let t = peft_wgpu::GpuTensor::from_slice(&g, &[3], &[1.0, 2.0, 3.0]).unwrap();
    assert_eq!(t.to_vec(&g).unwrap(), [1.0, 2.0, 3.0]);
    // A buffer larger than the device allows: wgpu's default handler would panic.
    let _b = g.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("too big"),
        size: g.limits.max_buffer_size.saturating_add(4),
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let e = assert_err_contains(g.sync(), &["GPU error"]);
    assert_err_contains(g.check(), &[&e[..20]]);

    let g = peft_wgpu::Gpu::new(&Default::default()).unwrap();
    let t = peft_wgpu::GpuTensor::from_slice(&g, &[2], &[1.0, 2.0]).unwrap();
    g.device.destroy();
    assert_err_contains(t.to_vec(&g), &["device was lost"]);
    assert_err_contains(g.check(), &["device was lost"]);
}

// ------------------------------------------------------------------------------------------------
// The CLI
// ------------------------------------------------------------------------------------------------

const WORDS: &[&str] = &[
    "a",
    "and",
    "acting",
    "awful",
    "beautiful",
    "best",
    "boring",
    "brilliant",
    "clever",
    "cold",
    "delight",
    "dull",
    "every",
    "film",
    "finish",
    "from",
    "funny",
    "great",
    "hated",
    "i",
    "indeed",
    "loved",
    "mess",
    "minute",
    "movie",
    "moving",
    "of",
    "painful",
    "performances",
    "plot",
    "start",
    "story",
    "stupid",
    "superb",
    "tedious",
    "terrible",
    "the",
    "this",
    "time",
    "to",
    "ugly",
    "warm",
    "waste",
    "weak",
    "wonderful",
    "worst",
    "year",
    "okay",
    ",",
    ".",
];

/// tiny-bert's base as a model folder with a generated WordPiece vocabulary (120 entries, the
/// config's vocab_size).
fn tiny_model(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    fs::create_dir_all(&m).unwrap();
    fs::copy(tiny().join("base/config.json"), m.join("config.json")).unwrap();
    fs::copy(tiny().join("base/model.safetensors"), m.join("model.safetensors")).unwrap();
    write_vocab(&m);
    m
}

fn write_vocab(m: &Path) {
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
    vocab.extend(WORDS.iter().map(|s| s.to_string()));
    let mut i = 0;
    while vocab.len() < 120 {
        vocab.push(format!("[unused{i}]"));
        i += 1;
    }
    fs::write(m.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
}

const POS: [&str; 8] = [
    "a wonderful, moving film",
    "great acting and a great story",
    "i loved every minute",
    "brilliant and funny",
    "a delight from start to finish",
    "beautiful, warm and clever",
    "the best movie this year",
    "superb performances",
];
const NEG: [&str; 8] = [
    "a dull, boring mess",
    "terrible acting and a weak plot",
    "i hated every minute",
    "awful and tedious",
    "a waste of time",
    "ugly, cold and stupid",
    "the worst movie this year",
    "painful performances",
];

/// 16 training and 8 dev sentences, two labels.
fn toy_data(dir: &Path) -> (PathBuf, PathBuf) {
    let mut train = String::from("text,label\n");
    let mut dev = String::from("text,label\n");
    for i in 0..8 {
        train.push_str(&format!("\"{}\",positive\n\"{}\",negative\n", POS[i], NEG[i]));
        if i % 2 == 0 {
            dev.push_str(&format!("\"{} indeed\",positive\n\"{} indeed\",negative\n", POS[i], NEG[i]));
        }
    }
    let (t, d) = (dir.join("train.csv"), dir.join("dev.csv"));
    fs::write(&t, train).unwrap();
    fs::write(&d, dev).unwrap();
    (t, d)
}

fn peft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("running peft")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Exit code non-zero, no panic, one `error:` line on stderr naming every part; returns stderr.
#[track_caller]
fn assert_clean_failure(out: &Output, parts: &[&str]) -> String {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "expected a failure; stdout:\n{}\nstderr:\n{err}", text(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "stderr:\n{err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "a panic:\n{err}");
    assert_eq!(err.matches("error:").count(), 1, "not one error message:\n{err}");
    for p in parts {
        assert!(err.contains(p), "stderr does not mention {p:?}:\n{err}");
    }
    err
}

/// No temporary files (ours are `.<name>.<pid>.<n>.tmp`) anywhere under `dir`.
fn assert_no_temp_files(dir: &Path) {
    if !dir.exists() {
        return;
    }
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        assert!(!p.to_string_lossy().ends_with(".tmp"), "temporary file left: {}", p.display());
        if p.is_dir() {
            assert_no_temp_files(&p);
        }
    }
}

/// `peft train` on the toy data: 16 examples in batches of 5 = 4 steps per epoch, 3 epochs (the
/// default) unless the caller adds `--epochs`.
fn train_args<'a>(model: &'a str, train: &'a str, dev: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        model,
        "--train",
        train,
        "--dev",
        dev,
        "--out",
        out,
        "--batch-size",
        "5",
        "--lr",
        "5e-3",
        "--max-length",
        "16",
        "--reduction-factor",
        "4",
        "--seed",
        "3",
    ]
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn cli_bad_model_folders_fail_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let (train, dev) = toy_data(d.path());
    let model = tiny_model(d.path());
    let (t, dv) = (s(&train), s(&dev));
    let run = |m: &Path, out: &Path| {
        let (m, o) = (s(m), s(out));
        peft(&train_args(&m, &t, &dv, &o))
    };

    let bad = d.path().join("no-config");
    fs::create_dir_all(&bad).unwrap();
    fs::copy(model.join("model.safetensors"), bad.join("model.safetensors")).unwrap();
    let out = d.path().join("out1");
    assert_clean_failure(&run(&bad, &out), &["config.json"]);
    assert!(!out.exists(), "output folder created for a run that never started");

    let bad = d.path().join("roberta");
    fs::create_dir_all(&bad).unwrap();
    fs::copy(model.join("model.safetensors"), bad.join("model.safetensors")).unwrap();
    write_vocab(&bad);
    let mut c: Value = serde_json::from_str(&fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    c["model_type"] = json!("roberta");
    fs::write(bad.join("config.json"), c.to_string()).unwrap();
    assert_clean_failure(&run(&bad, &out), &["model_type", "roberta"]);

    let bad = d.path().join("truncated");
    fs::create_dir_all(&bad).unwrap();
    fs::copy(model.join("config.json"), bad.join("config.json")).unwrap();
    write_vocab(&bad);
    let bytes = fs::read(model.join("model.safetensors")).unwrap();
    fs::write(bad.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(&run(&bad, &out), &["model.safetensors", "truncated"]);

    let bad = d.path().join("missing-tensor");
    fs::create_dir_all(&bad).unwrap();
    edited_model(&bad, |m| drop(m.remove("embeddings.position_embeddings.weight")));
    write_vocab(&bad);
    assert_clean_failure(&run(&bad, &out), &["missing tensor", "embeddings.position_embeddings.weight"]);
    assert!(!out.exists());
}

#[test]
fn cli_bad_adapters_fail_cleanly_and_leave_no_output() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let (_, dev) = toy_data(d.path());
    let copy = |edit: &dyn Fn(&mut Value)| -> PathBuf {
        let a = d.path().join(format!("adapter-{}", rand_name()));
        fs::create_dir_all(&a).unwrap();
        for e in fs::read_dir(tiny().join("houlsby/adapter")).unwrap() {
            let p = e.unwrap().path();
            fs::copy(&p, a.join(p.file_name().unwrap())).unwrap();
        }
        let cp = a.join("adapter_config.json");
        let mut v: Value = serde_json::from_str(&fs::read_to_string(&cp).unwrap()).unwrap();
        edit(&mut v);
        fs::write(&cp, v.to_string()).unwrap();
        a
    };
    let preds = d.path().join("preds.jsonl");
    let predict = |a: &Path| {
        peft(&["predict", "--model", &s(&model), "--adapter", &s(a), "--text", "a great movie", "--out", &s(&preds)])
    };
    let a = copy(&|v| v["hidden_size"] = json!(64));
    assert_clean_failure(&predict(&a), &["adapter_config.json", "hidden_size 64", "32"]);
    let a = copy(&|v| v["config"]["phm_layer"] = json!(true));
    assert_clean_failure(&predict(&a), &["adapter_config.json", "phm_layer", "not supported"]);
    let a = copy(&|v| v["config"]["is_parallel"] = json!(true));
    assert_clean_failure(&predict(&a), &["is_parallel"]);
    let a = copy(&|v| v["config"]["shiny_new_option"] = json!(1));
    assert_clean_failure(&predict(&a), &["unknown", "shiny_new_option"]);
    assert!(!preds.exists(), "a prediction file was written by a failed run");
    // eval fails the same way.
    let a = copy(&|v| v["config"]["phm_layer"] = json!(true));
    let out = peft(&["eval", "--model", &s(&model), "--adapter", &s(&a), "--data", &s(&dev), "--max-length", "16"]);
    assert_clean_failure(&out, &["phm_layer"]);
    // And the good adapter works (with the generated vocabulary), writing its file.
    let a = copy(&|_| {});
    let out = predict(&a);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(preds.exists());
    assert_no_temp_files(d.path());
}

fn rand_name() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

#[test]
fn cli_bad_data_fails_cleanly_naming_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let (train, dev) = toy_data(d.path());
    let (m, t, dv) = (s(&model), s(&train), s(&dev));
    let out = d.path().join("out");
    let o = s(&out);

    let empty = d.path().join("empty.csv");
    fs::write(&empty, "").unwrap();
    assert_clean_failure(&peft(&train_args(&m, &s(&empty), &dv, &o)), &["empty.csv", "empty file"]);

    let bad = d.path().join("bad.csv");
    fs::write(&bad, "text,label\ngood movie,positive\nbad movie,negative,extra\n").unwrap();
    assert_clean_failure(&peft(&train_args(&m, &s(&bad), &dv, &o)), &["bad.csv:3", "3 fields"]);

    let bad = d.path().join("bad.jsonl");
    fs::write(&bad, "{\"text\": \"good\", \"label\": \"positive\"}\n{\"text\": \"bad\" \"label\": 1}\n").unwrap();
    assert_clean_failure(&peft(&train_args(&m, &s(&bad), &dv, &o)), &["bad.jsonl:2", "invalid JSON"]);

    // A dev label the training data never had.
    let odd = d.path().join("odd-dev.csv");
    fs::write(&odd, "text,label\ngreat movie,positive\nokay movie,neutral\nbad movie,negative\n").unwrap();
    assert_clean_failure(
        &peft(&train_args(&m, &t, &s(&odd), &o)),
        &["odd-dev.csv", "line 3", "\"neutral\"", "positive"],
    );
    assert!(!out.exists(), "output folder created for a run that never started");
}

#[test]
fn cli_long_texts_are_truncated_with_one_note() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let (_, dev) = toy_data(d.path());
    // tiny-bert has 40 positions; --max-length 512 is cut to them, and these texts are longer.
    let long_pos = vec!["great"; 60].join(" ");
    let long_neg = vec!["awful"; 70].join(" ");
    let mut train = String::from("text,label\n");
    for i in 0..3 {
        train.push_str(&format!(
            "{long_pos},positive\n{long_neg},negative\n\"{}\",positive\n\"{}\",negative\n",
            POS[i], NEG[i]
        ));
    }
    let tp = d.path().join("long.csv");
    fs::write(&tp, train).unwrap();
    let out = d.path().join("out");
    let mut args =
        train_args(&s(&model), &s(&tp), &s(&dev), &s(&out)).into_iter().map(String::from).collect::<Vec<_>>();
    let i = args.iter().position(|a| a == "--max-length").unwrap();
    args[i + 1] = "512".into();
    args.extend(["--epochs".into(), "1".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = peft(&args);
    let all = text(&o.stdout) + &text(&o.stderr);
    assert!(o.status.success(), "{all}");
    assert_eq!(all.matches("truncated").count(), 1, "one note:\n{all}");
    assert!(all.contains("6 of 12") && all.contains("40 tokens"), "{all}");
    assert!(all.contains("512") && all.contains("max_position_embeddings"), "{all}");
}

/// The trained tensors and AdamW moments of a finished or stopped run, and its adapter file.
fn final_state(out: &Path) -> (TensorMap, Vec<u8>, Vec<u8>) {
    let st = WeightFile::open(out.join("trainer_state.safetensors")).unwrap();
    (
        st.to_map().unwrap(),
        fs::read(out.join("adapter.safetensors")).unwrap(),
        fs::read(out.join("model_head.safetensors")).unwrap(),
    )
}

fn state_json(out: &Path) -> Value {
    let st = WeightFile::open(out.join("trainer_state.safetensors")).unwrap();
    serde_json::from_str(&st.metadata().unwrap()["peft_trainer_state"]).unwrap()
}

#[test]
fn cli_stopped_and_resumed_equals_uninterrupted_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let (train, dev) = toy_data(d.path());
    let (m, t, dv) = (s(&model), s(&train), s(&dev));
    // 16 examples, batch 5: 4 steps per epoch, 3 epochs = 12 steps.
    let full = d.path().join("full");
    let fo = s(&full);
    let mut args = train_args(&m, &t, &dv, &fo);
    args.extend(["--epochs", "3"]);
    let o = peft(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let want = final_state(&full);
    assert_eq!(state_json(&full)["progress"]["step"], json!(12));

    // Stopped mid-epoch (step 6 of 12, in epoch 2) and at an epoch boundary (step 8), then resumed.
    for stop in ["6", "8"] {
        let part = d.path().join(format!("part{stop}"));
        let po = s(&part);
        let mut args = train_args(&m, &t, &dv, &po);
        args.extend(["--epochs", "3", "--stop-after-steps", stop]);
        let o = peft(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let st = state_json(&part);
        assert_eq!(st["progress"]["step"], json!(stop.parse::<u64>().unwrap()));
        assert_eq!(st["progress"]["finished"], json!(false));
        let metrics_before = fs::read_to_string(part.join("metrics.jsonl")).unwrap();
        let o = peft(&["train", "--resume", &s(&part)]);
        let all = text(&o.stdout) + &text(&o.stderr);
        assert!(o.status.success(), "{all}");
        assert!(all.contains(&format!("resuming at step {stop}")), "{all}");
        let got = final_state(&part);
        assert_eq!(got.0.keys().collect::<Vec<_>>(), want.0.keys().collect::<Vec<_>>());
        for (k, v) in &want.0 {
            let a: Vec<u32> = v.data.iter().map(|x| x.to_bits()).collect();
            let b: Vec<u32> = got.0[k].data.iter().map(|x| x.to_bits()).collect();
            assert!(a == b, "stop at {stop}: {k} differs after resuming");
        }
        assert!(got.1 == want.1 && got.2 == want.2, "stop at {stop}: the best checkpoint differs");
        // The metrics log continues where the state was saved: same lines as the full run's
        // (timings aside).
        let strip = |t: &str| -> Vec<Value> {
            t.lines()
                .map(|l| {
                    let mut v: Value = serde_json::from_str(l).unwrap();
                    v.as_object_mut().unwrap().remove("tokens_per_second");
                    v
                })
                .collect()
        };
        let resumed = fs::read_to_string(part.join("metrics.jsonl")).unwrap();
        assert!(resumed.starts_with(&metrics_before));
        assert_eq!(strip(&resumed), strip(&fs::read_to_string(full.join("metrics.jsonl")).unwrap()));
        // The counters too, timings and the log's length (its lines hold speeds) aside.
        let counters = |out: &Path| {
            let mut p = state_json(out)["progress"].clone();
            for k in ["train_secs", "metrics_bytes"] {
                p.as_object_mut().unwrap().remove(k);
            }
            p
        };
        assert_eq!(counters(&part), counters(&full));
    }
    // A finished run has nothing left to do; a folder without a state is refused.
    assert_clean_failure(&peft(&["train", "--resume", &s(&full)]), &["already finished"]);
    assert_clean_failure(&peft(&["train", "--resume", &s(&model)]), &["trainer_state.safetensors"]);
    // --resume takes the run's settings from the folder.
    let o = peft(&["train", "--resume", &s(&full), "--lr", "1"]);
    assert!(!o.status.success());
    assert_no_temp_files(d.path());
}

#[test]
fn cli_nan_stops_naming_the_step_and_keeps_the_last_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let (train, dev) = toy_data(d.path());
    let (m, t, dv) = (s(&model), s(&train), s(&dev));

    // An absurd learning rate blows the weights up within a few steps.
    let out = d.path().join("absurd");
    let ao = s(&out);
    let mut args = train_args(&m, &t, &dv, &ao);
    let i = args.iter().position(|a| *a == "--lr").unwrap();
    args[i + 1] = "1e30";
    let err = assert_clean_failure(&peft(&args), &["step ", "not finite", "--lr"]);
    println!("{err}");

    // A NaN gradient at step 6 (epoch 2): the epoch-1 checkpoint stays, and resuming from it ends
    // where an uninterrupted run ends.
    let out = d.path().join("nan");
    let no = s(&out);
    let mut args = train_args(&m, &t, &dv, &no);
    args.extend(["--inject-fault", "nan@6"]);
    assert_clean_failure(&peft(&args), &["step 6", "not finite", "last checkpoint (step 4)", "--resume"]);
    assert_eq!(state_json(&out)["progress"]["step"], json!(4));
    let w = WeightFile::open(out.join("adapter.safetensors")).unwrap().to_map().unwrap();
    assert!(w.values().all(|t| t.data.iter().all(|x| x.is_finite())));
    let o = peft(&["train", "--resume", &s(&out)]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let full = d.path().join("full");
    let fo = s(&full);
    let o = peft(&train_args(&m, &t, &dv, &fo));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(final_state(&out) == final_state(&full), "resumed after a NaN: not the uninterrupted result");
    assert_no_temp_files(d.path());
}

#[test]
fn cli_device_lost_keeps_the_last_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let (train, dev) = toy_data(d.path());
    let out = d.path().join("out");
    let (m, t, dv, o) = (s(&model), s(&train), s(&dev), s(&out));
    let mut args = train_args(&m, &t, &dv, &o);
    args.extend(["--inject-fault", "device-lost@7"]);
    let err = assert_clean_failure(&peft(&args), &["device was lost", "step 7", "last checkpoint (step 4)"]);
    println!("{err}");
    assert_eq!(state_json(&out)["progress"]["step"], json!(4));
    // The state on disk is step 4's, untouched: the same tensors as a run stopped after step 4.
    let stopped = d.path().join("stopped");
    let so = s(&stopped);
    let mut args = train_args(&m, &t, &dv, &so);
    args.extend(["--stop-after-steps", "4"]);
    let st = peft(&args);
    assert!(st.status.success(), "{}", text(&st.stderr));
    let tensors = |p: &Path| WeightFile::open(p.join("trainer_state.safetensors")).unwrap().to_map().unwrap();
    assert!(tensors(&out) == tensors(&stopped), "the last checkpoint changed");
    peft_wgpu::formats::adapterhub::Adapter::load(&out, &tiny_config()).expect("the best checkpoint loads");
    let r = peft(&["train", "--resume", &o]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert_eq!(state_json(&out)["progress"]["finished"], json!(true));
    assert_no_temp_files(d.path());
}

#[cfg(unix)]
#[test]
fn cli_ctrl_c_saves_a_checkpoint_and_exits_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let (train, dev) = toy_data(d.path());
    let out = d.path().join("out");
    let (m, t, dv, o) = (s(&model), s(&train), s(&dev), s(&out));
    // Long enough to still be running when the signal comes.
    let mut args = train_args(&m, &t, &dv, &o);
    args.extend(["--epochs", "400"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(&args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a few steps in the metrics log.
    let log = out.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while fs::read_to_string(&log).map_or(0, |s| s.lines().count()) < 3 {
        assert!(t0.elapsed().as_secs() < 300, "training did not start");
        assert!(child.try_wait().unwrap().is_none(), "training ended early");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let output = child.wait_with_output().unwrap();
    let err = text(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "stderr:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("interrupted at step") && err.contains("--resume"), "{err}");
    let st = state_json(&out);
    let step = st["progress"]["step"].as_u64().unwrap();
    assert!((3..400 * 4).contains(&step), "{st}");
    assert_eq!(st["progress"]["finished"], json!(false));
    assert_no_temp_files(&out);
    // The saved state resumes (stopped again right away to keep the test short).
    let o = peft(&["train", "--resume", &o, "--stop-after-steps", &(step + 1).to_string()]);
    let all = text(&o.stdout) + &text(&o.stderr);
    assert!(o.status.success(), "{all}");
    assert!(all.contains(&format!("resuming at step {step}")), "{all}");
    assert_eq!(state_json(&out)["progress"]["step"], json!(step + 1));
}

/// `peft train` with layer chunks and kept FFN outputs (chosen on the command line) trains like
/// the plain run: the same losses step by step up to f32 summation order (the adapters' gradients
/// are summed chunk by chunk); a budget nothing fits fails naming the leanest setup.
#[test]
fn cli_layer_chunks_train_like_the_plain_run() {
    let d = tempfile::tempdir().unwrap();
    let (train, dev) = toy_data(d.path());
    let model = tiny_model(d.path());
    let (m, t, dv) = (s(&model), s(&train), s(&dev));
    let losses = |out: &Path| -> Vec<f64> {
        let log = fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("step").is_some() && v.get("loss").is_some())
            .map(|v| v["loss"].as_f64().unwrap())
            .collect()
    };
    let plain = d.path().join("plain");
    let o = s(&plain);
    let out = peft(&train_args(&m, &t, &dv, &o));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lean = d.path().join("lean");
    let o = s(&lean);
    let mut args = train_args(&m, &t, &dv, &o);
    args.extend(["--recompute", "--layer-chunk", "2", "--keep-ffn-output", "--resident-layers", "1"]);
    let out = peft(&args);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for want in ["recompute on keeping FFN outputs", "layer chunks of 2 sequences", "1 of 2 layers on the GPU"] {
        assert!(stdout.contains(want), "the plan line lacks {want:?}:\n{stdout}");
    }
    let (a, b) = (losses(&plain), losses(&lean));
    assert!(a.len() >= 4 && a.len() == b.len(), "{} vs {} logged steps", a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-4 * x.abs(), "step {}: loss {x} plain vs {y} in layer chunks", i + 1);
    }
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / x.abs()).fold(0.0, f64::max);
    println!("{} steps, largest relative loss difference {worst:.2e}", a.len());
    // Nothing fits 1 KiB: the error names the leanest setup and what to change.
    let o = s(&d.path().join("none"));
    let mut args = train_args(&m, &t, &dv, &o);
    args.extend(["--max-gpu-memory", "1KiB"]);
    assert_clean_failure(&peft(&args), &["--max-gpu-memory", "layer chunks of 1 sequence", "--batch-size (5)"]);
}
