//! `peft fuse` runs like `peft train`: stopped (`--stop-after-steps`) and resumed (`--resume`) it
//! ends with the uninterrupted run's losses, weights and fusion attention; `--max-gpu-memory`
//! picks a memory plan, `--recompute` / `--resident-layers` train like the plain run, and layer
//! chunks are refused for a fusion. On the tiny-bert fusion fixture (three frozen adapters).

mod common;
use common::cli::{s, tiny_model, toy_data};
use common::tiny;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

fn peft(args: &[String]) -> Output {
    common::cli::peft(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[track_caller]
fn assert_ok(o: &Output) -> String {
    let all = text(o);
    assert!(o.status.success(), "{all}");
    all
}

#[track_caller]
fn assert_fails(o: &Output, parts: &[&str]) {
    let all = text(o);
    assert!(!o.status.success(), "expected a failure:\n{all}");
    assert!(!all.contains("panicked"), "a panic:\n{all}");
    for p in parts {
        assert!(all.contains(p), "the error lacks {p:?}:\n{all}");
    }
}

/// The tiny model, data and `peft fuse` arguments of a run into `out` (4 steps an epoch: 16
/// examples, batch 5).
struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    args: Vec<String>,
}

impl Setup {
    fn new(epochs: usize) -> Self {
        let sources = ["src1", "src2", "src3"].iter().map(|a| tiny().join("fusion/adapters").join(a)).collect();
        Self::over(epochs, sources)
    }

    /// Over these source adapters.
    fn over(epochs: usize, sources: Vec<PathBuf>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let model = tiny_model(&root);
        let (train, dev) = toy_data(&root);
        let mut args: Vec<String> = vec!["fuse".into(), "--model".into(), s(&model)];
        for a in &sources {
            args.extend(["--adapter".into(), s(a)]);
        }
        for (k, v) in [
            ("--train", s(&train)),
            ("--dev", s(&dev)),
            ("--batch-size", "5".into()),
            ("--lr", "5e-3".into()),
            ("--max-length", "16".into()),
            ("--epochs", epochs.to_string()),
            ("--seed", "3".into()),
        ] {
            args.extend([k.to_string(), v]);
        }
        Self { _dir: dir, root, args }
    }

    /// `peft fuse` into `root/<name>` with `extra` arguments.
    fn run(&self, name: &str, extra: &[&str]) -> (PathBuf, Output) {
        let out = self.root.join(name);
        let mut args = self.args.clone();
        args.extend(["--out".into(), s(&out)]);
        args.extend(extra.iter().map(|x| x.to_string()));
        (out.clone(), peft(&args))
    }
}

fn state_json(out: &Path) -> Value {
    let st = peft_wgpu::formats::weights::WeightFile::open(out.join("trainer_state.safetensors")).unwrap();
    serde_json::from_str(&st.metadata().unwrap()["peft_trainer_state"]).unwrap()
}

/// Every step's loss in `metrics.jsonl`.
fn losses(out: &Path) -> Vec<f64> {
    fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("step").is_some())
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

/// The state's tensors (fusion + head weights and AdamW moments) as bits, and the saved fusion
/// and attention files.
type FinalState = (Vec<(String, Vec<u32>)>, Vec<u8>, Vec<u8>, String);

fn final_state(out: &Path) -> FinalState {
    let st = peft_wgpu::formats::weights::WeightFile::open(out.join("trainer_state.safetensors")).unwrap();
    let tensors =
        st.to_map().unwrap().into_iter().map(|(k, t)| (k, t.data.iter().map(|x| x.to_bits()).collect())).collect();
    (
        tensors,
        fs::read(out.join("model_adapter_fusion.safetensors")).unwrap(),
        fs::read(out.join("model_head.safetensors")).unwrap(),
        fs::read_to_string(out.join("fusion_attention.json")).unwrap(),
    )
}

#[test]
fn fuse_stopped_and_resumed_equals_uninterrupted() {
    let t = Setup::new(3);
    let (full, o) = t.run("full", &[]);
    assert_ok(&o);
    assert_eq!(state_json(&full)["progress"]["step"], json!(12));
    let want = final_state(&full);
    let want_losses = losses(&full);
    assert_eq!(want_losses.len(), 12);
    // Stopped mid-epoch (step 6, in epoch 2) and at an epoch boundary (step 8), then resumed.
    for stop in ["6", "8"] {
        let (part, o) = t.run(&format!("part{stop}"), &["--stop-after-steps", stop]);
        let all = assert_ok(&o);
        assert!(all.contains("peft fuse --resume"), "{all}");
        assert_eq!(state_json(&part)["progress"]["step"], json!(stop.parse::<u64>().unwrap()));
        let all = assert_ok(&peft(&["fuse".into(), "--resume".into(), s(&part)]));
        assert!(all.contains(&format!("resuming at step {stop}")), "{all}");
        assert!(all.contains("fusion attention written to"), "{all}");
        assert_eq!(losses(&part), want_losses, "stop at {stop}: the losses differ from the uninterrupted run's");
        let got = final_state(&part);
        assert!(got.0 == want.0, "stop at {stop}: the trained tensors or moments differ after resuming");
        assert!(got.1 == want.1 && got.2 == want.2, "stop at {stop}: the saved fusion or head differs");
        assert_eq!(got.3, want.3, "stop at {stop}: the fusion attention differs");
    }
    // The saved settings are the fuse command's (adapters, fusion config) and resume them.
    let settings = &state_json(&full)["args"];
    assert_eq!(settings["adapters"].as_array().map(Vec::len), Some(3), "{settings}");
    assert_eq!(settings["fusion_config"], json!("dynamic"));
    assert_eq!(settings["head_name"], json!("target"));
    assert_fails(&peft(&["fuse".into(), "--resume".into(), s(&full)]), &["already finished"]);
    assert_fails(&peft(&["fuse".into(), "--resume".into(), s(&full), "--lr".into(), "1".into()]), &["--lr"]);
}

/// Over Houlsby adapters (fusion layers at the attention output too): stopped mid-epoch and
/// resumed equals uninterrupted, bit for bit.
#[test]
fn fuse_over_houlsby_adapters_stopped_and_resumed_equals_uninterrupted() {
    let case = tiny().join("../options-fusion-houlsby/adapters");
    let t = Setup::over(2, vec![case.join("src1"), case.join("src2")]);
    let (full, o) = t.run("full", &[]);
    assert!(assert_ok(&o).contains("4 fusion layer(s)"));
    let want = final_state(&full);
    let (part, o) = t.run("part", &["--stop-after-steps", "6"]);
    assert_ok(&o);
    assert_ok(&peft(&["fuse".into(), "--resume".into(), s(&part)]));
    assert_eq!(losses(&part), losses(&full));
    let got = final_state(&part);
    assert!(got.0 == want.0, "the trained tensors or moments differ after resuming");
    assert!(got.1 == want.1 && got.2 == want.2, "the saved fusion or head differs");
    assert_eq!(got.3, want.3, "the fusion attention differs");
    assert!(got.3.contains("attention_layers"), "{}", got.3);
}

#[test]
fn fuse_memory_options_pick_a_plan() {
    let t = Setup::new(1);
    let (plain, o) = t.run("plain", &[]);
    let stdout = assert_ok(&o);
    assert!(stdout.contains("memory: planned peak") && stdout.contains("recompute off"), "{stdout}");
    // A budget below the plain plan's peak (0.6 MiB, the fusion's activations counted; 0.9 before
    // the top layer ran only the head's rows): the planner turns recompute on, and the run
    // trains bit for bit as before.
    let (budget, o) = t.run("budget", &["--max-gpu-memory", "0.5MiB"]);
    let stdout = assert_ok(&o);
    assert!(stdout.contains("memory: planned peak") && stdout.contains("recompute on"), "{stdout}");
    assert_eq!(losses(&budget), losses(&plain), "recompute changed the losses");
    // Recompute with one layer on the GPU: the same losses up to f32 summation order.
    let (lean, o) = t.run("lean", &["--recompute", "--resident-layers", "1"]);
    let stdout = assert_ok(&o);
    assert!(stdout.contains("1 of 2 layers on the GPU"), "{stdout}");
    let (a, b) = (losses(&plain), losses(&lean));
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-4 * x.abs(), "step {}: loss {x} plain vs {y} lean", i + 1);
    }
    // Nothing fits 1 KiB: the error names the budget; layer chunks stay refused for a fusion.
    assert_fails(&t.run("none", &["--max-gpu-memory", "1KiB"]).1, &["--max-gpu-memory"]);
    assert_fails(
        &t.run("chunks", &["--recompute", "--layer-chunk", "2"]).1,
        &["layer chunks (--layer-chunk) apply to adapter training, not to AdapterFusion"],
    );
}
