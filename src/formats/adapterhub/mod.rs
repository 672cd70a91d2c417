//! AdapterHub's on-disk formats (the Python `adapters` library, 1.x), read and written:
//!
//! | folder holds | config | weights | tensor names |
//! |---|---|---|---|
//! | a bottleneck adapter | `adapter_config.json` | `adapter.safetensors` | `bert.encoder.layer.L.{attention.output,output}.adapters.<name>.{adapter_down.0,adapter_up}.{weight,bias}` |
//! | a prediction head | `head_config.json` | `model_head.safetensors` | `heads.<name>.<i>.{weight,bias}` |
//! | an AdapterFusion | `adapter_fusion_config.json` | `model_adapter_fusion.safetensors` | `bert.encoder.layer.L.output.adapter_fusion_layer.<a,b,c>.{query,key}.{weight,bias}`, `...value.weight` |
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
pub use bottleneck::{BottleneckConfig, ReductionFactor, ResidualBeforeLn};
pub use envelope::SavedConfig;
pub use fusion::{Fusion, FusionConfig, FusionLayer};
pub use head::{Head, HeadConfig, HeadLinear};
pub use names::{adapter_param_name, fusion_param_name, head_param_name, AdapterSite, BottleneckParam, FusionParam};
pub use options::{BOTTLENECK_OPTIONS, FUSION_OPTIONS, HEAD_OPTIONS};

use super::weights::WeightFile;
use anyhow::{bail, Result};
use std::collections::BTreeSet;

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter.safetensors";
pub const HEAD_CONFIG_FILE: &str = "head_config.json";
pub const HEAD_WEIGHTS_FILE: &str = "model_head.safetensors";
pub const FUSION_CONFIG_FILE: &str = "adapter_fusion_config.json";
pub const FUSION_WEIGHTS_FILE: &str = "model_adapter_fusion.safetensors";

/// What we write in `version` (the format we follow).
pub const ADAPTERS_VERSION: &str = "adapters.1.3.0";
/// What we write in `model_class`: the flexible-head model Python loads these into.
pub const MODEL_CLASS: &str = "BertAdapterModel";
/// The prefix of encoder tensors in `BertAdapterModel` (written; read with or without).
pub const BASE_PREFIX: &str = "bert.";

/// Looks a tensor up with AdapterHub's `bert.` prefix or without it.
pub(super) fn lookup(file: &WeightFile, name_with_prefix: &str) -> Option<String> {
    if file.contains(name_with_prefix) {
        return Some(name_with_prefix.to_string());
    }
    let bare = name_with_prefix.strip_prefix(BASE_PREFIX)?;
    file.contains(bare).then(|| bare.to_string())
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
