//! The head types beyond classification (regression, multi-label classification, tagging with
//! one and two layers) against fixtures the `adapters` library made (`tests/fixtures/make_heads.py`)
//! on each family's tiny model (BERT, RoBERTa, XLM-R, DistilBERT, ELECTRA): a Houlsby adapter and
//! the head added by the library's own `add_classification_head` /
//! `add_classification_head(multilabel=True)` / `add_tagging_head`, saved as safetensors and as
//! the default torch `.bin`. Logits, loss, last hidden state and every trainable gradient within
//! the BERT parity tolerances (outputs 1e-4, gradients 1e-3 relative) and against float64 no
//! worse than max(4 × PyTorch fp32's error, 2e-6); the configs we write
//! equal the library's; unsupported head types refused by name. Tokenization of pre-split words,
//! `peft predict` on the library's saves and tagging per family: `tests/heads_families.rs`.

mod common;
use common::cli::*;
use common::*;
use peft_wgpu::formats::adapterhub::{Head, HeadConfig, HeadKind, SavedConfig};
use peft_wgpu::formats::weights::WeightFile;
use peft_wgpu::kernels::loss::IGNORE_LABEL;
use peft_wgpu::model::config::BertConfig;
use peft_wgpu::train::data::{read_targets_json, OwnedTargets};
use peft_wgpu::train::grads::{self, GradsArgs};
use safetensors::Dtype;
use serde_json::json;
use std::path::PathBuf;

const FAMILIES: [&str; 5] = ["bert", "roberta", "xlmr", "distilbert", "electra"];

const CASES: [(&str, HeadKind, usize); 4] = [
    // (case, kind, head tensors that train)
    ("regression", HeadKind::Regression, 4),
    ("multilabel", HeadKind::MultilabelClassification, 4),
    ("tagging", HeadKind::Tagging, 2),
    ("tagging2", HeadKind::Tagging, 4),
];

fn case_dir(family: &str, case: &str) -> PathBuf {
    fixtures().join(format!("heads-{family}")).join(case)
}

fn base(family: &str) -> PathBuf {
    fixtures().join(format!("tiny-{family}")).join("base")
}

/// A tensor of the file as f64 (F64 kept exact, F32 widened).
fn read64(f: &WeightFile, name: &str) -> Vec<f64> {
    let (dtype, _, bytes) = f.raw(name).unwrap();
    match dtype {
        Dtype::F64 => bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        _ => f.get(name).unwrap().1.iter().map(|&v| v as f64).collect(),
    }
}

/// `peft grads` on the case's adapter folder (`adapter` or `adapter-bin`).
fn grads(family: &str, case: &str, adapter: &str) -> WeightFile {
    let dir = case_dir(family, case);
    let out =
        std::env::temp_dir().join(format!("peft-heads-{family}-{case}-{adapter}-{}.safetensors", std::process::id()));
    let args = GradsArgs {
        model: base(family),
        inputs: dir.join("inputs.json"),
        out: out.clone(),
        adapters: vec![dir.join(adapter)],
        ..Default::default()
    };
    grads::run(&gpu(), &args).unwrap();
    let f = WeightFile::open(&out).unwrap();
    std::fs::remove_file(out).ok();
    f
}

/// Every case of `family` against the library's fp32 and float64 results.
fn heads_match_library(family: &str) {
    for (case, kind, head_tensors) in CASES {
        let dir = case_dir(family, case);
        let hidden = BertConfig::from_model_dir(base(family)).unwrap().hidden_size;
        let head = Head::load(dir.join("adapter"), hidden).unwrap();
        assert_eq!(head.config.kind, kind, "{family} {case}");
        let ours = grads(family, case, "adapter");
        let exp = WeightFile::open(dir.join("expected.safetensors")).unwrap();
        let exact = WeightFile::open(dir.join("expected_f64.safetensors")).unwrap();
        let (mut a, mut b) = (ours.names(), exp.names());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{family} {case}: tensor names differ from the library's");
        // 2 layers × 2 sites × 4 adapter tensors + the head's.
        assert_eq!(b.iter().filter(|n| n.starts_with("grad.")).count(), 16 + head_tensors, "{family} {case}: {b:?}");
        let mut worst = (0.0f64, String::new());
        for n in b {
            let tol = if n.starts_with("grad.") { 1e-3 } else { 1e-4 };
            let (shape, v) = ours.get(n).unwrap();
            let (eshape, e) = exp.get(n).unwrap();
            assert_eq!(shape, eshape, "{family} {case} {n} shape");
            let err = if n.ends_with("key.bias") && n.starts_with("grad.") {
                // Zero by the algebra (softmax is shift-invariant): ours exactly, the library's ~0.
                assert!(v.iter().all(|&x| x == 0.0), "{family} {case} {n} should be exactly zero");
                assert!(e.iter().all(|x| x.abs() < 1e-6), "{family} {case} {n}: the library's is not ~0");
                continue;
            } else {
                assert_close(&format!("{family} {case} {n}"), &v, &f64s(&e), tol)
            };
            if err > worst.0 {
                worst = (err, n.to_string());
            }
            let x = read64(&exact, n);
            let scale = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let dist = |v: &[f64]| v.iter().zip(&x).fold(0.0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
            let (ours64, torch64) = (dist(&f64s(&v)), dist(&f64s(&e)));
            let bound = (4.0 * torch64).max(2e-6);
            assert!(ours64 <= bound, "{family} {case} {n}: {ours64:.2e} from float64, PyTorch fp32 {torch64:.2e}");
        }
        println!("{family} {case}: worst tensor against the library's fp32: {:.2e} ({})", worst.0, worst.1);
        // The library's default save (torch .bin) gives the same bits.
        let from_bin = grads(family, case, "adapter-bin");
        for n in ours.names() {
            assert_eq!(ours.get(n).unwrap().1, from_bin.get(n).unwrap().1, "{family} {case}: .bin {n} differs");
        }
    }
}

#[test]
fn heads_match_adapters_library_on_tiny_bert() {
    heads_match_library("bert");
}

#[test]
fn heads_match_adapters_library_on_tiny_roberta() {
    heads_match_library("roberta");
}

#[test]
fn heads_match_adapters_library_on_tiny_xlmr() {
    heads_match_library("xlmr");
}

/// No token types, the library's `DistilBertAdapterModel` head names (`heads.task.N`).
#[test]
fn heads_match_adapters_library_on_tiny_distilbert() {
    heads_match_library("distilbert");
}

#[test]
fn heads_match_adapters_library_on_tiny_electra() {
    heads_match_library("electra");
}

/// Our `head_config.json` `config` of each kind is the library's, key for key.
#[test]
fn head_configs_round_trip_as_the_library_writes_them() {
    for family in FAMILIES {
        for (case, kind, _) in CASES {
            let saved = SavedConfig::read(&case_dir(family, case).join("adapter/head_config.json")).unwrap();
            let config = HeadConfig::from_config(saved.config()).unwrap();
            assert_eq!(config.kind, kind);
            assert_eq!(&config.to_config(), saved.config(), "{family} {case}");
            let bin = SavedConfig::read(&case_dir(family, case).join("adapter-bin/head_config.json")).unwrap();
            assert_eq!(HeadConfig::from_config(bin.config()).unwrap(), config);
        }
    }
    // A new head of each kind has the library's defaults: tagging 1 layer, no bias / use_pooler keys.
    let labels = vec!["O".to_string(), "B-PER".to_string(), "I-PER".to_string()];
    let tagging = HeadConfig::new(HeadKind::Tagging, &labels).to_config();
    assert_eq!(tagging["layers"], json!(1));
    assert_eq!(tagging["head_type"], json!("tagging"));
    assert!(!tagging.contains_key("use_pooler") && !tagging.contains_key("bias"), "{tagging:?}");
    let regression = HeadConfig::new(HeadKind::Regression, &["score".to_string()]).to_config();
    assert_eq!((&regression["head_type"], &regression["num_labels"]), (&json!("classification"), &json!(1)));
    let reread = HeadConfig::from_config(&regression).unwrap();
    assert_eq!(reread.kind, HeadKind::Regression);
}

#[test]
fn unsupported_head_types_are_refused_by_name() {
    let saved = SavedConfig::read(&case_dir("bert", "tagging").join("adapter/head_config.json")).unwrap();
    for t in ["multiple_choice", "question_answering", "causal_lm"] {
        let mut c = saved.config().clone();
        c.insert("head_type".into(), json!(t));
        assert_err_contains(HeadConfig::from_config(&c), &[t, "not supported"]);
    }
    let mut c = saved.config().clone();
    c.insert("head_type".into(), json!("sentiment"));
    assert_err_contains(HeadConfig::from_config(&c), &["\"sentiment\"", "tagging"]);
    // Multiple choice's own key is refused by the head type, not as an unknown option.
    let mut c = saved.config().clone();
    c.insert("head_type".into(), json!("multiple_choice"));
    c.insert("num_choices".into(), json!(4));
    assert_err_contains(HeadConfig::from_config(&c), &["multiple_choice", "not supported"]);
    let mut c = saved.config().clone();
    c.insert("num_labels".into(), json!(1));
    c.remove("label2id");
    assert_err_contains(HeadConfig::from_config(&c), &["num_labels", "tagging", "at least 2"]);
    // Layouts the GPU head does not run: refused when loading, naming the option.
    let dir = tempdir("peft-heads-layers");
    let adapter = case_dir("bert", "tagging2").join("adapter");
    for f in ["adapter_config.json", "adapter.safetensors", "head_config.json", "model_head.safetensors"] {
        std::fs::copy(adapter.join(f), dir.join(f)).unwrap();
    }
    let mut h = SavedConfig::read(&dir.join("head_config.json")).unwrap();
    h.config_mut().insert("use_pooler".into(), json!(true));
    h.write(&dir.join("head_config.json")).unwrap();
    let args = GradsArgs {
        model: base("bert"),
        inputs: case_dir("bert", "tagging2").join("inputs.json"),
        out: dir.join("out.safetensors"),
        adapters: vec![dir.clone()],
        ..Default::default()
    };
    assert_err_contains(grads::run(&gpu(), &args).map(|_| ()), &["use_pooler true", "not supported"]);
    std::fs::remove_dir_all(dir).ok();
}

/// The labels of each kind read from inputs.json as the head trains on them; mistakes are errors.
#[test]
fn targets_are_read_by_head_kind() {
    let (inputs, t) = read_targets_json(&case_dir("bert", "tagging").join("inputs.json"), HeadKind::Tagging).unwrap();
    let OwnedTargets::Classes(c) = t else { panic!("tagging labels are class ids") };
    assert_eq!(c.len(), inputs.batch * inputs.seq);
    assert_eq!(c[0], IGNORE_LABEL, "[CLS] is ignored (-100)");
    assert!(c.iter().any(|&x| x < 5));
    let (_, t) =
        read_targets_json(&case_dir("bert", "multilabel").join("inputs.json"), HeadKind::MultilabelClassification)
            .unwrap();
    assert!(matches!(t, OwnedTargets::Values(ref v) if v.len() == 3 * 4 && v.iter().all(|&x| x == 0.0 || x == 1.0)));
    let (_, t) = read_targets_json(&case_dir("bert", "regression").join("inputs.json"), HeadKind::Regression).unwrap();
    assert!(matches!(t, OwnedTargets::Values(ref v) if v.len() == 3));
    // Regression labels are not tagging labels.
    let e = read_targets_json(&case_dir("bert", "regression").join("inputs.json"), HeadKind::Tagging);
    assert_err_contains(e, &["tagging", "labels"]);
    // A multi-label batch against a regression head: the encoder refuses the target count.
    let dir = tempdir("peft-heads-mismatch");
    let args = GradsArgs {
        model: base("bert"),
        inputs: case_dir("bert", "multilabel").join("inputs.json"),
        out: dir.join("out.safetensors"),
        adapters: vec![case_dir("bert", "regression").join("adapter")],
        ..Default::default()
    };
    assert_err_contains(grads::run(&gpu(), &args).map(|_| ()), &["regression"]);
    std::fs::remove_dir_all(dir).ok();
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes the toy data of `kind` (the 8 + 8 sentences of `common::cli`) as train / dev files.
fn toy_head_data(dir: &std::path::Path, kind: HeadKind) -> (PathBuf, PathBuf) {
    let pos = ["wonderful", "great", "loved", "brilliant", "delight", "beautiful", "best", "superb"];
    let neg = ["dull", "terrible", "hated", "awful", "waste", "ugly", "worst", "painful"];
    let line = |text: &str, positive: bool, i: usize| -> String {
        match kind {
            HeadKind::Regression => {
                json!({"text": text, "label": if positive { 1.0 + i as f64 / 8.0 } else { -1.0 - i as f64 / 8.0 }})
                    .to_string()
            }
            HeadKind::MultilabelClassification => {
                let mut l = vec![if positive { "positive" } else { "negative" }];
                if i % 2 == 0 {
                    l.push("even");
                }
                json!({"text": text, "label": l}).to_string()
            }
            _ => {
                let words: Vec<&str> = text.split([' ', ',']).filter(|w| !w.is_empty()).collect();
                let tags: Vec<&str> = words
                    .iter()
                    .map(|w| {
                        if pos.contains(w) {
                            "B-POS"
                        } else if neg.contains(w) {
                            "B-NEG"
                        } else {
                            "O"
                        }
                    })
                    .collect();
                json!({"tokens": words, "tags": tags}).to_string()
            }
        }
    };
    let (mut train, mut dev) = (String::new(), String::new());
    for i in 0..8 {
        train += &format!("{}\n{}\n", line(POS[i], true, i), line(NEG[i], false, i));
        if i % 2 == 0 {
            dev += &format!("{}\n{}\n", line(POS[i], true, i), line(NEG[i], false, i));
        }
    }
    let (t, d) = (dir.join("train.jsonl"), dir.join("dev.jsonl"));
    std::fs::write(&t, train).unwrap();
    std::fs::write(&d, dev).unwrap();
    (t, d)
}

/// `peft train --head-type` for each new kind on the tiny model: the epoch lines report the
/// kind's metrics, the saved head is the library's kind, `peft eval` and `peft predict` read it.
#[test]
fn train_eval_predict_each_head_type() {
    let dir = tempdir("peft-heads-train");
    let model = tiny_model(&dir);
    for (kind, metric, predicted) in [
        (HeadKind::Regression, "Pearson", "pearson="),
        (HeadKind::MultilabelClassification, "micro-F1", "micro_f1="),
        (HeadKind::Tagging, "entity F1", "entity_f1="),
    ] {
        let sub = dir.join(kind.name());
        std::fs::create_dir_all(&sub).unwrap();
        let (train, dev) = toy_head_data(&sub, kind);
        let out = sub.join("out");
        let (m, t, d, o) = (s(&model), s(&train), s(&dev), s(&out));
        let mut args = train_args(&m, &t, &d, &o);
        args.extend(["--head-type", kind.name(), "--epochs", "2"]);
        let run = peft(&args);
        let log = format!("{}{}", text(&run.stdout), text(&run.stderr));
        assert!(run.status.success(), "{kind}: {log}");
        assert!(log.contains(&format!("epoch 2: dev {metric}")), "{kind}: {log}");
        // The planner counts the head's rows (every token for tagging): its peak bounds the step's.
        let mib = |after: &str| -> f64 {
            let at = log.find(after).unwrap_or_else(|| panic!("{kind}: no {after:?} in {log}")) + after.len();
            log[at..].split_whitespace().next().unwrap().parse().unwrap()
        };
        let (planned, measured) = (mib("planned peak "), mib("measured peak GPU memory "));
        assert!(planned >= measured, "{kind}: planned {planned} MiB < measured {measured} MiB");
        let head = SavedConfig::read(&out.join("head_config.json")).unwrap();
        let config = HeadConfig::from_config(head.config()).unwrap();
        assert_eq!(config.kind, kind);
        assert_eq!(config.layers, kind.default_layers());
        // The .bin files next to the safetensors ones, as the library's plain load_adapter reads.
        assert!(out.join("pytorch_model_head.bin").exists());
        let eval = peft(&["eval", "--model", &m, "--adapter", &o, "--data", &d, "--max-length", "16"]);
        assert!(eval.status.success(), "{kind}: {}", text(&eval.stderr));
        assert!(text(&eval.stdout).contains(predicted), "{kind}: {}", text(&eval.stdout));
        let pred =
            peft(&["predict", "--model", &m, "--adapter", &o, "--text", "a wonderful film", "--max-length", "16"]);
        assert!(pred.status.success(), "{kind}: {}", text(&pred.stderr));
        let p: serde_json::Value = serde_json::from_str(text(&pred.stdout).trim()).unwrap();
        match kind {
            HeadKind::Regression => assert!(p["label"].as_str().unwrap().parse::<f32>().is_ok(), "{p}"),
            HeadKind::MultilabelClassification => assert_eq!(p["probabilities"].as_object().unwrap().len(), 3, "{p}"),
            _ => {
                let tags = p["tags"].as_array().unwrap();
                assert_eq!(tags.len(), 3, "{p}");
                assert_eq!(tags[1][0], json!("wonderful"));
            }
        }
    }
    // A fused model with a tagging head: eval / predict --fusion refuse it by kind.
    let fx = tiny().join("fusion");
    let a = |n: &str| s(&fx.join("adapters").join(n));
    let (s1, s2, s3) = (a("src1"), a("src2"), a("src3"));
    let (fusion, head) = (s(&fx.join("fusion")), s(&case_dir("bert", "tagging").join("adapter")));
    let (_, dev) = toy_head_data(&dir, HeadKind::Tagging);
    let args =
        ["eval", "--model", &s(&model), "--fusion", &fusion, "--adapter", &s1, "--adapter", &s2, "--adapter", &s3];
    let run = peft(&[&args[..], &["--head", &head, "--data", &s(&dev)]].concat());
    assert_clean_failure(&run, &["tagging head", "classification heads only"]);
    // Fusion trains classification heads only: refused by name.
    let run = peft(&[
        "fuse",
        "--model",
        &s(&model),
        "--train",
        "x.jsonl",
        "--adapter",
        "a",
        "--adapter",
        "b",
        "--out",
        "o",
        "--head-type",
        "tagging",
    ]);
    assert_clean_failure(&run, &["--head-type tagging", "not supported"]);
    std::fs::remove_dir_all(dir).ok();
}

/// A resume state written before `--head-type` existed has no `head_type`: classification.
#[test]
fn data_settings_without_a_head_type_are_classification() {
    let v = serde_json::to_value(peft_wgpu::train::options::DataArgs::default()).unwrap();
    assert!(v.get("head_type").is_none(), "a classification run's settings are the earlier ones: {v}");
    let back: peft_wgpu::train::options::DataArgs = serde_json::from_value(v).unwrap();
    assert_eq!(back.head_type, HeadKind::Classification);
    let tagging = peft_wgpu::train::options::DataArgs { head_type: HeadKind::Tagging, ..Default::default() };
    let saved = serde_json::to_value(&tagging).unwrap();
    assert_eq!(saved["head_type"], json!("tagging"));
    let round: peft_wgpu::train::options::DataArgs = serde_json::from_value(saved).unwrap();
    assert_eq!(round.head_type, HeadKind::Tagging);
}

/// A tagging run stopped mid-epoch resumes as a tagging run (the head type is in the resume
/// state) and ends with the bits of the uninterrupted run.
#[test]
fn tagging_runs_resume_bit_identically() {
    let dir = tempdir("peft-heads-resume");
    let model = tiny_model(&dir);
    let (train, dev) = toy_head_data(&dir, HeadKind::Tagging);
    let (m, t, d) = (s(&model), s(&train), s(&dev));
    let run = |out: &std::path::Path, extra: &[&str]| {
        let o = s(out);
        let mut args = train_args(&m, &t, &d, &o);
        args.extend(["--head-type", "tagging", "--epochs", "2"]);
        args.extend(extra);
        let r = peft(&args);
        assert!(r.status.success(), "{}", text(&r.stderr));
    };
    let (full, part) = (dir.join("full"), dir.join("part"));
    run(&full, &[]);
    run(&part, &["--stop-after-steps", "3"]);
    let r = peft(&["train", "--resume", &s(&part)]);
    let all = text(&r.stdout) + &text(&r.stderr);
    assert!(r.status.success() && all.contains("resuming at step 3"), "{all}");
    assert!(all.contains("dev entity F1"), "{all}");
    for f in ["adapter.safetensors", "model_head.safetensors", "head_config.json"] {
        assert_eq!(std::fs::read(full.join(f)).unwrap(), std::fs::read(part.join(f)).unwrap(), "{f} differs");
    }
    std::fs::remove_dir_all(dir).ok();
}
