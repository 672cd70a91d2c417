//! Evaluation and prediction with a saved fusion (`peft eval / predict --fusion`).

use super::trainee::drop_layers_without_adapters;
use super::{fusion_layers, load_source_adapters, FusionAttention};
use crate::formats::adapterhub::Fusion;
use crate::gpu::Gpu;
use crate::model::adapters::{AdapterSet, ClassificationHead};
use crate::model::config::BertConfig;
use crate::model::encoder::{Encoder, Setup};
use crate::model::fusion::FusionModel;
use crate::model::load;
use crate::train::data::{self, DataOptions, Example, LabelMap};
use crate::train::infer::{evaluate_prepared, predict_logits, predictions, Prediction};
use crate::train::metrics::Scores;
use crate::train::report::{PlainReporter, Reporter};
use crate::train::task::prepare;
use crate::train::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Drops `f`'s fusion layers where none of its adapters `sets` has a module (`leave_out`), with a
/// note: the adapters library saves them but never runs them. Shared by `eval / predict / grads --fusion`.
pub(crate) fn ignore_left_out_layers(f: &mut Fusion, sets: &[AdapterSet], layers: usize) -> Result<()> {
    let present = fusion_layers(sets, layers)?;
    let dropped = drop_layers_without_adapters(f, &present);
    if !dropped.is_empty() {
        PlainReporter.note(&format!(
            "note: fusion {:?}: ignoring its fusion layer(s) at {} where its adapters have none (left out); \
             the adapters library saves them but never runs them",
            f.fusion_name(),
            dropped.join(", ")
        ));
    }
    Ok(())
}

pub fn load_fused(gpu: &Arc<Gpu>, p: &FusedPaths, max_length: usize) -> Result<LoadedFusion> {
    let (cfg, enc) = load::load_encoder(gpu, &p.model, None)?;
    let d = cfg.hidden_size;
    let mut f = Fusion::load(&p.fusion, &cfg)?;
    let name = f.fusion_name();
    let mut loaded = load_source_adapters(gpu, &p.adapters, &cfg)?;
    let mut sets = vec![];
    for adapter in &f.adapter_names {
        let k = loaded
            .iter()
            .position(|s| &s.name == adapter)
            .ok_or_else(|| anyhow!("fusion {name:?} needs adapter {adapter:?}: pass its folder with --adapter"))?;
        sets.push(loaded.swap_remove(k));
    }
    if let Some(extra) = loaded.first() {
        bail!("adapter {:?} is not part of fusion {name:?}", extra.name);
    }
    ignore_left_out_layers(&mut f, &sets, cfg.num_hidden_layers)?;
    let fusion = FusionModel::for_inference(gpu, &f, d)?;
    let h = match (&p.head, &f.head) {
        (Some(dir), _) => crate::formats::adapterhub::Head::load(dir, d)?,
        (None, Some(h)) => h.clone(),
        (None, None) => bail!("{}: no head saved with the fusion; pass --head DIR", p.fusion.display()),
    };
    if h.config.kind != crate::formats::adapterhub::HeadKind::Classification {
        bail!(
            "head {:?} is a {} head: eval / predict --fusion run classification heads only (peft grads reads any)",
            h.name(),
            h.config.kind
        );
    }
    let labels = LabelMap::new(h.config.id2label.clone())?;
    let head = load::classification_head(gpu, &h, d)?;
    let tok = Tokenizer::for_model(&p.model, &cfg, max_length)?;
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
    let prepared = prepare(&l.tok, &ex, &l.labels, &data_path.display().to_string(), &mut PlainReporter)?;
    let pad = data::pad_id(&l.tok);
    l.fusion.start_recording(gpu)?;
    let setup = Setup::Fusion { adapters: l.sets.iter().collect(), fusion: &l.fusion };
    let scores = evaluate_prepared(&mut l.enc, &setup, &l.head, &prepared, pad, batch_size)?;
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
) -> Result<Vec<Prediction>> {
    let mut l = load_fused(gpu, p, max_length)?;
    let tokens = data::tokenize(&l.tok, examples)?;
    let pad = data::pad_id(&l.tok);
    let setup = Setup::Fusion { adapters: l.sets.iter().collect(), fusion: &l.fusion };
    let logits = predict_logits(&mut l.enc, &setup, &l.head, &tokens, pad, batch_size)?;
    predictions(gpu, &l.labels, examples, &logits, l.head.labels)
}
