//! Labelled text data, CPU side: loading CSV / TSV (with a header) and JSON Lines, the label map,
//! seeded shuffles and train/dev splits, tokenization, and length-bucketed padded batches.
//!
//! Every error on user input names the file and the line (CSV / JSONL) or item (JSON array) it
//! comes from; nothing here panics on what a file holds.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use peft_wgpu::train::data::{self, DataOptions, LabelMap};
//! let examples = data::load_examples("train.csv", &DataOptions::default())?;
//! let (train, dev) = data::seeded_split(examples, 0.1, 42)?;
//! let labels = LabelMap::from_examples(&train)?;
//! let train_ids = labels.encode(&train, "train.csv")?;
//! # let _ = (dev, train_ids); Ok(()) }
//! ```
//!
//! Files: `load` (CSV / TSV, the Rotten Tomatoes file), `json` (JSON Lines and arrays), `labels`
//! (the label map), `split` (shuffles and train/dev splits), `tokens` (tokenization), `batch`
//! (padded, length-bucketed batches), `inputs_json` (a fixed batch of token ids from a JSON file,
//! as `peft grads` and the parity tests read it), `targets` (what each head kind trains on),
//! `tagging` (words and tags: JSONL and CoNLL, labels on each word's first sub-token).

mod batch;
mod inputs_json;
mod json;
mod labels;
mod load;
mod split;
mod tagging;
mod targets;
mod tokens;

pub use batch::{batches_in_order, make_batches, padding_efficiency, Batch, Padding, BUCKET_WINDOW};
pub use inputs_json::{read_inputs_json, read_targets_json, OwnedTargets};
pub use labels::{label_counts, LabelMap};
pub use load::{load_examples, parse_examples, rotten_tomatoes, DataOptions, Format};
pub use split::{seeded_split, shuffle};
pub use tagging::{load_tagged, tag_map, tagging_keys, tokenize_tagged, TaggedSentence, TaggedTokens};
pub use targets::{TaskTargets, MULTI_LABEL_SEPARATOR};
pub use tokens::{pad_id, tokenize, tokenize_counting, truncation_note, Tokenized};

/// One labelled (or, for prediction, unlabelled) input.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Example {
    pub text: String,
    /// The second text of a pair (`--text-pair-column`), if any.
    pub pair: Option<String>,
    /// The label as written in the file: a string, or an integer in decimal (`1`, `-3`).
    pub label: Option<String>,
    /// Where the example starts in its file: the 1-based line for CSV / TSV / JSONL, the 1-based
    /// item number for a JSON array; 0 when unknown (examples built in code).
    pub line: usize,
}

impl Example {
    pub fn new(text: impl Into<String>, label: impl Into<String>) -> Self {
        Self { text: text.into(), pair: None, label: Some(label.into()), line: 0 }
    }
}
