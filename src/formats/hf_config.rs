//! `BertConfig`: the architecture of a BERT-family encoder from a Hugging Face `config.json`
//! (re-exported as `model::config::BertConfig`).

use crate::types::Activation;
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// The `model_type`s whose checkpoints have BERT's architecture and tensor names. MiniLM
/// checkpoints such as all-MiniLM-L6-v2 say `"bert"`.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["bert"];

/// What the encoder needs from `config.json`. Fields that transformers' `BertConfig` defaults
/// (`hidden_act`, `layer_norm_eps`, `max_position_embeddings`, `type_vocab_size`,
/// `position_embedding_type`) take the same defaults when absent, as transformers would load the
/// file; the sizes that define the architecture (`hidden_size`, `num_hidden_layers`,
/// `num_attention_heads`, `intermediate_size`, `vocab_size`) and `model_type` are required.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// The FFN non-linearity (`"gelu"` is exact erf GELU in transformers).
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub vocab_size: usize,
    pub pad_token_id: Option<u32>,
    /// Dropout on the embeddings' output and the dense outputs in training (transformers'
    /// `BertConfig` default 0.1 when absent).
    pub hidden_dropout_prob: f64,
    /// Dropout on the attention probabilities in training (default 0.1).
    pub attention_probs_dropout_prob: f64,
    /// A classification head's dropout when its own config gives none (default: none, then the
    /// head uses `hidden_dropout_prob`).
    pub classifier_dropout: Option<f64>,
}

impl BertConfig {
    /// Reads `<dir>/config.json`.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("config.json"))
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).with_context(|| format!("reading model config {}", path.display()))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses and validates; `origin` (a path) prefixes every error.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).with_context(|| format!("{origin}: invalid JSON"))?;
        let Value::Object(m) = v else {
            bail!("{origin}: expected a JSON object");
        };
        Self::from_map(&m).with_context(|| format!("{origin}: unsupported or invalid model config"))
    }

    fn from_map(m: &Map<String, Value>) -> Result<Self> {
        let model_type: String = required(m, "model_type")?;
        if !SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
            bail!(
                "unsupported model_type {model_type:?} (supported: {}; BERT-architecture checkpoints such as MiniLM use \"bert\")",
                SUPPORTED_MODEL_TYPES.join(", ")
            );
        }
        let act_name: String = optional(m, "hidden_act")?.unwrap_or_else(|| "gelu".into());
        let hidden_act = match act_name.as_str() {
            // transformers' "gelu" is the exact erf form; the tanh approximations differ.
            "gelu" | "gelu_python" | "relu" | "silu" | "swish" => Activation::parse(&act_name)?,
            other => bail!("unsupported hidden_act {other:?} (supported: gelu, gelu_python, relu, silu, swish)"),
        };
        let pet: Option<String> = optional(m, "position_embedding_type")?;
        if let Some(p) = pet {
            if p != "absolute" {
                bail!("unsupported position_embedding_type {p:?} (supported: absolute)");
            }
        }
        let cfg = BertConfig {
            model_type,
            hidden_size: required(m, "hidden_size")?,
            num_hidden_layers: required(m, "num_hidden_layers")?,
            num_attention_heads: required(m, "num_attention_heads")?,
            intermediate_size: required(m, "intermediate_size")?,
            hidden_act,
            layer_norm_eps: optional(m, "layer_norm_eps")?.unwrap_or(1e-12),
            max_position_embeddings: optional(m, "max_position_embeddings")?.unwrap_or(512),
            type_vocab_size: optional(m, "type_vocab_size")?.unwrap_or(2),
            vocab_size: required(m, "vocab_size")?,
            pad_token_id: optional(m, "pad_token_id")?,
            hidden_dropout_prob: optional(m, "hidden_dropout_prob")?.unwrap_or(0.1),
            attention_probs_dropout_prob: optional(m, "attention_probs_dropout_prob")?.unwrap_or(0.1),
            classifier_dropout: optional(m, "classifier_dropout")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the relations between fields (positive sizes, heads divide the width).
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                bail!("{name} must be positive, got 0");
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            bail!("layer_norm_eps must be positive, got {}", self.layer_norm_eps);
        }
        for (name, p) in [
            ("hidden_dropout_prob", Some(self.hidden_dropout_prob)),
            ("attention_probs_dropout_prob", Some(self.attention_probs_dropout_prob)),
            ("classifier_dropout", self.classifier_dropout),
        ] {
            if let Some(p) = p.filter(|p| !(0.0..1.0).contains(p)) {
                bail!("{name} must be in [0, 1), got {p}");
            }
        }
        if let Some(p) = self.pad_token_id {
            if p as usize >= self.vocab_size {
                bail!("pad_token_id {p} is not below vocab_size {}", self.vocab_size);
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

fn required<T: DeserializeOwned>(m: &Map<String, Value>, key: &str) -> Result<T> {
    match m.get(key) {
        None | Some(Value::Null) => bail!("missing field {key:?}"),
        Some(v) => serde_json::from_value(v.clone()).with_context(|| format!("field {key:?} has an invalid value {v}")),
    }
}

fn optional<T: DeserializeOwned>(m: &Map<String, Value>, key: &str) -> Result<Option<T>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .with_context(|| format!("field {key:?} has an invalid value {v}")),
    }
}
