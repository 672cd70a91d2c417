//! Running the built `peft` binary on the tiny fixture model with a generated vocabulary and
//! toy data, and checking that it fails cleanly.

use super::fixtures::tiny;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const WORDS: &[&str] = &[
    "a",
    "and",
    "acting",
    "awful",
    "beautiful",
    "best",
    "boring",
    "brilliant",
    "clever",
    "cold",
    "delight",
    "dull",
    "every",
    "film",
    "finish",
    "from",
    "funny",
    "great",
    "hated",
    "i",
    "indeed",
    "loved",
    "mess",
    "minute",
    "movie",
    "moving",
    "of",
    "painful",
    "performances",
    "plot",
    "start",
    "story",
    "stupid",
    "superb",
    "tedious",
    "terrible",
    "the",
    "this",
    "time",
    "to",
    "ugly",
    "warm",
    "waste",
    "weak",
    "wonderful",
    "worst",
    "year",
    "okay",
    ",",
    ".",
];

/// tiny-bert's base as a model folder with a generated WordPiece vocabulary (120 entries, the
/// config's vocab_size).
pub fn tiny_model(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    fs::create_dir_all(&m).unwrap();
    fs::copy(tiny().join("base/config.json"), m.join("config.json")).unwrap();
    fs::copy(tiny().join("base/model.safetensors"), m.join("model.safetensors")).unwrap();
    write_vocab(&m);
    m
}

/// [`tiny_model`] with BERT's dropout rates in its config.json (the fixture's are 0): training
/// runs drop (hidden 0.1, attention probabilities 0.1, head 0.1) unless `--no-dropout`.
pub fn tiny_model_with_dropout(dir: &Path) -> PathBuf {
    let m = dir.join("model-dropout");
    fs::create_dir_all(&m).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(tiny().join("base/config.json")).unwrap()).unwrap();
    cfg["hidden_dropout_prob"] = serde_json::json!(0.1);
    cfg["attention_probs_dropout_prob"] = serde_json::json!(0.1);
    fs::write(m.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    fs::copy(tiny().join("base/model.safetensors"), m.join("model.safetensors")).unwrap();
    write_vocab(&m);
    m
}

pub fn write_vocab(m: &Path) {
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
    vocab.extend(WORDS.iter().map(|s| s.to_string()));
    let mut i = 0;
    while vocab.len() < 120 {
        vocab.push(format!("[unused{i}]"));
        i += 1;
    }
    fs::write(m.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
}

pub const POS: [&str; 8] = [
    "a wonderful, moving film",
    "great acting and a great story",
    "i loved every minute",
    "brilliant and funny",
    "a delight from start to finish",
    "beautiful, warm and clever",
    "the best movie this year",
    "superb performances",
];
pub const NEG: [&str; 8] = [
    "a dull, boring mess",
    "terrible acting and a weak plot",
    "i hated every minute",
    "awful and tedious",
    "a waste of time",
    "ugly, cold and stupid",
    "the worst movie this year",
    "painful performances",
];

/// 16 training and 8 dev sentences, two labels.
pub fn toy_data(dir: &Path) -> (PathBuf, PathBuf) {
    let mut train = String::from("text,label\n");
    let mut dev = String::from("text,label\n");
    for i in 0..8 {
        train.push_str(&format!("\"{}\",positive\n\"{}\",negative\n", POS[i], NEG[i]));
        if i % 2 == 0 {
            dev.push_str(&format!("\"{} indeed\",positive\n\"{} indeed\",negative\n", POS[i], NEG[i]));
        }
    }
    let (t, d) = (dir.join("train.csv"), dir.join("dev.csv"));
    fs::write(&t, train).unwrap();
    fs::write(&d, dev).unwrap();
    (t, d)
}

pub fn peft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("running peft")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Exit code non-zero, no panic, one `error:` line on stderr naming every part; returns stderr.
#[track_caller]
pub fn assert_clean_failure(out: &Output, parts: &[&str]) -> String {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "expected a failure; stdout:\n{}\nstderr:\n{err}", text(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "stderr:\n{err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "a panic:\n{err}");
    assert_eq!(err.matches("error:").count(), 1, "not one error message:\n{err}");
    for p in parts {
        assert!(err.contains(p), "stderr does not mention {p:?}:\n{err}");
    }
    err
}

/// No temporary files (ours are `.<name>.<pid>.<n>.tmp`) anywhere under `dir`.
pub fn assert_no_temp_files(dir: &Path) {
    if !dir.exists() {
        return;
    }
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        assert!(!p.to_string_lossy().ends_with(".tmp"), "temporary file left: {}", p.display());
        if p.is_dir() {
            assert_no_temp_files(&p);
        }
    }
}

/// `peft train` on the toy data: 16 examples in batches of 5 = 4 steps per epoch, 3 epochs (the
/// default) unless the caller adds `--epochs`.
pub fn train_args<'a>(model: &'a str, train: &'a str, dev: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        model,
        "--train",
        train,
        "--dev",
        dev,
        "--out",
        out,
        "--batch-size",
        "5",
        "--lr",
        "5e-3",
        "--max-length",
        "16",
        "--reduction-factor",
        "4",
        "--seed",
        "3",
    ]
}

pub fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
