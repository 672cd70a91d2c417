//! The adapter options AdapterHub users set (issue 17 item 4) against the `adapters` library:
//! `scaling: "learned" | "channel"`, `ln_before` / `ln_after` (with and without
//! `adapter_residual_before_ln`), `par_bn` (parallel adapters), each forward and backward on the
//! fixtures `tests/fixtures/make_adapter_options.py` writes (logits, loss, last_hidden_state
//! ≤ 1e-4 relative; every trainable gradient ≤ 1e-3, the options' own included).

mod common;
use common::cli::*;
use common::*;
use peft_wgpu::formats::weights::WeightFile;
use peft_wgpu::model::adapters::{AdapterSet, ClassificationHead};
use peft_wgpu::model::config::BertConfig;
use peft_wgpu::model::encoder::{PassOutput, Setup};
use peft_wgpu::model::load;
use peft_wgpu::train::data::read_inputs_json;
use std::path::{Path, PathBuf};

fn case_dir(case: &str) -> PathBuf {
    fixtures().join(format!("options-{case}"))
}

fn base() -> PathBuf {
    fixtures().join("tiny-bert/base")
}

/// One forward + backward pass: the outputs and every trainable gradient by AdapterHub name.
fn pass(adapter: &AdapterSet, head: &ClassificationHead, dir: &Path) -> (PassOutput, Vec<(String, Vec<f32>)>) {
    let g = gpu();
    let (_, mut enc) = load::load_encoder(&g, &base(), None).unwrap();
    let (inputs, labels) = read_inputs_json(&dir.join("inputs.json")).unwrap();
    let out = enc.pass(&Setup::Adapter(adapter), head, &inputs, Some(&labels), true, true).unwrap();
    let grads = adapter.named().into_iter().chain(head.named()).map(|(n, _, g)| (n, download(g))).collect();
    (out, grads)
}

/// Checks a pass against the fixture's `expected.safetensors`; returns the worst gradient error.
fn check(case: &str, out: &PassOutput, grads: &[(String, Vec<f32>)], dir: &Path) -> f64 {
    let exp = WeightFile::open(dir.join("expected.safetensors")).unwrap();
    let e = |name: &str| f64s(&exp.get(name).unwrap().1);
    let el = assert_close(&format!("{case} logits"), &out.logits, &e("logits"), 1e-4);
    assert_close(&format!("{case} loss"), &[out.loss.unwrap()], &e("loss"), 1e-4);
    let hidden = out.last_hidden_state.as_ref().unwrap();
    let eh = assert_close(&format!("{case} last_hidden_state"), hidden, &e("last_hidden_state"), 1e-4);
    let expected: Vec<&str> = exp.names().into_iter().filter(|n| n.starts_with("grad.")).collect();
    assert_eq!(expected.len(), grads.len(), "{case}: number of trainable tensors");
    let mut worst = (0.0f64, String::new());
    for (name, g) in grads {
        let key = format!("grad.{name}");
        assert!(exp.contains(&key), "{case}: {key} not in the fixture");
        let err = assert_close(&format!("{case} {key}"), g, &e(&key), 1e-3);
        if err > worst.0 {
            worst = (err, key);
        }
    }
    println!("{case}: logits {el:.2e} last_hidden_state {eh:.2e}; worst gradient {:.2e} ({})", worst.0, worst.1);
    worst.0
}

fn parity_case(case: &str) {
    let dir = case_dir(case);
    let cfg = BertConfig::from_model_dir(base()).unwrap();
    let (adapter, head) = load::load_adapter(&gpu(), &dir.join("adapter"), &cfg).unwrap();
    let head = head.expect("head saved with the adapter");
    let (out, grads) = pass(&adapter, &head, &dir);
    check(case, &out, &grads, &dir);
}

#[test]
fn learned_scaling_matches_adapters_library() {
    parity_case("scaling-learned");
}

#[test]
fn channel_scaling_matches_adapters_library() {
    parity_case("scaling-channel");
}

#[test]
fn adapter_layer_norms_match_adapters_library() {
    parity_case("ln");
}

#[test]
fn adapter_layer_norms_residual_before_match_adapters_library() {
    parity_case("ln-residual-before");
}

#[test]
fn parallel_adapter_matches_adapters_library() {
    parity_case("par-bn");
}

#[test]
fn parallel_houlsby_channel_scaling_matches_adapters_library() {
    parity_case("par-bn-houlsby");
}

#[test]
fn parallel_with_layer_norms_and_channel_scaling_matches_adapters_library() {
    parity_case("par-bn-ln");
}

/// AdamW on one fixed batch lowers the loss with each option set (new adapters, the library's
/// initialisations), the options' own tensors training too.
#[test]
fn adamw_steps_lower_the_loss_with_every_option() {
    use peft_wgpu::kernels::optim::{AdamW, LinearSchedule};
    use peft_wgpu::train::{self, AdapterArgs, Optimizer, Preset};
    let g = gpu();
    let cfg = BertConfig::from_model_dir(base()).unwrap();
    let (_, mut enc) = load::load_encoder(&g, &base(), None).unwrap();
    let (inputs, labels) = read_inputs_json(&case_dir("par-bn").join("inputs.json")).unwrap();
    let with = |config, scaling: &str, (ln_before, ln_after): (bool, bool), init: &str| AdapterArgs {
        config,
        reduction_factor: 4.0,
        scaling: Some(scaling.into()),
        ln_before,
        ln_after,
        init_weights: Some(init.into()),
        ..Default::default()
    };
    for args in [
        with(Preset::Parallel, "4.0", (false, false), "mam_adapter"),
        with(Preset::Parallel, "learned", (true, false), "houlsby"),
        with(Preset::Houlsby, "channel", (true, true), "bert"),
        with(Preset::Pfeiffer, "learned", (false, true), "mam_adapter"),
    ] {
        let bn = args.bottleneck_config(cfg.num_hidden_layers).unwrap();
        let (set, head) = train::new_adapter(&g, &cfg, &bn, "task", 3, 11).unwrap();
        let params: Vec<_> = set.named().into_iter().chain(head.named()).collect();
        let sched = LinearSchedule { base_lr: 1e-2, warmup_steps: 0, total_steps: 1000 };
        let mut opt = Optimizer::new(&g, &params, AdamW { lr: 1e-2, ..AdamW::default() }, sched, 1.0).unwrap();
        let start: Vec<Vec<f32>> = set.named_options().iter().map(|(_, w)| download(w)).collect();
        let mut losses = vec![];
        for _ in 0..60 {
            let out = enc.pass(&Setup::Adapter(&set), &head, &inputs, Some(&labels), true, false).unwrap();
            losses.push(out.loss.unwrap());
            opt.step(&g, &params).unwrap();
        }
        let what = format!(
            "{:?} scaling {:?} ln_before {} ln_after {} init {:?}",
            args.config, args.scaling, args.ln_before, args.ln_after, args.init_weights
        );
        assert!(losses.iter().all(|l| l.is_finite()), "{what}: {losses:?}");
        let late = losses[45..].iter().cloned().fold(f32::INFINITY, f32::min);
        assert!(late < 0.8 * losses[0], "{what}: loss did not fall: {losses:?}");
        for ((name, w), s) in set.named_options().iter().zip(&start) {
            let moved = download(w).iter().zip(s).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(moved > 1e-4, "{what}: {name} did not train");
        }
        println!("{what}: loss {} -> {late}", losses[0]);
    }
}

/// `peft train` with the options: par_bn with a learned scaling, both adapter LayerNorms and
/// Houlsby's initialisation; Houlsby adapters with a per-channel scaling and mam initialisation.
/// AdamW moves every option tensor off its start, the saved config says what was trained (as
/// `adapters` writes it) and eval of the saved folder reproduces the best epoch.
#[test]
fn train_with_options_trains_saves_and_loads_back() {
    use peft_wgpu::train::{self, AdapterArgs, DataArgs, LoopArgs, OptimizerArgs, Preset, TrainArgs};
    let g = gpu();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let (train_csv, dev_csv) = toy_data(dir.path());
    let cfg = BertConfig::from_model_dir(&model).unwrap();
    let cases = [
        (
            "par_bn",
            AdapterArgs {
                config: Preset::Parallel,
                reduction_factor: 4.0,
                scaling: Some("learned".into()),
                ln_before: true,
                ln_after: true,
                init_weights: Some("houlsby".into()),
                ..Default::default()
            },
        ),
        (
            "houlsby",
            AdapterArgs {
                config: Preset::Houlsby,
                reduction_factor: 4.0,
                scaling: Some("channel".into()),
                init_weights: Some("mam_adapter".into()),
                ..Default::default()
            },
        ),
    ];
    for (what, adapter) in cases {
        let out = dir.path().join(what);
        let args = TrainArgs {
            model: model.clone(),
            train: train_csv.clone(),
            data: DataArgs { dev: Some(dev_csv.clone()), max_length: 16, ..Default::default() },
            adapter: adapter.clone(),
            run: LoopArgs { epochs: 3, batch_size: 4, ..Default::default() },
            optimizer: OptimizerArgs { lr: 1e-2, ..Default::default() },
            out: out.clone(),
            ..TrainArgs::default()
        };
        let s = train::train(&g, &args).unwrap();
        assert!(s.train_losses.iter().all(|l| l.is_finite()), "{what}: {:?}", s.train_losses);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
        let c = &v["config"];
        assert_eq!(c["is_parallel"], serde_json::json!(adapter.config == Preset::Parallel), "{what}");
        assert_eq!(c["scaling"], serde_json::json!(adapter.scaling.as_deref().unwrap()), "{what}");
        assert_eq!(c["ln_before"], serde_json::json!(adapter.ln_before), "{what}");
        assert_eq!(c["ln_after"], serde_json::json!(adapter.ln_after), "{what}");
        assert_eq!(c["init_weights"], serde_json::json!(adapter.init_weights.as_deref().unwrap()), "{what}");
        // Every option tensor trained away from its start (scalings and gammas 1, betas 0).
        let (set, _) = load::load_adapter(&g, &out, &cfg).unwrap();
        let options = set.named_options();
        let per_module = if adapter.config == Preset::Parallel { 5 } else { 1 };
        let modules = if adapter.config == Preset::Parallel { 2 } else { 4 };
        assert_eq!(options.len(), per_module * modules, "{what}: option tensors");
        for (name, w) in options {
            let start = if name.ends_with("bias") { 0.0 } else { 1.0 };
            let moved = download(w).iter().map(|x| (x - start).abs()).fold(0.0f32, f32::max);
            assert!(moved > 1e-4, "{what}: {name} did not train (max change {moved})");
        }
        let scores = train::evaluate(&g, &model, &out, &dev_csv, &Default::default(), 4, 16).unwrap();
        assert!(
            (scores.accuracy - s.best_accuracy).abs() < 1e-12,
            "{what}: eval {} vs best {}",
            scores.accuracy,
            s.best_accuracy
        );
    }
}

/// Bad option values are refused before anything runs, naming the option.
#[test]
fn bad_option_values_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let (t, d) = toy_data(dir.path());
    let out = dir.path().join("out");
    let (m, t, d, o) = (s(&model), s(&t), s(&d), s(&out));
    for (flag, value, parts) in [
        ("--scaling", "huge", &["--scaling", "learned", "huge"][..]),
        ("--init-weights", "lora", &["--init-weights", "mam_adapter", "lora"][..]),
        ("--config", "prefix", &["--config", "par_bn"][..]),
    ] {
        let mut args = train_args(&m, &t, &d, &o);
        args.extend([flag, value]);
        // A bad value of an option is a usage error (exit code 2, clap's message).
        let r = peft(&args);
        let err = text(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        for p in parts {
            assert!(err.contains(p), "{flag} {value}: stderr does not mention {p:?}:\n{err}");
        }
    }
    assert!(!out.exists(), "a failed run wrote its output folder");
}

/// With the options: `--recompute` gives the same bits, layer chunks (ragged 2 + 1 and one at a
/// time, whose gradients the options' own included are summed chunk by chunk) agree to f32
/// rounding, with dropout on and off, resident and streamed.
#[test]
fn recompute_and_layer_chunks_with_options() {
    use peft_wgpu::model::encoder::{DropoutRates, PassDropout};
    let g = gpu();
    let cfg = BertConfig::from_model_dir(base()).unwrap();
    for case in ["ln", "par-bn-ln", "scaling-learned", "ln-residual-before"] {
        let dir = case_dir(case);
        let (adapter, head) = load::load_adapter(&g, &dir.join("adapter"), &cfg).unwrap();
        let head = head.unwrap();
        let (inputs, labels) = read_inputs_json(&dir.join("inputs.json")).unwrap();
        let named: Vec<_> = adapter.named().into_iter().chain(head.named()).collect();
        for dropout in [false, true] {
            let run = |recompute: bool, chunk: usize, resident: Option<usize>| -> Vec<(String, Vec<f32>)> {
                let (_, mut enc) = load::load_encoder(&g, &base(), resident).unwrap();
                enc.recompute = recompute;
                enc.layer_chunk = chunk;
                for (_, _, grad) in &named {
                    grad.write(&g, &vec![f32::NAN; grad.numel()]).unwrap();
                }
                let drop =
                    dropout.then(|| PassDropout { rates: DropoutRates::uniform(0.1).unwrap(), seed: 99, step: 3 });
                let out = enc
                    .pass_with_dropout(&Setup::Adapter(&adapter), &head, &inputs, Some(&labels), true, true, drop)
                    .unwrap();
                let mut r = vec![("logits".to_string(), out.logits.clone()), ("loss".into(), vec![out.loss.unwrap()])];
                r.extend(named.iter().map(|(n, _, grad)| (n.clone(), download(grad))));
                r
            };
            let keep = run(false, 0, None);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            for resident in [None, Some(1)] {
                for ((n, a), (_, b)) in keep.iter().zip(&run(true, 0, resident)) {
                    assert!(
                        bits(a) == bits(b),
                        "{case} dropout {dropout} resident {resident:?}: {n} differs with --recompute"
                    );
                }
            }
            for (chunk, resident) in [(2, None), (1, Some(1))] {
                for ((n, a), (_, b)) in keep.iter().zip(&run(true, chunk, resident)) {
                    assert!(b.iter().all(|x| x.is_finite()), "{case}: {n} not written in chunks");
                    assert_close(&format!("{case} dropout {dropout} chunk {chunk}: {n}"), b, &f64s(a), 1e-5);
                }
            }
        }
    }
}

/// The memory planner counts what the options allocate: planned peak within 10% of the measured
/// one for a training step (forward, backward, AdamW) with each option set, activations kept or
/// recomputed in layer chunks.
#[test]
fn planned_peak_with_options_within_10_percent_of_measured() {
    use peft_wgpu::kernels::optim::{AdamW, LinearSchedule};
    use peft_wgpu::model::plan::{self, AdapterSpec, Choice, PlanInput};
    use peft_wgpu::train::{self, AdapterArgs, Optimizer, Preset};
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = peft_wgpu::bench::model::preset("minilm").unwrap();
    (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) = (72, 3, 4, 136);
    (cfg.vocab_size, cfg.max_position_embeddings) = (600, 40);
    let dir = tmp.path().join("small");
    peft_wgpu::bench::model::write_random_model(&cfg, &dir, 3).unwrap();
    let cfg = BertConfig::from_model_dir(&dir).unwrap();
    let (batch, seq) = (6, 13);
    let args = |config, scaling: &str, ln: bool| AdapterArgs {
        config,
        reduction_factor: 4.0,
        scaling: Some(scaling.into()),
        ln_before: ln,
        ln_after: ln,
        ..Default::default()
    };
    for adapter in [
        args(Preset::Parallel, "channel", true),
        args(Preset::Houlsby, "learned", true),
        args(Preset::Pfeiffer, "learned", false),
    ] {
        for (recompute, layer_chunk) in [(false, None), (true, Some(2))] {
            let g = peft_wgpu::Gpu::for_tests();
            let bn = adapter.bottleneck_config(cfg.num_hidden_layers).unwrap();
            let spec = AdapterSpec::from_bottleneck(&cfg, &bn).unwrap();
            let input = PlanInput::resident(&cfg, &spec, batch, seq, 2);
            let choice =
                Choice { resident_layers: None, recompute: Some(recompute), layer_chunk, keep_ffn_output: Some(false) };
            let planned = plan::choose_for(&g, &input, choice, None).unwrap();
            let (_, mut enc) = load::load_encoder(&g, &dir, Some(planned.resident_layers())).unwrap();
            enc.follow(&planned);
            let (set, head) = train::new_adapter(&g, &cfg, &bn, "task", 2, 0).unwrap();
            let params: Vec<_> = set.named().into_iter().chain(head.named()).collect();
            let sched = LinearSchedule { base_lr: 1e-4, warmup_steps: 0, total_steps: 1 };
            let mut opt = Optimizer::new(&g, &params, AdamW::default(), sched, 1.0).unwrap();
            let ids: Vec<u32> = (0..batch * seq).map(|i| (i * 37 % 500 + 5) as u32).collect();
            let inputs = peft_wgpu::model::encoder::Inputs {
                batch,
                seq,
                ids,
                token_types: vec![0; batch * seq],
                mask: vec![1.0; batch * seq],
            };
            let labels: Vec<u32> = (0..batch as u32).map(|i| i % 2).collect();
            enc.pass(&Setup::Adapter(&set), &head, &inputs, Some(&labels), true, false).unwrap();
            opt.step(&g, &params).unwrap();
            let measured = g.memory.peak();
            let plan = planned.peak.total();
            let err = (plan as f64 - measured as f64) / measured as f64;
            let what =
                format!("{:?} {:?} ln {} recompute {recompute}", adapter.config, adapter.scaling, adapter.ln_before);
            println!("{what}: planned {plan} B, measured {measured} B ({:+.2}%)", 100.0 * err);
            assert!(err.abs() <= 0.10, "{what}: plan off by {:.1}%", 100.0 * err);
        }
    }
}

/// The options are part of a run's resume settings: written and read back unchanged.
#[test]
fn options_round_trip_through_the_resume_settings() {
    use peft_wgpu::train::{AdapterArgs, Preset, TrainArgs};
    let a = TrainArgs {
        adapter: AdapterArgs {
            config: Preset::Parallel,
            scaling: Some("channel".into()),
            ln_before: true,
            ln_after: true,
            adapter_residual_before_ln: true,
            init_weights: Some("houlsby".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let v = serde_json::to_value(&a).unwrap();
    assert_eq!((v["config"].as_str(), v["scaling"].as_str()), (Some("par_bn"), Some("channel")));
    let back: TrainArgs = serde_json::from_value(v).unwrap();
    assert_eq!(back.adapter, a.adapter);
}
