//! AdapterFusion over adapters with `leave_out`, against the `adapters` library's own files
//! (tests/fixtures/fusion-leave-out, `make_fusion_leave_out.py`): the library creates and saves a
//! fusion layer at the FFN output of every layer, also layer 0 where both adapters are left out and
//! the fusion never runs. `peft eval / predict --fusion` read such a folder (layer 0's tensors
//! accepted, checked, ignored) and give the library's logits; `peft fuse` writes the same tensors
//! (layer 0 at the library's initial values), so the library's `load_adapter_fusion` finds all.

mod common;
use common::*;
use peft_wgpu::formats::adapterhub::Fusion;
use peft_wgpu::formats::weights::WeightFile;
use peft_wgpu::model::config::BertConfig;
use peft_wgpu::train::data::Example;
use peft_wgpu::train::fuse::{self, FusedPaths, FusionPreset, FusionTrainee};
use std::path::{Path, PathBuf};

fn case() -> PathBuf {
    fixtures().join("fusion-leave-out")
}

fn paths(fusion: &Path) -> FusedPaths {
    FusedPaths {
        model: fixtures().join("tiny-roberta/base"),
        fusion: fusion.to_path_buf(),
        adapters: ["a", "b"].iter().map(|n| case().join("adapters").join(n)).collect(),
        head: None,
    }
}

fn tensor_names(p: &Path) -> Vec<String> {
    let mut n: Vec<String> = WeightFile::open(p).unwrap().names().iter().map(|s| s.to_string()).collect();
    n.sort();
    n
}

fn cfg() -> BertConfig {
    BertConfig::from_model_dir(fixtures().join("tiny-roberta/base")).unwrap()
}

#[test]
fn library_fusion_with_a_left_out_layer_gives_the_library_logits() {
    let g = gpu();
    // The library's folder has layer 0's fusion tensors; they are read (and shape-checked) ...
    let f = Fusion::load(case().join("fusion"), &cfg()).unwrap();
    assert!(f.layers[0].is_some() && f.layers[1].is_some(), "the library saves a fusion layer in both layers");
    // ... and not run: no adapter has a module in layer 0.
    let l = fuse::load_fused(&g, &paths(&case().join("fusion")), 32).unwrap();
    assert!(l.fusion.layers[0].is_none() && l.fusion.layers[1].is_some());

    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case().join("expected.json")).unwrap()).unwrap();
    let texts: Vec<String> =
        expected["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let ex: Vec<Example> = texts.iter().map(|t| Example { text: t.clone(), ..Default::default() }).collect();
    let got = fuse::predict_fused(&g, &paths(&case().join("fusion")), &ex, 8, 32).unwrap();
    assert_eq!(got.len(), texts.len());
    for (p, want) in got.iter().zip(expected["logits"].as_array().unwrap()) {
        let want: Vec<f32> = want.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(p.logits.len(), want.len());
        for (a, b) in p.logits.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{:?}: logits {:?}, the library's {want:?}", p.text, p.logits);
        }
    }
}

#[test]
fn fuse_writes_left_out_layers_as_the_library_does() {
    let g = gpu();
    let cfg = cfg();
    let labels: Vec<String> = vec!["LABEL_0".into(), "LABEL_1".into()];
    let new = |seed| {
        let sets = fuse::load_source_adapters(&g, &paths(Path::new("")).adapters, &cfg).unwrap();
        let config = FusionPreset::Dynamic.config(false);
        FusionTrainee::new(&g, &cfg, sets, &config, "a,b", 2, seed, "tiny-roberta").unwrap()
    };
    let t = new(5);
    // Only layer 1 is trained (and counted); layer 0 is kept on the host for saving.
    assert!(t.fusion.layers[0].is_none() && t.fusion.layers[1].is_some());
    assert_eq!(t.fusion.left_out.len(), 1);
    let dir = tempfile::tempdir().unwrap();
    let saved = t.to_adapterhub(&g, &labels).unwrap();
    assert_eq!(saved, t.to_adapterhub(&g, &labels).unwrap(), "the left-out layer changes between saves");
    saved.save(dir.path()).unwrap();

    // The library's tensor names, layer 0 included.
    let file = dir.path().join("model_adapter_fusion.safetensors");
    let theirs = case().join("fusion/model_adapter_fusion.safetensors");
    assert_eq!(tensor_names(&file), tensor_names(&theirs));
    // Layer 0 at the library's initial values: biases 0, value the identity with 1e-6 elsewhere
    // (bit for bit the library's), query and key ~ N(0, 0.02).
    let (ours, lib) = (WeightFile::open(&file).unwrap(), WeightFile::open(&theirs).unwrap());
    let p = "roberta.encoder.layer.0.output.adapter_fusion_layer.a,b";
    for n in ["query.bias", "key.bias", "value.weight"] {
        let name = format!("{p}.{n}");
        assert_eq!(ours.get(&name).unwrap(), lib.get(&name).unwrap(), "{name}");
    }
    for n in ["query.weight", "key.weight"] {
        let (_, w) = ours.get(&format!("{p}.{n}")).unwrap();
        let mean = w.iter().map(|&x| x as f64).sum::<f64>() / w.len() as f64;
        let std = (w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        assert!(mean.abs() < 0.005 && (0.015..0.025).contains(&std), "{n}: mean {mean}, std {std}");
    }
    // Read back, the left-out layer is ignored and the trained one is the trainee's.
    let l = fuse::load_fused(&g, &paths(dir.path()), 32).unwrap();
    assert!(l.fusion.layers[0].is_none());
    let (trained, read) = (&t.fusion.layers[1].as_ref().unwrap().w, &l.fusion.layers[1].as_ref().unwrap().w);
    assert_eq!(download(&trained.w_q), download(&read.w_q));
    assert_eq!(download(trained.w_v.as_ref().unwrap()), download(read.w_v.as_ref().unwrap()));
    let ex = vec![Example { text: "a tiny movie".into(), ..Default::default() }];
    let got = fuse::predict_fused(&g, &paths(dir.path()), &ex, 8, 32).unwrap();
    assert_eq!(got[0].logits.len(), 2);
}

/// `peft grads --fusion` reads the library's folder as eval / predict do (layer 0's fusion ignored):
/// gradients for the fusion layer that runs (layer 1), none for layer 0, finite logits for each text.
#[test]
fn grads_on_library_fusion_with_a_left_out_layer() {
    use peft_wgpu::train::grads::{self, GradsArgs};
    let dir = std::env::temp_dir().join(format!("peft-fusion-leave-out-grads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The tiny-roberta batch (three texts), its labels mapped onto this head's two classes.
    let mut inputs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny-roberta/houlsby/inputs.json")).unwrap())
            .unwrap();
    inputs["labels"] = serde_json::json!([0, 1, 1]);
    let inputs_path = dir.join("inputs.json");
    std::fs::write(&inputs_path, inputs.to_string()).unwrap();
    let out = dir.join("grads.safetensors");
    let args = GradsArgs {
        model: fixtures().join("tiny-roberta/base"),
        adapters: ["a", "b"].iter().map(|n| case().join("adapters").join(n)).collect(),
        fusion: Some(case().join("fusion")),
        inputs: inputs_path,
        out: out.clone(),
        ..Default::default()
    };
    grads::run(&gpu(), &args).unwrap();
    let names = tensor_names(&out);
    let fusion_grads = |layer: &str| names.iter().filter(|n| n.starts_with("grad.") && n.contains(layer)).count();
    assert_eq!(fusion_grads(".layer.1.output.adapter_fusion_layer."), 5, "{names:?}");
    assert_eq!(fusion_grads(".layer.0.output.adapter_fusion_layer."), 0, "{names:?}");
    let logits = WeightFile::open(&out).unwrap().get_checked("logits", &[3, 2]).unwrap();
    assert_eq!(logits.len(), 6);
    assert!(logits.iter().all(|x| x.is_finite()), "{logits:?}");
    std::fs::remove_dir_all(dir).ok();
}
