//! `peft`: the command-line tool.

use anyhow::Result;
use clap::{Parser, Subcommand};
use peft_wgpu::gpu;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "peft",
    version,
    about = "Parameter-efficient fine-tuning (adapters, AdapterFusion) on any GPU via wgpu"
)]
struct Cli {
    /// GPU to use: an index from `peft info` or part of its name (also env PEFT_GPU).
    #[arg(long, global = true, env = "PEFT_GPU")]
    gpu: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the GPUs wgpu sees, with the limits and features our kernels use.
    Info,
    /// Train a bottleneck adapter + classification head on a CSV/TSV/JSONL file.
    Train(TrainCli),
    /// Train an AdapterFusion (+ a new head) over frozen adapters (AdapterHub's train_adapter_fusion).
    Fuse(FuseCli),
    /// Accuracy and macro-F1 of a trained adapter (or, with --fusion, a fused model) on a labelled file.
    Eval {
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        fused: FusedCli,
        #[arg(long)]
        data: PathBuf,
        /// With --fusion: write the fusion-attention heat map (PNG) here.
        #[arg(long, requires = "fusion")]
        attention_png: Option<PathBuf>,
        #[command(flatten)]
        columns: Columns,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        #[arg(long, default_value_t = 128)]
        max_length: usize,
    },
    /// Label, probabilities and logits per input of a trained adapter (or fused model).
    Predict {
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        fused: FusedCli,
        /// One text to classify.
        #[arg(long, conflicts_with = "data", required_unless_present = "data")]
        text: Option<String>,
        /// A CSV/TSV/JSONL file of texts.
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        columns: Columns,
        /// Write JSONL here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        #[arg(long, default_value_t = 128)]
        max_length: usize,
    },
    /// Kernel and training-step benchmarks on the selected GPU (table + JSON).
    Bench(peft_wgpu::bench::cli::BenchCli),
    /// Data sets of the fusion demo: `peft data prepare <task>` writes train.csv + test.csv.
    #[command(subcommand)]
    Data(DataCommand),
    /// One forward + backward (mean cross-entropy) on a JSON batch; writes logits, loss,
    /// last_hidden_state and grad.<name> of every trainable tensor (AdapterHub names).
    Grads {
        /// Hugging Face model directory (config.json + model.safetensors).
        #[arg(long)]
        model: PathBuf,
        /// AdapterHub adapter folder (repeat with --fusion).
        #[arg(long = "adapter")]
        adapters: Vec<PathBuf>,
        /// AdapterHub fusion folder.
        #[arg(long)]
        fusion: Option<PathBuf>,
        /// AdapterHub head folder (default: the head saved with the adapter).
        #[arg(long)]
        head: Option<PathBuf>,
        /// JSON with input_ids, attention_mask, labels [, token_type_ids].
        #[arg(long)]
        inputs: PathBuf,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// Frozen layers kept on the GPU; fewer stream from the file (default: all).
        #[arg(long)]
        resident_layers: Option<usize>,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Convert a task's raw files (fetched by scripts/fetch-fusion-data.sh when missing) to
    /// text,label CSV: newsgroups (20 Newsgroups), spam (SpamAssassin), tweets (2016 election,
    /// author), drugs (drug reviews, 3 classes), imdb (1,000 training reviews).
    Prepare(peft_wgpu::datasets::PrepareArgs),
}

#[derive(clap::Args, Clone, Debug)]
struct Columns {
    /// Column / key holding the text.
    #[arg(long, default_value = "text")]
    text_column: String,
    /// Column / key holding the second text of a pair.
    #[arg(long)]
    text_pair_column: Option<String>,
    /// Column / key holding the label.
    #[arg(long, default_value = "label")]
    label_column: String,
}

impl Columns {
    fn options(&self, require_labels: bool) -> peft_wgpu::train::data::DataOptions {
        peft_wgpu::train::data::DataOptions {
            text_column: self.text_column.clone(),
            text_pair_column: self.text_pair_column.clone(),
            label_column: self.label_column.clone(),
            format: None,
            require_labels,
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
struct TrainCli {
    /// Hugging Face model directory (config.json, model.safetensors, tokenizer.json or vocab.txt).
    #[arg(long, required_unless_present = "resume")]
    model: Option<PathBuf>,
    /// Training data: CSV / TSV with a header, or JSONL.
    #[arg(long, required_unless_present = "resume")]
    train: Option<PathBuf>,
    /// Dev data; without it a seeded --dev-split of the training file is held out.
    #[arg(long)]
    dev: Option<PathBuf>,
    #[arg(long, default_value_t = 0.1)]
    dev_split: f64,
    /// houlsby = AdapterHub double_seq_bn, pfeiffer = seq_bn.
    #[arg(long, value_enum, default_value = "houlsby")]
    config: peft_wgpu::train::Preset,
    #[arg(long, default_value_t = 16.0)]
    reduction_factor: f64,
    /// Default: AdapterHub's for the preset (houlsby: swish, pfeiffer: relu).
    #[arg(long, value_parser = parse_act)]
    non_linearity: Option<peft_wgpu::Activation>,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f32,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 128)]
    max_length: usize,
    /// Train on the first N examples (after the seeded shuffle).
    #[arg(long)]
    max_train_examples: Option<usize>,
    /// Evaluate on the first N dev examples.
    #[arg(long)]
    max_dev_examples: Option<usize>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of steps with linear warmup.
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    /// Stop after N epochs without a better dev accuracy.
    #[arg(long)]
    patience: Option<usize>,
    /// Name of the adapter and head.
    #[arg(long, default_value = "task")]
    name: String,
    /// Frozen layers kept on the GPU; fewer stream from the file (default: all).
    #[arg(long)]
    resident_layers: Option<usize>,
    /// Keep only each layer's input in forward and recompute its activations in backward
    /// (bit-identical results, less memory, about one more forward of time).
    #[arg(long)]
    recompute: bool,
    /// With --recompute: run each layer over this many sequences of the batch at a time, so one
    /// layer's working set shrinks with it (the adapters' gradients are summed chunk by chunk).
    #[arg(long)]
    layer_chunk: Option<usize>,
    /// With --recompute: also keep each layer's FFN output (one more hidden-size tensor per layer),
    /// so recomputing skips the FFN's second matmul (about a third of the recompute work).
    #[arg(long)]
    keep_ffn_output: bool,
    /// GPU memory to fit in (e.g. 2GiB, 512MiB): the planner chooses --resident-layers,
    /// --recompute and --layer-chunk, or fails naming what to change.
    #[arg(long, value_parser = parse_gpu_memory)]
    max_gpu_memory: Option<u64>,
    #[command(flatten)]
    columns: Columns,
    /// Output folder (AdapterHub adapter + head, metrics.jsonl, training.png, trainer_state.safetensors).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the stopped run in this output folder (from its trainer_state.safetensors), with
    /// the settings it was started with.
    #[arg(long, value_name = "DIR", conflicts_with_all = TRAIN_SETTINGS)]
    resume: Option<PathBuf>,
    /// Also save the training state every N steps (it is always saved at the end of each epoch
    /// and on Ctrl-C).
    #[arg(long, value_name = "N")]
    save_steps: Option<usize>,
    /// Save the state and stop after N steps in all (for tests and scheduled jobs).
    #[arg(long, value_name = "N", hide = true)]
    stop_after_steps: Option<usize>,
    /// Inject a fault before a step, to test what a run does then: nan@STEP, device-lost@STEP.
    #[arg(long, value_name = "KIND@STEP", hide = true)]
    inject_fault: Option<peft_wgpu::train::resume::Fault>,
}

/// The `peft train` options that define a run: `--resume` takes them from the saved state.
const TRAIN_SETTINGS: [&str; 23] = [
    "model",
    "train",
    "dev",
    "dev_split",
    "config",
    "reduction_factor",
    "non_linearity",
    "epochs",
    "lr",
    "batch_size",
    "max_length",
    "max_train_examples",
    "max_dev_examples",
    "seed",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "patience",
    "name",
    "text_column",
    "text_pair_column",
    "label_column",
    "out",
];

/// `peft train`: a new run, or `--resume DIR`. Ctrl-C saves the state and exits with 130.
fn train_cli(g: &std::sync::Arc<gpu::Gpu>, t: TrainCli) -> Result<()> {
    use peft_wgpu::train::resume;
    let run = resume::RunControl {
        resume: t.resume.is_some(),
        stop_after_steps: t.stop_after_steps,
        save_steps: t.save_steps,
        fault: t.inject_fault,
    };
    let args = match t.resume {
        Some(dir) => {
            let mut args = resume::load(&dir)?.args;
            args.resident_layers = t.resident_layers;
            args.recompute = t.recompute;
            args.layer_chunk = t.layer_chunk;
            args.keep_ffn_output = t.keep_ffn_output;
            args.max_gpu_memory = t.max_gpu_memory;
            args
        }
        None => peft_wgpu::train::TrainArgs {
            model: t.model.expect("required by clap"),
            train: t.train.expect("required by clap"),
            dev: t.dev,
            dev_split: t.dev_split,
            config: t.config,
            reduction_factor: t.reduction_factor,
            non_linearity: t.non_linearity,
            epochs: t.epochs,
            lr: t.lr,
            batch_size: t.batch_size,
            max_length: t.max_length,
            max_train_examples: t.max_train_examples,
            max_dev_examples: t.max_dev_examples,
            seed: t.seed,
            out: t.out.expect("required by clap"),
            warmup_ratio: t.warmup_ratio,
            weight_decay: t.weight_decay,
            max_grad_norm: t.max_grad_norm,
            patience: t.patience,
            data: t.columns.options(true),
            adapter_name: t.name,
            resident_layers: t.resident_layers,
            recompute: t.recompute,
            layer_chunk: t.layer_chunk,
            keep_ffn_output: t.keep_ffn_output,
            max_gpu_memory: t.max_gpu_memory,
            progress: true,
        },
    };
    resume::install_ctrlc_handler()?;
    peft_wgpu::train::train_with(g, &args, &run)?;
    if resume::stop_requested() {
        std::process::exit(resume::INTERRUPTED_EXIT_CODE);
    }
    Ok(())
}

/// The adapter (or fusion) an `eval` / `predict` runs.
#[derive(clap::Args, Clone, Debug)]
struct FusedCli {
    /// Trained adapter folder (with its head); with --fusion: repeat for every fused adapter.
    #[arg(long = "adapter", required = true)]
    adapters: Vec<PathBuf>,
    /// AdapterHub fusion folder (from `peft fuse`).
    #[arg(long)]
    fusion: Option<PathBuf>,
    /// With --fusion: head folder (default: the head saved in the fusion folder).
    #[arg(long, requires = "fusion")]
    head: Option<PathBuf>,
}

impl FusedCli {
    /// The fusion's paths, or the one adapter folder.
    fn resolve(
        self,
        model: &std::path::Path,
    ) -> Result<std::result::Result<peft_wgpu::train::fuse::FusedPaths, PathBuf>> {
        match self.fusion {
            Some(fusion) => Ok(Ok(peft_wgpu::train::fuse::FusedPaths {
                model: model.to_path_buf(),
                fusion,
                adapters: self.adapters,
                head: self.head,
            })),
            None if self.adapters.len() == 1 => Ok(Err(self.adapters.into_iter().next().expect("one"))),
            None => anyhow::bail!("several --adapter folders need --fusion"),
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
struct FuseCli {
    /// Hugging Face model directory (config.json, model.safetensors, tokenizer.json or vocab.txt).
    #[arg(long)]
    model: PathBuf,
    /// Trained adapter folder to fuse (frozen); repeat for each. Adapters at the FFN output only
    /// (`peft train --config pfeiffer`).
    #[arg(long = "adapter", required = true)]
    adapters: Vec<PathBuf>,
    /// Training data of the target task: CSV / TSV with a header, or JSONL.
    #[arg(long)]
    train: PathBuf,
    /// Dev data; without it a seeded --dev-split of the training file is held out.
    #[arg(long)]
    dev: Option<PathBuf>,
    #[arg(long, default_value_t = 0.1)]
    dev_split: f64,
    /// dynamic: value matrix initialised to the identity and regularised towards it; static: none.
    #[arg(long, value_enum, default_value = "dynamic")]
    fusion_config: peft_wgpu::train::fuse::FusionPreset,
    /// AdapterHub's softmax temperature annealing (T from 50 down to 1 during training).
    #[arg(long)]
    temperature: bool,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 5e-5)]
    lr: f32,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 128)]
    max_length: usize,
    /// Train on the first N examples (after the seeded shuffle).
    #[arg(long)]
    max_train_examples: Option<usize>,
    /// Evaluate on the first N dev examples.
    #[arg(long)]
    max_dev_examples: Option<usize>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of steps with linear warmup.
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    /// Stop after N epochs without a better dev accuracy.
    #[arg(long)]
    patience: Option<usize>,
    /// Name of the new head.
    #[arg(long, default_value = "target")]
    name: String,
    /// Frozen layers kept on the GPU; fewer stream from the file (default: all).
    #[arg(long)]
    resident_layers: Option<usize>,
    #[command(flatten)]
    columns: Columns,
    /// Output folder (AdapterHub fusion + head, metrics.jsonl, training.png, fusion_attention.{json,png}).
    #[arg(long)]
    out: PathBuf,
}

fn parse_gpu_memory(s: &str) -> std::result::Result<u64, String> {
    peft_wgpu::model::plan::parse_size(s).map_err(|e| format!("{e:#}"))
}

fn parse_act(s: &str) -> std::result::Result<peft_wgpu::Activation, String> {
    peft_wgpu::Activation::parse(s).map_err(|e| e.to_string())
}

fn open_gpu(select: Option<String>) -> Result<std::sync::Arc<gpu::Gpu>> {
    gpu::Gpu::new(&gpu::GpuOptions { select, ..Default::default() })
}

fn info(select: Option<String>) -> Result<()> {
    let gpus = gpu::list_gpus();
    if gpus.is_empty() {
        anyhow::bail!("no GPU found by wgpu. On a machine without one, install a CPU Vulkan driver: `sudo scripts/install-vulkan.sh` (Mesa lavapipe)");
    }
    println!("{} GPU(s) found:", gpus.len());
    for g in &gpus {
        println!("{}", g.summary());
        for line in g.details() {
            println!("    {line}");
        }
    }
    let chosen = gpu::Gpu::new(&gpu::GpuOptions { select, ..Default::default() })?;
    println!("selected: {}", chosen.description.summary());
    println!("policy: {}", chosen.policy());
    Ok(())
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => info(cli.gpu),
        Command::Data(DataCommand::Prepare(a)) => peft_wgpu::datasets::prepare_cli(&a).map(|_| ()),
        Command::Bench(b) => open_gpu(cli.gpu).and_then(|g| b.run(&g)),
        Command::Train(t) => open_gpu(cli.gpu).and_then(|g| train_cli(&g, t)),
        Command::Fuse(f) => open_gpu(cli.gpu).and_then(|g| {
            let args = peft_wgpu::train::fuse::FuseArgs {
                model: f.model,
                adapters: f.adapters,
                train: f.train,
                dev: f.dev,
                dev_split: f.dev_split,
                fusion_config: f.fusion_config,
                temperature: f.temperature,
                epochs: f.epochs,
                lr: f.lr,
                batch_size: f.batch_size,
                max_length: f.max_length,
                max_train_examples: f.max_train_examples,
                max_dev_examples: f.max_dev_examples,
                seed: f.seed,
                out: f.out,
                warmup_ratio: f.warmup_ratio,
                weight_decay: f.weight_decay,
                max_grad_norm: f.max_grad_norm,
                patience: f.patience,
                data: f.columns.options(true),
                head_name: f.name,
                resident_layers: f.resident_layers,
                progress: true,
            };
            peft_wgpu::train::fuse::fuse(&g, &args).map(|_| ())
        }),
        Command::Eval { model, fused, data, attention_png, columns, batch_size, max_length } => open_gpu(cli.gpu)
            .and_then(|g| {
                let opts = columns.options(true);
                let s = match fused.resolve(&model)? {
                    Ok(paths) => {
                        let (s, att) =
                            peft_wgpu::train::fuse::evaluate_fused(&g, &paths, &data, &opts, batch_size, max_length)?;
                        print!("{}", att.table());
                        if let Some(p) = attention_png {
                            att.plot(&p)?;
                            println!("fusion attention heat map written to {}", p.display());
                        }
                        s
                    }
                    Err(adapter) => {
                        peft_wgpu::train::evaluate(&g, &model, &adapter, &data, &opts, batch_size, max_length)?
                    }
                };
                println!("accuracy={:.4} macro_f1={:.4} n={}", s.accuracy, s.macro_f1, s.n);
                Ok(())
            }),
        Command::Predict { model, fused, text, data, columns, out, batch_size, max_length } => open_gpu(cli.gpu)
            .and_then(|g| {
                let examples = match (text, data) {
                    (Some(t), _) => vec![peft_wgpu::train::data::Example { text: t, ..Default::default() }],
                    (None, Some(p)) => peft_wgpu::train::data::load_examples(&p, &columns.options(false))?,
                    (None, None) => anyhow::bail!("give --text or --data"),
                };
                let preds = match fused.resolve(&model)? {
                    Ok(paths) => peft_wgpu::train::fuse::predict_fused(&g, &paths, &examples, batch_size, max_length)?,
                    Err(adapter) => peft_wgpu::train::predict(&g, &model, &adapter, &examples, batch_size, max_length)?,
                };
                let lines: Vec<String> =
                    preds.iter().map(serde_json::to_string).collect::<std::result::Result<_, _>>()?;
                let text = lines.join("\n") + "\n";
                match out {
                    Some(p) => {
                        peft_wgpu::formats::write_atomic(&p, text.as_bytes())?;
                        eprintln!("wrote {} predictions to {}", preds.len(), p.display());
                    }
                    None => print!("{text}"),
                }
                Ok(())
            }),
        Command::Grads { model, adapters, fusion, head, inputs, out, resident_layers } => {
            let args =
                peft_wgpu::train::grads::GradsArgs { model, adapters, fusion, head, inputs, out, resident_layers };
            gpu::Gpu::new(&gpu::GpuOptions { select: cli.gpu, ..Default::default() }).and_then(|g| {
                let map = peft_wgpu::train::grads::run(&g, &args)?;
                println!("wrote {} tensors to {}", map.len(), args.out.display());
                Ok(())
            })
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
