//! The training options, defined once: one struct per group (data, optimizer, loop, memory), each
//! a `clap::Args` that `peft train` and `peft fuse` flatten into their command lines and a serde
//! struct that the resume state saves (see [`super::resume`]).
//!
//! `clap::Args` is derived unconditionally: clap is already a dependency of the library (the bench
//! and data-set commands, the presets' `ValueEnum`), so a feature gate would not drop it.

use crate::formats::adapterhub::{HeadKind, WeightsFormat};
use crate::train::data::{DataOptions, Format};
use crate::types::{Activation, WeightPrecision};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Columns (CSV/TSV) or keys (JSONL) of a data file; shared by every command that reads one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct Columns {
    /// Column / key holding the text.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Column / key holding the second text of a pair.
    #[arg(long)]
    pub text_pair_column: Option<String>,
    /// Column / key holding the label.
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// File format; `None`: from the file's extension (library only).
    #[arg(skip)]
    #[serde(with = "format_name")]
    pub format: Option<Format>,
}

impl Default for Columns {
    fn default() -> Self {
        Self { text_column: "text".into(), text_pair_column: None, label_column: "label".into(), format: None }
    }
}

impl Columns {
    /// How [`crate::train::data::load_examples`] reads a file with these columns.
    pub fn options(&self, require_labels: bool) -> DataOptions {
        DataOptions {
            text_column: self.text_column.clone(),
            text_pair_column: self.text_pair_column.clone(),
            label_column: self.label_column.clone(),
            format: self.format,
            require_labels,
            head_kind: HeadKind::Classification,
        }
    }
}

/// How a task's examples are split, cut and tokenized.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct DataArgs {
    /// Dev data; without it a seeded --dev-split of the training file is held out.
    #[arg(long)]
    pub dev: Option<PathBuf>,
    #[arg(long, default_value_t = 0.1)]
    pub dev_split: f64,
    #[arg(long, default_value_t = 128)]
    pub max_length: usize,
    /// Train on the first N examples (after the seeded shuffle).
    #[arg(long)]
    pub max_train_examples: Option<usize>,
    /// Evaluate on the first N dev examples.
    #[arg(long)]
    pub max_dev_examples: Option<usize>,
    /// The head to train (AdapterHub's head types): `classification` (a label per text),
    /// `regression` (a number per text; MSE), `multilabel_classification` (any labels per text:
    /// a JSON list or `|`-separated names; BCE with logits), `tagging` (a label per word: JSONL
    /// `{"tokens": [...], "tags": [...]}` or CoNLL columns, word first and tag last).
    /// (Saved in the resume state only when not classification, so that a classification run's
    /// state is the one earlier releases wrote; a state without it is classification.)
    #[arg(long, value_enum, default_value_t, value_name = "TYPE")]
    #[serde(default, skip_serializing_if = "HeadKind::is_classification")]
    pub head_type: HeadKind,
    #[command(flatten)]
    #[serde(flatten)]
    pub columns: Columns,
}

impl Default for DataArgs {
    fn default() -> Self {
        Self {
            dev: None,
            dev_split: 0.1,
            max_length: 128,
            max_train_examples: None,
            max_dev_examples: None,
            head_type: HeadKind::Classification,
            columns: Columns::default(),
        }
    }
}

/// AdamW, its learning-rate schedule and gradient clipping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct OptimizerArgs {
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f32,
    /// Share of steps with linear warmup.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_ratio: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// One optimizer step every N batches, on their mean gradient (HF's
    /// `gradient_accumulation_steps`): an effective batch of N × --batch-size in the memory of one batch plus two
    /// gradient-sized sums (counted by the memory planner).
    #[arg(long, default_value_t = 1, value_name = "N")]
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub gradient_accumulation: usize,
}

fn one() -> usize {
    1
}

/// The default is not written to the resume state, so earlier releases' settings round-trip.
fn is_one(n: &usize) -> bool {
    *n == 1
}

impl Default for OptimizerArgs {
    fn default() -> Self {
        Self { lr: 1e-4, warmup_ratio: 0.0, weight_decay: 0.0, max_grad_norm: 1.0, gradient_accumulation: 1 }
    }
}

/// The epoch loop: how long, in what batches, with which seed, when to stop early.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct LoopArgs {
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop after N epochs without a better dev accuracy.
    #[arg(long)]
    pub patience: Option<usize>,
    /// How the training examples are batched each epoch.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default, skip_serializing_if = "BatchOrder::is_default")]
    pub batch_order: BatchOrder,
    /// Train with dropout as AdapterHub does (the default): the model's hidden_dropout_prob and
    /// attention_probs_dropout_prob from its config.json, and the head's dropout before each of
    /// its Linear layers; evaluation and prediction never drop.
    #[arg(long = "dropout-from-config", default_value_t = true, action = clap::ArgAction::SetTrue,
          overrides_with = "no_dropout")]
    #[serde(default, skip_serializing_if = "is_false")]
    pub dropout_from_config: bool,
    /// Train without dropout.
    #[arg(long = "no-dropout", overrides_with = "dropout_from_config")]
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_dropout: bool,
    /// How the frozen layers' matrices are held on the GPU: f32 (as the checkpoint), or f16 (half
    /// their memory and streaming traffic; the products still sum in f32, over f16-rounded
    /// weights, so results differ slightly from f32's).
    #[arg(long, value_enum, default_value_t)]
    #[serde(default, skip_serializing_if = "is_f32")]
    pub precision: WeightPrecision,
    /// Pad each training batch to a multiple of N tokens (1: to its longest example). Fewer
    /// distinct lengths let the GPU reuse one step's buffers and bind groups in the next. The
    /// padding is masked: without dropout the results are the same up to f32 rounding (sums over
    /// the tokens group differently); with dropout the masks differ (they are keyed by element).
    /// Default: the device's (8 on GPUs; 1 on CPU drivers, where the padding's compute costs more).
    #[arg(long, value_parser = pad_multiple)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_to_multiple_of: Option<usize>,
}

/// `--pad-to-multiple-of` (`peft train`, `fuse`, `bench`): 1..=512.
pub(crate) fn pad_multiple(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=512).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to 512, got {s:?}")),
    }
}

fn is_f32(p: &WeightPrecision) -> bool {
    *p == WeightPrecision::F32
}

impl Default for LoopArgs {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 32,
            seed: 42,
            patience: None,
            batch_order: BatchOrder::default(),
            dropout_from_config: true,
            no_dropout: false,
            precision: WeightPrecision::F32,
            pad_to_multiple_of: None,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl LoopArgs {
    /// Whether training steps drop. A resume state saved before these options existed has
    /// neither (serde's default `false`): those runs trained without dropout and go on without.
    pub fn dropout(&self) -> bool {
        self.dropout_from_config && !self.no_dropout
    }
}

/// How the training examples are cut into batches each epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BatchOrder {
    /// A seeded shuffle per epoch, batches of similar lengths (the least padding).
    #[default]
    Bucketed,
    /// The training file's order every epoch, cut into batches in turn, no shuffle at all (needs
    /// `--dev`): for side-by-side runs with another trainer on the same batches.
    File,
}

impl BatchOrder {
    /// The default is not written to the resume state, so earlier releases' settings round-trip.
    fn is_default(&self) -> bool {
        *self == BatchOrder::Bucketed
    }
}

/// Where the GPU memory goes: they do not change the results, so a resumed run takes them from
/// its command line, not from the saved state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct MemoryArgs {
    /// Frozen layers kept on the GPU; fewer stream from the file (default: all).
    #[arg(long)]
    pub resident_layers: Option<usize>,
    /// Keep only each layer's input in forward and recompute its activations in backward
    /// (bit-identical results, less memory, about one more forward of time).
    #[arg(long)]
    pub recompute: bool,
    /// With --recompute: run each layer over this many sequences of the batch at a time, so one
    /// layer's working set shrinks with it (the adapters' gradients are summed chunk by chunk).
    #[arg(long)]
    pub layer_chunk: Option<usize>,
    /// With --recompute: also keep each layer's FFN output (one more hidden-size tensor per layer),
    /// so recomputing skips the FFN's second matmul (about a third of the recompute work).
    #[arg(long)]
    pub keep_ffn_output: bool,
    /// GPU memory to fit in (e.g. 2GiB, 512MiB): the planner chooses --resident-layers,
    /// --recompute and --layer-chunk, or fails naming what to change.
    #[arg(long, value_parser = parse_gpu_memory)]
    pub max_gpu_memory: Option<u64>,
}

/// What the saved adapter / fusion / head folders hold. Like the memory options it does not change
/// the result, so it is not part of the resume state: a resumed run takes it from its command line.
#[derive(Clone, Debug, Default, PartialEq, clap::Args)]
pub struct SaveArgs {
    /// Weight files to write: `safetensors`, `bin` (torch's pytorch_*.bin, what Python's plain
    /// `model.load_adapter(dir)` reads) or `both`.
    #[arg(long = "format", id = "weights_format", value_name = "FORMAT", value_enum, default_value_t)]
    pub weights_format: WeightsFormat,
}

impl clap::ValueEnum for WeightsFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &WeightsFormat::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

fn parse_gpu_memory(s: &str) -> Result<u64, String> {
    crate::model::plan::parse_size(s).map_err(|e| format!("{e:#}"))
}

/// `--non-linearity`: an activation by its AdapterHub (or common) name.
pub fn parse_activation(s: &str) -> Result<Activation, String> {
    Activation::parse(s).map_err(|e| e.to_string())
}

/// `Option<Format>` as its name (`"csv"`, …) or `null`.
mod format_name {
    use super::Format;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::str::FromStr;

    pub fn serialize<S: Serializer>(f: &Option<Format>, s: S) -> Result<S::Ok, S::Error> {
        match f {
            Some(f) => s.serialize_some(&f.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Format>, D::Error> {
        Option::<String>::deserialize(d)?.map(|x| Format::from_str(&x).map_err(serde::de::Error::custom)).transpose()
    }
}

/// `Option<Activation>` as its AdapterHub name (`"swish"`, …) or `null`.
pub(crate) mod activation_name {
    use super::Activation;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &Option<Activation>, s: S) -> Result<S::Ok, S::Error> {
        match a {
            Some(a) => s.serialize_some(a.adapterhub_name()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Activation>, D::Error> {
        Option::<String>::deserialize(d)?.map(|x| Activation::parse(&x).map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::LoopArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: LoopArgs,
    }

    fn parse(args: &[&str]) -> LoopArgs {
        Cli::try_parse_from(std::iter::once("peft").chain(args.iter().copied())).unwrap().run
    }

    #[test]
    fn dropout_flags() {
        assert!(parse(&[]).dropout(), "on by default");
        assert!(LoopArgs::default().dropout(), "the library's default is the command line's");
        assert!(parse(&["--dropout-from-config"]).dropout());
        assert!(!parse(&["--no-dropout"]).dropout());
        // The last one given wins.
        assert!(parse(&["--no-dropout", "--dropout-from-config"]).dropout());
        assert!(!parse(&["--dropout-from-config", "--no-dropout"]).dropout());
        // A resume state written before the options existed trained without dropout.
        let old: LoopArgs = serde_json::from_str(r#"{"epochs":3,"batch_size":5,"seed":3,"patience":null}"#).unwrap();
        assert!(!old.dropout());
        // Saved and read back, each choice stays.
        for args in [parse(&[]), parse(&["--no-dropout"])] {
            let back: LoopArgs = serde_json::from_value(serde_json::to_value(&args).unwrap()).unwrap();
            assert_eq!(back.dropout(), args.dropout());
        }
    }
}
