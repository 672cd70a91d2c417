//! Evaluation and prediction with a trained adapter (`peft eval / predict`), and the batched
//! inference both share with `peft fuse`'s dev evaluation.

use crate::gpu::{Gpu, GpuTensor};
use crate::model::adapters::{AdapterSet, ClassificationHead};
use crate::model::config::BertConfig;
use crate::model::encoder::{Encoder, Setup};
use crate::model::load;
use crate::train::data::{self, DataOptions, Example, LabelMap, Tokenized};
use crate::train::guard;
use crate::train::metrics::{self, Scores};
use crate::train::report::{PlainReporter, Reporter};
use crate::train::task::{prepare, Prepared};
use crate::train::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Result};
use std::path::Path;
use std::sync::Arc;

/// Logits of every example (batched by length, in the examples' order).
pub(crate) fn predict_logits(
    enc: &mut Encoder,
    setup: &Setup,
    head: &ClassificationHead,
    tokens: &[Tokenized],
    pad: u32,
    batch_size: usize,
) -> Result<Vec<f32>> {
    let c = head.labels;
    let longest = tokens.iter().map(|t| t.len()).max().unwrap_or(1);
    guard::check_batch_fits(&enc.gpu, &enc.dims, batch_size.max(1).min(tokens.len().max(1)), longest)?;
    let mut out = vec![0.0f32; tokens.len() * c];
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by_key(|&i| tokens[i].len());
    for chunk in order.chunks(batch_size.max(1)) {
        let b = data::Batch::new(tokens, None, chunk, pad);
        let r = enc.pass(setup, head, &b.inputs(), None, false, false)?;
        for (k, &i) in chunk.iter().enumerate() {
            out[i * c..(i + 1) * c].copy_from_slice(&r.logits[k * c..(k + 1) * c]);
        }
    }
    Ok(out)
}

pub(crate) fn evaluate_prepared(
    enc: &mut Encoder,
    setup: &Setup,
    head: &ClassificationHead,
    p: &Prepared,
    pad: u32,
    batch_size: usize,
) -> Result<Scores> {
    let logits = predict_logits(enc, setup, head, &p.tokens, pad, batch_size)?;
    let preds = metrics::argmax_rows(&logits, head.labels);
    Ok(Scores::new(&p.labels, &preds))
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
    let ex = data::load_examples(data_path, opts)?;
    if ex.is_empty() {
        bail!("{}: no examples", data_path.display());
    }
    let p = prepare(&l.tok, &ex, &l.labels, &data_path.display().to_string(), &mut PlainReporter)?;
    let pad = data::pad_id(&l.tok);
    evaluate_prepared(&mut l.enc, &Setup::Adapter(&l.set), &l.head, &p, pad, batch_size)
}

/// One prediction.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Prediction {
    pub text: String,
    pub label: String,
    pub probabilities: std::collections::BTreeMap<String, f32>,
    pub logits: Vec<f32>,
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
    let logits = predict_logits(&mut l.enc, &Setup::Adapter(&l.set), &l.head, &tokens, pad, batch_size)?;
    predictions(gpu, &l.labels, examples, &logits, c)
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
        })
        .collect())
}
