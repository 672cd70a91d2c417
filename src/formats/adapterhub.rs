//! AdapterHub's on-disk formats (the Python `adapters` library, 1.x), read and written:
//!
//! | folder holds | config | weights | tensor names |
//! |---|---|---|---|
//! | a bottleneck adapter | `adapter_config.json` | `adapter.safetensors` | `bert.encoder.layer.L.{attention.output,output}.adapters.<name>.{adapter_down.0,adapter_up}.{weight,bias}` |
//! | a prediction head | `head_config.json` | `model_head.safetensors` | `heads.<name>.<i>.{weight,bias}` |
//! | an AdapterFusion | `adapter_fusion_config.json` | `model_adapter_fusion.safetensors` | `bert.encoder.layer.L.output.adapter_fusion_layer.<a,b,c>.{query,key}.{weight,bias}`, `...value.weight` |
//!
//! A head saved with an adapter (`save_adapter(..., with_head=True)`) lies in the adapter's
//! folder and is loaded from there. Every config file is an envelope ([`SavedConfig`]: `config`,
//! `hidden_size`, `model_class`, `model_name`, `model_type`, `name`, `version`, and fusion's
//! `adapter_names`) that is kept whole, so what we read is written back byte for byte; the typed
//! views ([`BottleneckConfig`], [`HeadConfig`], [`FusionConfig`]) refuse, naming the option,
//! anything the engine does not implement. Writing is atomic (temporary file, fsync, rename) and
//! lays the JSON out as Python's `json.dump(indent=2, sort_keys=True)` does.

use super::weights::{write_tensors, Tensor, TensorMap, WeightFile};
use super::{to_python_json, write_atomic};
use crate::model::config::BertConfig;
use crate::types::Activation;
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter.safetensors";
pub const HEAD_CONFIG_FILE: &str = "head_config.json";
pub const HEAD_WEIGHTS_FILE: &str = "model_head.safetensors";
pub const FUSION_CONFIG_FILE: &str = "adapter_fusion_config.json";
pub const FUSION_WEIGHTS_FILE: &str = "model_adapter_fusion.safetensors";

/// What we write in `version` (the format we follow).
pub const ADAPTERS_VERSION: &str = "adapters.1.3.0";
/// What we write in `model_class`: the flexible-head model Python loads these into.
pub const MODEL_CLASS: &str = "BertAdapterModel";
/// The prefix of encoder tensors in `BertAdapterModel` (written; read with or without).
pub const BASE_PREFIX: &str = "bert.";

// ---------------------------------------------------------------------------------------------
// The envelope
// ---------------------------------------------------------------------------------------------

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
        let mut raw = Map::new();
        raw.insert("config".into(), Value::Object(config));
        raw.insert("hidden_size".into(), json!(hidden_size));
        raw.insert("model_class".into(), json!(MODEL_CLASS));
        raw.insert("model_name".into(), json!(model_name));
        raw.insert("model_type".into(), json!("bert"));
        raw.insert("name".into(), json!(name));
        raw.insert("version".into(), json!(ADAPTERS_VERSION));
        Self { raw }
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
        self.raw.insert("name".into(), json!(name));
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

    /// Fails unless the config was saved for a BERT model of width `hidden`.
    pub fn check_model(&self, what: &str, hidden: usize) -> Result<()> {
        if let Some(t) = self.model_type() {
            if t != "bert" {
                bail!("{what} was saved for model_type {t:?}; only \"bert\" models are supported");
            }
        }
        if self.hidden_size() != hidden {
            bail!("{what} was saved for hidden_size {}, the model has {hidden}", self.hidden_size());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Typed option access
// ---------------------------------------------------------------------------------------------

/// Every key `adapters` 1.x writes in a bottleneck adapter's `config` (plus `architecture`). The
/// ones the engine does not implement are refused by value in [`BottleneckConfig::from_config`];
/// the PHM parameters only matter with `phm_layer: true`, `init_weights_seed` only when creating
/// weights.
pub const BOTTLENECK_OPTIONS: &[&str] = &[
    "adapter_residual_before_ln",
    "architecture",
    "cross_adapter",
    "dropout",
    "factorized_phm_W",
    "factorized_phm_rule",
    "hypercomplex_nonlinearity",
    "init_weights",
    "init_weights_seed",
    "inv_adapter",
    "inv_adapter_reduction_factor",
    "is_parallel",
    "learn_phm",
    "leave_out",
    "ln_after",
    "ln_before",
    "mh_adapter",
    "non_linearity",
    "original_ln_after",
    "original_ln_before",
    "output_adapter",
    "phm_bias",
    "phm_c_init",
    "phm_dim",
    "phm_init_range",
    "phm_layer",
    "phm_rank",
    "reduction_factor",
    "residual_before_ln",
    "scaling",
    "shared_W_phm",
    "shared_phm_rule",
    "stochastic_depth",
    "use_gating",
];

/// The keys of a classification head's `config`.
pub const HEAD_OPTIONS: &[&str] =
    &["activation_function", "bias", "dropout_prob", "head_type", "label2id", "layers", "num_labels", "use_pooler"];

/// The keys of an AdapterFusion's `config`.
pub const FUSION_OPTIONS: &[&str] = &[
    "dropout_prob",
    "key",
    "query",
    "query_before_ln",
    "regularization",
    "residual_before",
    "temperature",
    "value",
    "value_before_softmax",
    "value_initialized",
];

/// An option we do not know could change what the module computes: refuse it (naming it) rather
/// than silently ignore it.
fn refuse_unknown(m: &Map<String, Value>, known: &[&str], what: &str) -> Result<()> {
    let unknown: Vec<String> = m.keys().filter(|k| !known.contains(&k.as_str())).map(|k| format!("{k:?}")).collect();
    if !unknown.is_empty() {
        bail!(
            "unknown {what} option{} {}: not an option of AdapterHub's `adapters` 1.x that this engine implements",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", ")
        );
    }
    Ok(())
}

fn opt_bool(m: &Map<String, Value>, k: &str, default: bool) -> Result<bool> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => bail!("option {k:?} must be true or false, got {other}"),
    }
}

fn req_bool(m: &Map<String, Value>, k: &str) -> Result<bool> {
    match m.get(k) {
        None => bail!("missing option {k:?}"),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => bail!("option {k:?} must be true or false, got {other}"),
    }
}

fn opt_f64(m: &Map<String, Value>, k: &str, default: f64) -> Result<f64> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(f64::NAN)),
        Some(other) => bail!("option {k:?} must be a number, got {other}"),
    }
}

fn req_usize(m: &Map<String, Value>, k: &str) -> Result<usize> {
    match m.get(k) {
        None => bail!("missing option {k:?}"),
        Some(v) => v
            .as_u64()
            .map(|x| x as usize)
            .with_context(|| format!("option {k:?} must be a non-negative integer, got {v}")),
    }
}

fn positive_rf(v: &Value, what: &str) -> Result<f64> {
    match v.as_f64() {
        Some(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => bail!("{what} must be a positive number, got {v}"),
    }
}

/// A JSON number for `x`: an integer when `x` is integral (as Python keeps `16`), else a float.
fn num(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

// ---------------------------------------------------------------------------------------------
// Bottleneck adapters
// ---------------------------------------------------------------------------------------------

/// `reduction_factor`: one number, or a dict keyed by layer index (strings) with an optional
/// `"default"`, as `adapters` allows.
#[derive(Clone, Debug, PartialEq)]
pub enum ReductionFactor {
    Uniform(f64),
    PerLayer { default: Option<f64>, layers: BTreeMap<usize, f64> },
}

impl ReductionFactor {
    fn parse(v: &Value) -> Result<Self> {
        match v {
            Value::Number(_) => Ok(Self::Uniform(positive_rf(v, "option \"reduction_factor\"")?)),
            Value::Object(m) => {
                let mut default = None;
                let mut layers = BTreeMap::new();
                for (k, x) in m {
                    let rf = positive_rf(x, &format!("option \"reduction_factor\"[{k:?}]"))?;
                    if k == "default" {
                        default = Some(rf);
                    } else {
                        let l: usize = k.parse().with_context(|| {
                            format!("option \"reduction_factor\": key {k:?} is neither a layer index nor \"default\"")
                        })?;
                        layers.insert(l, rf);
                    }
                }
                Ok(Self::PerLayer { default, layers })
            }
            other => bail!("option \"reduction_factor\" must be a number or a dict keyed by layer, got {other}"),
        }
    }

    /// The factor at `layer` (as `adapters` resolves it: the layer's key, else `"default"`).
    pub fn for_layer(&self, layer: usize) -> Result<f64> {
        match self {
            Self::Uniform(x) => Ok(*x),
            Self::PerLayer { default, layers } => layers.get(&layer).copied().or(*default).with_context(|| {
                format!("option \"reduction_factor\" has no entry for layer {layer} and no \"default\"")
            }),
        }
    }

    fn to_value(&self) -> Value {
        match self {
            Self::Uniform(x) => num(*x),
            Self::PerLayer { default, layers } => {
                let mut m = Map::new();
                if let Some(d) = default {
                    m.insert("default".into(), num(*d));
                }
                for (l, x) in layers {
                    m.insert(l.to_string(), num(*x));
                }
                Value::Object(m)
            }
        }
    }
}

/// `residual_before_ln`: where the adapter's residual is taken (see `pre_forward` in
/// `adapters/methods/bottleneck.py`): `True` before the original LayerNorm's residual add,
/// `PostAdd` after that add but before the LayerNorm, `False` after the LayerNorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResidualBeforeLn {
    True,
    False,
    PostAdd,
}

/// The typed view of a bottleneck adapter's `config`, restricted to what the engine implements.
/// Options that only matter while training (`dropout`, `stochastic_depth`) are read, not refused.
#[derive(Clone, Debug, PartialEq)]
pub struct BottleneckConfig {
    /// An adapter after the attention block's output dense (Houlsby's first adapter).
    pub mh_adapter: bool,
    /// An adapter after the FFN's output dense.
    pub output_adapter: bool,
    pub reduction_factor: ReductionFactor,
    pub non_linearity: Activation,
    pub scaling: f64,
    pub original_ln_before: bool,
    pub original_ln_after: bool,
    pub residual_before_ln: ResidualBeforeLn,
    /// Only changes anything together with `ln_after` (unsupported), kept for completeness.
    pub adapter_residual_before_ln: bool,
    /// Layers without adapters.
    pub leave_out: Vec<usize>,
    /// How `adapters` initialises new weights ("bert", "mam_adapter", "houlsby").
    pub init_weights: String,
    pub dropout: f64,
    pub stochastic_depth: f64,
}

impl BottleneckConfig {
    /// Reads and validates a `config` object; anything unsupported is an error naming the option.
    pub fn from_config(m: &Map<String, Value>) -> Result<Self> {
        if let Some(a) = m.get("architecture") {
            if a != "bottleneck" && !a.is_null() {
                bail!("option \"architecture\" is {a}: only bottleneck adapters are supported (not LoRA, prefix tuning, IA3, ...)");
            }
        }
        refuse_unknown(m, BOTTLENECK_OPTIONS, "bottleneck adapter")?;
        let refuse_true = |k: &str, what: &str| -> Result<()> {
            if opt_bool(m, k, false)? {
                bail!("option {k:?}: true ({what}) is not supported");
            }
            Ok(())
        };
        refuse_true("phm_layer", "Compacter / PHM layers")?;
        refuse_true("is_parallel", "parallel adapters, par_bn")?;
        refuse_true("use_gating", "gated adapters")?;
        refuse_true("ln_before", "an adapter LayerNorm before the down-projection")?;
        refuse_true("ln_after", "an adapter LayerNorm after the up-projection")?;
        refuse_true("cross_adapter", "cross-attention adapters")?;
        match m.get("inv_adapter") {
            None | Some(Value::Null) => {}
            Some(v) => bail!("option \"inv_adapter\" is {v}: invertible adapters are not supported"),
        }
        let scaling = match m.get("scaling") {
            None | Some(Value::Null) => 1.0,
            Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
            Some(Value::String(s)) if s == "learned" || s == "channel" => {
                bail!("option \"scaling\": {s:?} (a trained scaling) is not supported; use a number")
            }
            Some(other) => bail!("option \"scaling\" must be a number, got {other}"),
        };
        if !scaling.is_finite() {
            bail!("option \"scaling\" must be finite");
        }
        let mh_adapter = req_bool(m, "mh_adapter")?;
        let output_adapter = req_bool(m, "output_adapter")?;
        if !mh_adapter && !output_adapter {
            bail!("options \"mh_adapter\" and \"output_adapter\" are both false: the adapter has no modules");
        }
        let reduction_factor =
            ReductionFactor::parse(m.get("reduction_factor").context("missing option \"reduction_factor\"")?)?;
        let non_linearity = match m.get("non_linearity") {
            Some(Value::String(s)) => {
                Activation::parse(s).with_context(|| format!("option \"non_linearity\" is {s:?}"))?
            }
            Some(other) => bail!("option \"non_linearity\" must be a string, got {other}"),
            None => bail!("missing option \"non_linearity\""),
        };
        let residual_before_ln = match m.get("residual_before_ln") {
            None | Some(Value::Bool(true)) => ResidualBeforeLn::True,
            Some(Value::Bool(false)) => ResidualBeforeLn::False,
            Some(Value::String(s)) if s == "post_add" => ResidualBeforeLn::PostAdd,
            Some(other) => {
                bail!("option \"residual_before_ln\" must be true, false or \"post_add\", got {other}")
            }
        };
        let leave_out = match m.get("leave_out") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|v| v as usize)
                        .with_context(|| format!("option \"leave_out\" must list layer indices, got {x}"))
                })
                .collect::<Result<_>>()?,
            Some(other) => bail!("option \"leave_out\" must be a list of layer indices, got {other}"),
        };
        let init_weights = match m.get("init_weights") {
            None | Some(Value::Null) => "bert".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => bail!("option \"init_weights\" must be a string, got {other}"),
        };
        Ok(Self {
            mh_adapter,
            output_adapter,
            reduction_factor,
            non_linearity,
            scaling,
            original_ln_before: opt_bool(m, "original_ln_before", false)?,
            original_ln_after: opt_bool(m, "original_ln_after", true)?,
            residual_before_ln,
            adapter_residual_before_ln: opt_bool(m, "adapter_residual_before_ln", false)?,
            leave_out,
            init_weights,
            dropout: opt_f64(m, "dropout", 0.0)?,
            stochastic_depth: opt_f64(m, "stochastic_depth", 0.0)?,
        })
    }

    /// Houlsby et al. (2019), AdapterHub's `double_seq_bn` (`DoubleSeqBnConfig`).
    pub fn houlsby(reduction_factor: f64, non_linearity: Activation) -> Self {
        Self {
            mh_adapter: true,
            output_adapter: true,
            reduction_factor: ReductionFactor::Uniform(reduction_factor),
            non_linearity,
            scaling: 1.0,
            original_ln_before: false,
            original_ln_after: true,
            residual_before_ln: ResidualBeforeLn::True,
            adapter_residual_before_ln: false,
            leave_out: vec![],
            init_weights: "bert".into(),
            dropout: 0.0,
            stochastic_depth: 0.0,
        }
    }

    /// Pfeiffer et al. (2020), AdapterHub's `seq_bn` (`SeqBnConfig`).
    pub fn pfeiffer(reduction_factor: f64, non_linearity: Activation) -> Self {
        Self { mh_adapter: false, original_ln_before: true, ..Self::houlsby(reduction_factor, non_linearity) }
    }

    /// The full `config` object `adapters` 1.3.0 writes for this adapter (every field, PHM and
    /// other unused options at their defaults).
    pub fn to_config(&self) -> Map<String, Value> {
        let v = json!({
            "adapter_residual_before_ln": self.adapter_residual_before_ln,
            "cross_adapter": false,
            "dropout": self.dropout,
            "factorized_phm_W": true,
            "factorized_phm_rule": false,
            "hypercomplex_nonlinearity": "glorot-uniform",
            "init_weights": self.init_weights,
            "init_weights_seed": null,
            "inv_adapter": null,
            "inv_adapter_reduction_factor": null,
            "is_parallel": false,
            "learn_phm": true,
            "leave_out": self.leave_out,
            "ln_after": false,
            "ln_before": false,
            "mh_adapter": self.mh_adapter,
            "non_linearity": self.non_linearity.adapterhub_name(),
            "original_ln_after": self.original_ln_after,
            "original_ln_before": self.original_ln_before,
            "output_adapter": self.output_adapter,
            "phm_bias": true,
            "phm_c_init": "normal",
            "phm_dim": 4,
            "phm_init_range": 0.0001,
            "phm_layer": false,
            "phm_rank": 1,
            "reduction_factor": self.reduction_factor.to_value(),
            "residual_before_ln": match self.residual_before_ln {
                ResidualBeforeLn::True => json!(true),
                ResidualBeforeLn::False => json!(false),
                ResidualBeforeLn::PostAdd => json!("post_add"),
            },
            "scaling": self.scaling,
            "shared_W_phm": false,
            "shared_phm_rule": true,
            "stochastic_depth": self.stochastic_depth,
            "use_gating": false,
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    /// Whether `layer` has adapters (not in `leave_out`).
    pub fn has_layer(&self, layer: usize) -> bool {
        !self.leave_out.contains(&layer)
    }

    /// The bottleneck width at `layer`: `int(hidden_size // reduction_factor)` as `adapters`
    /// computes it.
    pub fn bottleneck_dim(&self, hidden: usize, layer: usize) -> Result<usize> {
        let rf = self.reduction_factor.for_layer(layer)?;
        let d = if rf.fract() == 0.0 { hidden / rf as usize } else { (hidden as f64 / rf).floor() as usize };
        if d == 0 {
            bail!("option \"reduction_factor\" {rf} leaves no bottleneck units for hidden size {hidden}");
        }
        Ok(d)
    }

    /// The sites this adapter occupies in each layer it is in.
    pub fn sites(&self) -> Vec<AdapterSite> {
        let mut v = vec![];
        if self.mh_adapter {
            v.push(AdapterSite::Attention);
        }
        if self.output_adapter {
            v.push(AdapterSite::Output);
        }
        v
    }
}

/// Where in a layer a bottleneck adapter sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AdapterSite {
    /// After the attention output dense (`mh_adapter`): module `attention.output`.
    Attention,
    /// After the FFN output dense (`output_adapter`): module `output`.
    Output,
}

impl AdapterSite {
    /// The module path inside `encoder.layer.L`.
    pub fn module(self) -> &'static str {
        match self {
            AdapterSite::Attention => "attention.output",
            AdapterSite::Output => "output",
        }
    }
}

/// The four tensors of one bottleneck.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BottleneckParam {
    /// `adapter_down.0.weight`, `[bottleneck, hidden]`
    DownWeight,
    /// `adapter_down.0.bias`, `[bottleneck]`
    DownBias,
    /// `adapter_up.weight`, `[hidden, bottleneck]`
    UpWeight,
    /// `adapter_up.bias`, `[hidden]`
    UpBias,
}

impl BottleneckParam {
    pub const ALL: [BottleneckParam; 4] =
        [BottleneckParam::DownWeight, BottleneckParam::DownBias, BottleneckParam::UpWeight, BottleneckParam::UpBias];

    pub fn suffix(self) -> &'static str {
        match self {
            BottleneckParam::DownWeight => "adapter_down.0.weight",
            BottleneckParam::DownBias => "adapter_down.0.bias",
            BottleneckParam::UpWeight => "adapter_up.weight",
            BottleneckParam::UpBias => "adapter_up.bias",
        }
    }

    pub fn shape(self, hidden: usize, bottleneck: usize) -> Vec<usize> {
        match self {
            BottleneckParam::DownWeight => vec![bottleneck, hidden],
            BottleneckParam::DownBias => vec![bottleneck],
            BottleneckParam::UpWeight => vec![hidden, bottleneck],
            BottleneckParam::UpBias => vec![hidden],
        }
    }
}

/// AdapterHub's name of one adapter tensor, e.g.
/// `bert.encoder.layer.0.output.adapters.task.adapter_down.0.weight`.
pub fn adapter_param_name(adapter: &str, layer: usize, site: AdapterSite, param: BottleneckParam) -> String {
    format!("{BASE_PREFIX}encoder.layer.{layer}.{}.adapters.{adapter}.{}", site.module(), param.suffix())
}

/// One bottleneck's weights (nn.Linear layouts).
#[derive(Clone, Debug, PartialEq)]
pub struct BottleneckWeights {
    /// `[bottleneck, hidden]`
    pub down_weight: Tensor,
    /// `[bottleneck]`
    pub down_bias: Tensor,
    /// `[hidden, bottleneck]`
    pub up_weight: Tensor,
    /// `[hidden]`
    pub up_bias: Tensor,
}

impl BottleneckWeights {
    pub fn get(&self, p: BottleneckParam) -> &Tensor {
        match p {
            BottleneckParam::DownWeight => &self.down_weight,
            BottleneckParam::DownBias => &self.down_bias,
            BottleneckParam::UpWeight => &self.up_weight,
            BottleneckParam::UpBias => &self.up_bias,
        }
    }

    pub fn bottleneck_dim(&self) -> usize {
        self.down_bias.numel()
    }
}

/// The adapters of one encoder layer (`None` where the config puts none, or the layer is left out).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct LayerAdapters {
    pub attention: Option<BottleneckWeights>,
    pub output: Option<BottleneckWeights>,
}

impl LayerAdapters {
    pub fn site(&self, s: AdapterSite) -> Option<&BottleneckWeights> {
        match s {
            AdapterSite::Attention => self.attention.as_ref(),
            AdapterSite::Output => self.output.as_ref(),
        }
    }
}

/// A bottleneck adapter as `save_adapter` writes it, with its head when one was saved with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    pub saved: SavedConfig,
    pub config: BottleneckConfig,
    /// One entry per encoder layer.
    pub layers: Vec<LayerAdapters>,
    pub head: Option<Head>,
}

/// Looks a tensor up with AdapterHub's `bert.` prefix or without it.
fn lookup(file: &WeightFile, name_with_prefix: &str) -> Option<String> {
    if file.contains(name_with_prefix) {
        return Some(name_with_prefix.to_string());
    }
    let bare = name_with_prefix.strip_prefix(BASE_PREFIX)?;
    file.contains(bare).then(|| bare.to_string())
}

fn unexpected_error(file: &WeightFile, left: &BTreeSet<String>, why: &str) -> Result<()> {
    if left.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = left.iter().take(8).map(String::as_str).collect();
    bail!(
        "{}: {} unexpected tensor(s) ({why}): {}{}",
        file.path().display(),
        left.len(),
        shown.join(", "),
        if left.len() > 8 { ", ..." } else { "" }
    )
}

impl Adapter {
    /// Loads `<dir>/adapter_config.json` + `adapter.safetensors` for `model`, checking every tensor
    /// against the config (presence, shape, nothing unexpected), and the head in `dir` if any.
    /// The tensors' adapter name is the config's `name` (or, if the file uses one other name
    /// throughout, that one).
    pub fn load(dir: impl AsRef<Path>, model: &BertConfig) -> Result<Self> {
        let dir = dir.as_ref();
        let cpath = dir.join(ADAPTER_CONFIG_FILE);
        if !cpath.exists() {
            bail!("{}: no {ADAPTER_CONFIG_FILE}: not an adapter folder", dir.display());
        }
        let saved = SavedConfig::read(&cpath)?;
        let config = BottleneckConfig::from_config(saved.config())
            .with_context(|| format!("{}: unsupported adapter", cpath.display()))?;
        saved.check_model(&format!("adapter {}", cpath.display()), model.hidden_size)?;
        for &l in &config.leave_out {
            if l >= model.num_hidden_layers {
                bail!(
                    "{}: option \"leave_out\" names layer {l}, the model has {} layers",
                    cpath.display(),
                    model.num_hidden_layers
                );
            }
        }
        let file = WeightFile::open(dir.join(ADAPTER_WEIGHTS_FILE))?;
        let name = tensor_adapter_name(&file, saved.name());
        let h = model.hidden_size;
        let mut left: BTreeSet<String> = file.names().into_iter().map(String::from).collect();
        let mut layers = Vec::with_capacity(model.num_hidden_layers);
        for l in 0..model.num_hidden_layers {
            let mut la = LayerAdapters::default();
            if config.has_layer(l) {
                let bn = config.bottleneck_dim(h, l).with_context(|| format!("{}", cpath.display()))?;
                for site in config.sites() {
                    let mut t = Vec::with_capacity(4);
                    for p in BottleneckParam::ALL {
                        let want = adapter_param_name(&name, l, site, p);
                        let found = lookup(&file, &want).with_context(|| {
                            format!(
                                "{}: missing tensor {want:?} (the config has {}: {})",
                                file.path().display(),
                                if site == AdapterSite::Attention { "mh_adapter" } else { "output_adapter" },
                                true
                            )
                        })?;
                        let data = file.get_checked(&found, &p.shape(h, bn))?;
                        left.remove(&found);
                        t.push(Tensor { shape: p.shape(h, bn), data });
                    }
                    let mut it = t.into_iter();
                    let w = BottleneckWeights {
                        down_weight: it.next().expect("4"),
                        down_bias: it.next().expect("4"),
                        up_weight: it.next().expect("4"),
                        up_bias: it.next().expect("4"),
                    };
                    match site {
                        AdapterSite::Attention => la.attention = Some(w),
                        AdapterSite::Output => la.output = Some(w),
                    }
                }
            }
            layers.push(la);
        }
        unexpected_error(
            &file,
            &left,
            &format!(
                "not implied by mh_adapter={}, output_adapter={}, leave_out={:?}, {} layers",
                config.mh_adapter, config.output_adapter, config.leave_out, model.num_hidden_layers
            ),
        )?;
        let head = Head::find(dir, h)?;
        let mut saved = saved;
        if name != saved.name() {
            saved.set_name(&name);
        }
        Ok(Self { saved, config, layers, head })
    }

    pub fn name(&self) -> &str {
        self.saved.name()
    }

    /// Every tensor under AdapterHub's names.
    pub fn tensors(&self) -> TensorMap {
        let mut m = TensorMap::new();
        for (l, la) in self.layers.iter().enumerate() {
            for site in [AdapterSite::Attention, AdapterSite::Output] {
                if let Some(w) = la.site(site) {
                    for p in BottleneckParam::ALL {
                        m.insert(adapter_param_name(self.name(), l, site, p), w.get(p).clone());
                    }
                }
            }
        }
        m
    }

    /// Writes `adapter.safetensors` and `adapter_config.json` (and the head's two files when the
    /// adapter has one) into `dir`, each atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_tensors(&dir.join(ADAPTER_WEIGHTS_FILE), &self.tensors(), None)?;
        self.saved.write(&dir.join(ADAPTER_CONFIG_FILE))?;
        if let Some(h) = &self.head {
            h.save(dir)?;
        }
        Ok(())
    }
}

/// The adapter name used in the file's tensor names: `configured` when any tensor uses it, else
/// the single other name all `.adapters.<name>.` tensors share.
fn tensor_adapter_name(file: &WeightFile, configured: &str) -> String {
    let mut found = BTreeSet::new();
    for n in file.names() {
        if let Some((_, rest)) = n.split_once(".adapters.") {
            if let Some((name, _)) = rest.split_once(".adapter_") {
                found.insert(name.to_string());
            }
        }
    }
    if found.contains(configured) || found.len() != 1 {
        configured.to_string()
    } else {
        found.into_iter().next().expect("one")
    }
}

// ---------------------------------------------------------------------------------------------
// Prediction heads
// ---------------------------------------------------------------------------------------------

/// The typed view of a head's `config`: AdapterHub's classification head (CLS hidden state or
/// pooler output → `layers` Linear layers, `activation_function` between them).
#[derive(Clone, Debug, PartialEq)]
pub struct HeadConfig {
    pub num_labels: usize,
    pub layers: usize,
    /// `None` when the config has `null` / `""` (no activation module, which shifts the indices).
    pub activation_function: Option<Activation>,
    /// Whether the head reads the pooler output instead of the CLS hidden state.
    pub use_pooler: bool,
    /// Whether the last Linear has a bias (the hidden ones always do).
    pub bias: bool,
    pub dropout_prob: Option<f64>,
    /// Label names by id (`label2id` inverted; `LABEL_i` when absent).
    pub id2label: Vec<String>,
}

impl HeadConfig {
    pub fn from_config(m: &Map<String, Value>) -> Result<Self> {
        refuse_unknown(m, HEAD_OPTIONS, "head")?;
        match m.get("head_type") {
            Some(Value::String(t)) if t == "classification" => {}
            Some(other) => bail!("option \"head_type\" is {other}: only \"classification\" heads are supported"),
            None => bail!("missing option \"head_type\""),
        }
        let num_labels = req_usize(m, "num_labels")?;
        if num_labels < 2 {
            bail!("option \"num_labels\" is {num_labels}: classification needs at least 2 labels (regression is not supported)");
        }
        let layers = req_usize(m, "layers")?;
        if layers == 0 {
            bail!("option \"layers\" must be at least 1");
        }
        let activation_function = match m.get("activation_function") {
            None => bail!("missing option \"activation_function\""),
            Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => {
                Some(Activation::parse(s).with_context(|| format!("option \"activation_function\" is {s:?}"))?)
            }
            Some(other) => bail!("option \"activation_function\" must be a string, got {other}"),
        };
        let dropout_prob = match m.get("dropout_prob") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_f64().with_context(|| format!("option \"dropout_prob\" must be a number, got {v}"))?),
        };
        let mut id2label: Vec<Option<String>> = vec![None; num_labels];
        match m.get("label2id") {
            None | Some(Value::Null) => {}
            Some(Value::Object(l2i)) => {
                for (label, id) in l2i {
                    let i = id.as_u64().map(|x| x as usize).with_context(|| {
                        format!("option \"label2id\": id of {label:?} must be an integer, got {id}")
                    })?;
                    if i >= num_labels {
                        bail!("option \"label2id\": {label:?} has id {i}, num_labels is {num_labels}");
                    }
                    if let Some(prev) = &id2label[i] {
                        bail!("option \"label2id\": {prev:?} and {label:?} share id {i}");
                    }
                    id2label[i] = Some(label.clone());
                }
            }
            Some(other) => bail!("option \"label2id\" must be an object, got {other}"),
        }
        let id2label =
            id2label.into_iter().enumerate().map(|(i, l)| l.unwrap_or_else(|| format!("LABEL_{i}"))).collect();
        Ok(Self {
            num_labels,
            layers,
            activation_function,
            use_pooler: opt_bool(m, "use_pooler", false)?,
            bias: opt_bool(m, "bias", true)?,
            dropout_prob,
            id2label,
        })
    }

    /// AdapterHub's default: 2 layers, tanh, CLS token, bias, labels as given.
    pub fn classification(labels: &[String]) -> Self {
        Self {
            num_labels: labels.len(),
            layers: 2,
            activation_function: Some(Activation::Tanh),
            use_pooler: false,
            bias: true,
            dropout_prob: None,
            id2label: labels.to_vec(),
        }
    }

    /// The `config` object `ClassificationHead` writes.
    pub fn to_config(&self) -> Map<String, Value> {
        let label2id: Map<String, Value> =
            self.id2label.iter().enumerate().map(|(i, l)| (l.clone(), json!(i))).collect();
        let v = json!({
            "activation_function": self.activation_function.map(|a| a.adapterhub_name()),
            "bias": self.bias,
            "dropout_prob": self.dropout_prob,
            "head_type": "classification",
            "label2id": label2id,
            "layers": self.layers,
            "num_labels": self.num_labels,
            "use_pooler": self.use_pooler,
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    /// The `nn.Sequential` index of each Linear: per layer a Dropout, the Linear, and (between
    /// layers, when there is an activation) the activation. Two layers with tanh: `[1, 4]`.
    pub fn linear_indices(&self) -> Vec<usize> {
        let mut idx = 0;
        let mut out = Vec::with_capacity(self.layers);
        for l in 0..self.layers {
            idx += 1; // dropout
            out.push(idx);
            idx += 1; // linear
            if l + 1 < self.layers && self.activation_function.is_some() {
                idx += 1;
            }
        }
        out
    }

    /// `(weight shape, has bias)` of each Linear.
    pub fn linear_shapes(&self, hidden: usize) -> Vec<(Vec<usize>, bool)> {
        (0..self.layers)
            .map(|l| {
                if l + 1 < self.layers {
                    (vec![hidden, hidden], true)
                } else {
                    (vec![self.num_labels, hidden], self.bias)
                }
            })
            .collect()
    }
}

/// One Linear of a head.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadLinear {
    /// `[out, in]`
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// A prediction head as `save_head` (or `save_adapter(with_head=True)`) writes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub saved: SavedConfig,
    pub config: HeadConfig,
    /// In order, the last one giving the logits.
    pub linears: Vec<HeadLinear>,
}

/// `heads.<name>.<index>.<weight|bias>`.
pub fn head_param_name(head: &str, index: usize, param: &str) -> String {
    format!("heads.{head}.{index}.{param}")
}

impl Head {
    /// The head in `dir` if it has a `head_config.json`.
    pub fn find(dir: impl AsRef<Path>, hidden: usize) -> Result<Option<Self>> {
        let dir = dir.as_ref();
        if dir.join(HEAD_CONFIG_FILE).exists() {
            Self::load(dir, hidden).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn load(dir: impl AsRef<Path>, hidden: usize) -> Result<Self> {
        let dir = dir.as_ref();
        let cpath = dir.join(HEAD_CONFIG_FILE);
        if !cpath.exists() {
            bail!("{}: no {HEAD_CONFIG_FILE}: not a head folder", dir.display());
        }
        let saved = SavedConfig::read(&cpath)?;
        let config = HeadConfig::from_config(saved.config())
            .with_context(|| format!("{}: unsupported head", cpath.display()))?;
        saved.check_model(&format!("head {}", cpath.display()), hidden)?;
        let wpath = dir.join(HEAD_WEIGHTS_FILE);
        if !wpath.exists() {
            bail!("{}: has {HEAD_CONFIG_FILE} but no {HEAD_WEIGHTS_FILE}", dir.display());
        }
        let file = WeightFile::open(&wpath)?;
        let name = saved.name().to_string();
        let mut left: BTreeSet<String> = file.names().into_iter().map(String::from).collect();
        let mut linears = Vec::new();
        for (idx, (wshape, has_bias)) in config.linear_indices().into_iter().zip(config.linear_shapes(hidden)) {
            let wn = head_param_name(&name, idx, "weight");
            let weight = Tensor { data: file.get_checked(&wn, &wshape)?, shape: wshape.clone() };
            left.remove(&wn);
            let bias = if has_bias {
                let bn = head_param_name(&name, idx, "bias");
                let data = file.get_checked(&bn, &[wshape[0]])?;
                left.remove(&bn);
                Some(Tensor { shape: vec![wshape[0]], data })
            } else {
                None
            };
            linears.push(HeadLinear { weight, bias });
        }
        unexpected_error(
            &file,
            &left,
            &format!(
                "a {}-layer head named {name:?} has only {}",
                config.layers,
                config.linear_indices().iter().map(|i| format!("heads.{name}.{i}.*")).collect::<Vec<_>>().join(", ")
            ),
        )?;
        Ok(Self { saved, config, linears })
    }

    pub fn name(&self) -> &str {
        self.saved.name()
    }

    pub fn tensors(&self) -> TensorMap {
        let mut m = TensorMap::new();
        for (idx, lin) in self.config.linear_indices().into_iter().zip(&self.linears) {
            m.insert(head_param_name(self.name(), idx, "weight"), lin.weight.clone());
            if let Some(b) = &lin.bias {
                m.insert(head_param_name(self.name(), idx, "bias"), b.clone());
            }
        }
        m
    }

    /// Writes `model_head.safetensors` and `head_config.json` into `dir`, atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_tensors(&dir.join(HEAD_WEIGHTS_FILE), &self.tensors(), None)?;
        self.saved.write(&dir.join(HEAD_CONFIG_FILE))
    }
}

// ---------------------------------------------------------------------------------------------
// AdapterFusion
// ---------------------------------------------------------------------------------------------

/// The typed view of a fusion's `config` (AdapterHub's `AdapterFusionConfig`; "dynamic" is
/// key/query/value true, value_before_softmax true, value_initialized true, the rest false). All
/// nine flags are required, as the Python dataclass requires them.
#[derive(Clone, Debug, PartialEq)]
pub struct FusionConfig {
    pub key: bool,
    pub query: bool,
    pub value: bool,
    pub query_before_ln: bool,
    pub regularization: bool,
    pub residual_before: bool,
    pub temperature: bool,
    pub value_before_softmax: bool,
    pub value_initialized: bool,
    pub dropout_prob: Option<f64>,
}

impl FusionConfig {
    pub fn from_config(m: &Map<String, Value>) -> Result<Self> {
        refuse_unknown(m, FUSION_OPTIONS, "fusion")?;
        let dropout_prob = match m.get("dropout_prob") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_f64().with_context(|| format!("option \"dropout_prob\" must be a number, got {v}"))?),
        };
        Ok(Self {
            key: req_bool(m, "key")?,
            query: req_bool(m, "query")?,
            value: req_bool(m, "value")?,
            query_before_ln: req_bool(m, "query_before_ln")?,
            regularization: req_bool(m, "regularization")?,
            residual_before: req_bool(m, "residual_before")?,
            temperature: req_bool(m, "temperature")?,
            value_before_softmax: req_bool(m, "value_before_softmax")?,
            value_initialized: req_bool(m, "value_initialized")?,
            dropout_prob,
        })
    }

    /// AdapterHub's "dynamic" fusion (the default).
    pub fn dynamic() -> Self {
        Self {
            key: true,
            query: true,
            value: true,
            query_before_ln: false,
            regularization: true,
            residual_before: false,
            temperature: false,
            value_before_softmax: true,
            value_initialized: true,
            dropout_prob: None,
        }
    }

    pub fn to_config(&self) -> Map<String, Value> {
        let v = json!({
            "dropout_prob": self.dropout_prob,
            "key": self.key,
            "query": self.query,
            "query_before_ln": self.query_before_ln,
            "regularization": self.regularization,
            "residual_before": self.residual_before,
            "temperature": self.temperature,
            "value": self.value,
            "value_before_softmax": self.value_before_softmax,
            "value_initialized": self.value_initialized,
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }
}

/// The tensors of one fusion projection kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FusionParam {
    QueryWeight,
    QueryBias,
    KeyWeight,
    KeyBias,
    /// The value projection has no bias in AdapterHub (`nn.Linear(h, h, bias=False)`).
    ValueWeight,
}

impl FusionParam {
    pub fn suffix(self) -> &'static str {
        match self {
            FusionParam::QueryWeight => "query.weight",
            FusionParam::QueryBias => "query.bias",
            FusionParam::KeyWeight => "key.weight",
            FusionParam::KeyBias => "key.bias",
            FusionParam::ValueWeight => "value.weight",
        }
    }

    pub fn shape(self, hidden: usize) -> Vec<usize> {
        match self {
            FusionParam::QueryBias | FusionParam::KeyBias => vec![hidden],
            _ => vec![hidden, hidden],
        }
    }

    /// The params a config implies, in a fixed order.
    pub fn for_config(c: &FusionConfig) -> Vec<FusionParam> {
        let mut v = vec![];
        if c.query {
            v.extend([FusionParam::QueryWeight, FusionParam::QueryBias]);
        }
        if c.key {
            v.extend([FusionParam::KeyWeight, FusionParam::KeyBias]);
        }
        if c.value {
            v.push(FusionParam::ValueWeight);
        }
        v
    }
}

/// `bert.encoder.layer.L.output.adapter_fusion_layer.<fusion name>.<param>`; the fusion name is
/// the adapter names joined by commas (`src1,src2,src3`).
pub fn fusion_param_name(fusion: &str, layer: usize, param: FusionParam) -> String {
    format!("{BASE_PREFIX}encoder.layer.{layer}.output.adapter_fusion_layer.{fusion}.{}", param.suffix())
}

/// One layer's fusion weights (`None` for a projection the config switches off).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct FusionLayer {
    pub query_weight: Option<Tensor>,
    pub query_bias: Option<Tensor>,
    pub key_weight: Option<Tensor>,
    pub key_bias: Option<Tensor>,
    pub value_weight: Option<Tensor>,
}

impl FusionLayer {
    pub fn get(&self, p: FusionParam) -> Option<&Tensor> {
        match p {
            FusionParam::QueryWeight => self.query_weight.as_ref(),
            FusionParam::QueryBias => self.query_bias.as_ref(),
            FusionParam::KeyWeight => self.key_weight.as_ref(),
            FusionParam::KeyBias => self.key_bias.as_ref(),
            FusionParam::ValueWeight => self.value_weight.as_ref(),
        }
    }

    fn set(&mut self, p: FusionParam, t: Tensor) {
        let slot = match p {
            FusionParam::QueryWeight => &mut self.query_weight,
            FusionParam::QueryBias => &mut self.query_bias,
            FusionParam::KeyWeight => &mut self.key_weight,
            FusionParam::KeyBias => &mut self.key_bias,
            FusionParam::ValueWeight => &mut self.value_weight,
        };
        *slot = Some(t);
    }
}

/// An AdapterFusion as `save_adapter_fusion` writes it (the fused adapters are loaded separately,
/// from their own folders).
#[derive(Clone, Debug, PartialEq)]
pub struct Fusion {
    pub saved: SavedConfig,
    pub config: FusionConfig,
    /// The fused adapters, in order.
    pub adapter_names: Vec<String>,
    /// One entry per encoder layer; `None` for a layer without a fusion layer (adapters left out).
    pub layers: Vec<Option<FusionLayer>>,
    /// A head saved in the same folder, if any.
    pub head: Option<Head>,
}

impl Fusion {
    pub fn load(dir: impl AsRef<Path>, model: &BertConfig) -> Result<Self> {
        let dir = dir.as_ref();
        let cpath = dir.join(FUSION_CONFIG_FILE);
        if !cpath.exists() {
            bail!("{}: no {FUSION_CONFIG_FILE}: not a fusion folder", dir.display());
        }
        let saved = SavedConfig::read(&cpath)?;
        let config = FusionConfig::from_config(saved.config())
            .with_context(|| format!("{}: unsupported fusion", cpath.display()))?;
        saved.check_model(&format!("fusion {}", cpath.display()), model.hidden_size)?;
        let adapter_names: Vec<String> = match saved.get("adapter_names") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .with_context(|| format!("{}: \"adapter_names\" must list strings, got {x}", cpath.display()))
                })
                .collect::<Result<_>>()?,
            other => bail!(
                "{}: \"adapter_names\" must be a non-empty list of adapter names, got {}",
                cpath.display(),
                other.unwrap_or(&Value::Null)
            ),
        };
        let fname = adapter_names.join(",");
        let file = WeightFile::open(dir.join(FUSION_WEIGHTS_FILE))?;
        let h = model.hidden_size;
        let params = FusionParam::for_config(&config);
        let mut left: BTreeSet<String> = file.names().into_iter().map(String::from).collect();
        let mut layers = Vec::with_capacity(model.num_hidden_layers);
        for l in 0..model.num_hidden_layers {
            let names: Vec<Option<String>> =
                params.iter().map(|&p| lookup(&file, &fusion_param_name(&fname, l, p))).collect();
            if names.iter().all(Option::is_none) {
                layers.push(None);
                continue;
            }
            let mut fl = FusionLayer::default();
            for (&p, found) in params.iter().zip(names) {
                let found = found.with_context(|| {
                    format!(
                        "{}: missing tensor {:?} (layer {l} has other fusion tensors)",
                        file.path().display(),
                        fusion_param_name(&fname, l, p)
                    )
                })?;
                let data = file.get_checked(&found, &p.shape(h))?;
                left.remove(&found);
                fl.set(p, Tensor { shape: p.shape(h), data });
            }
            layers.push(Some(fl));
        }
        if layers.iter().all(Option::is_none) {
            bail!(
                "{}: no fusion tensors named \"{BASE_PREFIX}encoder.layer.<L>.output.adapter_fusion_layer.{fname}.*\"",
                file.path().display()
            );
        }
        unexpected_error(
            &file,
            &left,
            &format!(
                "fusion {fname:?} with query={}, key={}, value={} (value has no bias)",
                config.query, config.key, config.value
            ),
        )?;
        let head = Head::find(dir, h)?;
        Ok(Self { saved, config, adapter_names, layers, head })
    }

    /// The fusion's name in tensor names: the adapter names joined by commas.
    pub fn fusion_name(&self) -> String {
        self.adapter_names.join(",")
    }

    pub fn tensors(&self) -> TensorMap {
        let fname = self.fusion_name();
        let mut m = TensorMap::new();
        for (l, fl) in self.layers.iter().enumerate() {
            let Some(fl) = fl else { continue };
            for p in FusionParam::for_config(&self.config) {
                if let Some(t) = fl.get(p) {
                    m.insert(fusion_param_name(&fname, l, p), t.clone());
                }
            }
        }
        m
    }

    /// Writes `model_adapter_fusion.safetensors` and `adapter_fusion_config.json` (and the head's
    /// files when there is one) into `dir`, each atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_tensors(&dir.join(FUSION_WEIGHTS_FILE), &self.tensors(), None)?;
        self.saved.write(&dir.join(FUSION_CONFIG_FILE))?;
        if let Some(h) = &self.head {
            h.save(dir)?;
        }
        Ok(())
    }

    /// A new envelope for a fusion over `adapter_names` (name = names joined by commas).
    pub fn new_saved_config(
        adapter_names: &[String],
        hidden: usize,
        model_name: &str,
        config: &FusionConfig,
    ) -> SavedConfig {
        let mut s = SavedConfig::new(&adapter_names.join(","), hidden, model_name, config.to_config());
        s.insert("adapter_names", json!(adapter_names));
        s
    }
}
