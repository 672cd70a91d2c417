//! `--batch-order file`: the training file's order, cut into batches in turn, every epoch, for
//! side-by-side runs with another trainer (bench/accuracy/); it needs `--dev`.

mod common;
use common::cli::{assert_clean_failure, peft, s, text, tiny_model, toy_data, train_args};
use peft_wgpu::train::data::batches_in_order;
use std::fs;
use std::path::Path;

/// Per-step losses from a run's metrics.jsonl, in step order.
fn step_losses(out: &Path) -> Vec<f64> {
    let log = fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    log.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

fn train(model: &str, train_csv: &Path, dev: &str, out: &Path, order: &str) -> Vec<f64> {
    let (t, o) = (s(train_csv), s(out));
    let mut args = train_args(model, &t, dev, &o);
    args.extend(["--epochs", "1", "--batch-order", order]);
    let r = peft(&args);
    assert!(r.status.success(), "train failed:\n{}\n{}", text(&r.stdout), text(&r.stderr));
    step_losses(out)
}

#[test]
fn batches_in_order_cuts_in_turn() {
    assert_eq!(batches_in_order(7, 3), vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
    assert_eq!(batches_in_order(6, 3), vec![vec![0, 1, 2], vec![3, 4, 5]]);
    assert!(batches_in_order(0, 3).is_empty());
}

#[test]
fn file_order_follows_the_file_and_needs_dev() {
    let dir = std::env::temp_dir().join(format!("peft-batch-order-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let model = s(&tiny_model(&dir));
    let (train_csv, dev_csv) = toy_data(&dir);
    let dev = s(&dev_csv);

    // Without --dev: a clear error (a held-out split would shuffle the file).
    let (t, o) = (s(&train_csv), s(&dir.join("no-dev")));
    let mut args: Vec<&str> = train_args(&model, &t, &dev, &o);
    let at = args.iter().position(|a| *a == "--dev").unwrap();
    args.drain(at..at + 2);
    args.extend(["--batch-order", "file"]);
    assert_clean_failure(&peft(&args), &["--batch-order file", "--dev"]);

    // The same first batch (rows 1-5), the rest reversed: file order gives the same first step and
    // then different ones; 16 rows in batches of 5 are 4 steps.
    let all = fs::read_to_string(&train_csv).unwrap();
    let mut lines: Vec<&str> = all.lines().collect();
    lines[6..].reverse();
    let swapped = dir.join("swapped.csv");
    fs::write(&swapped, lines.join("\n") + "\n").unwrap();
    let a = train(&model, &train_csv, &dev, &dir.join("a"), "file");
    let b = train(&model, &swapped, &dev, &dir.join("b"), "file");
    assert_eq!(a.len(), 4, "{a:?}");
    assert_eq!(a[0], b[0], "the same first batch in file order: {a:?} vs {b:?}");
    assert_ne!(a[1..], b[1..], "later batches differ: {a:?} vs {b:?}");
    // Bucketed (the default) shuffles: the same file in another order is another run.
    let c = train(&model, &train_csv, &dev, &dir.join("c"), "bucketed");
    assert_eq!(c.len(), 4);
    assert_ne!(a, c, "bucketed and file order gave the same losses: {a:?}");
    fs::remove_dir_all(&dir).ok();
}
