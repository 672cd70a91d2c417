//! Reliability of what is read from disk: corrupt safetensors files, missing or misshapen
//! tensors, unsupported configs and AdapterHub options give one clear error (never a panic), and
//! half-precision base checkpoints load as f32.

mod common;
use common::*;
use peft_wgpu::formats::adapterhub::{BottleneckConfig, FusionConfig, HeadConfig, SavedConfig};
use peft_wgpu::formats::weights::{write_tensors, Tensor, WeightFile};
use peft_wgpu::model::encoder::Setup;
use peft_wgpu::model::load;
use peft_wgpu::model::weights::BertWeightNames;
use serde_json::{json, Value};
use std::fs;
use std::path::Path;

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
    for (k, v) in [("phm_layer", json!(true)), ("cross_adapter", json!(true)), ("use_gating", json!(true))] {
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
