//! `peft eval` and `peft predict`: a trained adapter, or a fusion with its adapters.

use crate::gpu::Gpu;
use crate::train::data::{load_examples, Example};
use crate::train::fuse::{evaluate_fused, predict_fused, FusedPaths};
use crate::train::options::Columns;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The adapter (or fusion) an `eval` / `predict` runs.
#[derive(clap::Args, Clone, Debug)]
pub struct FusedCli {
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
    fn resolve(self, model: &Path) -> Result<std::result::Result<FusedPaths, PathBuf>> {
        match self.fusion {
            Some(fusion) => {
                Ok(Ok(FusedPaths { model: model.to_path_buf(), fusion, adapters: self.adapters, head: self.head }))
            }
            None if self.adapters.len() == 1 => Ok(Err(self.adapters.into_iter().next().expect("one"))),
            None => anyhow::bail!("several --adapter folders need --fusion"),
        }
    }
}

/// Batching of inference (`eval`, `predict`).
#[derive(clap::Args, Clone, Debug)]
pub struct Batching {
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 128)]
    max_length: usize,
}

#[derive(clap::Args, Clone, Debug)]
pub struct EvalCli {
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
    #[command(flatten)]
    batching: Batching,
}

#[derive(clap::Args, Clone, Debug)]
pub struct PredictCli {
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
    #[command(flatten)]
    batching: Batching,
}

/// `peft eval`.
pub fn eval(g: &Arc<Gpu>, e: EvalCli) -> Result<()> {
    let opts = e.columns.options(true);
    let Batching { batch_size, max_length } = e.batching;
    let s = match e.fused.resolve(&e.model)? {
        Ok(paths) => {
            let (s, att) = evaluate_fused(g, &paths, &e.data, &opts, batch_size, max_length)?;
            print!("{}", att.table());
            if let Some(p) = e.attention_png {
                att.plot(&p)?;
                println!("fusion attention heat map written to {}", p.display());
            }
            s
        }
        Err(adapter) => crate::train::evaluate(g, &e.model, &adapter, &e.data, &opts, batch_size, max_length)?,
    };
    println!("{s}");
    Ok(())
}

/// `peft predict`.
pub fn predict(g: &Arc<Gpu>, p: PredictCli) -> Result<()> {
    let examples = match (p.text, p.data) {
        (Some(t), _) => vec![Example { text: t, ..Default::default() }],
        (None, Some(path)) => load_examples(&path, &p.columns.options(false))?,
        (None, None) => anyhow::bail!("give --text or --data"),
    };
    let Batching { batch_size, max_length } = p.batching;
    let preds = match p.fused.resolve(&p.model)? {
        Ok(paths) => predict_fused(g, &paths, &examples, batch_size, max_length)?,
        Err(adapter) => crate::train::predict(g, &p.model, &adapter, &examples, batch_size, max_length)?,
    };
    let lines: Vec<String> = preds.iter().map(serde_json::to_string).collect::<std::result::Result<_, _>>()?;
    let text = lines.join("\n") + "\n";
    match p.out {
        Some(path) => {
            crate::formats::write_atomic(&path, text.as_bytes())?;
            eprintln!("wrote {} predictions to {}", preds.len(), path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
