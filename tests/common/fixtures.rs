//! The fixtures in `tests/fixtures` (the tiny BERT model and its adapters), and small helpers
//! for tests that check errors.

use peft_wgpu::formats::weights::{write_tensors, TensorMap, WeightFile};
use peft_wgpu::model::config::BertConfig;
use std::fs;
use std::path::{Path, PathBuf};

/// `tests/fixtures` in this repository.
pub fn fixtures() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    assert!(p.exists(), "fixtures not found at {} (see README)", p.display());
    p
}

pub fn tiny() -> PathBuf {
    fixtures().join("tiny-bert")
}

pub fn tiny_config() -> BertConfig {
    BertConfig::from_model_dir(tiny().join("base")).unwrap()
}

#[track_caller]
pub fn assert_err_contains<T>(r: anyhow::Result<T>, parts: &[&str]) -> String {
    let e = match r {
        Ok(_) => panic!("expected an error mentioning {parts:?}"),
        Err(e) => format!("{e:#}"),
    };
    for p in parts {
        assert!(e.contains(p), "error {e:?} does not mention {p:?}");
    }
    e
}

/// tiny-bert's tensors through `edit`, written as a model folder (config.json beside).
pub fn edited_model(dir: &Path, edit: impl FnOnce(&mut TensorMap)) {
    let mut m = WeightFile::open(tiny().join("base/model.safetensors")).unwrap().to_map().unwrap();
    edit(&mut m);
    write_tensors(&dir.join("model.safetensors"), &m, None).unwrap();
    fs::copy(tiny().join("base/config.json"), dir.join("config.json")).unwrap();
}
