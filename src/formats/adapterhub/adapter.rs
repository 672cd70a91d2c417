//! A bottleneck adapter folder (`adapter_config.json` + `adapter.safetensors`, and the head saved
//! with it): its weights, loading with every tensor checked, and saving.

use super::names::{adapter_tensor_name, AdapterSite, BottleneckParam, OptionParam};
use super::{lookup, saved_family, unexpected_error, BottleneckConfig, Head, SavedConfig};
use super::{WeightsFormat, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS};
use crate::formats::hf_config::{BertConfig, Family};
use crate::formats::weights::{Tensor, TensorMap, WeightFile};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::Path;

/// One bottleneck's weights (nn.Linear layouts).
#[derive(Clone, Debug, PartialEq)]
pub struct BottleneckWeights {
    /// `[bottleneck, hidden]`
    pub down_weight: Tensor,
    /// `[bottleneck]`
    pub down_bias: Tensor,
    /// `[hidden, bottleneck]`
    pub up_weight: Tensor,
    /// `[hidden]`
    pub up_bias: Tensor,
}

impl BottleneckWeights {
    pub fn get(&self, p: BottleneckParam) -> &Tensor {
        match p {
            BottleneckParam::DownWeight => &self.down_weight,
            BottleneckParam::DownBias => &self.down_bias,
            BottleneckParam::UpWeight => &self.up_weight,
            BottleneckParam::UpBias => &self.up_bias,
        }
    }

    pub fn bottleneck_dim(&self) -> usize {
        self.down_bias.numel()
    }
}

/// The adapters of one encoder layer (`None` where the config puts none, or the layer is left out).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct LayerAdapters {
    pub attention: Option<BottleneckWeights>,
    pub output: Option<BottleneckWeights>,
}

impl LayerAdapters {
    pub fn site(&self, s: AdapterSite) -> Option<&BottleneckWeights> {
        match s {
            AdapterSite::Attention => self.attention.as_ref(),
            AdapterSite::Output => self.output.as_ref(),
        }
    }
}

/// A bottleneck adapter as `save_adapter` writes it, with its head when one was saved with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    pub saved: SavedConfig,
    pub config: BottleneckConfig,
    /// One entry per encoder layer.
    pub layers: Vec<LayerAdapters>,
    /// The tensors the config's options add to each module (adapter LayerNorms, trained
    /// scaling: [`OptionParam`]), under their `bert.`-prefixed AdapterHub names.
    pub options: TensorMap,
    pub head: Option<Head>,
}

impl Adapter {
    /// Loads `<dir>/adapter_config.json` + `adapter.safetensors` (or `pytorch_adapter.bin`) for `model`, checking every tensor
    /// against the config (presence, shape, nothing unexpected), and the head in `dir` if any.
    /// The tensors' adapter name is the config's `name` (or, if the file uses one other name
    /// throughout, that one).
    pub fn load(dir: impl AsRef<Path>, model: &BertConfig) -> Result<Self> {
        let dir = dir.as_ref();
        let cpath = dir.join(ADAPTER_CONFIG_FILE);
        if !cpath.exists() {
            bail!("{}: no {ADAPTER_CONFIG_FILE}: not an adapter folder", dir.display());
        }
        let saved = SavedConfig::read(&cpath)?;
        let config = BottleneckConfig::from_config(saved.config())
            .with_context(|| format!("{}: unsupported adapter", cpath.display()))?;
        let family = model.family();
        saved.check_model(&format!("adapter {}", cpath.display()), model.hidden_size, Some(family))?;
        for &l in &config.leave_out {
            if l >= model.num_hidden_layers {
                bail!(
                    "{}: option \"leave_out\" names layer {l}, the model has {} layers",
                    cpath.display(),
                    model.num_hidden_layers
                );
            }
        }
        let file = ADAPTER_WEIGHTS.open(dir)?;
        let name = tensor_adapter_name(&file, saved.name());
        let h = model.hidden_size;
        let mut left: BTreeSet<String> = file.names().into_iter().map(String::from).collect();
        let mut layers = Vec::with_capacity(model.num_hidden_layers);
        let mut options = TensorMap::new();
        let ln_before = config.ln_before;
        for l in 0..model.num_hidden_layers {
            let mut la = LayerAdapters::default();
            if config.has_layer(l) {
                let bn = config.bottleneck_dim(h, l).with_context(|| format!("{}", cpath.display()))?;
                for site in config.sites() {
                    let mut t = Vec::with_capacity(4);
                    for p in BottleneckParam::ALL {
                        let want = adapter_tensor_name(&name, l, site, p.suffix_in(ln_before));
                        let found = lookup(&file, &want, family).with_context(|| {
                            let want = family.file_name(&want);
                            format!(
                                "{}: missing tensor {want:?} (the config has {}: {})",
                                file.path().display(),
                                if site == AdapterSite::Attention { "mh_adapter" } else { "output_adapter" },
                                true
                            )
                        })?;
                        let data = file.get_checked(&found, &p.shape(h, bn))?;
                        left.remove(&found);
                        t.push(Tensor { shape: p.shape(h, bn), data });
                    }
                    for p in OptionParam::for_config(&config) {
                        let want = adapter_tensor_name(&name, l, site, p.suffix());
                        let found = lookup(&file, &want, family).with_context(|| {
                            format!(
                                "{}: missing tensor {:?} (the config's options imply it)",
                                file.path().display(),
                                family.file_name(&want)
                            )
                        })?;
                        let shape = p.shape(h, &config);
                        let data = file.get_checked(&found, &shape)?;
                        left.remove(&found);
                        // The same tensor under its second name, when the file has it.
                        if let Some(alias) = p.alias() {
                            let a = adapter_tensor_name(&name, l, site, alias);
                            if let Some(found) = lookup(&file, &a, family) {
                                if file.get_checked(&found, &shape)? != data {
                                    bail!(
                                        "{}: {found:?} differs from {want:?}, the same tensor",
                                        file.path().display()
                                    );
                                }
                                left.remove(&found);
                            }
                        }
                        options.insert(want, Tensor { shape, data });
                    }
                    let mut it = t.into_iter();
                    let w = BottleneckWeights {
                        down_weight: it.next().expect("4"),
                        down_bias: it.next().expect("4"),
                        up_weight: it.next().expect("4"),
                        up_bias: it.next().expect("4"),
                    };
                    match site {
                        AdapterSite::Attention => la.attention = Some(w),
                        AdapterSite::Output => la.output = Some(w),
                    }
                }
            }
            layers.push(la);
        }
        unexpected_error(
            &file,
            &left,
            &format!(
                "not implied by mh_adapter={}, output_adapter={}, leave_out={:?}, ln_before={}, ln_after={}, scaling {}, {} layers",
                config.mh_adapter,
                config.output_adapter,
                config.leave_out,
                config.ln_before,
                config.ln_after,
                config.trained_scaling.map_or("fixed", |t| t.name()),
                model.num_hidden_layers
            ),
        )?;
        let head = Head::find(dir, h)?;
        let mut saved = saved;
        if name != saved.name() {
            saved.set_name(&name);
        }
        Ok(Self { saved, config, layers, options, head })
    }

    pub fn name(&self) -> &str {
        self.saved.name()
    }

    /// Saves for a `family` model: its `model_type` / `model_class` in the configs (the head's
    /// too), and with them its tensor names ([`tensors`](Self::tensors)).
    pub fn set_family(&mut self, family: Family) {
        self.saved.set_family(family);
        if let Some(h) = &mut self.head {
            h.saved.set_family(family);
        }
    }

    /// Every tensor under AdapterHub's names.
    /// (Named for the family the config's `model_type` says.)
    pub fn tensors(&self) -> TensorMap {
        let family = saved_family(&self.saved);
        let mut m = TensorMap::new();
        for (l, la) in self.layers.iter().enumerate() {
            for site in [AdapterSite::Attention, AdapterSite::Output] {
                if let Some(w) = la.site(site) {
                    for p in BottleneckParam::ALL {
                        let name = adapter_tensor_name(self.name(), l, site, p.suffix_in(self.config.ln_before));
                        m.insert(family.file_name(&name), w.get(p).clone());
                    }
                    for p in OptionParam::for_config(&self.config) {
                        let name = adapter_tensor_name(self.name(), l, site, p.suffix());
                        // (Always there when loaded or built from a set; a missing one fails
                        // the next load, naming it.)
                        let Some(t) = self.options.get(&name) else { continue };
                        // The library's state dict has the LayerNorm before the adapter twice.
                        if let Some(alias) = p.alias() {
                            m.insert(family.file_name(&adapter_tensor_name(self.name(), l, site, alias)), t.clone());
                        }
                        m.insert(family.file_name(&name), t.clone());
                    }
                }
            }
        }
        m
    }

    /// Writes `adapter_config.json` and the weights in both formats (`adapter.safetensors`,
    /// `pytorch_adapter.bin`), and the head's files when the adapter has one, into `dir`.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        self.save_as(dir, WeightsFormat::default())
    }

    /// As [`save`](Self::save), the weights in `format`; each file atomically.
    pub fn save_as(&self, dir: impl AsRef<Path>, format: WeightsFormat) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        ADAPTER_WEIGHTS.write(dir, &self.tensors(), format)?;
        self.saved.write(&dir.join(ADAPTER_CONFIG_FILE))?;
        if let Some(h) = &self.head {
            h.save_as(dir, format)?;
        }
        Ok(())
    }
}

/// The adapter name used in the file's tensor names: `configured` when any tensor uses it, else
/// the single other name all `.adapters.<name>.` tensors share.
fn tensor_adapter_name(file: &WeightFile, configured: &str) -> String {
    let mut found = BTreeSet::new();
    for n in file.names() {
        if let Some((_, rest)) = n.split_once(".adapters.") {
            if let Some((name, _)) = rest.split_once(".adapter_") {
                found.insert(name.to_string());
            }
        }
    }
    if found.contains(configured) || found.len() != 1 {
        configured.to_string()
    } else {
        found.into_iter().next().expect("one")
    }
}
