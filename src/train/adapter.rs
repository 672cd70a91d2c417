//! `peft train`: a new bottleneck adapter + classification head on the frozen encoder, with
//! AdapterHub's initialisation, trained by the shared loop ([`super::trainer`]).

use crate::formats::adapterhub::{Adapter, BottleneckConfig, HeadConfig, TrainedScaling, WeightsFormat, INIT_WEIGHTS};
use crate::gpu::{Gpu, GpuTensor};
use crate::model::adapters::{
    adapter_tensor_names, option_tensor_names, AdapterSet, ClassificationHead, Location, ModuleOptions, Placement,
};
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
use anyhow::{anyhow, Result};
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
    // The options below are left out of the resume settings at their defaults (settings written
    // before they existed read and write back unchanged).
    /// AdapterHub's `scaling`: a number, `learned` (one trained value per module) or `channel`
    /// (one trained value per hidden unit). Default: the preset's (parallel: 4, else 1).
    #[arg(long, value_parser = parse_scaling)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<String>,
    /// AdapterHub's `ln_before`: a trainable LayerNorm on the adapter's input.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ln_before: bool,
    /// AdapterHub's `ln_after`: a trainable LayerNorm on the adapter's output.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ln_after: bool,
    /// AdapterHub's `adapter_residual_before_ln` (with `--ln-after`: the residual is added before
    /// the adapter's LayerNorm).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adapter_residual_before_ln: bool,
    /// AdapterHub's `init_weights` for the new adapter: bert (N(0, 0.02)), mam_adapter (down:
    /// Kaiming-uniform, up: zeros) or houlsby (truncated N(0, 0.01)). Default: the preset's
    /// (parallel: mam_adapter, else bert).
    #[arg(long, value_parser = parse_init_weights)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_weights: Option<String>,
}

impl Default for AdapterArgs {
    fn default() -> Self {
        Self {
            config: Preset::Houlsby,
            reduction_factor: 16.0,
            non_linearity: None,
            name: "task".into(),
            scaling: None,
            ln_before: false,
            ln_after: false,
            adapter_residual_before_ln: false,
            init_weights: None,
        }
    }
}

/// `--scaling`: a finite number, `learned` or `channel`.
fn parse_scaling(s: &str) -> Result<String, String> {
    match s {
        "learned" | "channel" => Ok(s.to_string()),
        _ => match s.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(s.to_string()),
            _ => Err(format!("{s:?} is neither a number nor \"learned\" / \"channel\"")),
        },
    }
}

/// `--init-weights`: one of AdapterHub's initialisations.
fn parse_init_weights(s: &str) -> Result<String, String> {
    if INIT_WEIGHTS.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not one of {INIT_WEIGHTS:?} (AdapterHub's bottleneck initialisations)"))
    }
}

impl AdapterArgs {
    /// The AdapterHub bottleneck config of the preset and options on a model of `layers` layers.
    pub fn bottleneck_config(&self, layers: usize) -> Result<BottleneckConfig> {
        let act = |default| self.non_linearity.unwrap_or(default);
        let mut c = match self.config {
            Preset::Houlsby => BottleneckConfig::houlsby(self.reduction_factor, act(Activation::Silu)),
            Preset::Pfeiffer => BottleneckConfig::pfeiffer(self.reduction_factor, act(Activation::Relu)),
            Preset::Parallel => BottleneckConfig::parallel(self.reduction_factor, act(Activation::Relu)),
            Preset::None => BottleneckConfig {
                leave_out: (0..layers).collect(),
                ..BottleneckConfig::pfeiffer(self.reduction_factor, act(Activation::Relu))
            },
        };
        if let Some(s) = &self.scaling {
            let s = parse_scaling(s).map_err(|e| anyhow!("--scaling: {e}"))?;
            (c.scaling, c.trained_scaling) = match s.as_str() {
                "learned" => (1.0, Some(TrainedScaling::Learned)),
                "channel" => (1.0, Some(TrainedScaling::Channel)),
                x => (x.parse()?, None),
            };
        }
        if let Some(i) = &self.init_weights {
            c.init_weights = parse_init_weights(i).map_err(|e| anyhow!("--init-weights: {e}"))?;
        }
        c.ln_before = self.ln_before;
        c.ln_after = self.ln_after;
        c.adapter_residual_before_ln = self.adapter_residual_before_ln;
        Ok(c)
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
    let placement = Placement::of(bn)?;
    let options = ModuleOptions::of(bn);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut values: HashMap<String, Vec<f32>> = HashMap::new();
    let sites = |loc: Location| match loc {
        Location::Attention => bn.mh_adapter,
        Location::Output => bn.output_adapter,
    };
    for l in 0..cfg.num_hidden_layers {
        for loc in [Location::Attention, Location::Output] {
            if sites(loc) && bn.has_layer(l) {
                let names = adapter_tensor_names(name, l, loc, bn.ln_before);
                for (n, v) in names.into_iter().zip(init::bottleneck(&mut rng, &bn.init_weights, d, m)?) {
                    values.insert(n, v);
                }
                for (p, n, s) in option_tensor_names(name, l, loc, options, d) {
                    values.insert(n, init::option(p, &s));
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
        options,
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
/// A new adapter + head being trained (`peft train`, the memory benchmark, the browser page).
pub struct AdapterTrainee {
    pub set: AdapterSet,
    pub head: ClassificationHead,
    pub bn: BottleneckConfig,
    pub hidden: usize,
    /// The base model's name in the saved config (`model_name`).
    pub model_name: String,
    /// Saved with this family's names and `model_type`.
    pub family: Family,
}

impl AdapterTrainee {
    /// `set` and `head` (from [`new_adapter_with_head`]) trained over the model `cfg` describes.
    pub fn new(
        set: AdapterSet,
        head: ClassificationHead,
        bn: BottleneckConfig,
        cfg: &BertConfig,
        model_name: impl Into<String>,
    ) -> Self {
        Self { set, head, bn, hidden: cfg.hidden_size, model_name: model_name.into(), family: cfg.family() }
    }

    /// The adapter and head as AdapterHub's folder holds them, the values from `read` (a GPU
    /// read-back natively; the browser's awaited copies).
    pub fn to_adapterhub_with(&self, read: &checkpoint::HostRead, labels: &[String]) -> Result<Adapter> {
        let mut a = checkpoint::to_adapterhub_with(
            read,
            &self.set,
            &self.bn,
            &self.head,
            labels,
            self.hidden,
            &self.model_name,
        )?;
        a.set_family(self.family);
        Ok(a)
    }
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
        self.to_adapterhub_with(&|t| t.to_vec(gpu), labels)?.save_as(out, format)
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

    let bn = args.adapter.bottleneck_config(cfg.num_hidden_layers)?;
    let head_config = HeadConfig::new(args.data.head_type, &task.labels.labels);
    let (set, head) = new_adapter_with_head(gpu, &cfg, &bn, &args.adapter.name, &head_config, r.seed)?;
    let trainable = set.parameters() + head.parameters();
    let model_params = model_parameters(&cfg);
    let mut options = vec![match bn.trained_scaling {
        Some(t) => format!("scaling {}", t.name()),
        None => format!("scaling {}", bn.scaling),
    }];
    options.extend(bn.ln_before.then(|| "ln_before".to_string()));
    options.extend(bn.ln_after.then(|| "ln_after".to_string()));
    options.push(format!("init {}", bn.init_weights));
    rep.message(&format!(
        "adapter: {} ({:?}, reduction factor {}, {}, {}), {} trainable parameters = {:.2}% of the model's {}",
        args.adapter.name,
        args.adapter.config,
        args.adapter.reduction_factor,
        bn.non_linearity.adapterhub_name(),
        options.join(", "),
        trainable,
        100.0 * trainable as f64 / model_params as f64,
        model_params
    ));
    let spec = AdapterSpec::from_bottleneck(&cfg, &bn)?;
    let dropout = crate::train::trainer::dropout_rates(&cfg, r, rep)?;
    let mem_plan = plan_memory(
        gpu,
        &cfg,
        &task,
        r.batch_size,
        &spec,
        &args.memory,
        Trained::Adapter,
        dropout,
        args.optimizer.gradient_accumulation,
        r.precision,
        rep,
    )?;
    let (_, mut enc) = load::load_encoder_with(gpu, &args.model, Some(mem_plan.resident_layers()), r.precision)?;
    enc.follow(&mem_plan);
    let mut trainee = AdapterTrainee::new(set, head, bn, &cfg, model_name(&args.model));
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

/// AdapterHub's initialisations of a new adapter module (`init_weights`, `methods/modeling.py`).
pub(crate) mod init {
    use crate::formats::adapterhub::OptionParam;
    use anyhow::{bail, Result};
    use rand::rngs::StdRng;
    use rand::Rng;
    use rand_distr::{Distribution, Normal};

    fn normal(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
        let dist = Normal::new(0.0f32, std).expect("valid normal");
        (0..n).map(|_| dist.sample(rng)).collect()
    }

    /// N(0, std) cut to [-2·std, 2·std] by redrawing (`nn.init.trunc_normal_` with a = -2·std,
    /// b = 2·std).
    fn truncated_normal(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
        let dist = Normal::new(0.0f32, std).expect("valid normal");
        (0..n)
            .map(|_| loop {
                let x = dist.sample(rng);
                if x.abs() <= 2.0 * std {
                    break x;
                }
            })
            .collect()
    }

    /// The four bottleneck tensors (`w_down [m, d]`, `b_down`, `w_up [d, m]`, `b_up`) of one module:
    /// "bert": weights N(0, 0.02); "mam_adapter": `w_down` Kaiming-uniform with a = √5 (U(±1/√d)),
    /// `w_up` zeros; "houlsby": weights truncated N(0, 0.01) within ±0.02; biases zero in all.
    pub fn bottleneck(rng: &mut StdRng, how: &str, d: usize, m: usize) -> Result<[Vec<f32>; 4]> {
        let (w_down, w_up) = match how {
            "bert" => (normal(rng, m * d, 0.02), normal(rng, d * m, 0.02)),
            "mam_adapter" => {
                let bound = 1.0 / (d as f32).sqrt();
                ((0..m * d).map(|_| rng.random_range(-bound..bound)).collect(), vec![0.0; d * m])
            }
            "houlsby" => (truncated_normal(rng, m * d, 0.01), truncated_normal(rng, d * m, 0.01)),
            other => bail!("init_weights {other:?} is not one of AdapterHub's (bert, mam_adapter, houlsby)"),
        };
        Ok([w_down, vec![0.0; m], w_up, vec![0.0; d]])
    }

    /// An option tensor's start: LayerNorm weights and trained scalings 1, LayerNorm biases 0.
    pub fn option(p: OptionParam, shape: &[usize]) -> Vec<f32> {
        let n = shape.iter().product();
        match p {
            OptionParam::NormBeforeBias | OptionParam::NormAfterBias => vec![0.0; n],
            _ => vec![1.0; n],
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use rand::SeedableRng;

        fn mean_std(v: &[f32]) -> (f64, f64) {
            let n = v.len() as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            (mean, (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt())
        }

        /// The statistics of each initialisation (64 × 48 draws per matrix).
        #[test]
        fn initialisations_have_adapterhubs_statistics() {
            let (d, m) = (64, 48);
            let mut rng = StdRng::seed_from_u64(7);
            let [wd, bd, wu, bu] = bottleneck(&mut rng, "bert", d, m).unwrap();
            for w in [&wd, &wu] {
                let (mean, std) = mean_std(w);
                assert!(mean.abs() < 0.002 && (std - 0.02).abs() < 0.001, "bert: mean {mean}, std {std}");
            }
            assert!(bd.iter().chain(&bu).all(|&x| x == 0.0));
            let [wd, bd, wu, bu] = bottleneck(&mut rng, "mam_adapter", d, m).unwrap();
            let bound = 1.0 / (d as f32).sqrt();
            let (mean, std) = mean_std(&wd);
            // U(-b, b): std b/√3.
            assert!(wd.iter().all(|x| x.abs() <= bound), "mam: beyond ±{bound}");
            assert!(mean.abs() < 0.01 && (std - bound as f64 / 3f64.sqrt()).abs() < 0.003, "mam: {mean} {std}");
            assert!(wu.iter().chain(&bd).chain(&bu).all(|&x| x == 0.0), "mam: up-projection and biases zero");
            let [wd, _, wu, _] = bottleneck(&mut rng, "houlsby", d, m).unwrap();
            for w in [&wd, &wu] {
                let (mean, std) = mean_std(w);
                assert!(w.iter().all(|x| x.abs() <= 0.02), "houlsby: beyond ±0.02");
                // N(0, 0.01) cut at ±2σ has std 0.01·0.8796.
                assert!(mean.abs() < 0.001 && (std - 0.008796).abs() < 0.0005, "houlsby: {mean} {std}");
            }
            assert!(bottleneck(&mut rng, "lora", d, m).is_err());
        }
    }
}
