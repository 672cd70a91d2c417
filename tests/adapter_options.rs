//! The adapter options AdapterHub users set (issue 17 item 4) against the `adapters` library:
//! `scaling: "learned" | "channel"`, `ln_before` / `ln_after` (with and without
//! `adapter_residual_before_ln`), `par_bn` (parallel adapters), each forward and backward on the
//! fixtures `tests/fixtures/make_adapter_options.py` writes (logits, loss, last_hidden_state
//! ≤ 1e-4 relative; every trainable gradient ≤ 1e-3, the options' own included).

mod common;
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
    let cfg = BertConfig::from_model_dir(&base()).unwrap();
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
