//! Reliability of training runs: `peft train --resume` continues bit-exactly after a stop, a NaN,
//! a lost device or Ctrl-C, keeping the last checkpoint; layer chunks train like the plain run.
//! The stop / resume and layer-chunk runs are made with dropout off and on (a model whose
//! config.json has BERT's 0.1 rates: the masks are keyed by the optimizer step and the global
//! token row, so a resumed or chunked run draws the same ones).
//! Runs the built `peft` binary on the tiny fixture model (see `common::cli`).

mod common;
use common::cli::*;
use common::*;
use peft_wgpu::formats::weights::{TensorMap, WeightFile};
use serde_json::{json, Value};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

/// The trained tensors and AdamW moments of a finished or stopped run, and its adapter file.
fn final_state(out: &Path) -> (TensorMap, Vec<u8>, Vec<u8>) {
    let st = WeightFile::open(out.join("trainer_state.safetensors")).unwrap();
    (
        st.to_map().unwrap(),
        fs::read(out.join("adapter.safetensors")).unwrap(),
        fs::read(out.join("model_head.safetensors")).unwrap(),
    )
}

fn state_json(out: &Path) -> Value {
    let st = WeightFile::open(out.join("trainer_state.safetensors")).unwrap();
    serde_json::from_str(&st.metadata().unwrap()["peft_trainer_state"]).unwrap()
}

#[test]
fn cli_stopped_and_resumed_equals_uninterrupted_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    stopped_and_resumed_case(d.path(), &tiny_model(d.path()), &[]);
}

/// With batches padded to a multiple of 8 (dropout on, so the masks depend on the padded shape):
/// the setting is saved with the run and a resumed run pads as the stopped one did.
#[test]
fn cli_stopped_and_resumed_with_padded_batches_equals_uninterrupted_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model_with_dropout(d.path());
    stopped_and_resumed_case(d.path(), &model, &["--pad-to-multiple-of", "8"]);
    let st = state_json(&d.path().join("full"));
    assert_eq!(st["args"]["pad_to_multiple_of"], json!(8), "{st}");
}

#[test]
fn cli_stopped_and_resumed_with_dropout_equals_uninterrupted_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model_with_dropout(d.path());
    stopped_and_resumed_case(d.path(), &model, &[]);
    // Dropout was on: the same run with --no-dropout trains to other weights.
    let (train, dev) = toy_data(d.path());
    let (m, t, dv) = (s(&model), s(&train), s(&dev));
    let off = d.path().join("off");
    let oo = s(&off);
    let mut args = train_args(&m, &t, &dv, &oo);
    args.extend(["--epochs", "3", "--no-dropout"]);
    let o = peft(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("dropout: off"), "{}", text(&o.stdout));
    assert!(final_state(&off).1 != final_state(&d.path().join("full")).1, "dropout changed nothing");
}

fn stopped_and_resumed_case(d: &Path, model: &Path, extra: &[&str]) {
    let (train, dev) = toy_data(d);
    let (m, t, dv) = (s(model), s(&train), s(&dev));
    // 16 examples, batch 5: 4 steps per epoch, 3 epochs = 12 steps.
    let full = d.join("full");
    let fo = s(&full);
    let mut args = train_args(&m, &t, &dv, &fo);
    args.extend(["--epochs", "3"]);
    args.extend(extra);
    let o = peft(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let want = final_state(&full);
    assert_eq!(state_json(&full)["progress"]["step"], json!(12));

    // Stopped mid-epoch (step 6 of 12, in epoch 2) and at an epoch boundary (step 8), then resumed.
    for stop in ["6", "8"] {
        let part = d.join(format!("part{stop}"));
        let po = s(&part);
        let mut args = train_args(&m, &t, &dv, &po);
        args.extend(["--epochs", "3", "--stop-after-steps", stop]);
        args.extend(extra);
        let o = peft(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let st = state_json(&part);
        assert_eq!(st["progress"]["step"], json!(stop.parse::<u64>().unwrap()));
        assert_eq!(st["progress"]["finished"], json!(false));
        let metrics_before = fs::read_to_string(part.join("metrics.jsonl")).unwrap();
        let o = peft(&["train", "--resume", &s(&part)]);
        let all = text(&o.stdout) + &text(&o.stderr);
        assert!(o.status.success(), "{all}");
        assert!(all.contains(&format!("resuming at step {stop}")), "{all}");
        let got = final_state(&part);
        assert_eq!(got.0.keys().collect::<Vec<_>>(), want.0.keys().collect::<Vec<_>>());
        for (k, v) in &want.0 {
            let a: Vec<u32> = v.data.iter().map(|x| x.to_bits()).collect();
            let b: Vec<u32> = got.0[k].data.iter().map(|x| x.to_bits()).collect();
            assert!(a == b, "stop at {stop}: {k} differs after resuming");
        }
        assert!(got.1 == want.1 && got.2 == want.2, "stop at {stop}: the best checkpoint differs");
        // The metrics log continues where the state was saved: same lines as the full run's
        // (timings aside).
        let strip = |t: &str| -> Vec<Value> {
            t.lines()
                .map(|l| {
                    let mut v: Value = serde_json::from_str(l).unwrap();
                    v.as_object_mut().unwrap().remove("tokens_per_second");
                    v
                })
                .collect()
        };
        let resumed = fs::read_to_string(part.join("metrics.jsonl")).unwrap();
        assert!(resumed.starts_with(&metrics_before));
        assert_eq!(strip(&resumed), strip(&fs::read_to_string(full.join("metrics.jsonl")).unwrap()));
        // The counters too, timings and the log's length (its lines hold speeds) aside.
        let counters = |out: &Path| {
            let mut p = state_json(out)["progress"].clone();
            for k in ["train_secs", "metrics_bytes"] {
                p.as_object_mut().unwrap().remove(k);
            }
            p
        };
        assert_eq!(counters(&part), counters(&full));
    }
    // A finished run has nothing left to do; a folder without a state is refused.
    assert_clean_failure(&peft(&["train", "--resume", &s(&full)]), &["already finished"]);
    assert_clean_failure(&peft(&["train", "--resume", &s(model)]), &["trainer_state.safetensors"]);
    // --resume takes the run's settings from the folder.
    let o = peft(&["train", "--resume", &s(&full), "--lr", "1"]);
    assert!(!o.status.success());
    let o = peft(&["train", "--resume", &s(&full), "--no-dropout"]);
    assert!(!o.status.success());
    assert_no_temp_files(d);
}

#[test]
fn cli_nan_stops_naming_the_step_and_keeps_the_last_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let (train, dev) = toy_data(d.path());
    let (m, t, dv) = (s(&model), s(&train), s(&dev));

    // An absurd learning rate blows the weights up within a few steps.
    let out = d.path().join("absurd");
    let ao = s(&out);
    let mut args = train_args(&m, &t, &dv, &ao);
    let i = args.iter().position(|a| *a == "--lr").unwrap();
    args[i + 1] = "1e30";
    let err = assert_clean_failure(&peft(&args), &["step ", "not finite", "--lr"]);
    println!("{err}");

    // A NaN gradient at step 6 (epoch 2): the epoch-1 checkpoint stays, and resuming from it ends
    // where an uninterrupted run ends.
    let out = d.path().join("nan");
    let no = s(&out);
    let mut args = train_args(&m, &t, &dv, &no);
    args.extend(["--inject-fault", "nan@6"]);
    assert_clean_failure(&peft(&args), &["step 6", "not finite", "last checkpoint (step 4)", "--resume"]);
    assert_eq!(state_json(&out)["progress"]["step"], json!(4));
    let w = WeightFile::open(out.join("adapter.safetensors")).unwrap().to_map().unwrap();
    assert!(w.values().all(|t| t.data.iter().all(|x| x.is_finite())));
    let o = peft(&["train", "--resume", &s(&out)]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let full = d.path().join("full");
    let fo = s(&full);
    let o = peft(&train_args(&m, &t, &dv, &fo));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(final_state(&out) == final_state(&full), "resumed after a NaN: not the uninterrupted result");
    assert_no_temp_files(d.path());
}

#[test]
fn cli_device_lost_keeps_the_last_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let (train, dev) = toy_data(d.path());
    let out = d.path().join("out");
    let (m, t, dv, o) = (s(&model), s(&train), s(&dev), s(&out));
    let mut args = train_args(&m, &t, &dv, &o);
    args.extend(["--inject-fault", "device-lost@7"]);
    let err = assert_clean_failure(&peft(&args), &["device was lost", "step 7", "last checkpoint (step 4)"]);
    println!("{err}");
    assert_eq!(state_json(&out)["progress"]["step"], json!(4));
    // The state on disk is step 4's, untouched: the same tensors as a run stopped after step 4.
    let stopped = d.path().join("stopped");
    let so = s(&stopped);
    let mut args = train_args(&m, &t, &dv, &so);
    args.extend(["--stop-after-steps", "4"]);
    let st = peft(&args);
    assert!(st.status.success(), "{}", text(&st.stderr));
    let tensors = |p: &Path| WeightFile::open(p.join("trainer_state.safetensors")).unwrap().to_map().unwrap();
    assert!(tensors(&out) == tensors(&stopped), "the last checkpoint changed");
    peft_wgpu::formats::adapterhub::Adapter::load(&out, &tiny_config()).expect("the best checkpoint loads");
    let r = peft(&["train", "--resume", &o]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert_eq!(state_json(&out)["progress"]["finished"], json!(true));
    assert_no_temp_files(d.path());
}

#[cfg(unix)]
#[test]
fn cli_ctrl_c_saves_a_checkpoint_and_exits_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let (train, dev) = toy_data(d.path());
    let out = d.path().join("out");
    let (m, t, dv, o) = (s(&model), s(&train), s(&dev), s(&out));
    // Long enough to still be running when the signal comes.
    let mut args = train_args(&m, &t, &dv, &o);
    args.extend(["--epochs", "400"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(&args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a few steps in the metrics log.
    let log = out.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while fs::read_to_string(&log).map_or(0, |s| s.lines().count()) < 3 {
        assert!(t0.elapsed().as_secs() < 300, "training did not start");
        assert!(child.try_wait().unwrap().is_none(), "training ended early");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let output = child.wait_with_output().unwrap();
    let err = text(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "stderr:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("interrupted at step") && err.contains("--resume"), "{err}");
    let st = state_json(&out);
    let step = st["progress"]["step"].as_u64().unwrap();
    assert!((3..400 * 4).contains(&step), "{st}");
    assert_eq!(st["progress"]["finished"], json!(false));
    assert_no_temp_files(&out);
    // The saved state resumes (stopped again right away to keep the test short).
    let o = peft(&["train", "--resume", &o, "--stop-after-steps", &(step + 1).to_string()]);
    let all = text(&o.stdout) + &text(&o.stderr);
    assert!(o.status.success(), "{all}");
    assert!(all.contains(&format!("resuming at step {step}")), "{all}");
    assert_eq!(state_json(&out)["progress"]["step"], json!(step + 1));
}

/// `peft train` with layer chunks and kept FFN outputs (chosen on the command line) trains like
/// the plain run: the same losses step by step up to f32 summation order (the adapters' gradients
/// are summed chunk by chunk); a budget nothing fits fails naming the leanest setup.
#[test]
fn cli_layer_chunks_train_like_the_plain_run() {
    let d = tempfile::tempdir().unwrap();
    layer_chunks_case(d.path(), &tiny_model(d.path()));
}

#[test]
fn cli_layer_chunks_with_dropout_train_like_the_plain_run() {
    let d = tempfile::tempdir().unwrap();
    layer_chunks_case(d.path(), &tiny_model_with_dropout(d.path()));
}

fn layer_chunks_case(d: &Path, model: &Path) {
    let (train, dev) = toy_data(d);
    let (m, t, dv) = (s(model), s(&train), s(&dev));
    let losses = |out: &Path| -> Vec<f64> {
        let log = fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("step").is_some() && v.get("loss").is_some())
            .map(|v| v["loss"].as_f64().unwrap())
            .collect()
    };
    let plain = d.join("plain");
    let o = s(&plain);
    let out = peft(&train_args(&m, &t, &dv, &o));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lean = d.join("lean");
    let o = s(&lean);
    let mut args = train_args(&m, &t, &dv, &o);
    args.extend(["--recompute", "--layer-chunk", "2", "--keep-ffn-output", "--resident-layers", "1"]);
    let out = peft(&args);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for want in ["recompute on keeping FFN outputs", "layer chunks of 2 sequences", "1 of 2 layers on the GPU"] {
        assert!(stdout.contains(want), "the plan line lacks {want:?}:\n{stdout}");
    }
    let (a, b) = (losses(&plain), losses(&lean));
    assert!(a.len() >= 4 && a.len() == b.len(), "{} vs {} logged steps", a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-4 * x.abs(), "step {}: loss {x} plain vs {y} in layer chunks", i + 1);
    }
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / x.abs()).fold(0.0, f64::max);
    println!("{} steps, largest relative loss difference {worst:.2e}", a.len());
    // Nothing fits 1 KiB: the error names the leanest setup and what to change.
    let o = s(&d.join("none"));
    let mut args = train_args(&m, &t, &dv, &o);
    args.extend(["--max-gpu-memory", "1KiB"]);
    assert_clean_failure(&peft(&args), &["--max-gpu-memory", "layer chunks of 1 sequence", "--batch-size (5)"]);
}
