//! AdapterFusion over Houlsby (`double_seq_bn`) adapters, which the `adapters` library fuses at
//! the attention output too (`attention.output.adapter_fusion_layer.*`): parity with the
//! library's fixture (`tests/fixtures/options-fusion-houlsby`, logits, loss, last_hidden_state
//! ≤ 1e-4 relative, every fusion and head gradient ≤ 1e-3), a one-adapter fusion with an identity
//! value matrix being that adapter at both sites, training that moves both sites' fusion layers,
//! `peft fuse` / eval / predict end to end, and adapters placed differently refused by site.

mod common;
use common::cli::*;
use common::grads::{grads_against_fixture, worst};
use common::*;
use peft_wgpu::formats::weights::WeightFile;
use peft_wgpu::kernels::optim::{AdamW, LinearSchedule};
use peft_wgpu::model::adapters::Location;
use peft_wgpu::model::config::BertConfig;
use peft_wgpu::model::encoder::{Encoder, Inputs, Setup};
use peft_wgpu::model::load;
use peft_wgpu::train::fuse::{self, FuseArgs, FusedPaths, FusionArgs, FusionPreset, FusionTrainee};
use peft_wgpu::train::{self, DataArgs, LoopArgs, Optimizer, OptimizerArgs, Trainee};
use std::path::PathBuf;

fn case() -> PathBuf {
    fixtures().join("options-fusion-houlsby")
}

fn base() -> PathBuf {
    fixtures().join("tiny-bert/base")
}

fn sources() -> Vec<PathBuf> {
    ["src1", "src2"].iter().map(|a| case().join("adapters").join(a)).collect()
}

fn tiny() -> (BertConfig, Encoder) {
    load::load_encoder(&gpu(), &base(), None).unwrap()
}

fn inputs() -> (Inputs, Vec<u32>) {
    peft_wgpu::train::grads::read_inputs_json(&case().join("inputs.json")).unwrap()
}

fn new_trainee(cfg: &BertConfig, dirs: &[PathBuf], seed: u64) -> anyhow::Result<FusionTrainee> {
    let sets = fuse::load_source_adapters(&gpu(), dirs, cfg)?;
    FusionTrainee::new(&gpu(), cfg, sets, &FusionPreset::Dynamic.config(false), "target", 3, seed, "tiny-bert")
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    peft_wgpu::kernels::reference::rel_err(a, &f64s(b))
}

#[test]
fn houlsby_fusion_matches_adapters_library() {
    let dir = case();
    let args = peft_wgpu::train::grads::GradsArgs {
        model: base(),
        adapters: sources(),
        fusion: Some(dir.join("fusion")),
        head: Some(dir.join("head")),
        inputs: dir.join("inputs.json"),
        ..Default::default()
    };
    let errors = grads_against_fixture(args, &dir.join("expected.safetensors"), "fusion-houlsby");
    // Both sites of both layers have fusion gradients (5 tensors each).
    let at_attention = |n: &str| n.contains("attention.output");
    let fusion_grads_there =
        errors.iter().filter(|(n, _)| n.starts_with("grad.") && n.contains("attention.output.adapter_fusion"));
    assert_eq!(fusion_grads_there.count(), 10);
    for (n, err) in errors.iter().filter(|(n, _)| !n.starts_with("grad.")) {
        println!("houlsby fusion: {n} {err:.2e}");
    }
    let (ffn, attention): (Vec<_>, Vec<_>) = errors.into_iter().partition(|(n, _)| !at_attention(n));
    let (w0, n0) = worst(&ffn);
    let (w1, n1) = worst(&attention);
    println!("houlsby fusion: worst relative error {w0:.2e} ({n0}); at the attention output {w1:.2e} ({n1})");
}

/// A fusion over one Houlsby adapter whose value matrices are the identity gives that adapter's
/// output at both sites (the softmax over one adapter is 1).
#[test]
fn one_adapter_houlsby_fusion_with_identity_value_is_that_adapter() {
    let g = gpu();
    let (cfg, mut enc) = tiny();
    let (inputs, labels) = inputs();
    let d = cfg.hidden_size;
    let t = new_trainee(&cfg, &sources()[..1], 1).unwrap();
    assert_eq!(t.fusion.attention_layers.iter().flatten().count(), 2);
    let eye: Vec<f32> = (0..d * d).map(|k| if k / d == k % d { 1.0 } else { 0.0 }).collect();
    for layer in t.fusion.all_layers() {
        layer.w.w_v.as_ref().unwrap().write(&g, &eye).unwrap();
    }
    let fused = enc.pass(&t.setup(), t.head(), &inputs, Some(&labels), false, true).unwrap();
    let alone = enc.pass(&Setup::Adapter(&t.sets[0]), t.head(), &inputs, Some(&labels), false, true).unwrap();
    let (hf, ha) = (fused.last_hidden_state.unwrap(), alone.last_hidden_state.unwrap());
    let e = rel(&hf, &ha);
    println!("one-adapter Houlsby fusion vs adapter: hidden {e:.2e}");
    assert!(e <= 1e-5, "hidden {e:.2e}");
    // Not vacuous: other value matrices at the attention output change the output, so those
    // fusion layers are in the path.
    let mut rng_ = rng(7);
    for layer in t.fusion.attention_layers.iter().flatten() {
        layer.w.w_v.as_ref().unwrap().write(&g, &rand_f32(&mut rng_, d * d, 0.3)).unwrap();
    }
    let changed = enc.pass(&t.setup(), t.head(), &inputs, None, false, true).unwrap();
    assert!(rel(&changed.last_hidden_state.unwrap(), &ha) > 1e-2, "the attention-output fusion has no effect");
}

/// Training steps move the fusion layers at both sites (and nothing frozen); the saved fusion
/// holds both sites' tensors under the library's names and loads back bit-exactly.
#[test]
fn fusion_training_moves_both_sites_and_saves_them() {
    let g = gpu();
    let (cfg, mut enc) = tiny();
    let (inputs, labels) = inputs();
    let mut t = new_trainee(&cfg, &sources(), 5).unwrap();
    let snapshot = |t: &FusionTrainee| -> Vec<(String, Vec<f32>)> {
        t.fusion.named().into_iter().map(|(n, w, _)| (n, download(w))).collect()
    };
    let frozen: Vec<Vec<f32>> = t.sets.iter().flat_map(|s| s.named()).map(|(_, w, _)| download(w)).collect();
    let before = snapshot(&t);
    assert_eq!(before.len(), 20, "5 tensors × 2 sites × 2 layers");
    // As the FFN-output-only test (tests/fusion_train.rs): lr 3e-3, linear decay over 100 steps.
    let (lr, steps) = (3e-3f32, 100);
    let sched = LinearSchedule { base_lr: lr, warmup_steps: 0, total_steps: steps as u32 };
    let mut opt = Optimizer::new(&g, &t.params(), AdamW { lr, ..AdamW::default() }, sched, 1.0).unwrap();
    let mut losses = vec![];
    for _ in 0..steps {
        losses.push(train::train_step(&g, &mut enc, &mut t, &mut opt, &inputs, &labels, None).unwrap().loss);
    }
    println!("losses: {losses:?}");
    assert!(losses[steps - 1] < 0.8 * losses[0], "loss did not fall: {losses:?}");
    for ((n, a), (_, b)) in before.iter().zip(&snapshot(&t)) {
        if n.ends_with("key.bias") {
            continue; // its gradient is zero by the algebra
        }
        assert!(rel(b, a) > 1e-4, "{n} did not move");
    }
    let frozen_after: Vec<Vec<f32>> = t.sets.iter().flat_map(|s| s.named()).map(|(_, w, _)| download(w)).collect();
    assert!(frozen == frozen_after, "a source adapter changed");

    let dir = tempfile::tempdir().unwrap();
    let labels3: Vec<String> = (0..3).map(|i| format!("LABEL_{i}")).collect();
    let saved = t.to_adapterhub(&g, &labels3).unwrap();
    saved.save(dir.path()).unwrap();
    let file = |d: &std::path::Path| {
        let mut n: Vec<String> = WeightFile::open(d.join("model_adapter_fusion.safetensors"))
            .unwrap()
            .names()
            .into_iter()
            .map(String::from)
            .collect();
        n.sort();
        n
    };
    assert_eq!(file(dir.path()), file(&case().join("fusion")), "not the library's tensor names");
    let loaded = peft_wgpu::formats::adapterhub::Fusion::load(dir.path(), &cfg).unwrap();
    assert_eq!(loaded, saved, "fusion save → load is not bit-exact");
}

/// The library refuses to fuse adapters whose `mh_adapter` / `output_adapter` differ; so do we,
/// naming the site.
#[test]
fn fusing_adapters_at_different_sites_is_refused_by_site() {
    let (cfg, _) = tiny();
    let pfeiffer = fixtures().join("tiny-bert/fusion/adapters/src2");
    let Err(e) = new_trainee(&cfg, &[sources()[0].clone(), pfeiffer], 1) else {
        panic!("a Houlsby and a Pfeiffer adapter cannot be fused");
    };
    let msg = format!("{e:#}");
    assert!(msg.contains("attention.output") && msg.contains("src1") && msg.contains("fusion needs all"), "{msg}");
}

/// `peft fuse` over the two Houlsby adapters, then eval / predict `--fusion` with what it saved:
/// the recorded fusion attention has a row per site and layer, each summing to 1, and eval on the
/// dev file gives the saved epoch's accuracy and attention.
#[test]
fn fuse_eval_predict_over_houlsby_adapters() {
    let g = gpu();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let (train_csv, dev_csv) = toy_data(dir.path());
    let out = dir.path().join("fusion");
    let args = FuseArgs {
        model: model.clone(),
        train: train_csv,
        fusion: FusionArgs { adapters: sources(), ..Default::default() },
        data: DataArgs { dev: Some(dev_csv.clone()), max_length: 16, ..Default::default() },
        run: LoopArgs { epochs: 2, batch_size: 8, ..Default::default() },
        optimizer: OptimizerArgs { lr: 5e-3, ..Default::default() },
        out: out.clone(),
        ..FuseArgs::default()
    };
    let s = fuse::fuse(&g, &args).unwrap();
    assert_eq!(s.train.steps, 4);
    assert!(s.train.train_losses.iter().all(|l| l.is_finite()));
    println!("{}", s.attention.table());
    assert_eq!(s.attention.layers, vec![0, 1]);
    assert_eq!(s.attention.attention_layers, vec![0, 1]);
    for row in s.attention.mean.iter().chain(&s.attention.attention_mean) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{row:?}");
    }
    assert!(s.attention.table().contains("1 attn") && s.attention.table().contains("1 ffn"));
    peft_wgpu::train::metrics::check_png(&std::fs::read(out.join(fuse::ATTENTION_PNG)).unwrap()).unwrap();
    let back = fuse::FusionAttention::load_json(&out.join(fuse::ATTENTION_JSON)).unwrap();
    assert_eq!(back, s.attention);
    let f = peft_wgpu::formats::adapterhub::Fusion::load(&out, &BertConfig::from_model_dir(&model).unwrap()).unwrap();
    assert!(f.attention_layers.iter().chain(&f.layers).all(Option::is_some));
    let bin = peft_wgpu::formats::torch_bin::read(&out.join("pytorch_model_adapter_fusion.bin")).unwrap();
    assert_eq!(bin.iter().filter(|t| t.name.contains("attention.output.adapter_fusion_layer")).count(), 10);

    let paths = FusedPaths { model: model.clone(), fusion: out.clone(), adapters: sources(), head: None };
    let (scores, att) = fuse::evaluate_fused(&g, &paths, &dev_csv, &Default::default(), 8, 16).unwrap();
    assert_eq!(scores.accuracy, s.train.best_accuracy);
    assert_eq!(att, s.attention, "eval's fusion attention differs from fuse's on the same dev set");
    let ex = vec![peft_wgpu::train::data::Example { text: "a wonderful, moving film".into(), ..Default::default() }];
    let p = fuse::predict_fused(&g, &paths, &ex, 8, 16).unwrap();
    let total: f32 = p[0].probabilities.values().sum();
    assert!((total - 1.0).abs() < 1e-5);
    // The fusion layers at the attention output are used: without them the logits change.
    let mut l = fuse::load_fused(&g, &paths, 16).unwrap();
    let (batch, _) = inputs();
    let setup = Setup::Fusion { adapters: l.sets.iter().collect(), fusion: &l.fusion };
    let with = l.enc.pass(&setup, &l.head, &batch, None, false, false).unwrap().logits;
    l.fusion.attention_layers.iter_mut().for_each(|x| *x = None);
    assert!(l.fusion.at(0, Location::Attention).is_none());
    let setup = Setup::Fusion { adapters: l.sets.iter().collect(), fusion: &l.fusion };
    let without = l.enc.pass(&setup, &l.head, &batch, None, false, false).unwrap().logits;
    assert!(rel(&without, &with) > 1e-4, "the attention-output fusion layers made no difference");
}

/// The memory planner counts a fusion (frozen adapters, a fusion layer at each site, its
/// activations and gradients): within 10% of the measured peak of a `peft fuse` training step,
/// over Houlsby adapters (both sites) and Pfeiffer ones, activations kept or recomputed with one
/// layer on the GPU.
#[test]
fn planner_counts_fusion_at_both_sites() {
    use peft_wgpu::model::plan::{self, AdapterSpec, Choice, PlanInput};
    let pfeiffer: Vec<PathBuf> =
        ["src1", "src2", "src3"].iter().map(|a| fixtures().join("tiny-bert/fusion/adapters").join(a)).collect();
    let keep =
        Choice { resident_layers: None, recompute: Some(false), layer_chunk: None, keep_ffn_output: Some(false) };
    let lean =
        Choice { resident_layers: Some(1), recompute: Some(true), layer_chunk: None, keep_ffn_output: Some(false) };
    let (inputs, labels) = inputs();
    for (what, dirs) in [("houlsby", sources()), ("pfeiffer", pfeiffer)] {
        for (how, choice) in [("kept", keep), ("recomputed, 1 layer", lean)] {
            // A device of its own: nothing else allocates on it.
            let g = peft_wgpu::Gpu::for_tests();
            let cfg = BertConfig::from_model_dir(base()).unwrap();
            let sets = fuse::load_source_adapters(&g, &dirs, &cfg).unwrap();
            let spec = AdapterSpec::fusion_over(&sets, cfg.num_hidden_layers, true);
            let input = PlanInput::resident(&cfg, &spec, inputs.batch, inputs.seq, 3);
            let planned = plan::choose_for(&g, &input, choice, None).unwrap();
            let (_, mut enc) = load::load_encoder(&g, &base(), Some(planned.resident_layers())).unwrap();
            enc.follow(&planned);
            let config = FusionPreset::Dynamic.config(false);
            let mut t = FusionTrainee::new(&g, &cfg, sets, &config, "target", 3, 2, "m").unwrap();
            let sched = LinearSchedule { base_lr: 1e-3, warmup_steps: 0, total_steps: 1 };
            let mut opt = Optimizer::new(&g, &t.params(), AdamW::default(), sched, 1.0).unwrap();
            train::train_step(&g, &mut enc, &mut t, &mut opt, &inputs, &labels, None).unwrap();
            let (p, m) = (planned.peak_bytes(), g.memory.peak());
            let err = (p as f64 - m as f64) / m as f64;
            println!("{what} fusion, activations {how}: planned {p} B, measured {m} B ({:+.2}%)", 100.0 * err);
            assert!(err.abs() <= 0.10, "{what} {how}: planned {p} B vs measured {m} B");
        }
    }
}
