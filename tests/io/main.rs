//! Disk formats against the fixtures the real Python libraries wrote (`tests/fixtures`):
//! HF config + safetensors, BERT tensor names, AdapterHub adapter / head / fusion folders read and
//! written back bit for bit, and the errors a user can hit.
//!
//! One test binary (`cargo test --test io`), one file per format: `hf_config.rs` (config.json),
//! `weights.rs` (safetensors and BERT's tensor names), `torch_bin.rs` (torch `.bin` checkpoints
//! read, written, and as AdapterHub weights), `adapterhub.rs` (AdapterHub folders read and
//! written back), `broken.rs` (broken folders and the errors they give). Shared helpers here.

#[path = "../common/mod.rs"]
mod common;
use common::{fixtures, tiny, tiny_config};

mod adapterhub;
mod broken;
mod hf_config;
mod torch_bin;
mod weights;

use peft_wgpu::formats::adapterhub::*;
use peft_wgpu::formats::hf_config::BertConfig;
use peft_wgpu::formats::weights::{serialize_tensors, write_tensors};
use peft_wgpu::formats::{Tensor, TensorMap, WeightFile};
use peft_wgpu::model::weights::BertWeightNames;
use peft_wgpu::train::cache;
use peft_wgpu::Activation;
use serde_json::{json, Value};
use std::fs;
use std::path::Path;

/// all-MiniLM-L6-v2's architecture (its config.json is checked against this in `minilm_model`).
fn minilm_config() -> BertConfig {
    BertConfig {
        model_type: "bert".into(),
        hidden_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 1536,
        hidden_act: Activation::Gelu,
        layer_norm_eps: 1e-12,
        max_position_embeddings: 512,
        type_vocab_size: 2,
        vocab_size: 30522,
        pad_token_id: Some(0),
        layout: Default::default(),
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        classifier_dropout: None,
    }
}

fn err_string<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

fn assert_err_contains<T: std::fmt::Debug>(r: anyhow::Result<T>, parts: &[&str]) {
    let e = err_string(r);
    for p in parts {
        assert!(e.contains(p), "error {e:?} should mention {p:?}");
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// Independent parse of a safetensors file: name → (dtype, shape, bytes).
fn raw_tensors(path: &Path) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let b = fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Map<String, Value> = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let data = &b[8 + n..];
    h.into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let o = v["data_offsets"].as_array().unwrap();
            let (s, e) = (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize);
            let shape = v["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            (k, (v["dtype"].as_str().unwrap().to_string(), shape, data[s..e].to_vec()))
        })
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Every file in `src` is in `dst`: JSON byte-identical; safetensors with the same names, dtypes,
/// shapes and bytes (and the whole file identical). The torch `.bin` files that saving writes
/// beside the safetensors ones (when `src` has none) hold the same tensors.
fn assert_same_files(src: &Path, dst: &Path) {
    let mut bins = 0;
    for (bin, st) in [
        (ADAPTER_WEIGHTS_BIN, ADAPTER_WEIGHTS_FILE),
        (HEAD_WEIGHTS_BIN, HEAD_WEIGHTS_FILE),
        (FUSION_WEIGHTS_BIN, FUSION_WEIGHTS_FILE),
    ] {
        if dst.join(bin).exists() && !src.join(bin).exists() {
            let ours: std::collections::BTreeMap<_, _> = peft_wgpu::formats::torch_bin::read(&dst.join(bin))
                .unwrap()
                .into_iter()
                .map(|t| (t.name, (format!("{:?}", t.dtype), t.shape, t.data)))
                .collect();
            assert_eq!(ours, raw_tensors(&src.join(st)), "{} against {st}", dst.join(bin).display());
            bins += 1;
        }
    }
    let mut n = 0;
    for e in fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        let q = dst.join(name);
        assert!(q.exists(), "{} was not written", q.display());
        if p.extension().unwrap() == "json" {
            assert_eq!(fs::read_to_string(&q).unwrap(), fs::read_to_string(&p).unwrap(), "{}", p.display());
        } else {
            assert_eq!(raw_tensors(&q), raw_tensors(&p), "{}", p.display());
            assert_eq!(fs::read(&q).unwrap(), fs::read(&p).unwrap(), "{} byte for byte", p.display());
        }
        n += 1;
    }
    let written = fs::read_dir(dst).unwrap().count();
    assert_eq!(written, n + bins, "{} holds exactly the files of {} (and .bin copies)", dst.display(), src.display());
}
