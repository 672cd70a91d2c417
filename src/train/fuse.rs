//! `peft fuse`: AdapterFusion (Pfeiffer et al. 2021) as AdapterHub's `train_adapter_fusion`
//! trains it: the source adapters frozen, one fusion layer per transformer layer (query/key
//! N(0, 0.02), value the identity) and a new classification head trained with AdamW, plus
//! `0.01·Σ‖I − W_V‖²` added to the loss when the config asks for it. Shares the epoch loop with
//! `peft train` ([`super::run_loop`]); saves AdapterHub's fusion folder with the head.
//!
//! Also: evaluation and prediction of a saved fusion, and the fusion-attention insight: the mean
//! softmax weight per adapter per layer over the real tokens of a data set, summed on the GPU by
//! the encoder's fusion forward ([`FusionModel::record_weights`]).

use super::{load_task_data, model_name, model_parameters, run_loop, DataSpec, LoopArgs, TrainSummary, Trainee};
use crate::formats::adapterhub::{Fusion, FusionConfig};
use crate::gpu::{CommandRecorder, Gpu, GpuTensor};
use crate::kernels::elementwise;
use crate::kernels::fusion::{self as fusion_kernels, Temperature, REGULARIZATION_COEF};
use crate::model::adapters::{AdapterSet, ClassificationHead, Location};
use crate::model::config::BertConfig;
use crate::model::encoder::{Encoder, Setup};
use crate::model::fusion::FusionModel;
use crate::model::load;
use crate::train::data::{self, DataOptions, Example, LabelMap};
use crate::train::metrics::{self, Scores};
use crate::train::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// AdapterHub's two fusion presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
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

/// Everything `peft fuse` takes.
#[derive(Clone, Debug)]
pub struct FuseArgs {
    pub model: PathBuf,
    /// AdapterHub adapter folders (frozen; their order is the fusion's `adapter_names`).
    pub adapters: Vec<PathBuf>,
    pub train: PathBuf,
    pub dev: Option<PathBuf>,
    pub dev_split: f64,
    pub fusion_config: FusionPreset,
    /// AdapterHub's temperature annealing of the fusion softmax (T from 50 down to 1 by 0.05
    /// a forward pass); dev evaluation and saved-model inference use T = 1.
    pub temperature: bool,
    pub epochs: usize,
    pub lr: f32,
    pub batch_size: usize,
    pub max_length: usize,
    pub max_train_examples: Option<usize>,
    pub max_dev_examples: Option<usize>,
    pub seed: u64,
    pub out: PathBuf,
    pub warmup_ratio: f64,
    pub weight_decay: f32,
    pub max_grad_norm: f32,
    pub patience: Option<usize>,
    pub data: DataOptions,
    /// Name of the new head.
    pub head_name: String,
    pub resident_layers: Option<usize>,
    pub progress: bool,
}

impl Default for FuseArgs {
    /// AdapterHub's / the paper's fusion defaults: lr 5e-5, 10 epochs, batch 32, dynamic fusion.
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            adapters: vec![],
            train: PathBuf::new(),
            dev: None,
            dev_split: 0.1,
            fusion_config: FusionPreset::Dynamic,
            temperature: false,
            epochs: 10,
            lr: 5e-5,
            batch_size: 32,
            max_length: 128,
            max_train_examples: None,
            max_dev_examples: None,
            seed: 42,
            out: PathBuf::new(),
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            patience: None,
            data: DataOptions::default(),
            head_name: "target".into(),
            resident_layers: None,
            progress: true,
        }
    }
}

/// What `peft fuse` produced.
#[derive(Clone, Debug)]
pub struct FuseSummary {
    pub train: TrainSummary,
    /// The fusion attention of the saved (best) epoch on the dev set.
    pub attention: FusionAttention,
}

/// Mean fusion softmax weight per adapter per layer over the real tokens of a data set: which
/// source adapter the target task leans on, layer by layer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FusionAttention {
    pub adapter_names: Vec<String>,
    /// Encoder layers with a fusion layer.
    pub layers: Vec<usize>,
    /// `[layer][adapter]`; each row sums to 1 (softmax weights averaged over tokens).
    pub mean: Vec<Vec<f64>>,
    /// Real (unpadded) tokens averaged over.
    pub tokens: usize,
}

impl FusionAttention {
    /// Reads the sums the fusion recorded (see [`FusionModel::start_recording`]) over `tokens`
    /// real tokens.
    pub fn from_recorded(gpu: &Gpu, fusion: &FusionModel, tokens: usize) -> Result<Self> {
        let rows = fusion.recorded_means(gpu, tokens)?;
        Ok(Self {
            adapter_names: fusion.adapter_names.clone(),
            layers: rows.iter().map(|r| r.0).collect(),
            mean: rows.into_iter().map(|r| r.1).collect(),
            tokens,
        })
    }

    /// The mean over layers, per adapter.
    pub fn overall(&self) -> Vec<f64> {
        let n = self.adapter_names.len();
        let mut m = vec![0.0; n];
        for row in &self.mean {
            for (a, v) in m.iter_mut().zip(row) {
                *a += v / self.mean.len().max(1) as f64;
            }
        }
        m
    }

    /// A text table: one row per layer (and their mean), one column per adapter.
    pub fn table(&self) -> String {
        let w = self.adapter_names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(6);
        let mut s =
            format!("fusion attention: mean softmax weight per adapter ({} real tokens)\n{:<7}", self.tokens, "layer");
        for n in &self.adapter_names {
            s.push_str(&format!(" {n:>w$}"));
        }
        s.push('\n');
        let mut row = |label: String, vals: &[f64]| {
            s.push_str(&format!("{label:<7}"));
            for v in vals {
                s.push_str(&format!(" {v:>w$.4}"));
            }
            s.push('\n');
        };
        for (l, vals) in self.layers.iter().zip(&self.mean) {
            row(l.to_string(), vals);
        }
        row("mean".into(), &self.overall());
        s
    }

    /// A PNG heat map (layers × adapters), written atomically.
    pub fn plot(&self, path: &Path) -> Result<()> {
        let rows: Vec<String> = self.layers.iter().map(|l| format!("LAYER {l}")).collect();
        metrics::plot_heatmap(
            path,
            &format!("FUSION ATTENTION: MEAN SOFTMAX WEIGHT ({} TOKENS)", self.tokens),
            &self.adapter_names,
            &rows,
            &self.mean,
        )
    }

    /// Writes the table as JSON (atomically).
    pub fn save_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        crate::formats::write_atomic(path, text.as_bytes())
    }
}

/// AdapterHub's "bert" initialisation of a new classification head: N(0, 0.02), biases 0.
fn new_head(
    gpu: &Arc<Gpu>,
    name: &str,
    d: usize,
    labels: usize,
    rng: &mut rand::rngs::StdRng,
) -> Result<ClassificationHead> {
    let mut values: HashMap<String, Vec<f32>> = HashMap::new();
    for (n, s) in
        ClassificationHead::tensor_names(name).iter().zip([vec![d, d], vec![d], vec![labels, d], vec![labels]])
    {
        values.insert(n.clone(), super::init_values(rng, n, &s));
    }
    let get = |n: &str, _shape: &[usize]| -> Result<Vec<f32>> {
        values.get(n).cloned().ok_or_else(|| anyhow!("internal: no initial value for {n}"))
    };
    ClassificationHead::from_tensors(gpu, name, d, labels, &get)
}

/// Loads the source adapters (frozen) and checks that they can be fused: distinct names, and
/// adapters at the FFN output only (AdapterHub's `seq_bn` / Pfeiffer), where the fusion layers sit.
pub fn load_source_adapters(gpu: &Arc<Gpu>, dirs: &[PathBuf], cfg: &BertConfig) -> Result<Vec<AdapterSet>> {
    if dirs.is_empty() {
        bail!("fusion needs at least one --adapter folder");
    }
    let mut sets: Vec<AdapterSet> = vec![];
    for dir in dirs {
        let (set, _) =
            load::load_adapter(gpu, dir, cfg).with_context(|| format!("loading adapter {}", dir.display()))?;
        if sets.iter().any(|s| s.name == set.name) {
            bail!("{}: two adapters are named {:?}; fused adapters need distinct names", dir.display(), set.name);
        }
        if set.attention.iter().any(Option::is_some) {
            bail!(
                "{}: adapter {:?} has adapters after the attention output (Houlsby / double_seq_bn); fusion here \
                 supports adapters at the FFN output only (Pfeiffer / seq_bn: `peft train --config pfeiffer`)",
                dir.display(),
                set.name
            );
        }
        sets.push(set);
    }
    Ok(sets)
}

/// The layers where every adapter has an FFN-output adapter (a fusion layer goes there); an
/// error when some but not all do.
fn fusion_layers(sets: &[AdapterSet], layers: usize) -> Result<Vec<bool>> {
    (0..layers)
        .map(|l| {
            let have: Vec<&str> =
                sets.iter().filter(|s| s.at(l, Location::Output).is_some()).map(|s| s.name.as_str()).collect();
            if !have.is_empty() && have.len() != sets.len() {
                bail!("layer {l}: only {have:?} of the fused adapters have an adapter there; fusion needs all of them");
            }
            Ok(!have.is_empty())
        })
        .collect()
}

/// A fusion + new head being trained over frozen adapters.
pub struct FusionTrainee {
    pub sets: Vec<AdapterSet>,
    pub fusion: FusionModel,
    pub head: ClassificationHead,
    temperature: Temperature,
    reg_loss: GpuTensor,
    hidden: usize,
    model_name: String,
    /// Real tokens of the dev set (for the fusion attention of the saved epoch).
    dev_tokens: usize,
    /// The dev fusion attention of the last saved epoch.
    pub best_attention: Option<FusionAttention>,
}

impl FusionTrainee {
    /// A new fusion over `sets` (in this order) with AdapterHub's initialisation, and a new head.
    pub fn new(
        gpu: &Arc<Gpu>,
        cfg: &BertConfig,
        sets: Vec<AdapterSet>,
        config: &FusionConfig,
        head_name: &str,
        labels: usize,
        seed: u64,
        model_name: &str,
    ) -> Result<Self> {
        let d = cfg.hidden_size;
        let present = fusion_layers(&sets, cfg.num_hidden_layers)?;
        let names: Vec<String> = sets.iter().map(|s| s.name.clone()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let fusion =
            FusionModel::new_initialized(gpu, &names, config, cfg.num_hidden_layers, &|l| present[l], d, &mut rng)?;
        let head = new_head(gpu, head_name, d, labels, &mut rng)?;
        Ok(Self {
            sets,
            fusion,
            head,
            temperature: Temperature::from_config(config.temperature),
            reg_loss: GpuTensor::zeros(gpu, &[1])?,
            hidden: d,
            model_name: model_name.into(),
            dev_tokens: 0,
            best_attention: None,
        })
    }

    pub fn trainable_parameters(&self) -> usize {
        self.fusion.parameters() + self.head.parameters()
    }

    /// AdapterHub's fusion + head for saving.
    pub fn to_adapterhub(&self, gpu: &Gpu, labels: &[String]) -> Result<Fusion> {
        let mut f = self.fusion.to_fusion(gpu, self.hidden, &self.model_name)?;
        f.head = Some(super::checkpoint::head_to_adapterhub(gpu, &self.head, labels, self.hidden, &self.model_name)?);
        Ok(f)
    }
}

impl Trainee for FusionTrainee {
    fn setup(&self) -> Setup<'_> {
        Setup::Fusion { adapters: self.sets.iter().collect(), fusion: &self.fusion }
    }

    fn head(&self) -> &ClassificationHead {
        &self.head
    }

    fn params(&self) -> Vec<(String, &GpuTensor, &GpuTensor)> {
        self.fusion.named().into_iter().chain(self.head.named()).collect()
    }

    fn before_train_pass(&mut self) {
        self.fusion.stop_recording();
        self.fusion.temperature = self.temperature.next_forward();
    }

    /// `0.01·Σ_layers ‖I − W_V‖²_F` and its gradient added to dW_V, on the GPU (AdapterHub's
    /// `get_fusion_regularization_loss`, when the config's `regularization` is set and there is a
    /// value matrix).
    fn record_extra_loss(&mut self, b: &mut CommandRecorder) -> Result<Option<GpuTensor>> {
        if !self.fusion.config.regularization || !self.fusion.config.value {
            return Ok(None);
        }
        elementwise::fill(b, &self.reg_loss, 0.0)?;
        for layer in self.fusion.layers.iter().flatten() {
            if let (Some(w_v), Some(g_v)) = (&layer.w.w_v, &layer.grad.w_v) {
                fusion_kernels::regularization(b, w_v, REGULARIZATION_COEF, g_v, Some(&self.reg_loss), true)?;
            }
        }
        Ok(Some(self.reg_loss.clone()))
    }

    fn before_eval(&mut self, gpu: &Arc<Gpu>) -> Result<()> {
        // Inference uses the annealing's end value (what a saved fusion is evaluated with).
        self.fusion.temperature = 1.0;
        self.fusion.start_recording(gpu)
    }

    fn save(&mut self, gpu: &Arc<Gpu>, out: &Path, labels: &[String]) -> Result<()> {
        self.to_adapterhub(gpu, labels)?.save(out)?;
        if self.fusion.weight_sums.is_some() && self.dev_tokens > 0 {
            self.best_attention = Some(FusionAttention::from_recorded(gpu, &self.fusion, self.dev_tokens)?);
        }
        Ok(())
    }
}

/// `peft fuse`.
pub fn fuse(gpu: &Arc<Gpu>, args: &FuseArgs) -> Result<FuseSummary> {
    if args.batch_size == 0 || args.epochs == 0 {
        bail!("--batch-size and --epochs must be at least 1");
    }
    println!("device: {}", gpu.description.summary());
    let (cfg, mut enc) = load::load_encoder(gpu, &args.model, args.resident_layers)?;
    let sets = load_source_adapters(gpu, &args.adapters, &cfg)?;
    let tok = Tokenizer::from_model_dir(&args.model, args.max_length.min(cfg.max_position_embeddings))?;
    let pad = data::pad_id(&tok);
    let task = load_task_data(
        &tok,
        &DataSpec {
            train: &args.train,
            dev: args.dev.as_deref(),
            dev_split: args.dev_split,
            max_train_examples: args.max_train_examples,
            max_dev_examples: args.max_dev_examples,
            seed: args.seed,
            options: &args.data,
        },
    )?;
    let config = args.fusion_config.config(args.temperature);
    let mut trainee = FusionTrainee::new(
        gpu,
        &cfg,
        sets,
        &config,
        &args.head_name,
        task.labels.len(),
        args.seed,
        &model_name(&args.model),
    )?;
    trainee.dev_tokens = task.dev.real_tokens();
    let trainable = trainee.trainable_parameters();
    let model_params = model_parameters(&cfg);
    println!(
        "fusion: {} ({:?}{}{}) over {} frozen adapter(s), {} fusion layer(s); {} trainable parameters (fusion + head) = \
         {:.2}% of the model's {}",
        trainee.fusion.name,
        args.fusion_config,
        if config.regularization { ", W_V regularization" } else { "" },
        if config.temperature { ", temperature annealing" } else { "" },
        trainee.sets.len(),
        trainee.fusion.layers.iter().flatten().count(),
        trainable,
        100.0 * trainable as f64 / model_params as f64,
        model_params
    );
    let loop_args = LoopArgs {
        epochs: args.epochs,
        lr: args.lr,
        batch_size: args.batch_size,
        seed: args.seed,
        warmup_ratio: args.warmup_ratio,
        weight_decay: args.weight_decay,
        max_grad_norm: args.max_grad_norm,
        patience: args.patience,
        out: &args.out,
        progress: args.progress,
        saved_what: "fusion + head",
        trainable_parameters: trainable,
        model_parameters: model_params,
    };
    let summary = run_loop(gpu, &mut enc, &mut trainee, &task, pad, &loop_args)?;
    let attention = trainee
        .best_attention
        .take()
        .ok_or_else(|| anyhow!("internal: no fusion attention recorded for the saved epoch"))?;
    println!("dev set, epoch {} (saved):\n{}", summary.best_epoch, attention.table());
    attention.save_json(&args.out.join(ATTENTION_JSON))?;
    attention.plot(&args.out.join(ATTENTION_PNG))?;
    println!("fusion attention written to {} and {}", ATTENTION_JSON, ATTENTION_PNG);
    Ok(FuseSummary { train: summary, attention })
}

/// Files `peft fuse` writes beside the fusion.
pub const ATTENTION_JSON: &str = "fusion_attention.json";
pub const ATTENTION_PNG: &str = "fusion_attention.png";

/// Where a saved fusion and what it needs live.
#[derive(Clone, Debug, Default)]
pub struct FusedPaths {
    pub model: PathBuf,
    /// AdapterHub fusion folder (`adapter_fusion_config.json`, `model_adapter_fusion.safetensors`).
    pub fusion: PathBuf,
    /// The fused adapters' folders (any order; matched by name).
    pub adapters: Vec<PathBuf>,
    /// Head folder; default: the head saved in the fusion folder.
    pub head: Option<PathBuf>,
}

/// A saved fusion ready for inference.
pub struct LoadedFusion {
    pub cfg: BertConfig,
    pub enc: Encoder,
    /// In the fusion's adapter order.
    pub sets: Vec<AdapterSet>,
    pub fusion: FusionModel,
    pub head: ClassificationHead,
    pub labels: LabelMap,
    pub tok: Tokenizer,
}

impl LoadedFusion {
    pub fn setup(&self) -> Setup<'_> {
        Setup::Fusion { adapters: self.sets.iter().collect(), fusion: &self.fusion }
    }
}

pub fn load_fused(gpu: &Arc<Gpu>, p: &FusedPaths, max_length: usize) -> Result<LoadedFusion> {
    let (cfg, enc) = load::load_encoder(gpu, &p.model, None)?;
    let d = cfg.hidden_size;
    let f = Fusion::load(&p.fusion, &cfg)?;
    let fusion = FusionModel::for_inference(gpu, &f, d)?;
    let mut loaded = load_source_adapters(gpu, &p.adapters, &cfg)?;
    let mut sets = vec![];
    for name in &fusion.adapter_names {
        let k = loaded.iter().position(|s| &s.name == name).ok_or_else(|| {
            anyhow!("fusion {:?} needs adapter {name:?}: pass its folder with --adapter", fusion.name)
        })?;
        sets.push(loaded.swap_remove(k));
    }
    if let Some(extra) = loaded.first() {
        bail!("adapter {:?} is not part of fusion {:?}", extra.name, fusion.name);
    }
    let present = fusion_layers(&sets, cfg.num_hidden_layers)?;
    for (l, layer) in fusion.layers.iter().enumerate() {
        if layer.is_some() && !present[l] {
            bail!("fusion {:?} has a fusion layer in layer {l}, where its adapters have none", fusion.name);
        }
    }
    let h = match (&p.head, &f.head) {
        (Some(dir), _) => crate::formats::adapterhub::Head::load(dir, d)?,
        (None, Some(h)) => h.clone(),
        (None, None) => bail!("{}: no head saved with the fusion; pass --head DIR", p.fusion.display()),
    };
    let labels = LabelMap::new(h.config.id2label.clone())?;
    let head = load::classification_head(gpu, &h, d)?;
    let tok = Tokenizer::from_model_dir(&p.model, max_length.min(cfg.max_position_embeddings))?;
    Ok(LoadedFusion { cfg, enc, sets, fusion, head, labels, tok })
}

/// `peft eval --fusion`: accuracy and macro-F1 on a labelled file, and the fusion attention on it.
pub fn evaluate_fused(
    gpu: &Arc<Gpu>,
    p: &FusedPaths,
    data_path: &Path,
    opts: &DataOptions,
    batch_size: usize,
    max_length: usize,
) -> Result<(Scores, FusionAttention)> {
    let mut l = load_fused(gpu, p, max_length)?;
    let ex = data::load_examples(data_path, opts)?;
    if ex.is_empty() {
        bail!("{}: no examples", data_path.display());
    }
    let prepared = super::prepare(&l.tok, &ex, &l.labels, &data_path.display().to_string())?;
    let pad = data::pad_id(&l.tok);
    l.fusion.start_recording(gpu)?;
    let setup = Setup::Fusion { adapters: l.sets.iter().collect(), fusion: &l.fusion };
    let scores = super::evaluate_prepared(&mut l.enc, &setup, &l.head, &prepared, pad, batch_size)?;
    let attention = FusionAttention::from_recorded(gpu, &l.fusion, prepared.real_tokens())?;
    Ok((scores, attention))
}

/// `peft predict --fusion`.
pub fn predict_fused(
    gpu: &Arc<Gpu>,
    p: &FusedPaths,
    examples: &[Example],
    batch_size: usize,
    max_length: usize,
) -> Result<Vec<super::Prediction>> {
    let mut l = load_fused(gpu, p, max_length)?;
    let tokens = data::tokenize(&l.tok, examples)?;
    let pad = data::pad_id(&l.tok);
    let setup = Setup::Fusion { adapters: l.sets.iter().collect(), fusion: &l.fusion };
    let logits = super::predict_logits(&mut l.enc, &setup, &l.head, &tokens, pad, batch_size)?;
    super::predictions(gpu, &l.labels, examples, &logits, l.head.labels)
}
