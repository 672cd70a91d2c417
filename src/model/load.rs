//! Builds the GPU model from what is on disk: a HF model directory, AdapterHub adapter and head
//! folders (read by [`crate::formats::adapterhub`]).

use super::adapters::{AdapterSet, ClassificationHead, Location, ModuleOptions, Placement};
use super::config::{BertConfig, Family};
use super::encoder::{Dims, EmbeddingLayout, Encoder};
use super::source::FileSource;
use crate::formats::adapterhub::{Adapter, Head};
use crate::formats::weights::{TensorMap, WeightFile};
use crate::gpu::Gpu;
use crate::types::WeightPrecision;
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use std::sync::Arc;

pub fn dims(cfg: &BertConfig) -> Dims {
    Dims {
        hidden: cfg.hidden_size,
        layers: cfg.num_hidden_layers,
        heads: cfg.num_attention_heads,
        ffn: cfg.intermediate_size,
        act: cfg.hidden_act,
        eps: cfg.layer_norm_eps as f32,
        // The longest sequence (RoBERTa's first pad_token_id + 1 positions are not for tokens).
        max_positions: cfg.max_sequence_length(),
        type_vocab: cfg.type_vocab_size,
        vocab: cfg.vocab_size,
    }
}

/// The base checkpoint of `model_dir`: `model.safetensors` (memory-mapped), else torch's
/// `pytorch_model.bin` (older Hub folders; read into memory by the restricted pickle reader of
/// [`crate::formats::torch_bin`]).
pub fn open_checkpoint(model_dir: &Path) -> Result<WeightFile> {
    let path = model_dir.join("model.safetensors");
    if path.exists() {
        return WeightFile::open(&path);
    }
    let bin = model_dir.join("pytorch_model.bin");
    if bin.exists() {
        return crate::formats::torch_bin::open(&bin);
    }
    bail!("{}: no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)", model_dir.display())
}

/// Opens `model_dir` (`config.json` + `model.safetensors` or `pytorch_model.bin`, any supported
/// family) on the GPU. `resident_layers`: how many layers stay on the GPU (`None`: all).
pub fn load_encoder(gpu: &Arc<Gpu>, model_dir: &Path, resident_layers: Option<usize>) -> Result<(BertConfig, Encoder)> {
    load_encoder_with(gpu, model_dir, resident_layers, WeightPrecision::F32)
}

/// [`load_encoder`] with the layers' matrices stored in `precision` (`--precision`).
pub fn load_encoder_with(
    gpu: &Arc<Gpu>,
    model_dir: &Path,
    resident_layers: Option<usize>,
    precision: WeightPrecision,
) -> Result<(BertConfig, Encoder)> {
    let cfg = BertConfig::from_model_dir(model_dir)?;
    let file = open_checkpoint(model_dir)?;
    super::weights::validate_bert_weights(&file, &cfg)?;
    let enc = build_encoder(gpu, &cfg, file, resident_layers, precision)
        .with_context(|| format!("loading {}", model_dir.display()))?;
    Ok((cfg, enc))
}

/// [`load_encoder`] from a config and a checkpoint already open (the browser build: the files a
/// user picked, as [`WeightFile::from_bytes`]).
pub fn encoder_from_checkpoint(
    gpu: &Arc<Gpu>,
    cfg: &BertConfig,
    file: WeightFile,
    resident_layers: Option<usize>,
    precision: WeightPrecision,
) -> Result<Encoder> {
    super::weights::validate_bert_weights(&file, cfg)?;
    build_encoder(gpu, cfg, file, resident_layers, precision)
}

/// The encoder on a checkpoint whose weights were validated against `cfg`.
fn build_encoder(
    gpu: &Arc<Gpu>,
    cfg: &BertConfig,
    file: WeightFile,
    resident_layers: Option<usize>,
    precision: WeightPrecision,
) -> Result<Encoder> {
    let dims = dims(cfg);
    let source = Arc::new(FileSource::for_family(file, cfg.family()));
    let layout = EmbeddingLayout::from_config(cfg);
    Encoder::with_layout(gpu.clone(), dims, layout, source, resident_layers.unwrap_or(dims.layers), precision)
}

/// Reads the tensors the engine names as BERT does (`bert.encoder.layer...`, `heads...`) from `map`,
/// where `family`'s names (with or without the prefix) are found too.
fn getter<'a>(map: &'a TensorMap, what: &'a str, family: Family) -> impl Fn(&str, &[usize]) -> Result<Vec<f32>> + 'a {
    move |name: &str, shape: &[usize]| {
        let named = family.file_name(name);
        let t = map
            .get(name)
            .or_else(|| map.get(&named))
            .or_else(|| named.strip_prefix(family.prefix()).and_then(|n| map.get(n)))
            .or_else(|| name.strip_prefix("bert.").and_then(|n| map.get(n)))
            .ok_or_else(|| anyhow!("{what}: tensor {named:?} is missing"))?;
        if t.shape != shape {
            bail!("{what}: tensor {name:?} has shape {:?}, expected {shape:?}", t.shape);
        }
        Ok(t.data.clone())
    }
}

/// An adapter read from an AdapterHub folder, on the GPU.
pub fn adapter_set(gpu: &Arc<Gpu>, a: &Adapter, cfg: &BertConfig) -> Result<AdapterSet> {
    let c = &a.config;
    let placement = Placement::of(c).with_context(|| format!("adapter {:?}", a.name()))?;
    let m = a
        .layers
        .iter()
        .flat_map(|l| [l.attention.as_ref(), l.output.as_ref()])
        .flatten()
        .map(|w| w.bottleneck_dim())
        .next()
        // No module at all (every layer left out, as `peft train --config none` saves the head
        // alone): the bottleneck size is then never used.
        .unwrap_or(0);
    let map = a.tensors();
    let what = format!("adapter {:?}", a.name());
    let layers = &a.layers;
    let get = getter(&map, &what, cfg.family());
    let set = AdapterSet::from_tensors(
        gpu,
        a.name(),
        placement,
        ModuleOptions::of(c),
        c.non_linearity,
        c.scaling as f32,
        cfg.hidden_size,
        m,
        cfg.num_hidden_layers,
        &|l, loc| match loc {
            Location::Attention => layers.get(l).is_some_and(|x| x.attention.is_some()),
            Location::Output => layers.get(l).is_some_and(|x| x.output.is_some()),
        },
        &get,
    )?;
    Ok(set)
}

/// Loads an adapter folder (and the head saved with it, if any).
pub fn load_adapter(gpu: &Arc<Gpu>, dir: &Path, cfg: &BertConfig) -> Result<(AdapterSet, Option<ClassificationHead>)> {
    let a = Adapter::load(dir, cfg)?;
    let set = adapter_set(gpu, &a, cfg)?;
    let head = a.head.as_ref().map(|h| classification_head(gpu, h, cfg.hidden_size)).transpose()?;
    Ok((set, head))
}

/// A saved head on the GPU (classification, regression, multi-label or tagging; layouts the GPU
/// head does not run are refused by [`ClassificationHead::check_supported`]).
pub fn classification_head(gpu: &Arc<Gpu>, h: &Head, d: usize) -> Result<ClassificationHead> {
    let map = h.tensors();
    let what = format!("head {:?}", h.name());
    let get = getter(&map, &what, Family::Bert);
    ClassificationHead::from_config(gpu, h.name(), d, &h.config, &get)
}

/// Loads a head folder.
pub fn load_head(gpu: &Arc<Gpu>, dir: &Path, d: usize) -> Result<ClassificationHead> {
    classification_head(gpu, &Head::load(dir, d)?, d)
}
