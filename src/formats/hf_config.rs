//! `BertConfig`: the architecture of a BERT-family encoder from a Hugging Face `config.json`
//! (re-exported as `model::config::BertConfig`): BERT, RoBERTa, XLM-RoBERTa, DistilBERT (its own
//! key names, read into BERT's) and ELECTRA ([`Family`]).

pub use super::family::Family;
use crate::types::Activation;
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// The `model_type`s whose checkpoints have BERT's layer ([`Family`]). MiniLM checkpoints such as
/// all-MiniLM-L6-v2 say `"bert"`.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["bert", "roberta", "xlm-roberta", "distilbert", "electra"];

/// How a family's embeddings differ from BERT's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelLayout {
    pub family: Family,
    /// The position id of a sequence's first token. RoBERTa / XLM-R: `pad_token_id + 1`, as
    /// transformers' `create_position_ids_from_input_ids` counts (padding tokens sit at
    /// `pad_token_id`); 0 otherwise.
    pub position_offset: usize,
    /// False for DistilBERT (no token-type table).
    pub token_types: bool,
    /// ELECTRA's `embedding_size`: the tables' width, projected to `hidden_size` by
    /// `embeddings_project` when the two differ. `None`: the tables are `hidden_size` wide.
    pub embedding_size: Option<usize>,
}

impl Default for ModelLayout {
    /// BERT's.
    fn default() -> Self {
        Self { family: Family::Bert, position_offset: 0, token_types: true, embedding_size: None }
    }
}

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
    /// Family and embedding differences (BERT's when absent from a serialized config).
    #[serde(default)]
    pub layout: ModelLayout,
    /// Dropout on the embeddings' output and the dense outputs in training (transformers'
    /// `BertConfig` default 0.1 when absent; DistilBERT's `dropout`).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on the attention probabilities in training (default 0.1; DistilBERT's
    /// `attention_dropout`).
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// A classification head's dropout when its own config gives none (default: none, then the
    /// head uses `hidden_dropout_prob`).
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
}

fn default_dropout() -> f64 {
    0.1
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
        let Some(family) = Family::from_model_type(&model_type) else {
            bail!(
                "unsupported model_type {model_type:?} (supported: {}; BERT-architecture checkpoints such as MiniLM use \"bert\")",
                SUPPORTED_MODEL_TYPES.join(", ")
            );
        };
        let cfg = match family {
            Family::DistilBert => Self::distilbert(m, model_type)?,
            _ => Self::bert_like(m, model_type, family)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// BERT's keys, which RoBERTa, XLM-R and ELECTRA share.
    fn bert_like(m: &Map<String, Value>, model_type: String, family: Family) -> Result<Self> {
        let pet: Option<String> = optional(m, "position_embedding_type")?;
        if let Some(p) = pet {
            if p != "absolute" {
                bail!("unsupported position_embedding_type {p:?} (supported: absolute)");
            }
        }
        let hidden_size: usize = required(m, "hidden_size")?;
        let roberta = matches!(family, Family::Roberta | Family::XlmRoberta);
        // RobertaConfig's default pad_token_id is 1; BertConfig's and ElectraConfig's 0.
        let pad_token_id: Option<u32> = optional(m, "pad_token_id")?.or(if roberta { Some(1) } else { None });
        let position_offset = match (roberta, pad_token_id) {
            (true, Some(p)) => p as usize + 1,
            _ => 0,
        };
        // ElectraConfig's default embedding_size is 128.
        let embedding_size = match family {
            Family::Electra => Some(optional(m, "embedding_size")?.unwrap_or(128usize)).filter(|&e| e != hidden_size),
            _ => None,
        };
        Ok(BertConfig {
            model_type,
            hidden_size,
            num_hidden_layers: required(m, "num_hidden_layers")?,
            num_attention_heads: required(m, "num_attention_heads")?,
            intermediate_size: required(m, "intermediate_size")?,
            hidden_act: activation(optional(m, "hidden_act")?, "hidden_act")?,
            layer_norm_eps: optional(m, "layer_norm_eps")?.unwrap_or(1e-12),
            max_position_embeddings: optional(m, "max_position_embeddings")?.unwrap_or(512),
            type_vocab_size: optional(m, "type_vocab_size")?.unwrap_or(2),
            vocab_size: required(m, "vocab_size")?,
            pad_token_id,
            layout: ModelLayout { family, position_offset, token_types: true, embedding_size },
            hidden_dropout_prob: optional(m, "hidden_dropout_prob")?.unwrap_or(0.1),
            attention_probs_dropout_prob: optional(m, "attention_probs_dropout_prob")?.unwrap_or(0.1),
            classifier_dropout: optional(m, "classifier_dropout")?,
        })
    }

    /// DistilBERT's keys (`dim`, `hidden_dim`, `n_layers`, `n_heads`, `activation`), read into
    /// BERT's fields. It has no token types (one type, no table) and LayerNorm eps 1e-12 fixed.
    fn distilbert(m: &Map<String, Value>, model_type: String) -> Result<Self> {
        Ok(BertConfig {
            model_type,
            hidden_size: required(m, "dim")?,
            num_hidden_layers: required(m, "n_layers")?,
            num_attention_heads: required(m, "n_heads")?,
            intermediate_size: required(m, "hidden_dim")?,
            hidden_act: activation(optional(m, "activation")?, "activation")?,
            layer_norm_eps: 1e-12,
            max_position_embeddings: optional(m, "max_position_embeddings")?.unwrap_or(512),
            type_vocab_size: 1,
            vocab_size: required(m, "vocab_size")?,
            pad_token_id: optional(m, "pad_token_id")?,
            layout: ModelLayout { family: Family::DistilBert, token_types: false, ..ModelLayout::default() },
            // DistilBertConfig's names and defaults. It has neither `classifier_dropout` nor
            // `hidden_dropout_prob`, so AdapterHub's head (`_get_dropout_prob`) falls back to 0;
            // `seq_classif_dropout` is transformers' own classifier's.
            hidden_dropout_prob: optional(m, "dropout")?.unwrap_or(0.1),
            attention_probs_dropout_prob: optional(m, "attention_dropout")?.unwrap_or(0.1),
            classifier_dropout: Some(0.0),
        })
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
        if self.layout.position_offset >= self.max_position_embeddings {
            bail!(
                "max_position_embeddings {} leaves no position after the first {} (pad_token_id + 1)",
                self.max_position_embeddings,
                self.layout.position_offset
            );
        }
        if self.layout.embedding_size == Some(0) {
            bail!("embedding_size must be positive, got 0");
        }
        Ok(())
    }

    /// The family (BERT, RoBERTa, ...).
    pub fn family(&self) -> Family {
        self.layout.family
    }

    /// The longest sequence the position table holds, special tokens included: RoBERTa's first
    /// `pad_token_id + 1` positions are not used by real tokens (514 → 512 for roberta-base).
    pub fn max_sequence_length(&self) -> usize {
        self.max_position_embeddings - self.layout.position_offset
    }

    /// The width of the embedding tables (ELECTRA's `embedding_size`, else `hidden_size`).
    pub fn embedding_width(&self) -> usize {
        self.layout.embedding_size.unwrap_or(self.hidden_size)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// transformers' `"gelu"` is the exact erf form; the tanh approximations differ and are refused.
fn activation(name: Option<String>, key: &str) -> Result<Activation> {
    let name = name.unwrap_or_else(|| "gelu".into());
    match name.as_str() {
        "gelu" | "gelu_python" | "relu" | "silu" | "swish" => Activation::parse(&name),
        other => bail!("unsupported {key} {other:?} (supported: gelu, gelu_python, relu, silu, swish)"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<BertConfig> {
        BertConfig::from_json_str(json, "config.json")
    }

    #[test]
    fn supported_types_are_the_families() {
        let families: Vec<&str> = Family::ALL.iter().map(|f| f.model_type()).collect();
        assert_eq!(SUPPORTED_MODEL_TYPES, families.as_slice());
    }

    #[test]
    fn each_family_reads_into_bert_fields() {
        let sizes = r#""hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 36, "vocab_size": 50"#;
        let r = parse(&format!(r#"{{"model_type": "roberta", {sizes}, "max_position_embeddings": 40}}"#)).unwrap();
        // RobertaConfig's default pad_token_id is 1: positions start at 2, 38 usable.
        assert_eq!(
            (r.family(), r.pad_token_id, r.layout.position_offset, r.max_sequence_length()),
            (Family::Roberta, Some(1), 2, 38)
        );
        let x = parse(&format!(r#"{{"model_type": "xlm-roberta", {sizes}, "pad_token_id": 3}}"#)).unwrap();
        assert_eq!((x.family(), x.layout.position_offset, x.max_sequence_length()), (Family::XlmRoberta, 4, 508));
        let e = parse(&format!(r#"{{"model_type": "electra", {sizes}, "embedding_size": 12}}"#)).unwrap();
        assert_eq!((e.layout.embedding_size, e.embedding_width(), e.layout.position_offset), (Some(12), 12, 0));
        // ElectraConfig's default embedding_size is 128; equal to hidden_size means no projection.
        let e = parse(&format!(r#"{{"model_type": "electra", {sizes}}}"#)).unwrap();
        assert_eq!(e.layout.embedding_size, Some(128));
        let e = parse(&format!(r#"{{"model_type": "electra", {sizes}, "embedding_size": 16}}"#)).unwrap();
        assert_eq!((e.layout.embedding_size, e.embedding_width()), (None, 16));
        let d = parse(
            r#"{"model_type": "distilbert", "dim": 16, "hidden_dim": 36, "n_layers": 2, "n_heads": 2, "vocab_size": 50, "activation": "relu"}"#,
        )
        .unwrap();
        assert_eq!(
            (d.hidden_size, d.intermediate_size, d.num_hidden_layers, d.num_attention_heads, d.hidden_act),
            (16, 36, 2, 2, Activation::Relu)
        );
        assert_eq!((d.type_vocab_size, d.layout.token_types, d.layer_norm_eps), (1, false, 1e-12));
        let err = parse(
            r#"{"model_type": "distilbert", "dim": 16, "hidden_dim": 36, "n_layers": 2, "n_heads": 2, "vocab_size": 50, "activation": "gelu_new"}"#,
        );
        assert!(format!("{:#}", err.unwrap_err()).contains("activation \"gelu_new\""));
        // RoBERTa's position table must leave room after the padding id.
        let err = parse(&format!(r#"{{"model_type": "roberta", {sizes}, "max_position_embeddings": 2}}"#));
        assert!(format!("{:#}", err.unwrap_err()).contains("max_position_embeddings 2"));
    }
}
