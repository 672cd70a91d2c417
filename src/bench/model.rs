//! Model shapes for benchmarks: presets of well-known BERT-family configs and a model directory
//! of seeded random weights (`config.json` + `model.safetensors`) for timing and memory runs,
//! where the weights' values do not matter but their shapes, dtype and file layout do.

use crate::formats::weights::{write_tensors, Tensor, TensorMap};
use crate::model::config::BertConfig;
use crate::types::Activation;
use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

/// The named shapes `--config` accepts (besides a path to a model directory or config.json).
pub const PRESETS: &[&str] = &["minilm", "bert-base", "bert-large"];

/// A preset config by name: `minilm` (all-MiniLM-L6-v2: 6 × 384), `bert-base` (12 × 768),
/// `bert-large` (24 × 1024); all with BERT's vocabulary and 512 positions.
pub fn preset(name: &str) -> Option<BertConfig> {
    let (hidden, layers, heads, ffn) = match name {
        "minilm" => (384, 6, 12, 1536),
        "bert-base" => (768, 12, 12, 3072),
        "bert-large" => (1024, 24, 16, 4096),
        _ => return None,
    };
    Some(BertConfig {
        model_type: "bert".into(),
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: ffn,
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
    })
}

/// A preset name, a model directory (with `config.json`) or a `config.json` path.
pub fn resolve_config(spec: &str) -> Result<BertConfig> {
    if let Some(c) = preset(spec) {
        return Ok(c);
    }
    let p = Path::new(spec);
    if p.is_dir() {
        return BertConfig::from_model_dir(p);
    }
    if p.is_file() {
        return BertConfig::from_file(p);
    }
    bail!("--config {spec:?}: not a preset ({}) nor a model directory or config.json", PRESETS.join(", "))
}

/// Every tensor of a BERT encoder (no pooler), names as `BertModel.save_pretrained` writes them.
pub fn tensor_shapes(cfg: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
    let mut out = vec![
        ("embeddings.word_embeddings.weight".to_string(), vec![cfg.vocab_size, d]),
        ("embeddings.position_embeddings.weight".to_string(), vec![cfg.max_position_embeddings, d]),
        ("embeddings.token_type_embeddings.weight".to_string(), vec![cfg.type_vocab_size, d]),
        ("embeddings.LayerNorm.weight".to_string(), vec![d]),
        ("embeddings.LayerNorm.bias".to_string(), vec![d]),
    ];
    for l in 0..cfg.num_hidden_layers {
        for (suffix, shape) in crate::model::store::layer_tensors(d, f) {
            out.push((format!("encoder.layer.{l}.{suffix}"), shape));
        }
    }
    out
}

/// Writes `config.json` and `model.safetensors` of `cfg` with seeded random weights into `dir`
/// (created if needed): LayerNorm weights 1, biases 0, other tensors uniform in ±0.02·√3 (std 0.02,
/// BERT's initializer range), so activations stay in the ranges a trained model sees.
pub fn write_random_model(cfg: &BertConfig, dir: &Path, seed: u64) -> Result<()> {
    cfg.validate()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let a = 0.02f32 * 3f32.sqrt();
    let mut map = TensorMap::new();
    for (name, shape) in tensor_shapes(cfg) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("LayerNorm.weight") {
            vec![1.0; n]
        } else if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            (0..n).map(|_| rng.random_range(-a..a)).collect()
        };
        map.insert(name, Tensor::new(shape, data)?);
    }
    write_tensors(&dir.join("model.safetensors"), &map, None)?;
    let json = serde_json::to_string_pretty(cfg)?;
    crate::formats::write_atomic(&dir.join("config.json"), json.as_bytes())
}

/// A model directory for `spec`: the directory itself when `spec` is one holding
/// `model.safetensors`, else random weights of the config written under `scratch`.
pub fn model_dir_for(spec: &str, scratch: &Path, seed: u64) -> Result<(BertConfig, PathBuf)> {
    let p = Path::new(spec);
    if p.is_dir() && p.join("model.safetensors").is_file() {
        return Ok((BertConfig::from_model_dir(p)?, p.to_path_buf()));
    }
    let cfg = resolve_config(spec)?;
    let dir = scratch.join(format!("random-{}x{}-{}", cfg.num_hidden_layers, cfg.hidden_size, seed));
    if !(dir.join("model.safetensors").is_file() && BertConfig::from_model_dir(&dir).ok().as_ref() == Some(&cfg)) {
        write_random_model(&cfg, &dir, seed)?;
    }
    Ok((cfg, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_random_model_loads() {
        for name in PRESETS {
            preset(name).unwrap().validate().unwrap();
        }
        let mut cfg = preset("minilm").unwrap();
        (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) = (24, 2, 4, 40);
        (cfg.vocab_size, cfg.max_position_embeddings) = (50, 16);
        let tmp = tempfile::tempdir().unwrap();
        assert!(resolve_config(tmp.path().join("nope").to_str().unwrap()).is_err());
        let dir = tmp.path().join("m");
        write_random_model(&cfg, &dir, 7).unwrap();
        assert_eq!(resolve_config(dir.to_str().unwrap()).unwrap(), cfg);
        assert_eq!(BertConfig::from_model_dir(&dir).unwrap(), cfg);
        let file = crate::formats::WeightFile::open(dir.join("model.safetensors")).unwrap();
        crate::model::weights::validate_bert_weights(&file, &cfg).unwrap();
    }
}
