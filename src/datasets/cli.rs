//! `peft data prepare`: converts a task and writes its `train.csv` / `test.csv`.

use super::{default_out_dir, ensure_raw, prepare, PrepareOptions, Task};
use crate::train::data::Example;
use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Writes `text,label` CSV (header line, RFC 4180 quoting) atomically.
pub fn write_csv(path: &Path, examples: &[Example]) -> Result<()> {
    let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
    w.write_record(["text", "label"])?;
    for (i, e) in examples.iter().enumerate() {
        let label = e.label.as_deref().ok_or_else(|| anyhow!("example {} has no label", i + 1))?;
        w.write_record([e.text.as_str(), label])?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow!("writing CSV: {e}"))?;
    crate::formats::write_atomic(path, &bytes)
}

/// Examples per label, for the summary line.
pub fn label_counts(examples: &[Example]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in examples {
        *m.entry(e.label.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    m
}

/// `peft data prepare`.
#[derive(clap::Args, Clone, Debug)]
pub struct PrepareArgs {
    /// The task to convert.
    #[arg(value_enum)]
    pub task: Task,
    /// Folder with the package's raw files (default: <cache>/data/raw/<package>-<version>,
    /// fetched by scripts/fetch-fusion-data.sh when missing).
    #[arg(long)]
    pub raw: Option<PathBuf>,
    /// Output folder for train.csv and test.csv (text,label) (default: <cache>/data/<task>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of the shuffles and splits.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Share held out as test.csv for tasks that ship no test split (spam, tweets).
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// IMDB: number of training reviews.
    #[arg(long, default_value_t = 1000)]
    pub imdb_train: usize,
    /// IMDB: number of test reviews (drawn from the rest).
    #[arg(long, default_value_t = 1000)]
    pub imdb_test: usize,
}

/// Runs `peft data prepare`: converts, writes `<out>/train.csv` and `<out>/test.csv`, prints
/// the counts; returns the output folder.
pub fn prepare_cli(args: &PrepareArgs) -> Result<PathBuf> {
    let raw = match &args.raw {
        Some(r) => r.clone(),
        None => ensure_raw(args.task)?,
    };
    let opts = PrepareOptions {
        seed: args.seed,
        test_fraction: args.test_fraction,
        imdb_train: args.imdb_train,
        imdb_test: args.imdb_test,
    };
    let split = prepare(args.task, &raw, &opts)?;
    let out = args.out.clone().unwrap_or_else(|| default_out_dir(args.task));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for (name, ex) in [("train.csv", &split.train), ("test.csv", &split.test)] {
        let p = out.join(name);
        write_csv(&p, ex)?;
        let counts = label_counts(ex);
        let summary = if counts.len() <= 4 {
            counts.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
        } else {
            format!("{} labels", counts.len())
        };
        println!("{}: {} examples ({summary})", p.display(), ex.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::texts;
    use crate::train::data;

    #[test]
    fn csv_round_trips_through_the_loader() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        let ex = vec![Example::new("a, \"quoted\" text", "pos"), Example::new("line", "neg")];
        write_csv(&p, &ex).unwrap();
        let back = data::load_examples(&p, &data::DataOptions::default()).unwrap();
        assert_eq!(texts(&back), texts(&ex));
    }
}
