//! `peft fuse`: AdapterFusion (Pfeiffer et al. 2021) as AdapterHub's `train_adapter_fusion`
//! trains it: the source adapters frozen, one fusion layer per transformer layer at each site
//! where every adapter has a module (FFN output; attention output too over Houlsby adapters; query/key
//! N(0, 0.02), value the identity) and a new classification head trained with AdamW, plus
//! `0.01·Σ‖I − W_V‖²` added to the loss when the config asks for it. Shares the epoch loop with
//! `peft train` ([`super::trainer`]), with the same resume state, stops and memory plan; saves AdapterHub's fusion folder with the head.
//!
//! Also: evaluation and prediction of a saved fusion, and the fusion-attention insight: the mean
//! softmax weight per adapter per layer over the real tokens of a data set, summed on the GPU by
//! the encoder's fusion forward ([`FusionModel::record_weights`]).

mod attention;
mod infer;
mod trainee;

pub use attention::FusionAttention;
pub(crate) use infer::ignore_left_out_layers;
pub use infer::{evaluate_fused, load_fused, predict_fused, FusedPaths, LoadedFusion};
pub(crate) use trainee::fusion_layers;
pub use trainee::{load_source_adapters, FusionTrainee};

use crate::formats::adapterhub::FusionConfig;
use crate::gpu::Gpu;
use crate::model::load;
use crate::model::plan::AdapterSpec;
use crate::train::memory::{plan_memory, Trained};
use crate::train::options::{DataArgs, LoopArgs, MemoryArgs, OptimizerArgs, SaveArgs};
use crate::train::report::{PlainReporter, Reporter};
use crate::train::resume::{self, RunControl, RunSettings};
use crate::train::task::{start_run, RunStart};
use crate::train::trainer::{run_loop_with, LoopControl, LoopSetup};
use crate::train::{model_name, model_parameters, TrainSummary};
use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// AdapterHub's two fusion presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionPreset {
    /// `DynamicAdapterFusionConfig`: a value matrix initialised to the identity, regularised
    /// towards it (the library's default).
    Dynamic,
    /// `StaticAdapterFusionConfig`: no value matrix (the adapters' outputs are mixed as they are).
    Static,
}

impl FusionPreset {
    /// The preset's `AdapterFusionConfig`, with temperature annealing when `temperature`.
    pub fn config(self, temperature: bool) -> FusionConfig {
        let mut c = FusionConfig::dynamic();
        if self == FusionPreset::Static {
            c.value = false;
            c.regularization = false;
            c.value_initialized = false;
        }
        c.temperature = temperature;
        c
    }
}

/// The fusion `peft fuse` creates over its frozen adapters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct FusionArgs {
    /// Trained adapter folder to fuse (frozen); repeat for each. All at the same sites: Pfeiffer
    /// (FFN output) or Houlsby (attention and FFN outputs: fused at both).
    #[arg(long = "adapter", required_unless_present = "resume")]
    pub adapters: Vec<PathBuf>,
    /// dynamic: value matrix initialised to the identity and regularised towards it; static: none.
    #[arg(long, value_enum, default_value = "dynamic")]
    pub fusion_config: FusionPreset,
    /// AdapterHub's softmax temperature annealing (T from 50 down to 1 during training).
    #[arg(long)]
    pub temperature: bool,
    /// Name of the new head.
    #[arg(long = "name", default_value = "target")]
    #[serde(rename = "head_name")]
    pub name: String,
}

impl Default for FusionArgs {
    fn default() -> Self {
        Self { adapters: vec![], fusion_config: FusionPreset::Dynamic, temperature: false, name: "target".into() }
    }
}

/// Everything `peft fuse` takes. Serialized (without `out` and `memory`) as the settings of the
/// resume state, as [`crate::train::TrainArgs`] is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FuseArgs {
    pub model: PathBuf,
    pub train: PathBuf,
    #[serde(skip)]
    pub out: PathBuf,
    #[serde(flatten)]
    pub data: DataArgs,
    #[serde(flatten)]
    pub fusion: FusionArgs,
    #[serde(flatten)]
    pub optimizer: OptimizerArgs,
    #[serde(flatten)]
    pub run: LoopArgs,
    #[serde(skip)]
    pub memory: MemoryArgs,
    #[serde(skip)]
    pub save: SaveArgs,
}

impl Default for FuseArgs {
    /// AdapterHub's / the paper's fusion defaults: lr 5e-5, 10 epochs, batch 32, dynamic fusion.
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            train: PathBuf::new(),
            out: PathBuf::new(),
            data: DataArgs::default(),
            fusion: FusionArgs::default(),
            optimizer: OptimizerArgs { lr: FUSE_LR, ..OptimizerArgs::default() },
            run: LoopArgs { epochs: FUSE_EPOCHS, ..LoopArgs::default() },
            memory: MemoryArgs::default(),
            save: SaveArgs::default(),
        }
    }
}

/// `peft fuse`'s defaults where they differ from `peft train`'s.
pub const FUSE_LR: f32 = 5e-5;
pub const FUSE_EPOCHS: usize = 10;

impl FuseArgs {
    /// The settings saved in the resume state (paths made absolute).
    pub fn settings(&self) -> Result<serde_json::Value> {
        let mut s = self.clone();
        s.model = resume::absolute(&s.model);
        s.train = resume::absolute(&s.train);
        s.data.dev = s.data.dev.as_deref().map(resume::absolute);
        s.fusion.adapters = s.fusion.adapters.iter().map(|p| resume::absolute(p)).collect();
        Ok(serde_json::to_value(&s)?)
    }
}

impl RunSettings for FuseArgs {
    fn set_out(&mut self, out: &Path) {
        self.out = out.to_path_buf();
    }
}

/// What `peft fuse` produced.
#[derive(Clone, Debug)]
pub struct FuseSummary {
    pub train: TrainSummary,
    /// The fusion attention of the saved (best) epoch on the dev set.
    pub attention: FusionAttention,
}

/// `peft fuse`, printing its lines.
pub fn fuse(gpu: &Arc<Gpu>, args: &FuseArgs) -> Result<FuseSummary> {
    fuse_with(gpu, args, &RunControl::default(), &mut PlainReporter)
}

/// `peft fuse` with checkpoint control (resume, stops, saves every few steps, as
/// [`crate::train::train_with`]); its lines and progress go to `rep`.
pub fn fuse_with(gpu: &Arc<Gpu>, args: &FuseArgs, run: &RunControl, rep: &mut dyn Reporter) -> Result<FuseSummary> {
    let r = &args.run;
    if args.data.head_type != crate::formats::adapterhub::HeadKind::Classification {
        anyhow::bail!(
            "peft fuse trains a classification head; --head-type {} is not supported with AdapterFusion yet",
            args.data.head_type
        );
    }
    let RunStart { cfg, pad, task } = start_run(gpu, &args.model, &args.train, &args.data, r, rep)?;
    let sets = load_source_adapters(gpu, &args.fusion.adapters, &cfg)?;
    let config = args.fusion.fusion_config.config(args.fusion.temperature);
    // The planner counts the frozen adapters and a fusion layer at each of their sites.
    let spec = AdapterSpec::fusion_over(&sets, cfg.num_hidden_layers, config.value);
    let names = (&args.fusion.name, model_name(&args.model));
    let mut trainee = FusionTrainee::new(gpu, &cfg, sets, &config, names.0, task.labels.len(), r.seed, &names.1)?;
    trainee.dev_tokens = task.dev.real_tokens();
    let trainable = trainee.trainable_parameters();
    let model_params = model_parameters(&cfg);
    rep.message(&format!(
        "fusion: {} ({:?}{}{}) over {} frozen adapter(s), {} fusion layer(s); {} trainable parameters (fusion + head) = \
         {:.2}% of the model's {}",
        trainee.fusion.name,
        args.fusion.fusion_config,
        if config.regularization { ", W_V regularization" } else { "" },
        if config.temperature { ", temperature annealing" } else { "" },
        trainee.sets.len(),
        trainee.fusion.all_layers().count(),
        trainable,
        100.0 * trainable as f64 / model_params as f64,
        model_params
    ));
    let dropout = crate::train::trainer::dropout_rates(&cfg, r, rep)?;
    let mem_plan = plan_memory(
        gpu,
        &cfg,
        &task,
        r.batch_size,
        &spec,
        &args.memory,
        Trained::Fusion,
        dropout,
        args.optimizer.gradient_accumulation,
        r.precision,
        rep,
    )?;
    let (_, mut enc) = load::load_encoder_with(gpu, &args.model, Some(mem_plan.resident_layers()), r.precision)?;
    enc.follow(&mem_plan);
    let setup = LoopSetup {
        optimizer: &args.optimizer,
        run: r,
        out: &args.out,
        format: args.save.weights_format,
        command: "fuse",
        saved_what: "fusion + head",
        trainable_parameters: trainable,
        model_parameters: model_params,
        dropout,
    };
    if setup.dropout.is_some() {
        // AdapterHub's BertFusion also drops its attention scores (before the softmax) in training.
        rep.message("dropout: AdapterFusion's own dropout on its attention scores is not applied");
    }
    let ctl = LoopControl { run: run.clone(), settings: Some(args.settings()?), fingerprint: task.fingerprint() };
    let summary = run_loop_with(gpu, &mut enc, &mut trainee, &task, pad, &setup, &ctl, rep)?;
    // The saved epoch's attention: recorded by this run, or by the part of a resumed run before
    // its stop (the best epoch's files are written with its weights).
    let json = args.out.join(ATTENTION_JSON);
    // (Read back from the file: already written with its epoch's weights, and left as it is —
    // serde_json's float parsing is not an exact round trip, so writing it again could change
    // the last digit of a value.)
    let (attention, on_disk) = match trainee.best_attention.take() {
        Some(a) => (Some(a), false),
        None if json.exists() => (Some(FusionAttention::load_json(&json)?), true),
        None => (None, false),
    };
    if summary.stopped {
        return Ok(FuseSummary { train: summary, attention: attention.unwrap_or_default() });
    }
    let attention = attention.ok_or_else(|| anyhow!("internal: no fusion attention recorded for the saved epoch"))?;
    rep.message(&format!("dev set, epoch {} (saved):\n{}", summary.best_epoch, attention.table()));
    if !on_disk {
        attention.save_json(&args.out.join(ATTENTION_JSON))?;
        attention.plot(&args.out.join(ATTENTION_PNG))?;
    }
    rep.message(&format!("fusion attention written to {} and {}", ATTENTION_JSON, ATTENTION_PNG));
    Ok(FuseSummary { train: summary, attention })
}

/// Files `peft fuse` writes beside the fusion.
pub const ATTENTION_JSON: &str = "fusion_attention.json";
pub const ATTENTION_PNG: &str = "fusion_attention.png";
