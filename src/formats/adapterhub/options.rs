//! The option names each `config` may hold, and the typed readers of single options that name
//! the option in their errors.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};

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
pub(super) fn refuse_unknown(m: &Map<String, Value>, known: &[&str], what: &str) -> Result<()> {
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

pub(super) fn opt_bool(m: &Map<String, Value>, k: &str, default: bool) -> Result<bool> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => bail!("option {k:?} must be true or false, got {other}"),
    }
}

pub(super) fn req_bool(m: &Map<String, Value>, k: &str) -> Result<bool> {
    match m.get(k) {
        None => bail!("missing option {k:?}"),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => bail!("option {k:?} must be true or false, got {other}"),
    }
}

pub(super) fn opt_f64(m: &Map<String, Value>, k: &str, default: f64) -> Result<f64> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(f64::NAN)),
        Some(other) => bail!("option {k:?} must be a number, got {other}"),
    }
}

pub(super) fn req_usize(m: &Map<String, Value>, k: &str) -> Result<usize> {
    match m.get(k) {
        None => bail!("missing option {k:?}"),
        Some(v) => v
            .as_u64()
            .map(|x| x as usize)
            .with_context(|| format!("option {k:?} must be a non-negative integer, got {v}")),
    }
}

pub(super) fn positive_rf(v: &Value, what: &str) -> Result<f64> {
    match v.as_f64() {
        Some(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => bail!("{what} must be a positive number, got {v}"),
    }
}

/// A number read from an optional option: `None` when absent or `null`.
pub(super) fn opt_number(m: &Map<String, Value>, k: &str) -> Result<Option<f64>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).with_context(|| format!("option {k:?} must be a number, got {v}")),
    }
}

/// A JSON number as Python keeps it: an integer when the value is integral (`16`, not `16.0`),
/// else a float.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub(super) enum PyNumber {
    Int(i64),
    Float(f64),
}

impl From<f64> for PyNumber {
    fn from(x: f64) -> Self {
        if x.fract() == 0.0 && x.abs() < 9.0e15 {
            Self::Int(x as i64)
        } else {
            Self::Float(x)
        }
    }
}

/// The JSON object a config struct serializes to. Every struct passed here has named fields of
/// plain types (bools, numbers, strings, lists, maps with string keys), which serde_json always
/// turns into an object; anything else is a bug in this module.
pub(super) fn to_object<T: Serialize>(value: &T) -> Map<String, Value> {
    match serde_json::to_value(value) {
        Ok(Value::Object(m)) => m,
        other => panic!("a config struct serialized to {other:?}, not a JSON object"),
    }
}
