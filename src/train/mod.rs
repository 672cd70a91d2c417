//! Training, evaluation and prediction of adapters on the frozen encoder (`peft train / eval /
//! predict`). All compute runs on the GPU: the encoder's forward/backward, AdamW, gradient
//! clipping, softmax; the host only batches data, schedules the learning rate and logs.
//!
//! - [`options`]: the training options, one struct per group, shared by `train` and `fuse`;
//! - [`adapter`]: `peft train` (a new bottleneck adapter + head);
//! - [`fuse`]: `peft fuse` (AdapterFusion over frozen adapters);
//! - [`trainer`]: the epoch loop both share, [`optimizer`]: AdamW on the GPU;
//! - [`task`]: a task's data, tokenized and split; [`infer`]: evaluation and prediction;
//! - [`report`]: how the loop tells what it does; [`resume`]: the state file and stops.

pub mod adapter;
pub mod cache;
pub mod checkpoint;
pub mod data;
pub mod fuse;
pub mod grads;
pub mod guard;
pub mod infer;
pub mod memory;
pub mod metrics;
pub mod optimizer;
pub mod options;
pub mod report;
pub mod resume;
pub mod task;
pub mod tokenizer;
pub mod trainer;

pub use adapter::{new_adapter, new_adapter_with_head, train, train_with, AdapterArgs, AdapterTrainee, TrainArgs};
pub use infer::{evaluate, load_trained, predict, Loaded, Prediction};
pub use optimizer::Optimizer;
pub use options::{BatchOrder, Columns, DataArgs, LoopArgs, MemoryArgs, OptimizerArgs};
pub use report::{PlainReporter, Reporter, StepReport};
pub use trainer::{train_step, StepOutput, Trainee};

use crate::model::config::BertConfig;
use std::path::{Path, PathBuf};

/// AdapterHub's two bottleneck presets, or no adapter at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// `double_seq_bn`: after the attention output and after the FFN (AdapterHub default: swish).
    Houlsby,
    /// `seq_bn`: after the FFN only (AdapterHub default: relu).
    Pfeiffer,
    /// `par_bn`: beside the FFN, reading its input (He et al. 2022; AdapterHub defaults: relu,
    /// scaling 4, mam_adapter initialisation).
    #[value(name = "par_bn", alias = "parallel")]
    #[serde(rename = "par_bn")]
    Parallel,
    /// No adapter: the head alone on the frozen base (a baseline). Saved as a `seq_bn` adapter
    /// left out of every layer (`leave_out`: all), so eval / predict / AdapterHub load it as usual.
    None,
}

/// What a training run produced.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub dev_accuracy: Vec<f64>,
    pub dev_macro_f1: Vec<f64>,
    pub best_accuracy: f64,
    pub best_epoch: usize,
    pub train_losses: Vec<f32>,
    pub tokens_per_second: f64,
    pub trainable_parameters: usize,
    pub model_parameters: usize,
    pub steps: usize,
    pub out: PathBuf,
    /// The run stopped before its end (Ctrl-C, `--stop-after-steps`); its state is saved.
    pub stopped: bool,
}

/// The model directory's name, as AdapterHub's configs record it.
pub(crate) fn model_name(model: &Path) -> String {
    model.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
}

/// Parameters of the base model (embeddings + layers), for the "share of the model" line.
pub fn model_parameters(cfg: &BertConfig) -> usize {
    let (d, f, w) = (cfg.hidden_size, cfg.intermediate_size, cfg.embedding_width());
    let types = if cfg.layout.token_types { cfg.type_vocab_size } else { 0 };
    // ELECTRA's narrower tables are projected to the layers' width (weight + bias).
    let project = if cfg.layout.embedding_size.is_some() { w * d + d } else { 0 };
    let emb = (cfg.vocab_size + cfg.max_position_embeddings + types) * w + 2 * w + project;
    let layer = 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 2 * d;
    emb + cfg.num_hidden_layers * layer
}
