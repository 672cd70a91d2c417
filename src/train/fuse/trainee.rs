//! The fusion being trained: source adapters loaded (frozen) and checked, a new fusion and head
//! with AdapterHub's initialisation, and the loop's hooks (temperature, W_V regularization,
//! fusion attention of the saved epoch).

use super::FusionAttention;
use crate::formats::adapterhub::{Fusion, FusionConfig, WeightsFormat};
use crate::gpu::{CommandRecorder, Gpu, GpuTensor};
use crate::kernels::elementwise;
use crate::kernels::fusion::{self as fusion_kernels, Temperature, REGULARIZATION_COEF};
use crate::model::adapters::{AdapterSet, ClassificationHead, Location};
use crate::model::config::{BertConfig, Family};
use crate::model::encoder::Setup;
use crate::model::fusion::FusionModel;
use crate::model::load;
use crate::train::trainer::Trainee;
use anyhow::{anyhow, bail, Context, Result};
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
        values.insert(n.clone(), crate::train::adapter::init_values(rng, n, &s));
    }
    let get = |n: &str, _shape: &[usize]| -> Result<Vec<f32>> {
        values.get(n).cloned().ok_or_else(|| anyhow!("internal: no initial value for {n}"))
    };
    ClassificationHead::from_tensors(gpu, name, d, labels, &get)
}

/// Loads the source adapters (frozen) and checks that they can be fused: distinct names (where
/// they sit is checked by [`fusion_layers`]).
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
        sets.push(set);
    }
    Ok(sets)
}

/// Per layer, the sites (attention output, FFN output) where every adapter has a module: a fusion
/// layer goes there, as the library puts one wherever the fused adapters all have one (at the
/// attention output too over Houlsby / `double_seq_bn` adapters). An error when some but not all
/// do (the library refuses adapters whose `mh_adapter` / `output_adapter` differ).
pub(crate) fn fusion_layers(sets: &[AdapterSet], layers: usize) -> Result<Vec<(bool, bool)>> {
    let site = |l: usize, loc: Location| -> Result<bool> {
        let have: Vec<&str> = sets.iter().filter(|s| s.at(l, loc).is_some()).map(|s| s.name.as_str()).collect();
        if !have.is_empty() && have.len() != sets.len() {
            bail!(
                "layer {l}: only {have:?} of the fused adapters have an adapter at {}; fusion needs all of them",
                loc.module_path(l)
            );
        }
        Ok(!have.is_empty())
    };
    (0..layers).map(|l| Ok((site(l, Location::Attention)?, site(l, Location::Output)?))).collect()
}

/// Takes out of `f` the fusion layers at sites where no fused adapter has a module (`present`, from
/// [`fusion_layers`]) and returns their module paths. The `adapters` library creates a fusion layer
/// at that site of EVERY layer, also where the adapters are left out (`leave_out`), saves it at its
/// initial values, and never runs it (no adapter output to fuse there): reading such a folder, those
/// layers are accepted and ignored, as the library's forward pass ignores them.
pub(crate) fn drop_layers_without_adapters(f: &mut Fusion, present: &[(bool, bool)]) -> Vec<String> {
    let mut dropped = vec![];
    for (loc, site) in [(Location::Attention, &mut f.attention_layers), (Location::Output, &mut f.layers)] {
        for (l, layer) in site.iter_mut().enumerate() {
            if layer.is_some() && !has_site(present, l, loc) {
                *layer = None;
                dropped.push(loc.module_path(l));
            }
        }
    }
    dropped
}

/// Whether `present` (from [`fusion_layers`]) has `loc` of layer `l`.
pub(crate) fn has_site(present: &[(bool, bool)], l: usize, loc: Location) -> bool {
    present.get(l).is_some_and(|s| if loc == Location::Attention { s.0 } else { s.1 })
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
    /// Saved with this family's names and `model_type`.
    family: Family,
    /// Real tokens of the dev set (for the fusion attention of the saved epoch).
    pub(crate) dev_tokens: usize,
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
        let at = |l: usize, loc: Location| has_site(&present, l, loc);
        let fusion = FusionModel::new_initialized(gpu, &names, config, cfg.num_hidden_layers, &at, d, &mut rng)?;
        let head = new_head(gpu, head_name, d, labels, &mut rng)?;
        Ok(Self {
            sets,
            fusion,
            head,
            temperature: Temperature::from_config(config.temperature),
            reg_loss: GpuTensor::zeros(gpu, &[1])?,
            hidden: d,
            model_name: model_name.into(),
            family: cfg.family(),
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
        f.head =
            Some(crate::train::checkpoint::head_to_adapterhub(gpu, &self.head, labels, self.hidden, &self.model_name)?);
        f.set_family(self.family);
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

    fn resumed_after(&mut self, steps: usize) {
        for _ in 0..steps {
            self.temperature.next_forward();
        }
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
        for layer in self.fusion.all_layers() {
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

    fn save(&mut self, gpu: &Arc<Gpu>, out: &Path, format: WeightsFormat, labels: &[String]) -> Result<()> {
        self.to_adapterhub(gpu, labels)?.save_as(out, format)?;
        if self.fusion.weight_sums.is_some() && self.dev_tokens > 0 {
            let att = FusionAttention::from_recorded(gpu, &self.fusion, self.dev_tokens)?;
            // Beside the saved fusion, so a resumed run finds the attention of its best epoch.
            att.save_json(&out.join(super::ATTENTION_JSON))?;
            att.plot(&out.join(super::ATTENTION_PNG))?;
            self.best_attention = Some(att);
        }
        Ok(())
    }
}
