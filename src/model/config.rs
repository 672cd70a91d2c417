//! `BertConfig` is read from a Hugging Face `config.json`, a file format: it lives in
//! [`crate::formats::hf_config`] and is re-exported here for the model code that names it
//! `model::config::BertConfig`.

pub use crate::formats::hf_config::{BertConfig, Family, ModelLayout, SUPPORTED_MODEL_TYPES};
