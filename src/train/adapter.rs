//! `peft train`: a new bottleneck adapter + classification head on the frozen encoder, with
//! AdapterHub's initialisation, trained by the shared loop ([`super::trainer`]).

use crate::formats::adapterhub::{BottleneckConfig, HeadConfig, ResidualBeforeLn, WeightsFormat};
use crate::gpu::{Gpu, GpuTensor};
use crate::model::adapters::{adapter_tensor_names, AdapterSet, ClassificationHead, Location, Placement};
use crate::model::config::{BertConfig, Family};
use crate::model::encoder::Setup;
use crate::model::load;
use crate::model::plan::AdapterSpec;
use crate::train::memory::{plan_memory, Trained};
use crate::train::options::{
    activation_name, parse_activation, DataArgs, LoopArgs, MemoryArgs, OptimizerArgs, SaveArgs,
};
use crate::train::report::{PlainReporter, Reporter};
use crate::train::resume::{self, RunControl};
use crate::train::task::{start_run, RunStart};
use crate::train::trainer::{run_loop_with, LoopControl, LoopSetup, Trainee};
use crate::train::{checkpoint, model_name, model_parameters, Preset, TrainSummary};
use crate::types::Activation;
use anyhow::{anyhow, bail, Result};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The adapter `peft train` creates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct AdapterArgs {
    /// houlsby = AdapterHub double_seq_bn, pfeiffer = seq_bn.
    #[arg(long, value_enum, default_value = "houlsby")]
    pub config: Preset,
    #[arg(long, default_value_t = 16.0)]
    pub reduction_factor: f64,
    /// Default: AdapterHub's for the preset (houlsby: swish, pfeiffer: relu).
    #[arg(long, value_parser = parse_activation)]
    #[serde(with = "activation_name")]
    pub non_linearity: Option<Activation>,
    /// Name of the adapter and head.
    #[arg(long = "name", default_value = "task")]
    #[serde(rename = "adapter_name")]
    pub name: String,
}

impl Default for AdapterArgs {
    fn default() -> Self {
        Self { config: Preset::Houlsby, reduction_factor: 16.0, non_linearity: None, name: "task".into() }
    }
}

impl AdapterArgs {
    /// The AdapterHub bottleneck config of the preset on a model of `layers` layers.
    pub fn bottleneck_config(&self, layers: usize) -> BottleneckConfig {
        let act = |default| self.non_linearity.unwrap_or(default);
        match self.config {
            Preset::Houlsby => BottleneckConfig::houlsby(self.reduction_factor, act(Activation::Silu)),
            Preset::Pfeiffer => BottleneckConfig::pfeiffer(self.reduction_factor, act(Activation::Relu)),
            Preset::None => BottleneckConfig {
                leave_out: (0..layers).collect(),
                ..BottleneckConfig::pfeiffer(self.reduction_factor, act(Activation::Relu))
            },
        }
    }
}

/// Everything `peft train` takes. Serialized (without `out` and `memory`, which do not change
/// the result) as the settings of the resume state: one flat JSON object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainArgs {
    /// Hugging Face model directory.
    pub model: PathBuf,
    /// Training data.
    pub train: PathBuf,
    /// Output folder.
    #[serde(skip)]
    pub out: PathBuf,
    #[serde(flatten)]
    pub data: DataArgs,
    #[serde(flatten)]
    pub adapter: AdapterArgs,
    #[serde(flatten)]
    pub optimizer: OptimizerArgs,
    #[serde(flatten)]
    pub run: LoopArgs,
    #[serde(skip)]
    pub memory: MemoryArgs,
    #[serde(skip)]
    pub save: SaveArgs,
}

impl TrainArgs {
    /// The settings saved in the resume state (paths made absolute, so `--resume` works from any
    /// folder).
    pub fn settings(&self) -> Result<serde_json::Value> {
        let mut s = self.clone();
        s.model = resume::absolute(&s.model);
        s.train = resume::absolute(&s.train);
        s.data.dev = s.data.dev.as_deref().map(resume::absolute);
        Ok(serde_json::to_value(&s)?)
    }
}

impl resume::RunSettings for TrainArgs {
    fn set_out(&mut self, out: &Path) {
        self.out = out.to_path_buf();
    }
}

/// AdapterHub's "bert" initialisation: every Linear N(0, 0.02), biases 0 (so a new adapter starts
/// close to the identity and a new head close to uniform logits).
pub(crate) fn init_values(rng: &mut rand::rngs::StdRng, name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    if name.ends_with("bias") {
        return vec![0.0; n];
    }
    let normal = Normal::new(0.0f32, 0.02).expect("valid normal");
    (0..n).map(|_| normal.sample(rng)).collect()
}

/// New adapter + head with AdapterHub's initialisation, on the GPU.
pub fn new_adapter(
    gpu: &Arc<Gpu>,
    cfg: &BertConfig,
    bn: &BottleneckConfig,
    name: &str,
    labels: usize,
    seed: u64,
) -> Result<(AdapterSet, ClassificationHead)> {
    let names: Vec<String> = (0..labels).map(|i| format!("LABEL_{i}")).collect();
    new_adapter_with_head(gpu, cfg, bn, name, &HeadConfig::classification(&names), seed)
}

/// [`new_adapter`] with a head of any kind the GPU head runs (`head`: kind, layers, labels).
pub fn new_adapter_with_head(
    gpu: &Arc<Gpu>,
    cfg: &BertConfig,
    bn: &BottleneckConfig,
    name: &str,
    head: &HeadConfig,
    seed: u64,
) -> Result<(AdapterSet, ClassificationHead)> {
    let d = cfg.hidden_size;
    let m = bn.bottleneck_dim(d, 0)?;
    let placement = Placement {
        original_ln_before: bn.original_ln_before,
        original_ln_after: bn.original_ln_after,
        residual_before_ln: match bn.residual_before_ln {
            ResidualBeforeLn::True => true,
            ResidualBeforeLn::False => false,
            ResidualBeforeLn::PostAdd => bail!("residual_before_ln \"post_add\" is not supported"),
        },
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut values: HashMap<String, Vec<f32>> = HashMap::new();
    let sites = |loc: Location| match loc {
        Location::Attention => bn.mh_adapter,
        Location::Output => bn.output_adapter,
    };
    for l in 0..cfg.num_hidden_layers {
        for loc in [Location::Attention, Location::Output] {
            if sites(loc) && bn.has_layer(l) {
                let names = adapter_tensor_names(name, l, loc);
                let shapes = [vec![m, d], vec![m], vec![d, m], vec![d]];
                for (n, s) in names.iter().zip(&shapes) {
                    values.insert(n.clone(), init_values(&mut rng, n, s));
                }
            }
        }
    }
    for (n, s) in ClassificationHead::tensor_specs(name, d, head) {
        let v = init_values(&mut rng, &n, &s);
        values.insert(n, v);
    }
    let get = |n: &str, _shape: &[usize]| -> Result<Vec<f32>> {
        values.get(n).cloned().ok_or_else(|| anyhow!("internal: no initial value for {n}"))
    };
    let set = AdapterSet::from_tensors(
        gpu,
        name,
        placement,
        bn.non_linearity,
        bn.scaling as f32,
        d,
        m,
        cfg.num_hidden_layers,
        &|l, loc| sites(loc) && bn.has_layer(l),
        &get,
    )?;
    let head = ClassificationHead::from_config(gpu, name, d, head, &get)?;
    Ok((set, head))
}
/// A new adapter + head being trained (`peft train`).
struct AdapterTrainee {
    set: AdapterSet,
    head: ClassificationHead,
    bn: BottleneckConfig,
    hidden: usize,
    model_name: String,
    /// Saved with this family's names and `model_type`.
    family: Family,
}

impl Trainee for AdapterTrainee {
    fn setup(&self) -> Setup<'_> {
        Setup::Adapter(&self.set)
    }

    fn head(&self) -> &ClassificationHead {
        &self.head
    }

    fn params(&self) -> Vec<(String, &GpuTensor, &GpuTensor)> {
        self.set.named().into_iter().chain(self.head.named()).collect()
    }

    fn save(&mut self, gpu: &Arc<Gpu>, out: &Path, format: WeightsFormat, labels: &[String]) -> Result<()> {
        let mut a =
            checkpoint::to_adapterhub(gpu, &self.set, &self.bn, &self.head, labels, self.hidden, &self.model_name)?;
        a.set_family(self.family);
        a.save_as(out, format)
    }
}

/// `peft train`, printing its lines.
pub fn train(gpu: &Arc<Gpu>, args: &TrainArgs) -> Result<TrainSummary> {
    train_with(gpu, args, &RunControl::default(), &mut PlainReporter)
}

/// `peft train` with checkpoint control: resume from `args.out`, stop after a number of steps,
/// save every few steps (see [`resume`]); its lines and progress go to `rep`.
pub fn train_with(gpu: &Arc<Gpu>, args: &TrainArgs, run: &RunControl, rep: &mut dyn Reporter) -> Result<TrainSummary> {
    let r = &args.run;
    let RunStart { cfg, pad, task } = start_run(gpu, &args.model, &args.train, &args.data, r, rep)?;

    let bn = args.adapter.bottleneck_config(cfg.num_hidden_layers);
    let head_config = HeadConfig::new(args.data.head_type, &task.labels.labels);
    let (set, head) = new_adapter_with_head(gpu, &cfg, &bn, &args.adapter.name, &head_config, r.seed)?;
    let trainable = set.parameters() + head.parameters();
    let model_params = model_parameters(&cfg);
    rep.message(&format!(
        "adapter: {} ({:?}, reduction factor {}, {}), {} trainable parameters = {:.2}% of the model's {}",
        args.adapter.name,
        args.adapter.config,
        args.adapter.reduction_factor,
        bn.non_linearity.adapterhub_name(),
        trainable,
        100.0 * trainable as f64 / model_params as f64,
        model_params
    ));
    let spec = AdapterSpec::from_bottleneck(&cfg, &bn)?;
    let dropout = crate::train::trainer::dropout_rates(&cfg, r, rep)?;
    let mem_plan = plan_memory(gpu, &cfg, &task, r.batch_size, &spec, &args.memory, Trained::Adapter, dropout, rep)?;
    let (_, mut enc) = load::load_encoder(gpu, &args.model, Some(mem_plan.resident_layers()))?;
    enc.follow(&mem_plan);
    let mut trainee = AdapterTrainee {
        set,
        head,
        bn,
        hidden: cfg.hidden_size,
        model_name: model_name(&args.model),
        family: cfg.family(),
    };
    let setup = LoopSetup {
        optimizer: &args.optimizer,
        run: r,
        out: &args.out,
        format: args.save.weights_format,
        command: "train",
        saved_what: "adapter + head",
        trainable_parameters: trainable,
        model_parameters: model_params,
        dropout,
    };
    let ctl = LoopControl { run: run.clone(), settings: Some(args.settings()?), fingerprint: task.fingerprint() };
    run_loop_with(gpu, &mut enc, &mut trainee, &task, pad, &setup, &ctl, rep)
}
