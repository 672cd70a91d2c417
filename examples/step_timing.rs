//! Times forward + backward steps of the encoder with an adapter on a JSON batch (wall clock,
//! full sync per step), after one warm-up step that builds the pipelines.
//!
//! cargo run --release --example step_timing -- MODEL_DIR ADAPTER_DIR INPUTS.json [STEPS]

use peft_wgpu::model::encoder::Setup;
use peft_wgpu::model::{config::BertConfig, load};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        anyhow::bail!("usage: step_timing MODEL_DIR ADAPTER_DIR INPUTS.json [STEPS]");
    }
    let (model, adapter, inputs) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]), PathBuf::from(&args[3]));
    let steps: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let gpu = peft_wgpu::Gpu::new(&Default::default())?;
    println!("device: {}", gpu.description.summary());
    let cfg = BertConfig::from_model_dir(&model)?;
    let (_, mut enc) = load::load_encoder(&gpu, &model, None)?;
    let (set, head) = load::load_adapter(&gpu, &adapter, &cfg)?;
    let head = head.ok_or_else(|| anyhow::anyhow!("adapter folder has no head"))?;
    let (inp, labels) = peft_wgpu::train::data::read_inputs_json(&inputs)?;
    for i in 0..=steps {
        let t = Instant::now();
        let out = enc.pass(&Setup::Adapter(&set), &head, &inp, Some(&labels), true, false)?;
        let what = if i == 0 { "warm-up" } else { "step" };
        println!(
            "{what} {i}: {:.1} ms, loss {:.4}, peak GPU memory {:.1} MiB",
            t.elapsed().as_secs_f64() * 1e3,
            out.loss.unwrap_or(f32::NAN),
            out.peak_bytes as f64 / 1048576.0
        );
    }
    Ok(())
}
