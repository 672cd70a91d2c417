//! The envelope every AdapterHub config file shares: `config`, `hidden_size`, `model_class`,
//! `model_name`, `model_type`, `name`, `version` (and fusion's `adapter_names`), kept whole.

use super::options::to_object;
use super::ADAPTERS_VERSION;
use crate::formats::family::Family;
use crate::formats::{to_python_json, write_atomic};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::Path;

/// The keys `adapters` 1.3.0 writes around a new `config`.
#[derive(Serialize)]
struct NewEnvelope<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    adapter_names: Option<&'a [String]>,
    config: Map<String, Value>,
    hidden_size: usize,
    model_class: &'a str,
    model_name: &'a str,
    model_type: &'a str,
    name: &'a str,
    version: &'a str,
}

impl<'a> NewEnvelope<'a> {
    fn new(name: &'a str, hidden_size: usize, model_name: &'a str, config: Map<String, Value>) -> Self {
        Self {
            adapter_names: None,
            config,
            hidden_size,
            model_class: Family::Bert.adapter_model_class(),
            model_name,
            model_type: Family::Bert.model_type(),
            name,
            version: ADAPTERS_VERSION,
        }
    }
}

/// One AdapterHub config file, every key kept (so it writes back unchanged), with typed access to
/// the envelope fields. Parsing checks that `config` is an object, `name` a string and
/// `hidden_size` a positive integer.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedConfig {
    raw: Map<String, Value>,
}

impl SavedConfig {
    /// A new envelope as `adapters` 1.3.0 writes it (`model_class` BertAdapterModel,
    /// `model_type` bert, `version` adapters.1.3.0).
    pub fn new(name: &str, hidden_size: usize, model_name: &str, config: Map<String, Value>) -> Self {
        Self::written(NewEnvelope::new(name, hidden_size, model_name, config))
    }

    /// A new envelope for a fusion: as [`SavedConfig::new`] plus `adapter_names`.
    pub(super) fn new_fusion(
        adapter_names: &[String],
        hidden_size: usize,
        model_name: &str,
        config: Map<String, Value>,
    ) -> Self {
        let name = adapter_names.join(",");
        Self::written(NewEnvelope {
            adapter_names: Some(adapter_names),
            ..NewEnvelope::new(&name, hidden_size, model_name, config)
        })
    }

    fn written(envelope: NewEnvelope) -> Self {
        Self { raw: to_object(&envelope) }
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json_str(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).context("invalid JSON")?;
        let Value::Object(raw) = v else {
            bail!("expected a JSON object");
        };
        match raw.get("config") {
            Some(Value::Object(_)) => {}
            Some(other) => bail!("\"config\" must be an object, got {other}"),
            None => bail!("missing field \"config\""),
        }
        match raw.get("name") {
            Some(Value::String(_)) => {}
            Some(other) => bail!("\"name\" must be a string, got {other}"),
            None => bail!("missing field \"name\""),
        }
        match raw.get("hidden_size").and_then(Value::as_u64) {
            Some(h) if h > 0 => {}
            _ => bail!(
                "\"hidden_size\" must be a positive integer, got {}",
                raw.get("hidden_size").unwrap_or(&Value::Null)
            ),
        }
        for k in ["model_class", "model_name", "model_type", "version"] {
            match raw.get(k) {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(other) => bail!("{k:?} must be a string, got {other}"),
            }
        }
        Ok(Self { raw })
    }

    /// The `config` object.
    pub fn config(&self) -> &Map<String, Value> {
        self.raw["config"].as_object().expect("checked at parse")
    }

    pub fn config_mut(&mut self) -> &mut Map<String, Value> {
        self.raw.get_mut("config").and_then(Value::as_object_mut).expect("checked at parse")
    }

    pub fn name(&self) -> &str {
        self.raw["name"].as_str().expect("checked at parse")
    }

    pub fn set_name(&mut self, name: &str) {
        self.raw.insert("name".into(), Value::from(name));
    }

    pub fn hidden_size(&self) -> usize {
        self.raw["hidden_size"].as_u64().expect("checked at parse") as usize
    }

    fn str_field(&self, k: &str) -> Option<&str> {
        self.raw.get(k).and_then(Value::as_str)
    }

    pub fn model_class(&self) -> Option<&str> {
        self.str_field("model_class")
    }

    pub fn model_name(&self) -> Option<&str> {
        self.str_field("model_name")
    }

    pub fn model_type(&self) -> Option<&str> {
        self.str_field("model_type")
    }

    pub fn version(&self) -> Option<&str> {
        self.str_field("version")
    }

    /// Any top-level key (e.g. fusion's `adapter_names`).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.raw.get(key)
    }

    pub fn insert(&mut self, key: &str, value: Value) {
        self.raw.insert(key.into(), value);
    }

    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    /// The file's text as Python's `json.dump(indent=2, sort_keys=True)` writes it.
    pub fn to_json(&self) -> String {
        to_python_json(&Value::Object(self.raw.clone()))
    }

    /// Writes atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_json().as_bytes())
    }

    /// Sets `model_type` and `model_class` to `family`'s (new envelopes say BERT's).
    pub fn set_family(&mut self, family: Family) {
        self.raw.insert("model_type".into(), Value::from(family.model_type()));
        self.raw.insert("model_class".into(), Value::from(family.adapter_model_class()));
    }

    /// Fails unless the config was saved for a model of width `hidden` of a supported family, and
    /// of `family` when given (heads, whose tensor names do not depend on the family, pass `None`).
    pub fn check_model(&self, what: &str, hidden: usize, family: Option<Family>) -> Result<()> {
        if let Some(t) = self.model_type() {
            let supported: Vec<&str> = Family::ALL.iter().map(|f| f.model_type()).collect();
            match (Family::from_model_type(t), family) {
                (None, _) => {
                    bail!("{what} was saved for model_type {t:?}; supported: {}", supported.join(", "))
                }
                (Some(saved), Some(model)) if saved != model => bail!(
                    "{what} was saved for model_type {t:?}, the model is {:?}: its tensors are named for another architecture",
                    model.model_type()
                ),
                _ => {}
            }
        }
        if self.hidden_size() != hidden {
            bail!("{what} was saved for hidden_size {}, the model has {hidden}", self.hidden_size());
        }
        Ok(())
    }
}
