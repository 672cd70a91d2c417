//! Training end to end: AdamW steps lower the loss on the tiny fixture model; `peft train`,
//! `eval` and `predict` on the real MiniLM with a small data file; checkpoints in AdapterHub's
//! format that load back bit-exactly.

mod common;
use common::cli::{peft, s, text, tiny_model, toy_data, train_args};
use common::*;
use peft_wgpu::kernels::optim::{AdamW, LinearSchedule};
use peft_wgpu::model::encoder::Setup;
use peft_wgpu::model::{config::BertConfig, load};
use peft_wgpu::train::{self, AdapterArgs, DataArgs, LoopArgs, Optimizer, OptimizerArgs, Preset, TrainArgs};
use std::path::Path;

#[test]
fn adamw_steps_lower_the_loss_on_the_tiny_model() {
    let g = gpu();
    let model = fixtures().join("tiny-bert/base");
    let cfg = BertConfig::from_model_dir(&model).unwrap();
    let (_, mut enc) = load::load_encoder(&g, &model, None).unwrap();
    for preset in [Preset::Houlsby, Preset::Pfeiffer] {
        let bn = match preset {
            Preset::Houlsby => {
                peft_wgpu::formats::adapterhub::BottleneckConfig::houlsby(4.0, peft_wgpu::Activation::Silu)
            }
            Preset::Pfeiffer => {
                peft_wgpu::formats::adapterhub::BottleneckConfig::pfeiffer(4.0, peft_wgpu::Activation::Relu)
            }
            Preset::None | Preset::Parallel => unreachable!("not in the list"),
        };
        let (set, head) = train::new_adapter(&g, &cfg, &bn, "task", 3, 7).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny-bert/houlsby/inputs.json")).unwrap())
                .unwrap();
        let (inputs, labels) =
            peft_wgpu::train::grads::read_inputs_json(&fixtures().join("tiny-bert/houlsby/inputs.json")).unwrap();
        assert_eq!(v["labels"].as_array().unwrap().len(), labels.len());
        let params: Vec<_> = set.named().into_iter().chain(head.named()).collect();
        let sched = LinearSchedule { base_lr: 5e-3, warmup_steps: 0, total_steps: 1000 };
        let mut opt = Optimizer::new(&g, &params, AdamW { lr: 5e-3, ..AdamW::default() }, sched, 1.0).unwrap();
        let mut losses = vec![];
        for _ in 0..60 {
            let out = enc.pass(&Setup::Adapter(&set), &head, &inputs, Some(&labels), true, false).unwrap();
            losses.push(out.loss.unwrap());
            let (_, norm) = opt.step(&g, &params).unwrap();
            assert!(norm.is_finite() && norm > 0.0);
        }
        println!("{preset:?} losses: {losses:?}");
        assert!(losses.iter().all(|l| l.is_finite()));
        let late = losses[45..].iter().cloned().fold(f32::INFINITY, f32::min);
        assert!(late < 0.8 * losses[0], "{preset:?}: loss did not fall: {losses:?}");
    }
}

#[test]
fn train_eval_predict_on_minilm() {
    let g = gpu();
    let model = peft_wgpu::train::cache::ensure_default_model().unwrap();
    let dir = std::env::temp_dir().join(format!("peft-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (train_csv, dev_csv) = common::cli::toy_data(&dir);
    let out = dir.join("adapter");
    let args = TrainArgs {
        model: model.clone(),
        train: train_csv,
        data: DataArgs { dev: Some(dev_csv.clone()), max_length: 32, ..Default::default() },
        adapter: AdapterArgs { config: Preset::Houlsby, ..Default::default() },
        run: LoopArgs { epochs: 3, batch_size: 8, ..Default::default() },
        optimizer: OptimizerArgs { lr: 2e-3, ..Default::default() },
        out: out.clone(),
        ..TrainArgs::default()
    };
    let s = train::train(&g, &args).unwrap();
    assert_eq!(s.dev_accuracy.len(), 3);
    assert_eq!(s.steps, 6);
    assert!(s.train_losses.iter().all(|l| l.is_finite()));
    assert!(s.best_accuracy >= 0.75, "toy sentiment should be easy: {:?}", s.dev_accuracy);
    // AdapterHub's files, with the fixtures' config keys and tensor naming.
    for f in [
        "adapter_config.json",
        "adapter.safetensors",
        "head_config.json",
        "model_head.safetensors",
        "pytorch_adapter.bin",
        "pytorch_model_head.bin",
        "metrics.jsonl",
        "training.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let keys = |p: &Path| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.extend(v["config"].as_object().unwrap().keys().map(|c| format!("config.{c}")));
        k.sort();
        k
    };
    let fx = fixtures().join("tiny-bert/houlsby/adapter");
    assert_eq!(keys(&out.join("adapter_config.json")), keys(&fx.join("adapter_config.json")));
    assert_eq!(keys(&out.join("head_config.json")), keys(&fx.join("head_config.json")));
    let ours = peft_wgpu::formats::weights::WeightFile::open(out.join("adapter.safetensors")).unwrap();
    let theirs = peft_wgpu::formats::weights::WeightFile::open(fx.join("adapter.safetensors")).unwrap();
    let pattern = |n: &str| {
        n.replace(".task.", ".X.").split('.').filter(|p| p.parse::<usize>().is_err()).collect::<Vec<_>>().join(".")
    };
    let mut a: Vec<String> = ours.names().iter().map(|n| pattern(n)).collect();
    let mut b: Vec<String> = theirs.names().iter().map(|n| pattern(n)).collect();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    assert_eq!(a, b, "tensor naming differs from AdapterHub's");

    // Save → load is bit-exact: evaluating twice gives identical logits; eval's accuracy equals
    // the best epoch's.
    let scores = train::evaluate(&g, &model, &out, &dev_csv, &Default::default(), 8, 32).unwrap();
    assert_eq!(scores.n, 8);
    assert!((scores.accuracy - s.best_accuracy).abs() < 1e-12, "eval {} vs best {}", scores.accuracy, s.best_accuracy);
    let ex = vec![peft_wgpu::train::data::Example { text: "a great, wonderful film".into(), ..Default::default() }];
    let p1 = train::predict(&g, &model, &out, &ex, 8, 32).unwrap();
    let p2 = train::predict(&g, &model, &out, &ex, 8, 32).unwrap();
    assert_eq!(p1[0].logits, p2[0].logits);
    let total: f32 = p1[0].probabilities.values().sum();
    assert!((total - 1.0).abs() < 1e-5);
    assert!(p1[0].probabilities.contains_key("positive") && p1[0].probabilities.contains_key("negative"));
    let cfg = BertConfig::from_model_dir(&model).unwrap();
    let a1 = peft_wgpu::formats::adapterhub::Adapter::load(&out, &cfg).unwrap();
    a1.save(dir.join("copy")).unwrap();
    let a2 = peft_wgpu::formats::adapterhub::Adapter::load(dir.join("copy"), &cfg).unwrap();
    assert_eq!(a1, a2, "save → load is not bit-exact");
    std::fs::remove_dir_all(&dir).ok();
}

/// `--format bin` writes only torch's `.bin` weights (what Python's plain `load_adapter` reads),
/// and `peft predict` reads such a folder (safetensors first, else `.bin`); the `adapters`
/// library's own default `save_adapter` output (`.bin` only) predicts as its safetensors twin does.
#[test]
fn cli_format_bin_trains_and_predicts() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let (tr, dev) = toy_data(d.path());
    let out = d.path().join("out");
    let (m, t, v, o) = (s(&model), s(&tr), s(&dev), s(&out));
    let mut args = train_args(&m, &t, &v, &o);
    args.extend(["--epochs", "1", "--format", "bin"]);
    let r = peft(&args);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.contains("adapter") || f.contains("head"))
        .collect();
    files.sort();
    assert_eq!(files, ["adapter_config.json", "head_config.json", "pytorch_adapter.bin", "pytorch_model_head.bin"]);
    let predict = |adapter: &str| {
        let r = peft(&["predict", "--model", &m, "--adapter", adapter, "--text", "a delight", "--max-length", "16"]);
        assert!(r.status.success(), "{}", text(&r.stderr));
        text(&r.stdout)
    };
    assert!(predict(&o).contains("logits"));
    let bad = peft(&["train", "--model", &m, "--train", &t, "--out", &o, "--format", "pt"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("possible values: safetensors, bin, both"));

    let lib = fixtures().join("torch-bin/adapter");
    let (bin_only, st_only) = (d.path().join("bin"), d.path().join("st"));
    for (dir, drop) in [(&bin_only, ".safetensors"), (&st_only, ".bin")] {
        std::fs::create_dir_all(dir).unwrap();
        for e in std::fs::read_dir(&lib).unwrap() {
            let p = e.unwrap().path();
            if !p.to_string_lossy().ends_with(drop) {
                std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    assert_eq!(predict(&s(&bin_only)), predict(&s(&st_only)));
}
