//! AdapterHub's on-disk formats (the Python `adapters` library, 1.x), read and written:
//!
//! | folder holds | config | weights | tensor names |
//! |---|---|---|---|
//! | a bottleneck adapter | `adapter_config.json` | `adapter.safetensors` / `pytorch_adapter.bin` | `bert.encoder.layer.L.{attention.output,output}.adapters.<name>.{adapter_down.0,adapter_up}.{weight,bias}` |
//! | a prediction head | `head_config.json` | `model_head.safetensors` / `pytorch_model_head.bin` | `heads.<name>.<i>.{weight,bias}` |
//! | an AdapterFusion | `adapter_fusion_config.json` | `model_adapter_fusion.safetensors` / `pytorch_model_adapter_fusion.bin` | `bert.encoder.layer.L.output.adapter_fusion_layer.<a,b,c>.{query,key}.{weight,bias}`, `...value.weight` |
//!
//! Weights are read from the safetensors file when there is one, else from torch's `.bin` (what
//! the `adapters` library's `save_adapter` writes by default; see [`super::torch_bin`]); saving
//! writes either or both ([`WeightsFormat`], both by default).
//!
//! A head saved with an adapter (`save_adapter(..., with_head=True)`) lies in the adapter's
//! folder and is loaded from there. Every config file is an envelope ([`SavedConfig`]: `config`,
//! `hidden_size`, `model_class`, `model_name`, `model_type`, `name`, `version`, and fusion's
//! `adapter_names`) that is kept whole, so what we read is written back byte for byte; the typed
//! views ([`BottleneckConfig`], [`HeadConfig`], [`FusionConfig`]) refuse, naming the option,
//! anything the engine does not implement. Writing is atomic (temporary file, fsync, rename) and
//! lays the JSON out as Python's `json.dump(indent=2, sort_keys=True)` does.
//!
//! Files: `envelope.rs` ([`SavedConfig`]), `options.rs` (the option names each `config` may hold
//! and typed readers of one option), `bottleneck.rs` / `head.rs` / `fusion.rs` (each kind's typed
//! config, what we write for it as a serde struct, and its folder's load and save; the adapter's
//! folder in `adapter.rs`), `names.rs` (tensor names).

mod adapter;
mod bottleneck;
mod envelope;
mod fusion;
mod head;
mod names;
mod options;

pub use adapter::{Adapter, BottleneckWeights, LayerAdapters};
pub use bottleneck::{BottleneckConfig, ReductionFactor, ResidualBeforeLn, TrainedScaling, INIT_WEIGHTS};
pub use envelope::SavedConfig;
pub use fusion::{Fusion, FusionConfig, FusionLayer};
pub use head::{Head, HeadConfig, HeadKind, HeadLinear};
pub use names::{
    adapter_param_name, adapter_tensor_name, fusion_param_name, fusion_site_param_name, head_param_name, AdapterSite,
    BottleneckParam, FusionParam, OptionParam,
};
pub use options::{BOTTLENECK_OPTIONS, FUSION_OPTIONS, HEAD_OPTIONS};

use super::family::Family;
use super::torch_bin;
use super::weights::{write_tensors, TensorMap, WeightFile};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::Path;

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter.safetensors";
pub const HEAD_CONFIG_FILE: &str = "head_config.json";
pub const HEAD_WEIGHTS_FILE: &str = "model_head.safetensors";
pub const FUSION_CONFIG_FILE: &str = "adapter_fusion_config.json";
pub const FUSION_WEIGHTS_FILE: &str = "model_adapter_fusion.safetensors";
/// The torch `.bin` files the `adapters` library writes by default (and reads by default: its
/// `load_adapter` reads safetensors only when asked with `use_safetensors=True`).
pub const ADAPTER_WEIGHTS_BIN: &str = "pytorch_adapter.bin";
pub const HEAD_WEIGHTS_BIN: &str = "pytorch_model_head.bin";
pub const FUSION_WEIGHTS_BIN: &str = "pytorch_model_adapter_fusion.bin";

/// Which weight files a save writes: safetensors, torch's `.bin`, or both (the default, so both
/// Python's plain `load_adapter(dir)` and `use_safetensors=True` read the folder).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightsFormat {
    Safetensors,
    Bin,
    #[default]
    Both,
}

impl WeightsFormat {
    pub const ALL: [WeightsFormat; 3] = [WeightsFormat::Safetensors, WeightsFormat::Bin, WeightsFormat::Both];

    pub fn name(self) -> &'static str {
        match self {
            WeightsFormat::Safetensors => "safetensors",
            WeightsFormat::Bin => "bin",
            WeightsFormat::Both => "both",
        }
    }

    fn safetensors(self) -> bool {
        self != WeightsFormat::Bin
    }

    fn bin(self) -> bool {
        self != WeightsFormat::Safetensors
    }
}

impl std::fmt::Display for WeightsFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WeightsFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match Self::ALL.into_iter().find(|f| f.name() == s) {
            Some(f) => Ok(f),
            None => bail!("weights format {s:?}: expected safetensors, bin or both"),
        }
    }
}

/// The two files one kind of weights may be in (`safetensors` first).
#[derive(Clone, Copy, Debug)]
pub(super) struct WeightsFiles {
    pub(super) safetensors: &'static str,
    pub(super) bin: &'static str,
}

pub(super) const ADAPTER_WEIGHTS: WeightsFiles =
    WeightsFiles { safetensors: ADAPTER_WEIGHTS_FILE, bin: ADAPTER_WEIGHTS_BIN };
pub(super) const HEAD_WEIGHTS: WeightsFiles = WeightsFiles { safetensors: HEAD_WEIGHTS_FILE, bin: HEAD_WEIGHTS_BIN };
pub(super) const FUSION_WEIGHTS: WeightsFiles =
    WeightsFiles { safetensors: FUSION_WEIGHTS_FILE, bin: FUSION_WEIGHTS_BIN };

impl WeightsFiles {
    /// Whether `dir` holds either file.
    pub(super) fn present(self, dir: &Path) -> bool {
        dir.join(self.safetensors).exists() || dir.join(self.bin).exists()
    }

    /// The safetensors file of `dir`, or else its `.bin`; the error names both when neither is there.
    pub(super) fn open(self, dir: &Path) -> Result<WeightFile> {
        let st = dir.join(self.safetensors);
        if st.exists() {
            return WeightFile::open(st);
        }
        let bin = dir.join(self.bin);
        if bin.exists() {
            return torch_bin::open(&bin);
        }
        bail!("{}: neither {} nor {} is there", dir.display(), self.safetensors, self.bin)
    }

    /// Writes `tensors` into `dir` as `format` says, each file atomically. A file of the format not
    /// written is removed, so the folder never holds a stale copy beside the new one.
    pub(super) fn write(self, dir: &Path, tensors: &TensorMap, format: WeightsFormat) -> Result<()> {
        let (st, bin) = (dir.join(self.safetensors), dir.join(self.bin));
        if format.safetensors() {
            write_tensors(&st, tensors, None)?;
        } else if st.exists() {
            std::fs::remove_file(&st).with_context(|| format!("removing the stale {}", st.display()))?;
        }
        if format.bin() {
            torch_bin::write_tensors(&bin, tensors)?;
        } else if bin.exists() {
            std::fs::remove_file(&bin).with_context(|| format!("removing the stale {}", bin.display()))?;
        }
        Ok(())
    }
}

/// What we write in `version` (the format we follow).
pub const ADAPTERS_VERSION: &str = "adapters.1.3.0";
/// What we write in `model_class` for BERT: the flexible-head model Python loads these into
/// (other families: [`Family::adapter_model_class`]).
pub const MODEL_CLASS: &str = "BertAdapterModel";
/// The prefix of encoder tensors in `BertAdapterModel` (written; read with or without). Other
/// families use theirs ([`Family::prefix`]).
pub const BASE_PREFIX: &str = "bert.";

/// Looks a tensor up under `family`'s name for `bert_name` (a `bert.`-prefixed name as
/// [`adapter_param_name`] makes it), with the family's prefix or without it.
pub(super) fn lookup(file: &WeightFile, bert_name: &str, family: Family) -> Option<String> {
    let named = family.file_name(bert_name);
    if file.contains(&named) {
        return Some(named);
    }
    let bare = named.strip_prefix(family.prefix())?;
    file.contains(bare).then(|| bare.to_string())
}

/// The family a saved config names in `model_type` (BERT when it names none or one we do not know:
/// loading checks it against the model first, [`SavedConfig::check_model`]).
pub(super) fn saved_family(saved: &SavedConfig) -> Family {
    saved.model_type().and_then(Family::from_model_type).unwrap_or_default()
}

/// Fails naming the tensors of `file` that the config does not account for (`left`); `why` says
/// what the config implies.
pub(super) fn unexpected_error(file: &WeightFile, left: &BTreeSet<String>, why: &str) -> Result<()> {
    if left.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = left.iter().take(8).map(String::as_str).collect();
    bail!(
        "{}: {} unexpected tensor(s) ({why}): {}{}",
        file.path().display(),
        left.len(),
        shown.join(", "),
        if left.len() > 8 { ", ..." } else { "" }
    )
}
