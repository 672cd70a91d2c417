//! Evaluation and prediction with a trained adapter (`peft eval / predict`), and the batched
//! inference both share with `peft fuse`'s dev evaluation.

use crate::formats::adapterhub::HeadKind;
use crate::gpu::{Gpu, GpuTensor};
use crate::model::adapters::{AdapterSet, ClassificationHead};
use crate::model::config::BertConfig;
use crate::model::encoder::{Encoder, Setup};
use crate::model::load;
use crate::train::data::{self, DataOptions, Example, LabelMap, Tokenized};
use crate::train::guard;
use crate::train::metrics::{self, heads, HeadScores, Scores};
use crate::train::report::{PlainReporter, Reporter};
use crate::train::task::{prepare_kind, prepare_tagged, Prepared};
use crate::train::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Result};
use std::path::Path;
use std::sync::Arc;

/// The head's logits rows of every example (batched by length, in the examples' order): one row
/// of `labels` per example for sequence heads, one per token (`len · labels`) for tagging.
pub(crate) fn predict_rows(
    enc: &mut Encoder,
    setup: &Setup,
    head: &ClassificationHead,
    tokens: &[Tokenized],
    pad: u32,
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    let c = head.labels;
    let longest = tokens.iter().map(|t| t.len()).max().unwrap_or(1);
    guard::check_batch_fits(&enc.gpu, &enc.dims, batch_size.max(1).min(tokens.len().max(1)), longest)?;
    let mut out = vec![vec![]; tokens.len()];
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by_key(|&i| tokens[i].len());
    for chunk in order.chunks(batch_size.max(1)) {
        let b = data::Batch::new(tokens, None, chunk, data::Padding::to_longest(pad));
        let r = enc.pass(setup, head, &b.inputs(), None, false, false)?;
        for (k, &i) in chunk.iter().enumerate() {
            out[i] = if head.kind().per_token() {
                r.logits[k * b.seq * c..(k * b.seq + tokens[i].len()) * c].to_vec()
            } else {
                r.logits[k * c..(k + 1) * c].to_vec()
            };
        }
    }
    Ok(out)
}

/// Logits `[examples, labels]` of a sequence head, in the examples' order.
pub(crate) fn predict_logits(
    enc: &mut Encoder,
    setup: &Setup,
    head: &ClassificationHead,
    tokens: &[Tokenized],
    pad: u32,
    batch_size: usize,
) -> Result<Vec<f32>> {
    if head.kind().per_token() {
        bail!("internal: a tagging head's logits are per token (predict_rows)");
    }
    Ok(predict_rows(enc, setup, head, tokens, pad, batch_size)?.concat())
}

/// Each sentence's predicted tag id per word (at the word's first sub-token; words truncated
/// away are left out) and the gold ones from the prepared targets.
fn word_tags(rows: &[Vec<f32>], p: &Prepared, c: usize) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
    let data::TaskTargets::Tokens(gold) = &p.targets else {
        bail!("internal: tagging data without token targets");
    };
    Ok(rows
        .iter()
        .zip(&p.word_starts)
        .zip(gold)
        .map(|((r, starts), g)| {
            let starts: Vec<usize> = starts.iter().flatten().copied().collect();
            let preds = metrics::argmax_rows(r, c);
            (starts.iter().map(|&t| g[t]).collect(), starts.iter().map(|&t| preds[t]).collect())
        })
        .collect())
}

/// The dev / eval metrics of `head` on prepared data: accuracy and macro-F1 (classification),
/// Pearson / Spearman / MSE (regression), micro / macro F1 (multi-label), entity F1 (tagging).
pub(crate) fn evaluate_prepared(
    enc: &mut Encoder,
    setup: &Setup,
    head: &ClassificationHead,
    p: &Prepared,
    pad: u32,
    batch_size: usize,
) -> Result<Scores> {
    let rows = predict_rows(enc, setup, head, &p.tokens, pad, batch_size)?;
    let c = head.labels;
    let n = p.tokens.len();
    let detail = match (head.kind(), &p.targets) {
        (HeadKind::Classification, _) => {
            let preds = metrics::argmax_rows(&rows.concat(), c);
            return Ok(Scores::new(&p.labels, &preds));
        }
        (HeadKind::Regression, data::TaskTargets::Values { values, .. }) => {
            let pred: Vec<f64> = rows.iter().map(|r| r[0] as f64).collect();
            let gold: Vec<f64> = values.iter().map(|&v| v as f64).collect();
            HeadScores::Regression {
                pearson: heads::pearson(&pred, &gold),
                spearman: heads::spearman(&pred, &gold),
                mse: heads::mse(&pred, &gold),
            }
        }
        (HeadKind::MultilabelClassification, data::TaskTargets::Values { values, .. }) => {
            let (micro_f1, macro_f1) = heads::multilabel_f1(&rows.concat(), values, c);
            HeadScores::Multilabel { micro_f1, macro_f1 }
        }
        (HeadKind::Tagging, _) => {
            let names = &head.config.id2label;
            let name = |i: &u32| names.get(*i as usize).map_or("O", String::as_str);
            let tags = word_tags(&rows, p, c)?;
            let sentences: Vec<(Vec<&str>, Vec<&str>)> =
                tags.iter().map(|(g, q)| (g.iter().map(name).collect(), q.iter().map(name).collect())).collect();
            let (precision, recall, f1) = heads::entity_scores(&sentences);
            HeadScores::Tagging { precision, recall, f1 }
        }
        (kind, _) => bail!("internal: {kind} head with targets of another kind"),
    };
    Ok(Scores::of_head(detail, n))
}

/// A trained adapter folder (with its head) ready for inference.
pub struct Loaded {
    pub cfg: BertConfig,
    pub enc: Encoder,
    pub set: AdapterSet,
    pub head: ClassificationHead,
    pub labels: LabelMap,
    pub tok: Tokenizer,
}

pub fn load_trained(gpu: &Arc<Gpu>, model: &Path, adapter: &Path, max_length: usize) -> Result<Loaded> {
    let (cfg, enc) = load::load_encoder(gpu, model, None)?;
    let a = crate::formats::adapterhub::Adapter::load(adapter, &cfg)?;
    let h = a.head.as_ref().ok_or_else(|| anyhow!("{}: no head saved with the adapter", adapter.display()))?;
    let labels = LabelMap::new(h.config.id2label.clone())?;
    let head = load::classification_head(gpu, h, cfg.hidden_size)?;
    let set = load::adapter_set(gpu, &a, &cfg)?;
    let tok = Tokenizer::for_model(model, &cfg, max_length)?;
    Ok(Loaded { cfg, enc, set, head, labels, tok })
}

/// `peft eval`: accuracy and macro-F1 of a trained adapter on a labelled file.
pub fn evaluate(
    gpu: &Arc<Gpu>,
    model: &Path,
    adapter: &Path,
    data_path: &Path,
    opts: &DataOptions,
    batch_size: usize,
    max_length: usize,
) -> Result<Scores> {
    let mut l = load_trained(gpu, model, adapter, max_length)?;
    let kind = l.head.kind();
    let source = data_path.display().to_string();
    let p = if kind == HeadKind::Tagging {
        let (words, tags) = data::tagging_keys(&opts.text_column, &opts.label_column);
        let sentences = data::load_tagged(data_path, words, tags)?;
        prepare_tagged(&l.tok, &sentences, &l.labels, &source, &mut PlainReporter)?
    } else {
        let ex = data::load_examples(data_path, &DataOptions { head_kind: kind, ..opts.clone() })?;
        if ex.is_empty() {
            bail!("{}: no examples", data_path.display());
        }
        prepare_kind(kind, &l.tok, &ex, &l.labels, &source, &mut PlainReporter)?
    };
    let pad = data::pad_id(&l.tok);
    evaluate_prepared(&mut l.enc, &Setup::Adapter(&l.set), &l.head, &p, pad, batch_size)
}

/// One prediction. `label`: the class (classification), the value (regression), the labels
/// predicted (logit > 0) `|`-separated (multi-label), the words' tags space-separated (tagging).
/// `probabilities`: softmax (classification), sigmoid per label (multi-label), none otherwise.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Prediction {
    pub text: String,
    pub label: String,
    pub probabilities: std::collections::BTreeMap<String, f32>,
    /// `[labels]` per text; tagging: `[labels]` per word (at its first sub-token).
    pub logits: Vec<f32>,
    /// Tagging: `[word, tag]` for each whitespace-separated word of the text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<(String, String)>>,
}

/// `peft predict`: label, probabilities (softmax on the GPU) and raw logits per input.
pub fn predict(
    gpu: &Arc<Gpu>,
    model: &Path,
    adapter: &Path,
    examples: &[Example],
    batch_size: usize,
    max_length: usize,
) -> Result<Vec<Prediction>> {
    let mut l = load_trained(gpu, model, adapter, max_length)?;
    let (tokens, truncated) = data::tokenize_counting(&l.tok, examples)?;
    if let Some(note) = data::truncation_note("the input", truncated, examples.len(), l.tok.max_length()) {
        PlainReporter.note(&note);
    }
    let pad = data::pad_id(&l.tok);
    let c = l.head.labels;
    let setup = Setup::Adapter(&l.set);
    match l.head.kind() {
        HeadKind::Classification => {
            let logits = predict_logits(&mut l.enc, &setup, &l.head, &tokens, pad, batch_size)?;
            predictions(gpu, &l.labels, examples, &logits, c)
        }
        HeadKind::Tagging => predict_tags(&mut l, examples, pad, batch_size),
        kind => {
            let logits = predict_logits(&mut l.enc, &setup, &l.head, &tokens, pad, batch_size)?;
            Ok(value_predictions(kind, &l.labels, examples, &logits, c))
        }
    }
}

/// Regression and multi-label predictions from logits `[examples, c]`.
fn value_predictions(
    kind: HeadKind,
    labels: &LabelMap,
    examples: &[Example],
    logits: &[f32],
    c: usize,
) -> Vec<Prediction> {
    let name = |k: usize| labels.name(k as u32).unwrap_or("?").to_string();
    examples
        .iter()
        .zip(logits.chunks(c))
        .map(|(e, row)| {
            let (label, probabilities) = if kind == HeadKind::Regression {
                (format!("{}", row[0]), Default::default())
            } else {
                let on: Vec<String> = (0..c).filter(|&k| row[k] > 0.0).map(name).collect();
                let sep = data::MULTI_LABEL_SEPARATOR.to_string();
                (on.join(&sep), (0..c).map(|k| (name(k), 1.0 / (1.0 + (-row[k]).exp()))).collect())
            };
            Prediction { text: e.text.clone(), label, probabilities, logits: row.to_vec(), tags: None }
        })
        .collect()
}

/// Tagging predictions: each text split at whitespace into words, a tag per word.
fn predict_tags(l: &mut Loaded, examples: &[Example], pad: u32, batch_size: usize) -> Result<Vec<Prediction>> {
    let sentences: Vec<data::TaggedSentence> = examples
        .iter()
        .map(|e| {
            let words: Vec<String> = e.text.split_whitespace().map(String::from).collect();
            data::TaggedSentence { tags: vec![String::new(); words.len()], words, line: e.line }
        })
        .collect();
    let (tagged, _) = data::tokenize_tagged(&l.tok, &sentences, None, "the input")?;
    let tokens: Vec<Tokenized> = tagged.iter().map(|t| t.tokens.clone()).collect();
    let c = l.head.labels;
    let rows = predict_rows(&mut l.enc, &Setup::Adapter(&l.set), &l.head, &tokens, pad, batch_size)?;
    Ok(examples
        .iter()
        .zip(&sentences)
        .zip(tagged.iter().zip(&rows))
        .map(|((e, s), (t, row))| {
            let mut logits = vec![];
            let mut tags = vec![];
            for (w, start) in s.words.iter().zip(&t.word_starts) {
                // A word cut off by --max-length has no token: tagged "O".
                let tag = match start {
                    Some(tok) => {
                        let r = &row[tok * c..(tok + 1) * c];
                        logits.extend_from_slice(r);
                        l.labels.name(metrics::argmax_rows(r, c)[0]).unwrap_or("?").to_string()
                    }
                    None => "O".to_string(),
                };
                tags.push((w.clone(), tag));
            }
            let label = tags.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join(" ");
            Prediction { text: e.text.clone(), label, probabilities: Default::default(), logits, tags: Some(tags) }
        })
        .collect())
}

/// Predictions from logits `[examples, c]`: label, probabilities (softmax on the GPU), logits.
pub(crate) fn predictions(
    gpu: &Arc<Gpu>,
    labels: &LabelMap,
    examples: &[Example],
    logits: &[f32],
    c: usize,
) -> Result<Vec<Prediction>> {
    let lt = GpuTensor::from_slice(gpu, &[examples.len(), c], logits)?;
    let pt = GpuTensor::zeros(gpu, &[examples.len(), c])?;
    let mut b = gpu.batch();
    crate::kernels::loss::softmax(&mut b, &lt, &pt)?;
    b.finish()?;
    let probs = pt.to_vec(gpu)?;
    let preds = metrics::argmax_rows(logits, c);
    Ok(examples
        .iter()
        .enumerate()
        .map(|(i, e)| Prediction {
            text: e.text.clone(),
            label: labels.name(preds[i]).unwrap_or("?").to_string(),
            probabilities: (0..c)
                .map(|k| (labels.name(k as u32).unwrap_or("?").to_string(), probs[i * c + k]))
                .collect(),
            logits: logits[i * c..(i + 1) * c].to_vec(),
            tags: None,
        })
        .collect())
}
