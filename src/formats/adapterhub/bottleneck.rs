//! A bottleneck adapter's `config` (AdapterHub's `BnConfig`): the typed view and what we write.

use super::names::AdapterSite;
use super::options::{
    opt_bool, opt_f64, positive_rf, refuse_unknown, req_bool, to_object, PyNumber, BOTTLENECK_OPTIONS,
};
use crate::types::Activation;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

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

/// AdapterHub's trained `scaling` (He et al. 2022): `"learned"` is one trainable value per adapter
/// module (`...adapters.<name>.scaling`, shape `[1]`), `"channel"` one per hidden unit (`[d]`); both
/// start at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainedScaling {
    Learned,
    Channel,
}

impl TrainedScaling {
    pub fn name(self) -> &'static str {
        match self {
            Self::Learned => "learned",
            Self::Channel => "channel",
        }
    }
}

/// How `adapters` initialises a new adapter's weights (`init_weights`).
pub const INIT_WEIGHTS: &[&str] = &["bert", "mam_adapter", "houlsby"];

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
    /// The fixed scaling (1 when [`Self::trained_scaling`] is set: the trained value replaces it).
    pub scaling: f64,
    /// `scaling: "learned"` or `"channel"`.
    pub trained_scaling: Option<TrainedScaling>,
    /// `is_parallel` (`par_bn`): the adapter reads the sub-layer's input and its output is added
    /// beside the sub-layer's dense output.
    pub is_parallel: bool,
    /// A trainable LayerNorm on the adapter's input (`adapter_norm_before`).
    pub ln_before: bool,
    /// A trainable LayerNorm on the adapter's output (`adapter_norm_after`).
    pub ln_after: bool,
    pub original_ln_before: bool,
    pub original_ln_after: bool,
    pub residual_before_ln: ResidualBeforeLn,
    /// With `ln_after`: the adapter's residual is added before its LayerNorm, not after.
    pub adapter_residual_before_ln: bool,
    /// Layers without adapters.
    pub leave_out: Vec<usize>,
    /// How `adapters` initialises new weights (one of [`INIT_WEIGHTS`]).
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
        refuse_true("use_gating", "gated adapters")?;
        refuse_true("cross_adapter", "cross-attention adapters")?;
        match m.get("inv_adapter") {
            None | Some(Value::Null) => {}
            Some(v) => bail!("option \"inv_adapter\" is {v}: invertible adapters are not supported"),
        }
        let (scaling, trained_scaling) = match m.get("scaling") {
            None | Some(Value::Null) => (1.0, None),
            Some(Value::Number(n)) => (n.as_f64().unwrap_or(f64::NAN), None),
            Some(Value::String(s)) if s == "learned" => (1.0, Some(TrainedScaling::Learned)),
            Some(Value::String(s)) if s == "channel" => (1.0, Some(TrainedScaling::Channel)),
            Some(other) => bail!("option \"scaling\" must be a number, \"learned\" or \"channel\", got {other}"),
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
            Some(Value::String(s)) if INIT_WEIGHTS.contains(&s.as_str()) => s.clone(),
            Some(other) => bail!("option \"init_weights\" must be one of {INIT_WEIGHTS:?} (adapters 1.x), got {other}"),
        };
        Ok(Self {
            mh_adapter,
            output_adapter,
            reduction_factor,
            non_linearity,
            scaling,
            trained_scaling,
            is_parallel: opt_bool(m, "is_parallel", false)?,
            ln_before: opt_bool(m, "ln_before", false)?,
            ln_after: opt_bool(m, "ln_after", false)?,
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
            trained_scaling: None,
            is_parallel: false,
            ln_before: false,
            ln_after: false,
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

    /// He et al. (2022)'s parallel adapter, AdapterHub's `par_bn` (`ParBnConfig`): on the FFN
    /// only, scaling 4, "mam_adapter" initialisation (the library's defaults: reduction factor 2,
    /// ReLU).
    pub fn parallel(reduction_factor: f64, non_linearity: Activation) -> Self {
        Self {
            mh_adapter: false,
            is_parallel: true,
            scaling: 4.0,
            init_weights: "mam_adapter".into(),
            ..Self::houlsby(reduction_factor, non_linearity)
        }
    }

    /// The full `config` object `adapters` 1.3.0 writes for this adapter (every field, PHM and
    /// other unused options at their defaults).
    pub fn to_config(&self) -> Map<String, Value> {
        to_object(&BnConfigJson::from(self))
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

/// A bottleneck adapter's `config` as `adapters` 1.3.0 writes it: every key of `BnConfig`, the
/// ones the engine does not implement at their defaults.
#[derive(Serialize)]
struct BnConfigJson<'a> {
    adapter_residual_before_ln: bool,
    cross_adapter: bool,
    dropout: f64,
    #[serde(rename = "factorized_phm_W")]
    factorized_phm_w: bool,
    factorized_phm_rule: bool,
    hypercomplex_nonlinearity: &'a str,
    init_weights: &'a str,
    init_weights_seed: Option<u64>,
    inv_adapter: Option<&'a str>,
    inv_adapter_reduction_factor: Option<f64>,
    is_parallel: bool,
    learn_phm: bool,
    leave_out: &'a [usize],
    ln_after: bool,
    ln_before: bool,
    mh_adapter: bool,
    non_linearity: &'a str,
    original_ln_after: bool,
    original_ln_before: bool,
    output_adapter: bool,
    phm_bias: bool,
    phm_c_init: &'a str,
    phm_dim: u32,
    phm_init_range: f64,
    phm_layer: bool,
    phm_rank: u32,
    reduction_factor: ReductionFactorJson,
    residual_before_ln: ResidualBeforeLnJson,
    scaling: ScalingJson,
    #[serde(rename = "shared_W_phm")]
    shared_w_phm: bool,
    shared_phm_rule: bool,
    stochastic_depth: f64,
    use_gating: bool,
}

impl<'a> From<&'a BottleneckConfig> for BnConfigJson<'a> {
    fn from(c: &'a BottleneckConfig) -> Self {
        Self {
            adapter_residual_before_ln: c.adapter_residual_before_ln,
            cross_adapter: false,
            dropout: c.dropout,
            factorized_phm_w: true,
            factorized_phm_rule: false,
            hypercomplex_nonlinearity: "glorot-uniform",
            init_weights: &c.init_weights,
            init_weights_seed: None,
            inv_adapter: None,
            inv_adapter_reduction_factor: None,
            is_parallel: c.is_parallel,
            learn_phm: true,
            leave_out: &c.leave_out,
            ln_after: c.ln_after,
            ln_before: c.ln_before,
            mh_adapter: c.mh_adapter,
            non_linearity: c.non_linearity.adapterhub_name(),
            original_ln_after: c.original_ln_after,
            original_ln_before: c.original_ln_before,
            output_adapter: c.output_adapter,
            phm_bias: true,
            phm_c_init: "normal",
            phm_dim: 4,
            phm_init_range: 0.0001,
            phm_layer: false,
            phm_rank: 1,
            reduction_factor: ReductionFactorJson::from(&c.reduction_factor),
            residual_before_ln: ResidualBeforeLnJson::from(c.residual_before_ln),
            scaling: match c.trained_scaling {
                Some(t) => ScalingJson::Trained(t.name()),
                // Always a float, as `adapters` requires (`isinstance(scaling, float)`).
                None => ScalingJson::Fixed(c.scaling),
            },
            shared_w_phm: false,
            shared_phm_rule: true,
            stochastic_depth: c.stochastic_depth,
            use_gating: false,
        }
    }
}

/// `reduction_factor` as written: one number, or a dict keyed by layer index and `"default"`.
#[derive(Serialize)]
#[serde(untagged)]
enum ReductionFactorJson {
    Uniform(PyNumber),
    PerLayer(BTreeMap<String, PyNumber>),
}

impl From<&ReductionFactor> for ReductionFactorJson {
    fn from(rf: &ReductionFactor) -> Self {
        match rf {
            ReductionFactor::Uniform(x) => Self::Uniform(PyNumber::from(*x)),
            ReductionFactor::PerLayer { default, layers } => {
                let default = default.map(|d| ("default".to_string(), PyNumber::from(d)));
                let layers = layers.iter().map(|(l, x)| (l.to_string(), PyNumber::from(*x)));
                Self::PerLayer(default.into_iter().chain(layers).collect())
            }
        }
    }
}

/// `residual_before_ln` as written: `true`, `false` or `"post_add"`.
#[derive(Serialize)]
#[serde(untagged)]
enum ResidualBeforeLnJson {
    Flag(bool),
    Named(&'static str),
}

impl From<ResidualBeforeLn> for ResidualBeforeLnJson {
    fn from(r: ResidualBeforeLn) -> Self {
        match r {
            ResidualBeforeLn::True => Self::Flag(true),
            ResidualBeforeLn::False => Self::Flag(false),
            ResidualBeforeLn::PostAdd => Self::Named("post_add"),
        }
    }
}

/// `scaling` as written: a float, or `"learned"` / `"channel"`.
#[derive(Serialize)]
#[serde(untagged)]
enum ScalingJson {
    Fixed(f64),
    Trained(&'static str),
}
