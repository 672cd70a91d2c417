//! `--gradient-accumulation N`: one optimizer step per N batches on their mean gradient. N
//! batches of B examples train like one batch of N·B (same losses, gradient norms, learning rates
//! and weights up to f32 summation order), the last short group of an epoch counts as a step, a
//! stopped run with dropout resumes bit for bit, and N = 0 is refused.

mod common;
use common::cli::*;
use peft_wgpu::formats::weights::WeightFile;
use serde_json::Value;
use std::fs;
use std::path::Path;

fn run(model: &str, train: &str, dev: &str, out: &Path, extra: &[&str]) {
    let o = s(out);
    let mut args = vec![
        "train",
        "--model",
        model,
        "--train",
        train,
        "--dev",
        dev,
        "--out",
        &o,
        "--lr",
        "5e-3",
        "--max-length",
        "16",
        "--reduction-factor",
        "4",
        "--seed",
        "3",
    ];
    args.extend(extra);
    let r = peft(&args);
    assert!(r.status.success(), "train failed:\n{}\n{}", text(&r.stdout), text(&r.stderr));
}

/// (loss, grad_norm, lr, tokens) of every step in metrics.jsonl.
fn steps(out: &Path) -> Vec<(f64, f64, f64, u64)> {
    fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| {
            (
                v["loss"].as_f64().unwrap(),
                v["grad_norm"].as_f64().unwrap(),
                v["lr"].as_f64().unwrap(),
                v["tokens"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-30)
}

#[test]
fn accumulated_batches_train_like_one_big_batch() {
    let d = tempfile::tempdir().unwrap();
    let model = s(&tiny_model(d.path()));
    let (train, dev) = toy_data(d.path());
    let (t, dv) = (s(&train), s(&dev));
    // 16 examples in file order: batches of 8, or batches of 4 two at a time: 2 steps an epoch.
    let common = ["--batch-order", "file", "--epochs", "2", "--no-dropout"];
    let (big, acc) = (d.path().join("big"), d.path().join("acc"));
    run(&model, &t, &dv, &big, &[&common[..], &["--batch-size", "8"]].concat());
    run(&model, &t, &dv, &acc, &[&common[..], &["--batch-size", "4", "--gradient-accumulation", "2"]].concat());
    let (a, b) = (steps(&big), steps(&acc));
    assert_eq!(a.len(), 4, "{a:?}");
    assert_eq!(b.len(), 4, "{b:?}");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(rel(x.0, y.0) < 1e-5, "step {}: loss {} vs {}", i + 1, x.0, y.0);
        assert!(rel(x.1, y.1) < 1e-4, "step {}: grad norm {} vs {}", i + 1, x.1, y.1);
        assert_eq!((x.2, x.3), (y.2, y.3), "step {}: lr and real tokens", i + 1);
    }
    // The trained weights: the same up to f32 rounding (measured 5.6e-8 on lavapipe; AdamW moves
    // each weight by about lr = 5e-3 a step, so the bound is lr · 2e-4).
    let wa = WeightFile::open(big.join("adapter.safetensors")).unwrap().to_map().unwrap();
    let wb = WeightFile::open(acc.join("adapter.safetensors")).unwrap().to_map().unwrap();
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    let worst = wa
        .iter()
        .flat_map(|(k, v)| v.data.iter().zip(&wb[k].data).map(|(x, y)| (x - y).abs() as f64))
        .fold(0.0, f64::max);
    println!("worst adapter weight difference {worst:e}");
    assert!(worst < 5e-3 * 2e-4, "adapter weights differ by {worst} (lr 5e-3)");
    // Without accumulation the batches of 4 take 4 steps an epoch: another run.
    let plain = d.path().join("plain");
    run(&model, &t, &dv, &plain, &[&common[..], &["--batch-size", "4"]].concat());
    assert_eq!(steps(&plain).len(), 8);
}

#[test]
fn accumulated_run_with_dropout_resumes_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    let model = s(&tiny_model_with_dropout(d.path()));
    let (train, dev) = toy_data(d.path());
    let (t, dv) = (s(&train), s(&dev));
    // 16 examples in batches of 3: 6 batches an epoch (the last of 1), in groups of 2: 3 steps an
    // epoch, 6 in all; stopped after step 2 (mid-epoch) and resumed.
    let args = ["--batch-size", "3", "--gradient-accumulation", "2", "--epochs", "2"];
    let full = d.path().join("full");
    run(&model, &t, &dv, &full, &args);
    assert_eq!(steps(&full).len(), 6);
    let part = d.path().join("part");
    run(&model, &t, &dv, &part, &[&args[..], &["--stop-after-steps", "2"]].concat());
    assert_eq!(steps(&part).len(), 2);
    let r = peft(&["train", "--resume", &s(&part)]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let strip = |out: &Path| -> Vec<(u64, u64, u64)> {
        steps(out).iter().map(|x| (x.0.to_bits(), x.1.to_bits(), x.3)).collect()
    };
    assert_eq!(strip(&part), strip(&full), "the resumed run's steps differ");
    let st = |out: &Path| WeightFile::open(out.join("trainer_state.safetensors")).unwrap().to_map().unwrap();
    let (a, b) = (st(&full), st(&part));
    for (k, v) in &a {
        let x: Vec<u32> = v.data.iter().map(|x| x.to_bits()).collect();
        let y: Vec<u32> = b[k].data.iter().map(|x| x.to_bits()).collect();
        assert!(x == y, "{k} differs after resuming");
    }
}

#[test]
fn zero_accumulation_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let model = s(&tiny_model(d.path()));
    let (train, dev) = toy_data(d.path());
    let o = s(&d.path().join("o"));
    let (t, dv) = (s(&train), s(&dev));
    let mut args = train_args(&model, &t, &dv, &o);
    args.extend(["--gradient-accumulation", "0"]);
    assert_clean_failure(&peft(&args), &["--gradient-accumulation", "at least 1"]);
}
