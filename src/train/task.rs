//! A task's data for training: loaded, shuffled (seeded), split, cut, tokenized and labelled.

use crate::formats::adapterhub::HeadKind;
use crate::gpu::Gpu;
use crate::model::config::BertConfig;
use crate::train::data::{self, Example, LabelMap, TaggedSentence, TaskTargets, Tokenized};
use crate::train::options::{BatchOrder, DataArgs, LoopArgs};
use crate::train::report::Reporter;
use crate::train::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Tokenized examples with their targets.
pub(crate) struct Prepared {
    pub(crate) tokens: Vec<Tokenized>,
    /// Classification: the label ids (the same as `targets`); empty for other heads.
    pub(crate) labels: Vec<u32>,
    pub(crate) targets: TaskTargets,
    /// Tagging: per sentence, the token of each word's first sub-token (`None`: truncated away);
    /// with the word tags (ids) in `word_tags`. Empty for sequence heads.
    pub(crate) word_starts: Vec<Vec<Option<usize>>>,
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
    Ok(Prepared { tokens, targets: TaskTargets::Classes(labels.clone()), labels, word_starts: vec![] })
}

/// [`prepare`] for a head of `kind` (not tagging): its targets from the examples' labels.
pub(crate) fn prepare_kind(
    kind: HeadKind,
    tok: &Tokenizer,
    examples: &[Example],
    labels: &LabelMap,
    source: &str,
    rep: &mut dyn Reporter,
) -> Result<Prepared> {
    if kind == HeadKind::Classification {
        return prepare(tok, examples, labels, source, rep);
    }
    let (tokens, truncated) = data::tokenize_counting(tok, examples)?;
    if let Some(note) = data::truncation_note(source, truncated, examples.len(), tok.max_length()) {
        rep.note(&note);
    }
    let targets = data::TaskTargets::encode_for(kind, examples, labels, source)?;
    Ok(Prepared { tokens, labels: vec![], targets, word_starts: vec![] })
}

/// Tagged sentences tokenized from their words, the tags (by `tags`) on each word's first
/// sub-token.
pub(crate) fn prepare_tagged(
    tok: &Tokenizer,
    sentences: &[TaggedSentence],
    tags: &LabelMap,
    source: &str,
    rep: &mut dyn Reporter,
) -> Result<Prepared> {
    let (tagged, truncated) = data::tokenize_tagged(tok, sentences, Some(tags), source)?;
    if let Some(note) = data::truncation_note(source, truncated, sentences.len(), tok.max_length()) {
        rep.note(&note);
    }
    let mut tokens = Vec::with_capacity(tagged.len());
    let mut rows = Vec::with_capacity(tagged.len());
    let mut word_starts = Vec::with_capacity(tagged.len());
    for t in tagged {
        tokens.push(t.tokens);
        rows.push(t.labels);
        word_starts.push(t.word_starts);
    }
    Ok(Prepared { tokens, labels: vec![], targets: TaskTargets::Tokens(rows), word_starts })
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

    /// [`crate::train::resume::fingerprint`] of the tokenized sets and their targets.
    pub(crate) fn fingerprint(&self) -> String {
        let (train, dev) = (self.train.targets.fingerprint_words(), self.dev.targets.fingerprint_words());
        crate::train::resume::fingerprint(
            &[(&self.train.tokens, &train), (&self.dev.tokens, &dev)],
            &self.labels.labels,
        )
    }
}

/// Loads, shuffles (seeded, before any split or cut: files may be sorted by label), splits, cuts
/// and tokenizes a task's data for its head kind (`--head-type`); reports a line about it.
pub(crate) fn load_task_data(
    tok: &Tokenizer,
    train: &Path,
    spec: &DataArgs,
    run: &LoopArgs,
    rep: &mut dyn Reporter,
) -> Result<TaskData> {
    if spec.head_type == HeadKind::Tagging {
        return load_tagging_data(tok, train, spec, run, rep);
    }
    let seed = run.seed;
    let options = data::DataOptions { head_kind: spec.head_type, ..spec.columns.options(true) };
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
    cut(&mut train_ex, spec.max_train_examples);
    cut(&mut dev_ex, spec.max_dev_examples);
    if train_ex.is_empty() || dev_ex.is_empty() {
        bail!("need at least one training and one dev example (train {}, dev {})", train_ex.len(), dev_ex.len());
    }
    let kind = spec.head_type;
    let labels = data::TaskTargets::label_map_for(kind, &train_ex, &spec.columns.label_column)?;
    let train_set = prepare_kind(kind, tok, &train_ex, &labels, &train.display().to_string(), rep)?;
    let dev_source = spec.dev.as_ref().map_or_else(|| "the dev split".to_string(), |p| p.display().to_string());
    let dev = prepare_kind(kind, tok, &dev_ex, &labels, &dev_source, rep)
        .context("the dev data has a label the training data does not have")?;
    rep.message(&format!(
        "data: {} train, {} dev ({dev_note}), {} head, {} labels: {}",
        train_ex.len(),
        dev_ex.len(),
        kind,
        labels.len(),
        labels.labels.join(", ")
    ));
    Ok(TaskData { train: train_set, dev, labels })
}

fn cut<T>(v: &mut Vec<T>, n: Option<usize>) {
    if let Some(n) = n {
        v.truncate(n);
    }
}

/// [`load_task_data`] for a tagging head: sentences of words and tags (JSONL keys: `tokens` and
/// `tags` unless --text-column / --label-column name others; CoNLL columns otherwise).
fn load_tagging_data(
    tok: &Tokenizer,
    train: &Path,
    spec: &DataArgs,
    run: &LoopArgs,
    rep: &mut dyn Reporter,
) -> Result<TaskData> {
    let (words_key, tags_key) = data::tagging_keys(&spec.columns.text_column, &spec.columns.label_column);
    let mut train_s = data::load_tagged(train, words_key, tags_key)?;
    if run.batch_order == BatchOrder::Bucketed {
        data::shuffle(&mut train_s, run.seed);
    }
    let (mut train_s, mut dev_s, dev_note) = match &spec.dev {
        Some(dev) => (train_s, data::load_tagged(dev, words_key, tags_key)?, format!("{}", dev.display())),
        None => {
            let (t, d) = data::seeded_split(train_s, spec.dev_split, run.seed)?;
            (t, d, format!("seeded {:.0}% held out of {}", spec.dev_split * 100.0, train.display()))
        }
    };
    cut(&mut train_s, spec.max_train_examples);
    cut(&mut dev_s, spec.max_dev_examples);
    if train_s.is_empty() || dev_s.is_empty() {
        bail!("need at least one training and one dev sentence (train {}, dev {})", train_s.len(), dev_s.len());
    }
    let tags = data::tag_map(&train_s)?;
    let train_set = prepare_tagged(tok, &train_s, &tags, &train.display().to_string(), rep)?;
    let dev_source = spec.dev.as_ref().map_or_else(|| "the dev split".to_string(), |p| p.display().to_string());
    let dev = prepare_tagged(tok, &dev_s, &tags, &dev_source, rep)?;
    rep.message(&format!(
        "data: {} train, {} dev sentences ({dev_note}), tagging head, {} tags: {}",
        train_s.len(),
        dev_s.len(),
        tags.len(),
        tags.labels.join(", ")
    ));
    Ok(TaskData { train: train_set, dev, labels: tags })
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
