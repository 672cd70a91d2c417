//! An AdapterFusion (`adapter_fusion_config.json` + `model_adapter_fusion.safetensors`): its
//! typed config, per-layer weights, loading and saving.

use super::names::{fusion_site_param_name, AdapterSite, FusionParam};
use super::options::{opt_number, refuse_unknown, req_bool, to_object, FUSION_OPTIONS};
use super::{
    lookup, saved_family, unexpected_error, Head, SavedConfig, WeightsFormat, BASE_PREFIX, FUSION_CONFIG_FILE,
    FUSION_WEIGHTS,
};
use crate::formats::hf_config::BertConfig;
use crate::formats::weights::{Tensor, TensorMap};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::path::Path;

/// The typed view of a fusion's `config` (AdapterHub's `AdapterFusionConfig`; "dynamic" is
/// key/query/value true, value_before_softmax true, value_initialized true, the rest false). All
/// nine flags are required, as the Python dataclass requires them. Serialized, it is the `config`
/// object as written: the field names are the keys.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FusionConfig {
    pub key: bool,
    pub query: bool,
    pub value: bool,
    pub query_before_ln: bool,
    pub regularization: bool,
    pub residual_before: bool,
    pub temperature: bool,
    pub value_before_softmax: bool,
    pub value_initialized: bool,
    pub dropout_prob: Option<f64>,
}

impl FusionConfig {
    pub fn from_config(m: &Map<String, Value>) -> Result<Self> {
        refuse_unknown(m, FUSION_OPTIONS, "fusion")?;
        let dropout_prob = opt_number(m, "dropout_prob")?;
        Ok(Self {
            key: req_bool(m, "key")?,
            query: req_bool(m, "query")?,
            value: req_bool(m, "value")?,
            query_before_ln: req_bool(m, "query_before_ln")?,
            regularization: req_bool(m, "regularization")?,
            residual_before: req_bool(m, "residual_before")?,
            temperature: req_bool(m, "temperature")?,
            value_before_softmax: req_bool(m, "value_before_softmax")?,
            value_initialized: req_bool(m, "value_initialized")?,
            dropout_prob,
        })
    }

    /// AdapterHub's "dynamic" fusion (the default).
    pub fn dynamic() -> Self {
        Self {
            key: true,
            query: true,
            value: true,
            query_before_ln: false,
            regularization: true,
            residual_before: false,
            temperature: false,
            value_before_softmax: true,
            value_initialized: true,
            dropout_prob: None,
        }
    }

    /// The `config` object `adapters` writes (every field under its own name).
    pub fn to_config(&self) -> Map<String, Value> {
        to_object(self)
    }
}

/// One layer's fusion weights (`None` for a projection the config switches off).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct FusionLayer {
    pub query_weight: Option<Tensor>,
    pub query_bias: Option<Tensor>,
    pub key_weight: Option<Tensor>,
    pub key_bias: Option<Tensor>,
    pub value_weight: Option<Tensor>,
}

impl FusionLayer {
    pub fn get(&self, p: FusionParam) -> Option<&Tensor> {
        match p {
            FusionParam::QueryWeight => self.query_weight.as_ref(),
            FusionParam::QueryBias => self.query_bias.as_ref(),
            FusionParam::KeyWeight => self.key_weight.as_ref(),
            FusionParam::KeyBias => self.key_bias.as_ref(),
            FusionParam::ValueWeight => self.value_weight.as_ref(),
        }
    }

    fn set(&mut self, p: FusionParam, t: Tensor) {
        let slot = match p {
            FusionParam::QueryWeight => &mut self.query_weight,
            FusionParam::QueryBias => &mut self.query_bias,
            FusionParam::KeyWeight => &mut self.key_weight,
            FusionParam::KeyBias => &mut self.key_bias,
            FusionParam::ValueWeight => &mut self.value_weight,
        };
        *slot = Some(t);
    }
}

/// An AdapterFusion as `save_adapter_fusion` writes it (the fused adapters are loaded separately,
/// from their own folders).
#[derive(Clone, Debug, PartialEq)]
pub struct Fusion {
    pub saved: SavedConfig,
    pub config: FusionConfig,
    /// The fused adapters, in order.
    pub adapter_names: Vec<String>,
    /// The fusion layers at the FFN output (`output.adapter_fusion_layer`), one entry per encoder
    /// layer; `None` for a layer without one (adapters left out, or none at that site).
    pub layers: Vec<Option<FusionLayer>>,
    /// The fusion layers at the attention output (`attention.output.adapter_fusion_layer`), which
    /// the library adds where every fused adapter has a module after the attention (Houlsby /
    /// `double_seq_bn`); all `None` over Pfeiffer / `seq_bn` adapters.
    pub attention_layers: Vec<Option<FusionLayer>>,
    /// A head saved in the same folder, if any.
    pub head: Option<Head>,
}

impl Fusion {
    pub fn load(dir: impl AsRef<Path>, model: &BertConfig) -> Result<Self> {
        let dir = dir.as_ref();
        let cpath = dir.join(FUSION_CONFIG_FILE);
        if !cpath.exists() {
            bail!("{}: no {FUSION_CONFIG_FILE}: not a fusion folder", dir.display());
        }
        let saved = SavedConfig::read(&cpath)?;
        let config = FusionConfig::from_config(saved.config())
            .with_context(|| format!("{}: unsupported fusion", cpath.display()))?;
        let family = model.family();
        saved.check_model(&format!("fusion {}", cpath.display()), model.hidden_size, Some(family))?;
        let adapter_names: Vec<String> = match saved.get("adapter_names") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .with_context(|| format!("{}: \"adapter_names\" must list strings, got {x}", cpath.display()))
                })
                .collect::<Result<_>>()?,
            other => bail!(
                "{}: \"adapter_names\" must be a non-empty list of adapter names, got {}",
                cpath.display(),
                other.unwrap_or(&Value::Null)
            ),
        };
        let fname = adapter_names.join(",");
        let file = FUSION_WEIGHTS.open(dir)?;
        let mut left: BTreeSet<String> = file.names().into_iter().map(String::from).collect();
        let mut read_site = |site| read_fusion_site(&file, &fname, site, &config, model, &mut left);
        let attention_layers = read_site(AdapterSite::Attention)?;
        let layers = read_site(AdapterSite::Output)?;
        if layers.iter().chain(&attention_layers).all(Option::is_none) {
            bail!(
                "{}: no fusion tensors named \"{}\" (or at attention.output)",
                file.path().display(),
                family.file_name(&format!("{BASE_PREFIX}encoder.layer.<L>.output.adapter_fusion_layer.{fname}.*"))
            );
        }
        unexpected_error(
            &file,
            &left,
            &format!(
                "fusion {fname:?} with query={}, key={}, value={} (value has no bias)",
                config.query, config.key, config.value
            ),
        )?;
        let head = Head::find(dir, model.hidden_size)?;
        Ok(Self { saved, config, adapter_names, layers, attention_layers, head })
    }

    /// Saves for a `family` model: its `model_type` / `model_class` in the configs (the head's
    /// too), and with them its tensor names ([`tensors`](Self::tensors)).
    pub fn set_family(&mut self, family: crate::formats::family::Family) {
        self.saved.set_family(family);
        if let Some(h) = &mut self.head {
            h.saved.set_family(family);
        }
    }

    /// The fusion's name in tensor names: the adapter names joined by commas.
    pub fn fusion_name(&self) -> String {
        self.adapter_names.join(",")
    }

    /// (Named for the family the config's `model_type` says.)
    pub fn tensors(&self) -> TensorMap {
        self.tensors_named_for(saved_family(&self.saved))
    }

    /// Every tensor under `family`'s names (BERT's: the names the engine uses).
    pub fn tensors_named_for(&self, family: crate::formats::family::Family) -> TensorMap {
        let fname = self.fusion_name();
        let mut m = TensorMap::new();
        for (site, layers) in [(AdapterSite::Attention, &self.attention_layers), (AdapterSite::Output, &self.layers)] {
            for (l, fl) in layers.iter().enumerate() {
                let Some(fl) = fl else { continue };
                for p in FusionParam::for_config(&self.config) {
                    if let Some(t) = fl.get(p) {
                        m.insert(family.file_name(&fusion_site_param_name(&fname, l, site, p)), t.clone());
                    }
                }
            }
        }
        m
    }

    /// Writes `adapter_fusion_config.json` and the weights in both formats
    /// (`model_adapter_fusion.safetensors`, `pytorch_model_adapter_fusion.bin`), and the head's
    /// files when there is one, into `dir`.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        self.save_as(dir, WeightsFormat::default())
    }

    /// As [`save`](Self::save), the weights in `format`; each file atomically.
    pub fn save_as(&self, dir: impl AsRef<Path>, format: WeightsFormat) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        FUSION_WEIGHTS.write(dir, &self.tensors(), format)?;
        self.saved.write(&dir.join(FUSION_CONFIG_FILE))?;
        if let Some(h) = &self.head {
            h.save_as(dir, format)?;
        }
        Ok(())
    }

    /// A new envelope for a fusion over `adapter_names` (name = names joined by commas).
    pub fn new_saved_config(
        adapter_names: &[String],
        hidden: usize,
        model_name: &str,
        config: &FusionConfig,
    ) -> SavedConfig {
        SavedConfig::new_fusion(adapter_names, hidden, model_name, config.to_config())
    }
}

/// Reads the fusion layers at one `site` of every layer (`None` where a layer has no fusion
/// tensor there); what it reads is taken out of `left`.
fn read_fusion_site(
    file: &crate::formats::weights::WeightFile,
    fname: &str,
    site: AdapterSite,
    config: &FusionConfig,
    model: &BertConfig,
    left: &mut BTreeSet<String>,
) -> Result<Vec<Option<FusionLayer>>> {
    let (h, family) = (model.hidden_size, model.family());
    let params = FusionParam::for_config(config);
    let name = |l, p| fusion_site_param_name(fname, l, site, p);
    let mut layers = Vec::with_capacity(model.num_hidden_layers);
    for l in 0..model.num_hidden_layers {
        let names: Vec<Option<String>> = params.iter().map(|&p| lookup(file, &name(l, p), family)).collect();
        if names.iter().all(Option::is_none) {
            layers.push(None);
            continue;
        }
        let mut fl = FusionLayer::default();
        for (&p, found) in params.iter().zip(names) {
            let found = found.with_context(|| {
                format!(
                    "{}: missing tensor {:?} (layer {l} has other fusion tensors at {})",
                    file.path().display(),
                    family.file_name(&name(l, p)),
                    site.module()
                )
            })?;
            let data = file.get_checked(&found, &p.shape(h))?;
            left.remove(&found);
            fl.set(p, Tensor { shape: p.shape(h), data });
        }
        layers.push(Some(fl));
    }
    Ok(layers)
}
