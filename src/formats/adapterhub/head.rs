//! A prediction head (`head_config.json` + `model_head.safetensors`): AdapterHub's
//! classification, regression (a classification head with one label), multi-label classification
//! and tagging heads, their typed config and weights. The other head types the `adapters` library
//! writes (multiple choice, question answering, language modelling, ...) are refused by name.

use super::names::head_param_name;
use super::options::{opt_bool, opt_number, refuse_unknown, req_usize, to_object, HEAD_OPTIONS};
use super::{unexpected_error, SavedConfig, WeightsFormat, HEAD_CONFIG_FILE, HEAD_WEIGHTS, HEAD_WEIGHTS_FILE};
use crate::formats::weights::{Tensor, TensorMap};
use crate::types::Activation;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A head's `config` as the library's head classes write it (`TaggingHead` has no `bias` and no
/// `use_pooler`).
#[derive(Serialize)]
struct HeadConfigJson<'a> {
    activation_function: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bias: Option<bool>,
    dropout_prob: Option<f64>,
    head_type: &'a str,
    label2id: BTreeMap<&'a str, usize>,
    layers: usize,
    num_labels: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    use_pooler: Option<bool>,
}

/// What a head predicts and how it is trained (the `adapters` library's head classes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum HeadKind {
    /// `ClassificationHead`, one label per sequence, softmax cross-entropy.
    #[default]
    Classification,
    /// `ClassificationHead` with `num_labels` 1: one value per sequence, mean squared error.
    Regression,
    /// `MultiLabelClassificationHead`: any set of labels per sequence, BCE with logits.
    MultilabelClassification,
    /// `TaggingHead`: one label per token, cross-entropy over the labelled tokens.
    Tagging,
}

/// Head types the `adapters` library has that are read by name and refused here.
const UNSUPPORTED_HEAD_TYPES: &[&str] = &[
    "multiple_choice",
    "question_answering",
    "image_classification",
    "dependency_parsing",
    "causal_lm",
    "masked_lm",
    "seq2seq_lm",
];

impl HeadKind {
    /// The `head_type` the library writes for this kind (regression is a classification head).
    pub fn head_type(self) -> &'static str {
        match self {
            HeadKind::Classification | HeadKind::Regression => "classification",
            HeadKind::MultilabelClassification => "multilabel_classification",
            HeadKind::Tagging => "tagging",
        }
    }

    /// The name `peft train --head-type` takes.
    pub fn name(self) -> &'static str {
        match self {
            HeadKind::Regression => "regression",
            other => other.head_type(),
        }
    }

    /// The kind of a `head_type` with `num_labels` (a classification head with one label is a
    /// regression head, as in the library).
    pub fn from_head_type(head_type: &str, num_labels: usize) -> Result<Self> {
        Ok(match head_type {
            "classification" if num_labels == 1 => HeadKind::Regression,
            "classification" => HeadKind::Classification,
            "multilabel_classification" => HeadKind::MultilabelClassification,
            "tagging" => HeadKind::Tagging,
            t if UNSUPPORTED_HEAD_TYPES.contains(&t) => bail!(
                "option \"head_type\" is {t:?}: the adapters library's {t} heads are not supported here yet \
                 (supported: classification, regression = classification with num_labels 1, \
                 multilabel_classification, tagging)"
            ),
            t => bail!(
                "option \"head_type\" is {t:?}, which no adapters head has (supported: classification, \
                 multilabel_classification, tagging)"
            ),
        })
    }

    /// The default kind, classification (what serde skips writing).
    pub fn is_classification(&self) -> bool {
        *self == HeadKind::Classification
    }

    /// Whether the head reads every token (tagging) rather than one row per sequence.
    pub fn per_token(self) -> bool {
        self == HeadKind::Tagging
    }

    /// The library's default number of layers (`TaggingHead`: 1, the others 2).
    pub fn default_layers(self) -> usize {
        if self == HeadKind::Tagging {
            1
        } else {
            2
        }
    }
}

impl std::fmt::Display for HeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The typed view of a head's `config`: AdapterHub's classification head (CLS hidden state or
/// pooler output → `layers` Linear layers, `activation_function` between them).
#[derive(Clone, Debug, PartialEq)]
pub struct HeadConfig {
    pub kind: HeadKind,
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
        let head_type = match m.get("head_type") {
            Some(Value::String(t)) => t.clone(),
            Some(other) => bail!("option \"head_type\" must be a string, got {other}"),
            None => bail!("missing option \"head_type\""),
        };
        // The head type first: a multiple-choice head's `num_choices` is refused by its type.
        let kind =
            HeadKind::from_head_type(&head_type, m.get("num_labels").and_then(Value::as_u64).unwrap_or(0) as usize)?;
        refuse_unknown(m, HEAD_OPTIONS, "head")?;
        let num_labels = req_usize(m, "num_labels")?;
        if num_labels == 0 || (num_labels < 2 && kind == HeadKind::Tagging) {
            bail!(
                "option \"num_labels\" is {num_labels}: a {head_type} head needs at least {} labels",
                if kind == HeadKind::Tagging { 2 } else { 1 }
            );
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
        let dropout_prob = opt_number(m, "dropout_prob")?;
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
            kind,
            num_labels,
            layers,
            activation_function,
            use_pooler: opt_bool(m, "use_pooler", false)?,
            bias: opt_bool(m, "bias", true)?,
            dropout_prob,
            id2label,
        })
    }

    /// AdapterHub's default classification head: 2 layers, tanh, CLS token, bias, labels as given.
    pub fn classification(labels: &[String]) -> Self {
        Self::new(HeadKind::Classification, labels)
    }

    /// The library's default head of `kind` (`add_classification_head` / `add_tagging_head` /
    /// `add_multiple_label...`): tanh, the `[CLS]` token, bias, dropout from the model, the
    /// kind's default layers (tagging 1, else 2). Regression has one label (`labels` names it).
    pub fn new(kind: HeadKind, labels: &[String]) -> Self {
        Self {
            kind,
            num_labels: labels.len(),
            layers: kind.default_layers(),
            activation_function: Some(Activation::Tanh),
            use_pooler: false,
            bias: true,
            dropout_prob: None,
            id2label: labels.to_vec(),
        }
    }

    /// The `config` object the library's head class of this kind writes.
    pub fn to_config(&self) -> Map<String, Value> {
        let sequence_head = !self.kind.per_token();
        to_object(&HeadConfigJson {
            activation_function: self.activation_function.map(Activation::adapterhub_name),
            bias: sequence_head.then_some(self.bias),
            dropout_prob: self.dropout_prob,
            head_type: self.kind.head_type(),
            label2id: self.id2label.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect(),
            layers: self.layers,
            num_labels: self.num_labels,
            use_pooler: sequence_head.then_some(self.use_pooler),
        })
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
        saved.check_model(&format!("head {}", cpath.display()), hidden, None)?;
        if !HEAD_WEIGHTS.present(dir) {
            bail!("{}: has {HEAD_CONFIG_FILE} but no {HEAD_WEIGHTS_FILE} (or {})", dir.display(), HEAD_WEIGHTS.bin);
        }
        let file = HEAD_WEIGHTS.open(dir)?;
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

    /// Writes `head_config.json` and the weights in both formats (`model_head.safetensors`,
    /// `pytorch_model_head.bin`) into `dir`, atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        self.save_as(dir, WeightsFormat::default())
    }

    /// As [`save`](Self::save), the weights in `format`.
    pub fn save_as(&self, dir: impl AsRef<Path>, format: WeightsFormat) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        HEAD_WEIGHTS.write(dir, &self.tensors(), format)?;
        self.saved.write(&dir.join(HEAD_CONFIG_FILE))
    }
}
