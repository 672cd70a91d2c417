//! AdapterFusion training end to end (`peft fuse`): loss falls on the tiny fixture; the fusion's
//! AdapterHub files match the fixture's names and keys and load back bit-exactly; a one-adapter
//! fusion with an identity value matrix is that adapter; the recorded fusion attention respects
//! the mask and sums to 1; eval / predict `--fusion` round trip on MiniLM (library and CLI).

mod common;
use common::*;
use peft_wgpu::formats::adapterhub::{Fusion, Head};
use peft_wgpu::formats::weights::WeightFile;
use peft_wgpu::kernels::optim::{AdamW, LinearSchedule};
use peft_wgpu::model::adapters::AdapterSet;
use peft_wgpu::model::config::BertConfig;
use peft_wgpu::model::encoder::{Encoder, Inputs, Setup};
use peft_wgpu::model::fusion::FusionModel;
use peft_wgpu::model::load;
use peft_wgpu::train::fuse::{self, FuseArgs, FusedPaths, FusionArgs, FusionAttention, FusionPreset, FusionTrainee};
use peft_wgpu::train::{self, DataArgs, LoopArgs, Optimizer, OptimizerArgs, Trainee};
use std::path::{Path, PathBuf};

fn tiny() -> (BertConfig, Encoder) {
    let model = fixtures().join("tiny-bert/base");
    let (cfg, enc) = load::load_encoder(&gpu(), &model, None).unwrap();
    (cfg, enc)
}

fn fixture_adapters() -> Vec<PathBuf> {
    ["src1", "src2", "src3"].iter().map(|n| fixtures().join("tiny-bert/fusion/adapters").join(n)).collect()
}

fn fixture_inputs() -> (Inputs, Vec<u32>) {
    peft_wgpu::train::grads::read_inputs_json(&fixtures().join("tiny-bert/fusion/inputs.json")).unwrap()
}

fn labels3() -> Vec<String> {
    (0..3).map(|i| format!("LABEL_{i}")).collect()
}

fn new_trainee(cfg: &BertConfig, preset: FusionPreset, seed: u64) -> FusionTrainee {
    let sets = fuse::load_source_adapters(&gpu(), &fixture_adapters(), cfg).unwrap();
    FusionTrainee::new(&gpu(), cfg, sets, &preset.config(false), "target", 3, seed, "tiny-bert").unwrap()
}

fn adapter_values(sets: &[AdapterSet]) -> Vec<Vec<f32>> {
    sets.iter().flat_map(|s| s.named()).map(|(_, w, _)| download(w)).collect()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    peft_wgpu::kernels::reference::rel_err(a, &f64s(b))
}

/// A training pass (no weights recorded) computes the top layer on the head's rows only
/// (`Encoder::head_rows_only`): the same logits and loss bits as over every row, and every
/// fusion and head gradient within 1e-6 (bias sums group their terms by rows); with the weights
/// recorded (evaluation's heat map) every row runs, the same bits either way.
#[test]
fn training_passes_on_the_head_rows_match_every_row() {
    let (cfg, mut enc) = tiny();
    let (inputs, labels) = fixture_inputs();
    for preset in [FusionPreset::Dynamic, FusionPreset::Static] {
        let mut t = new_trainee(&cfg, preset, 5);
        for recording in [false, true] {
            if recording {
                t.fusion.start_recording(&gpu()).unwrap();
            }
            let mut run = |head_rows: bool| {
                enc.head_rows_only = head_rows;
                for (_, _, grad) in t.params() {
                    grad.write(&gpu(), &vec![f32::NAN; grad.numel()]).unwrap();
                }
                let out = enc.pass(&t.setup(), t.head(), &inputs, Some(&labels), true, false).unwrap();
                let grads: Vec<(String, Vec<f32>)> = t.params().into_iter().map(|(n, _, g)| (n, download(g))).collect();
                (out.logits, out.loss.unwrap(), grads)
            };
            let (all, top) = (run(false), run(true));
            let what = format!("{preset:?} recording {recording}");
            assert_eq!(bits(&top.0), bits(&all.0), "{what}: logits");
            assert_eq!(top.1.to_bits(), all.1.to_bits(), "{what}: loss");
            let max_abs = |v: &[f32]| v.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
            for ((n, a), (_, b)) in top.2.iter().zip(&all.2) {
                assert!(a.iter().all(|x| x.is_finite()), "{what}: {n} not written");
                // A bias gradient near zero (the query's: its terms cancel) on its weight
                // gradient's scale, as `parity_f64.rs` measures `key.bias`.
                let weight = n.strip_suffix(".bias").map(|stem| format!("{stem}.weight"));
                let scale = match weight.and_then(|w| all.2.iter().find(|(m, _)| *m == w)) {
                    Some((_, w)) => max_abs(w).max(max_abs(b)),
                    None => max_abs(b),
                };
                let diff = a.iter().zip(b).fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
                let r = diff / scale.max(f64::MIN_POSITIVE);
                assert!(r <= 1e-6, "{what}: {n} differs by {r:.2e} of its scale {scale:.2e}");
                if recording {
                    assert_eq!(bits(a), bits(b), "{what}: {n} (every row runs while recording)");
                }
            }
        }
        enc.head_rows_only = true;
    }
}

#[test]
fn fusion_training_lowers_the_loss_on_the_tiny_fixture() {
    let g = gpu();
    let (cfg, mut enc) = tiny();
    let (inputs, labels) = fixture_inputs();
    for preset in [FusionPreset::Dynamic, FusionPreset::Static] {
        let mut t = new_trainee(&cfg, preset, 3);
        let frozen_before = adapter_values(&t.sets);
        // Adam moves the bilinear query/key scores fast: a larger lr than the paper's 5e-5 (few
        // steps) with the linear decay the trainer uses, so the end is not a bounce.
        let (lr, steps) = (3e-3f32, 100);
        let sched = LinearSchedule { base_lr: lr, warmup_steps: 0, total_steps: steps as u32 };
        let mut opt = Optimizer::new(&g, &t.params(), AdamW { lr, ..AdamW::default() }, sched, 1.0).unwrap();
        let (mut losses, mut regs) = (vec![], vec![]);
        for _ in 0..steps {
            let s = train::train_step(&g, &mut enc, &mut t, &mut opt, &inputs, &labels, None).unwrap();
            assert!(s.grad_norm.is_finite() && s.grad_norm > 0.0);
            losses.push(s.loss);
            regs.push(s.extra_loss);
        }
        let after = enc.pass(&t.setup(), t.head(), &inputs, Some(&labels), false, false).unwrap().loss.unwrap();
        println!("{preset:?} losses: {losses:?}\nregularization: {regs:?}\nloss after training: {after}");
        assert!(losses.iter().all(|l| l.is_finite()));
        assert!((losses[0] - 3f32.ln()).abs() < 1e-3, "a new head starts near uniform: {}", losses[0]);
        assert!(after < 0.8 * losses[0], "{preset:?}: loss did not fall: {} -> {after}", losses[0]);
        let late = losses[steps - 20..].iter().cloned().fold(f32::INFINITY, f32::min);
        assert!(late < 0.9 * losses[0], "{preset:?}: step losses did not fall: {losses:?}");
        match preset {
            // W_V moves away from the identity: the regularization term grows from ~0.
            FusionPreset::Dynamic => {
                assert!(regs[0] >= 0.0 && regs[0] < 1e-6, "initial regularization {}", regs[0]);
                assert!(regs[steps - 1] > regs[0] && regs[steps - 1].is_finite(), "{regs:?}");
            }
            FusionPreset::Static => assert!(regs.iter().all(|&r| r == 0.0)),
        }
        assert_eq!(adapter_values(&t.sets), frozen_before, "the fused adapters must stay frozen");
    }
}

/// The regularization adds exactly `0.01·Σ‖I − W_V‖²` to the loss and `0.02·(W_V − I)` to dW_V.
#[test]
fn regularization_term_matches_its_formula() {
    let g = gpu();
    let (cfg, mut enc) = tiny();
    let (inputs, labels) = fixture_inputs();
    let mut t = new_trainee(&cfg, FusionPreset::Dynamic, 5);
    // Move W_V away from the identity by seeded noise.
    let mut r = rng(11);
    let d = cfg.hidden_size;
    let mut expected_loss = 0.0f64;
    let mut w_vs = vec![];
    for layer in t.fusion.layers.iter().flatten() {
        let noise = rand_f32(&mut r, d * d, 0.1);
        let w: Vec<f32> = (0..d * d).map(|k| if k / d == k % d { 1.0 } else { 0.0 } + noise[k]).collect();
        layer.w.w_v.as_ref().unwrap().write(&g, &w).unwrap();
        expected_loss +=
            0.01 * (0..d * d).map(|k| (if k / d == k % d { 1.0 } else { 0.0 } - w[k] as f64).powi(2)).sum::<f64>();
        w_vs.push(w);
    }
    let out = enc.pass(&t.setup(), t.head(), &inputs, Some(&labels), true, false).unwrap();
    assert!(out.loss.unwrap().is_finite());
    let grads_ce: Vec<Vec<f32>> =
        t.fusion.layers.iter().flatten().map(|l| download(l.grad.w_v.as_ref().unwrap())).collect();
    let mut b = g.batch();
    let reg_t = t.record_extra_loss(&mut b).unwrap().expect("dynamic fusion with regularization");
    b.finish().unwrap();
    let reg = download(&reg_t)[0];
    assert_close("regularization loss", &[reg], &[expected_loss], 1e-5);
    for (k, layer) in t.fusion.layers.iter().flatten().enumerate() {
        let got = download(layer.grad.w_v.as_ref().unwrap());
        let want: Vec<f64> = (0..d * d)
            .map(|i| grads_ce[k][i] as f64 + 0.02 * (w_vs[k][i] as f64 - if i / d == i % d { 1.0 } else { 0.0 }))
            .collect();
        assert_close("dW_V with regularization", &got, &want, 1e-5);
    }
}

fn json_keys(p: &Path) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.extend(v["config"].as_object().unwrap().keys().map(|c| format!("config.{c}")));
    k.sort();
    k
}

fn tensor_names(p: &Path) -> Vec<String> {
    let mut n: Vec<String> = WeightFile::open(p).unwrap().names().iter().map(|s| s.to_string()).collect();
    n.sort();
    n
}

#[test]
fn fusion_files_match_the_fixture_and_load_back_bit_exactly() {
    let g = gpu();
    let (cfg, mut enc) = tiny();
    let (inputs, labels) = fixture_inputs();
    let mut t = new_trainee(&cfg, FusionPreset::Dynamic, 9);
    let sched = LinearSchedule { base_lr: 1e-2, warmup_steps: 0, total_steps: 100 };
    let mut opt = Optimizer::new(&g, &t.params(), AdamW { lr: 1e-2, ..AdamW::default() }, sched, 1.0).unwrap();
    for _ in 0..3 {
        train::train_step(&g, &mut enc, &mut t, &mut opt, &inputs, &labels, None).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let saved = t.to_adapterhub(&g, &labels3()).unwrap();
    saved.save(dir.path()).unwrap();

    // Same file names, config keys and tensor names as the adapters library writes.
    let fx = fixtures().join("tiny-bert/fusion");
    assert_eq!(
        json_keys(&dir.path().join("adapter_fusion_config.json")),
        json_keys(&fx.join("fusion/adapter_fusion_config.json"))
    );
    let ours: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("adapter_fusion_config.json")).unwrap()).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("fusion/adapter_fusion_config.json")).unwrap()).unwrap();
    assert_eq!(ours["adapter_names"], theirs["adapter_names"]);
    assert_eq!(ours["config"], theirs["config"], "dynamic fusion config differs from the library's");
    assert_eq!(ours["name"], theirs["name"]);
    assert_eq!(
        tensor_names(&dir.path().join("model_adapter_fusion.safetensors")),
        tensor_names(&fx.join("fusion/model_adapter_fusion.safetensors"))
    );
    assert_eq!(json_keys(&dir.path().join("head_config.json")), json_keys(&fx.join("head/head_config.json")));
    assert_eq!(
        tensor_names(&dir.path().join("model_head.safetensors")),
        tensor_names(&fx.join("head/model_head.safetensors"))
    );

    // Save → load → save: identical in memory and on the GPU.
    let loaded = Fusion::load(dir.path(), &cfg).unwrap();
    assert_eq!(loaded, saved, "fusion save → load is not bit-exact");
    let head = Head::load(dir.path(), cfg.hidden_size).unwrap();
    assert_eq!(Some(&head), saved.head.as_ref());
    let up = FusionModel::for_inference(&g, &loaded, cfg.hidden_size).unwrap();
    for ((n1, w1, _), (n2, w2, _)) in t.fusion.named().into_iter().zip(up.named()) {
        assert_eq!(n1, n2);
        assert_eq!(download(w1), download(w2), "{n1} differs after save → load");
    }
    // The loaded fusion gives the trained one's logits bit for bit.
    let sets = fuse::load_source_adapters(&g, &fixture_adapters(), &cfg).unwrap();
    let h = load::classification_head(&g, &head, cfg.hidden_size).unwrap();
    let a = enc.pass(&t.setup(), t.head(), &inputs, None, false, false).unwrap();
    let b = enc.pass(&Setup::Fusion { adapters: sets.iter().collect(), fusion: &up }, &h, &inputs, None, false, false);
    assert_eq!(a.logits, b.unwrap().logits);
}

#[test]
fn one_adapter_fusion_with_identity_value_is_that_adapter() {
    let g = gpu();
    let (cfg, mut enc) = tiny();
    let (inputs, labels) = fixture_inputs();
    let d = cfg.hidden_size;
    let sets = fuse::load_source_adapters(&g, &fixture_adapters()[1..2], &cfg).unwrap();
    let t = FusionTrainee::new(&g, &cfg, sets, &FusionPreset::Dynamic.config(false), "target", 3, 1, "m").unwrap();
    let eye: Vec<f32> = (0..d * d).map(|k| if k / d == k % d { 1.0 } else { 0.0 }).collect();
    for layer in t.fusion.layers.iter().flatten() {
        layer.w.w_v.as_ref().unwrap().write(&g, &eye).unwrap();
    }
    let fused = enc.pass(&t.setup(), t.head(), &inputs, Some(&labels), false, true).unwrap();
    let alone = enc.pass(&Setup::Adapter(&t.sets[0]), t.head(), &inputs, Some(&labels), false, true).unwrap();
    let base = enc.pass(&Setup::None, t.head(), &inputs, Some(&labels), false, true).unwrap();
    let (hf, ha, hb) =
        (fused.last_hidden_state.unwrap(), alone.last_hidden_state.unwrap(), base.last_hidden_state.unwrap());
    let e_hidden = rel(&hf, &ha);
    let e_logits = rel(&fused.logits, &alone.logits);
    println!("one-adapter fusion vs adapter: hidden {e_hidden:.2e}, logits {e_logits:.2e}");
    assert!(e_hidden <= 1e-5 && e_logits <= 1e-5, "hidden {e_hidden:.2e}, logits {e_logits:.2e}");
    // The comparison is not vacuous: the adapter changes the output.
    assert!(rel(&ha, &hb) > 1e-2, "the adapter should change the hidden state");
    // AdapterHub's value init (1 on the diagonal, 1e-6 elsewhere) is that adapter up to ~d·1e-6.
    let mut rng_ = rng(0);
    let init = peft_wgpu::kernels::fusion::FusionHostWeights::adapterhub_init(d, true, &mut rng_);
    for layer in t.fusion.layers.iter().flatten() {
        layer.w.w_v.as_ref().unwrap().write(&g, init.w_v.as_ref().unwrap()).unwrap();
    }
    let fused = enc.pass(&t.setup(), t.head(), &inputs, None, false, true).unwrap();
    let e = rel(&fused.last_hidden_state.unwrap(), &ha);
    assert!(e <= 1e-4, "AdapterHub-initialised one-adapter fusion: {e:.2e}");
}

/// Weights `N(0, std)` for the fusion's query and key so that the softmax is far from uniform.
fn sharpen(t: &FusionTrainee, seed: u64) {
    let g = gpu();
    let mut r = rng(seed);
    for layer in t.fusion.layers.iter().flatten() {
        for w in [&layer.w.w_q, &layer.w.w_k] {
            w.write(&g, &rand_f32(&mut r, w.numel(), 0.6)).unwrap();
        }
    }
}

#[test]
fn fusion_attention_respects_the_mask_and_sums_to_one() {
    let g = gpu();
    let (cfg, mut enc) = tiny();
    let (inputs, _) = fixture_inputs();
    let mut t = new_trainee(&cfg, FusionPreset::Dynamic, 21);
    sharpen(&t, 4);
    let real: usize = inputs.mask.iter().filter(|&&m| m > 0.5).count();
    assert!(real < inputs.batch * inputs.seq, "the fixture batch should have padding");
    // The padded batch.
    t.fusion.start_recording(&g).unwrap();
    enc.pass(&t.setup(), t.head(), &inputs, None, false, false).unwrap();
    let padded = FusionAttention::from_recorded(&g, &t.fusion, real).unwrap();
    // Each sequence alone, cut to its real tokens (no padding at all), recorded together.
    t.fusion.start_recording(&g).unwrap();
    for b in 0..inputs.batch {
        let row = b * inputs.seq..(b + 1) * inputs.seq;
        let len = inputs.mask[row.clone()].iter().filter(|&&m| m > 0.5).count();
        let one = Inputs {
            batch: 1,
            seq: len,
            ids: inputs.ids[row.start..row.start + len].to_vec(),
            token_types: inputs.token_types[row.start..row.start + len].to_vec(),
            mask: vec![1.0; len],
        };
        enc.pass(&t.setup(), t.head(), &one, None, false, false).unwrap();
    }
    let singles = FusionAttention::from_recorded(&g, &t.fusion, real).unwrap();
    println!("{}", padded.table());
    assert_eq!(padded.layers, vec![0, 1]);
    assert_eq!(padded.adapter_names, vec!["src1", "src2", "src3"]);
    for (p, s) in padded.mean.iter().zip(&singles.mean) {
        let sum: f64 = p.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "row sums to {sum}");
        let p32: Vec<f32> = p.iter().map(|&x| x as f32).collect();
        assert_close("masked mean vs unpadded sequences", &p32, s, 1e-5);
        // Far from uniform, so that the comparison means something.
        assert!(p.iter().any(|&x| (x - 1.0 / 3.0).abs() > 0.02), "{p:?}");
    }
    let overall: f64 = padded.overall().iter().sum();
    assert!((overall - 1.0).abs() < 1e-5);
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("att.png");
    padded.plot(&png).unwrap();
    peft_wgpu::train::metrics::check_png(&std::fs::read(&png).unwrap()).unwrap();
}

fn write_toy_data(dir: &Path) -> (PathBuf, PathBuf) {
    let pos =
        ["a wonderful, moving film", "great acting and a great story", "I loved every minute", "brilliant and funny"];
    let neg = ["a dull, boring mess", "terrible acting and a weak plot", "I hated every minute", "awful and tedious"];
    let mut train = String::from("text,label\n");
    let mut dev = String::from("text,label\n");
    for i in 0..4 {
        train.push_str(&format!("\"{}\",positive\n\"{}\",negative\n", pos[i], neg[i]));
        train.push_str(&format!("\"truly {}\",positive\n\"truly {}\",negative\n", pos[i], neg[i]));
        dev.push_str(&format!("\"{} indeed\",positive\n\"{} indeed\",negative\n", pos[i], neg[i]));
    }
    let (t, d) = (dir.join("train.csv"), dir.join("dev.csv"));
    std::fs::write(&t, train).unwrap();
    std::fs::write(&d, dev).unwrap();
    (t, d)
}

#[test]
fn fuse_eval_predict_round_trip_on_minilm() {
    let g = gpu();
    let model = peft_wgpu::train::cache::ensure_default_model().unwrap();
    let cfg = BertConfig::from_model_dir(&model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Two source adapters (Pfeiffer, AdapterHub init, seeded), saved as AdapterHub folders.
    let bn = peft_wgpu::formats::adapterhub::BottleneckConfig::pfeiffer(16.0, peft_wgpu::Activation::Relu);
    let mut adapters = vec![];
    for (k, name) in ["src_a", "src_b"].iter().enumerate() {
        let (set, head) = train::new_adapter(&g, &cfg, &bn, name, 2, 100 + k as u64).unwrap();
        let a = train::checkpoint::to_adapterhub(&g, &set, &bn, &head, &["x".into(), "y".into()], 384, "m").unwrap();
        let p = dir.path().join(name);
        a.save(&p).unwrap();
        adapters.push(p);
    }
    let (train_csv, dev_csv) = write_toy_data(dir.path());
    let out = dir.path().join("fusion");
    let args = FuseArgs {
        model: model.clone(),
        train: train_csv,
        fusion: FusionArgs { adapters: adapters.clone(), ..Default::default() },
        data: DataArgs { dev: Some(dev_csv.clone()), max_length: 32, ..Default::default() },
        run: LoopArgs { epochs: 2, batch_size: 8, ..Default::default() },
        optimizer: OptimizerArgs { lr: 5e-3, ..Default::default() },
        out: out.clone(),
        ..FuseArgs::default()
    };
    let s = fuse::fuse(&g, &args).unwrap();
    assert_eq!(s.train.steps, 4);
    assert_eq!(s.train.dev_accuracy.len(), 2);
    assert!(s.train.train_losses.iter().all(|l| l.is_finite()));
    for f in [
        "adapter_fusion_config.json",
        "model_adapter_fusion.safetensors",
        "head_config.json",
        "model_head.safetensors",
        "pytorch_model_adapter_fusion.bin",
        "pytorch_model_head.bin",
        "metrics.jsonl",
        "training.png",
        fuse::ATTENTION_JSON,
        fuse::ATTENTION_PNG,
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    peft_wgpu::train::metrics::check_png(&std::fs::read(out.join(fuse::ATTENTION_PNG)).unwrap()).unwrap();
    assert_eq!(s.attention.layers, (0..6).collect::<Vec<_>>());
    for row in &s.attention.mean {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{row:?}");
    }
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(log.contains("regularization_loss"), "the dynamic fusion logs its regularization term");

    // eval --fusion on the dev file: the best epoch's accuracy and the same attention table.
    let paths = FusedPaths { model: model.clone(), fusion: out.clone(), adapters: adapters.clone(), head: None };
    let (scores, att) = fuse::evaluate_fused(&g, &paths, &dev_csv, &Default::default(), 8, 32).unwrap();
    assert_eq!(scores.n, 8);
    assert_eq!(scores.accuracy, s.train.best_accuracy);
    assert_eq!(att, s.attention, "eval's fusion attention differs from fuse's on the same dev set");
    // Adapters may come in any order; a missing one is an error.
    let rev = FusedPaths { adapters: adapters.iter().rev().cloned().collect(), ..paths.clone() };
    let ex = vec![peft_wgpu::train::data::Example { text: "a great, wonderful film".into(), ..Default::default() }];
    let p1 = fuse::predict_fused(&g, &paths, &ex, 8, 32).unwrap();
    let p2 = fuse::predict_fused(&g, &rev, &ex, 8, 32).unwrap();
    assert_eq!(p1[0].logits, p2[0].logits);
    let total: f32 = p1[0].probabilities.values().sum();
    assert!((total - 1.0).abs() < 1e-5);
    assert!(p1[0].probabilities.contains_key("positive") && p1[0].probabilities.contains_key("negative"));
    let missing = FusedPaths { adapters: adapters[..1].to_vec(), ..paths.clone() };
    let e = fuse::predict_fused(&g, &missing, &ex, 8, 32).unwrap_err();
    assert!(format!("{e:#}").contains("src_b"), "{e:#}");

    // The CLI.
    let exe = env!("CARGO_BIN_EXE_peft");
    let png = dir.path().join("att.png");
    let o = std::process::Command::new(exe)
        .args(["eval", "--model"])
        .arg(&model)
        .arg("--fusion")
        .arg(&out)
        .arg("--adapter")
        .arg(&adapters[0])
        .arg("--adapter")
        .arg(&adapters[1])
        .arg("--data")
        .arg(&dev_csv)
        .args(["--batch-size", "8", "--max-length", "32", "--attention-png"])
        .arg(&png)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "peft eval --fusion failed: {}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains(&format!("accuracy={:.4}", s.train.best_accuracy)), "{stdout}");
    assert!(stdout.contains("fusion attention") && stdout.contains("src_a") && stdout.contains("src_b"), "{stdout}");
    peft_wgpu::train::metrics::check_png(&std::fs::read(&png).unwrap()).unwrap();
    let o = std::process::Command::new(exe)
        .args(["predict", "--model"])
        .arg(&model)
        .arg("--fusion")
        .arg(&out)
        .arg("--adapter")
        .arg(&adapters[1])
        .arg("--adapter")
        .arg(&adapters[0])
        .args(["--text", "a great, wonderful film", "--max-length", "32"])
        .output()
        .unwrap();
    assert!(o.status.success(), "peft predict --fusion failed: {}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
    let logits: Vec<f32> = v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_eq!(logits, p1[0].logits, "CLI and library predictions differ");
}
