//! A task's data for training: loaded, shuffled (seeded), split, cut, tokenized and labelled.

use crate::gpu::Gpu;
use crate::model::config::BertConfig;
use crate::train::data::{self, Example, LabelMap, Tokenized};
use crate::train::options::{BatchOrder, DataArgs, LoopArgs};
use crate::train::report::Reporter;
use crate::train::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Tokenized examples with label ids.
pub(crate) struct Prepared {
    pub(crate) tokens: Vec<Tokenized>,
    pub(crate) labels: Vec<u32>,
}

impl Prepared {
    /// Tokens that are not padding, over all examples.
    pub(crate) fn real_tokens(&self) -> usize {
        self.tokens.iter().map(|t| t.len()).sum()
    }
}

/// Tokenizes and labels `examples` (from `source`, named in the notes and errors); a note about
/// truncated texts goes to `rep`.
pub(crate) fn prepare(
    tok: &Tokenizer,
    examples: &[Example],
    labels: &LabelMap,
    source: &str,
    rep: &mut dyn Reporter,
) -> Result<Prepared> {
    let (tokens, truncated) = data::tokenize_counting(tok, examples)?;
    if let Some(note) = data::truncation_note(source, truncated, examples.len(), tok.max_length()) {
        rep.note(&note);
    }
    let labels = labels.encode(examples, source)?;
    Ok(Prepared { tokens, labels })
}

/// A task's tokenized training and dev sets and its label map.
pub(crate) struct TaskData {
    pub(crate) train: Prepared,
    pub(crate) dev: Prepared,
    pub(crate) labels: LabelMap,
}

impl TaskData {
    /// The longest sequence and the widest batch of `batch_size` (what the memory plan and the
    /// buffer checks size for).
    pub(crate) fn largest_batch(&self, batch_size: usize) -> (usize, usize) {
        let longest = self.train.tokens.iter().chain(&self.dev.tokens).map(|t| t.len()).max().unwrap_or(1);
        let widest = batch_size.min(self.train.tokens.len().max(self.dev.tokens.len()));
        (widest, longest)
    }

    /// [`crate::train::resume::fingerprint`] of the tokenized sets and labels.
    pub(crate) fn fingerprint(&self) -> String {
        crate::train::resume::fingerprint(
            &[(&self.train.tokens, &self.train.labels), (&self.dev.tokens, &self.dev.labels)],
            &self.labels.labels,
        )
    }
}

/// Loads, shuffles (seeded, before any split or cut: files may be sorted by label), splits, cuts
/// and tokenizes a task's data; reports a line about it.
pub(crate) fn load_task_data(
    tok: &Tokenizer,
    train: &Path,
    spec: &DataArgs,
    run: &LoopArgs,
    rep: &mut dyn Reporter,
) -> Result<TaskData> {
    let seed = run.seed;
    let options = spec.columns.options(true);
    let mut train_ex = data::load_examples(train, &options)?;
    if run.batch_order == BatchOrder::Bucketed {
        data::shuffle(&mut train_ex, seed);
    }
    let (mut train_ex, mut dev_ex, dev_note) = match &spec.dev {
        Some(dev) => (train_ex, data::load_examples(dev, &options)?, format!("{}", dev.display())),
        None => {
            let (t, d) = data::seeded_split(train_ex, spec.dev_split, seed)?;
            (t, d, format!("seeded {:.0}% held out of {}", spec.dev_split * 100.0, train.display()))
        }
    };
    if let Some(n) = spec.max_train_examples {
        train_ex.truncate(n);
    }
    if let Some(n) = spec.max_dev_examples {
        dev_ex.truncate(n);
    }
    if train_ex.is_empty() || dev_ex.is_empty() {
        bail!("need at least one training and one dev example (train {}, dev {})", train_ex.len(), dev_ex.len());
    }
    let labels = LabelMap::from_examples(&train_ex)?;
    if labels.len() < 2 {
        bail!("the training data has {} label(s); classification needs at least 2", labels.len());
    }
    let train_set = prepare(tok, &train_ex, &labels, &train.display().to_string(), rep)?;
    let dev_source = spec.dev.as_ref().map_or_else(|| "the dev split".to_string(), |p| p.display().to_string());
    let dev = prepare(tok, &dev_ex, &labels, &dev_source, rep)
        .context("the dev data has a label the training data does not have")?;
    rep.message(&format!(
        "data: {} train, {} dev ({dev_note}), {} labels: {}",
        train_ex.len(),
        dev_ex.len(),
        labels.len(),
        labels.labels.join(", ")
    ));
    Ok(TaskData { train: train_set, dev, labels })
}

/// What `peft train` and `peft fuse` both start from: the model's config, the padding id and the
/// task's data tokenized for the model.
pub(crate) struct RunStart {
    pub(crate) cfg: BertConfig,
    pub(crate) pad: u32,
    pub(crate) task: TaskData,
}

/// The start shared by `peft train` and `peft fuse`: checks the loop settings, reports the device,
/// reads the model's config and loads the task's data, tokenized to `--max-length` capped at the
/// model's positions (with a note when it is capped).
pub(crate) fn start_run(
    gpu: &Gpu,
    model: &Path,
    train: &Path,
    d: &DataArgs,
    r: &LoopArgs,
    rep: &mut dyn Reporter,
) -> Result<RunStart> {
    if r.batch_size == 0 || r.epochs == 0 {
        bail!("--batch-size and --epochs must be at least 1");
    }
    if r.batch_order == BatchOrder::File && d.dev.is_none() {
        bail!("--batch-order file keeps the training file's order and needs --dev (a held-out split would shuffle it)");
    }
    rep.message(&format!("device: {}", gpu.description.summary()));
    let cfg = BertConfig::from_model_dir(model)?;
    let positions = cfg.max_sequence_length();
    if d.max_length > positions {
        rep.note(&format!(
            "note: --max-length {} is more than the model's {positions} positions (max_position_embeddings); using {positions}",
            d.max_length
        ));
    }
    let tok = Tokenizer::for_model(model, &cfg, d.max_length)?;
    let pad = data::pad_id(&tok);
    let task = load_task_data(&tok, train, d, r, rep)?;
    Ok(RunStart { cfg, pad, task })
}
