//! BERT tensor names and their validation against the config, for every [`Family`] (whose files
//! name the same tensors their own way: [`Family::file_name`]).
//!
//! Checkpoints name the same tensors in a few ways: `BertModel.save_pretrained` writes
//! `embeddings.word_embeddings.weight` (tiny-bert, all-MiniLM-L6-v2), task models such as
//! `BertForSequenceClassification` / `BertForPreTraining` write `bert.embeddings...` (plus
//! `cls.*` / `classifier.*`, ignored here), and old TensorFlow conversions call the LayerNorm
//! parameters `gamma` / `beta`. [`BertWeightNames::resolve`] maps each canonical name to the
//! name the file uses, and checks every required tensor's presence and shape up front.

use crate::formats::WeightFile;
use crate::model::config::{BertConfig, Family};
use anyhow::{bail, Result};

/// Prefixes tried, in order, in front of every canonical name of a BERT checkpoint (other
/// families: "" and their own prefix, [`Family::prefix`]).
pub const PREFIXES: &[&str] = &["", "bert."];

/// A tensor as the file names it, with the shape the config implies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    /// The name in the safetensors file (prefix and aliases resolved).
    pub name: String,
    pub shape: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddingNames {
    /// `[vocab_size, hidden]`
    pub word: Param,
    /// `[max_position_embeddings, hidden]`
    pub position: Param,
    /// `[type_vocab_size, hidden]`; DistilBERT has none.
    pub token_type: Option<Param>,
    pub ln_weight: Param,
    pub ln_bias: Param,
    /// ELECTRA's `embeddings_project` (`[hidden, embedding_size]` and `[hidden]`) when its tables
    /// are narrower than the layers (the tables above are then `embedding_size` wide).
    pub project: Option<(Param, Param)>,
}

impl EmbeddingNames {
    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = vec![&mut self.word, &mut self.position];
        v.extend(self.token_type.as_mut());
        v.extend([&mut self.ln_weight, &mut self.ln_bias]);
        if let Some((w, b)) = &mut self.project {
            v.extend([w, b]);
        }
        v
    }
}

/// One encoder layer. Linear weights are `[out, in]` (nn.Linear).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerNames {
    pub query_weight: Param,
    pub query_bias: Param,
    pub key_weight: Param,
    pub key_bias: Param,
    pub value_weight: Param,
    pub value_bias: Param,
    /// `attention.output.dense`: `[hidden, hidden]`
    pub attn_out_weight: Param,
    pub attn_out_bias: Param,
    /// `attention.output.LayerNorm`
    pub attn_ln_weight: Param,
    pub attn_ln_bias: Param,
    /// `intermediate.dense`: `[intermediate, hidden]`
    pub inter_weight: Param,
    pub inter_bias: Param,
    /// `output.dense`: `[hidden, intermediate]`
    pub out_weight: Param,
    pub out_bias: Param,
    /// `output.LayerNorm`
    pub out_ln_weight: Param,
    pub out_ln_bias: Param,
}

impl LayerNames {
    /// In the order above.
    pub fn params(&self) -> [&Param; 16] {
        [
            &self.query_weight,
            &self.query_bias,
            &self.key_weight,
            &self.key_bias,
            &self.value_weight,
            &self.value_bias,
            &self.attn_out_weight,
            &self.attn_out_bias,
            &self.attn_ln_weight,
            &self.attn_ln_bias,
            &self.inter_weight,
            &self.inter_bias,
            &self.out_weight,
            &self.out_bias,
            &self.out_ln_weight,
            &self.out_ln_bias,
        ]
    }
}

impl LayerNames {
    fn params_mut(&mut self) -> [&mut Param; 16] {
        [
            &mut self.query_weight,
            &mut self.query_bias,
            &mut self.key_weight,
            &mut self.key_bias,
            &mut self.value_weight,
            &mut self.value_bias,
            &mut self.attn_out_weight,
            &mut self.attn_out_bias,
            &mut self.attn_ln_weight,
            &mut self.attn_ln_bias,
            &mut self.inter_weight,
            &mut self.inter_bias,
            &mut self.out_weight,
            &mut self.out_bias,
            &mut self.out_ln_weight,
            &mut self.out_ln_bias,
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolerNames {
    /// `pooler.dense`: `[hidden, hidden]`
    pub weight: Param,
    pub bias: Param,
}

/// Every tensor of a BERT encoder, named as one file names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BertWeightNames {
    pub embeddings: EmbeddingNames,
    pub layers: Vec<LayerNames>,
    /// Present only when the file has a pooler (optional: AdapterHub's default head reads the
    /// CLS hidden state, not the pooler).
    pub pooler: Option<PoolerNames>,
}

fn p(name: String, shape: Vec<usize>) -> Param {
    Param { name, shape }
}

impl BertWeightNames {
    /// The canonical names (no prefix, `LayerNorm.weight`/`bias`) with the shapes `cfg` implies;
    /// the pooler is included.
    pub fn canonical(cfg: &BertConfig) -> Self {
        let h = cfg.hidden_size;
        let i = cfg.intermediate_size;
        let w = cfg.embedding_width();
        let e = |s: &str| format!("embeddings.{s}");
        let embeddings = EmbeddingNames {
            word: p(e("word_embeddings.weight"), vec![cfg.vocab_size, w]),
            position: p(e("position_embeddings.weight"), vec![cfg.max_position_embeddings, w]),
            token_type: cfg
                .layout
                .token_types
                .then(|| p(e("token_type_embeddings.weight"), vec![cfg.type_vocab_size, w])),
            ln_weight: p(e("LayerNorm.weight"), vec![w]),
            ln_bias: p(e("LayerNorm.bias"), vec![w]),
            project: cfg.layout.embedding_size.map(|_| {
                (p("embeddings_project.weight".into(), vec![h, w]), p("embeddings_project.bias".into(), vec![h]))
            }),
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                let n = |s: &str| format!("encoder.layer.{l}.{s}");
                LayerNames {
                    query_weight: p(n("attention.self.query.weight"), vec![h, h]),
                    query_bias: p(n("attention.self.query.bias"), vec![h]),
                    key_weight: p(n("attention.self.key.weight"), vec![h, h]),
                    key_bias: p(n("attention.self.key.bias"), vec![h]),
                    value_weight: p(n("attention.self.value.weight"), vec![h, h]),
                    value_bias: p(n("attention.self.value.bias"), vec![h]),
                    attn_out_weight: p(n("attention.output.dense.weight"), vec![h, h]),
                    attn_out_bias: p(n("attention.output.dense.bias"), vec![h]),
                    attn_ln_weight: p(n("attention.output.LayerNorm.weight"), vec![h]),
                    attn_ln_bias: p(n("attention.output.LayerNorm.bias"), vec![h]),
                    inter_weight: p(n("intermediate.dense.weight"), vec![i, h]),
                    inter_bias: p(n("intermediate.dense.bias"), vec![i]),
                    out_weight: p(n("output.dense.weight"), vec![h, i]),
                    out_bias: p(n("output.dense.bias"), vec![h]),
                    out_ln_weight: p(n("output.LayerNorm.weight"), vec![h]),
                    out_ln_bias: p(n("output.LayerNorm.bias"), vec![h]),
                }
            })
            .collect();
        let pooler = Some(PoolerNames {
            weight: p("pooler.dense.weight".into(), vec![h, h]),
            bias: p("pooler.dense.bias".into(), vec![h]),
        });
        Self { embeddings, layers, pooler }
    }

    /// Every required param (embeddings, then layer by layer), pooler excluded.
    pub fn required(&self) -> Vec<&Param> {
        let e = &self.embeddings;
        let mut v = vec![&e.word, &e.position];
        v.extend(e.token_type.as_ref());
        v.extend([&e.ln_weight, &e.ln_bias]);
        if let Some((w, b)) = &e.project {
            v.extend([w, b]);
        }
        for l in &self.layers {
            v.extend(l.params());
        }
        v
    }

    /// Resolves every canonical name against `file` (both prefixes, and `gamma`/`beta` for
    /// LayerNorm) and checks every required tensor's presence, shape and float dtype. All problems
    /// are reported in one error naming the file and each tensor. The pooler is kept when present
    /// (and then checked too).
    pub fn resolve(file: &WeightFile, cfg: &BertConfig) -> Result<Self> {
        let mut names = Self::canonical(cfg);
        let mut problems: Vec<String> = Vec::new();
        let family = cfg.family();
        {
            let mut req = names.embeddings.params_mut();
            for l in &mut names.layers {
                req.extend(l.params_mut());
            }
            for param in req {
                match find(file, &param.name, family) {
                    Some(found) => {
                        check(file, &found, &param.shape, &mut problems);
                        param.name = found;
                    }
                    None => {
                        let c = candidates(&param.name, family);
                        problems.push(format!("missing tensor {:?} (also looked for {})", c[0], c[1..].join(", ")))
                    }
                }
            }
        }
        let pooler = names.pooler.take().and_then(|mut pl| {
            let w = find(file, &pl.weight.name, family)?;
            let b = find(file, &pl.bias.name, family)?;
            check(file, &w, &pl.weight.shape, &mut problems);
            check(file, &b, &pl.bias.shape, &mut problems);
            pl.weight.name = w;
            pl.bias.name = b;
            Some(pl)
        });
        names.pooler = pooler;
        if !problems.is_empty() {
            let n = problems.len();
            let shown: Vec<String> = problems.into_iter().take(12).collect();
            bail!(
                "{}: not a {} checkpoint matching its config ({} layers, hidden {}, intermediate {}, vocab {}): {n} problem(s):\n  {}{}",
                file.path().display(),
                cfg.model_type,
                cfg.num_hidden_layers,
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.vocab_size,
                shown.join("\n  "),
                if n > 12 { format!("\n  ... and {} more", n - 12) } else { String::new() }
            );
        }
        Ok(names)
    }
}

/// Checks presence and shapes of every tensor the encoder needs, up front; returns the names.
pub fn validate_bert_weights(file: &WeightFile, cfg: &BertConfig) -> Result<BertWeightNames> {
    BertWeightNames::resolve(file, cfg)
}

/// The names a canonical (BERT, unprefixed) name may appear under in a `family` checkpoint, in the
/// order tried: bare and prefixed, then (LayerNorms of old TensorFlow conversions) `gamma`/`beta`.
pub fn candidates(canonical: &str, family: Family) -> Vec<String> {
    let mut v = Vec::new();
    let alias = canonical
        .strip_suffix("LayerNorm.weight")
        .map(|s| format!("{s}LayerNorm.gamma"))
        .or_else(|| canonical.strip_suffix("LayerNorm.bias").map(|s| format!("{s}LayerNorm.beta")));
    let bare = family.file_name(canonical);
    for name in std::iter::once(bare).chain(alias.map(|a| family.file_name(&a))) {
        let prefixed = format!("{}{name}", family.prefix());
        v.extend([name, prefixed]);
    }
    v
}

/// The name under which `file` holds the canonical tensor, if any.
pub fn find(file: &WeightFile, canonical: &str, family: Family) -> Option<String> {
    candidates(canonical, family).into_iter().find(|c| file.contains(c))
}

fn check(file: &WeightFile, name: &str, want: &[usize], problems: &mut Vec<String>) {
    let Ok((dtype, shape, _)) = file.raw(name) else {
        problems.push(format!("missing tensor {name:?}"));
        return;
    };
    use safetensors::Dtype;
    if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) {
        problems.push(format!("tensor {name:?} has dtype {dtype:?}, expected a float type"));
    }
    if shape != want {
        problems.push(format!("tensor {name:?} has shape {shape:?}, expected {want:?}"));
    }
}
