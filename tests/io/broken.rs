//! Broken AdapterHub folders and the errors they give.

use super::*;

/// Copies a fixture folder into a temp dir and lets the test break it.
fn broken_copy(fixture: &str, edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    copy_dir(&tiny().join(fixture), d.path());
    edit(d.path());
    d
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(path, v.to_string()).unwrap();
}

fn edit_tensors(path: &Path, edit: impl FnOnce(&mut TensorMap)) {
    let mut m = WeightFile::open(path).unwrap().to_map().unwrap();
    edit(&mut m);
    fs::write(path, serialize_tensors(&m, None).unwrap()).unwrap();
}

#[test]
fn broken_adapter_folders_give_clear_errors() {
    let cfg = tiny_config();
    let d = broken_copy("houlsby/adapter", |p| {
        edit_tensors(&p.join(ADAPTER_WEIGHTS_FILE), |m| {
            m.remove("bert.encoder.layer.1.attention.output.adapters.task.adapter_up.bias");
        })
    });
    assert_err_contains(
        Adapter::load(d.path(), &cfg),
        &["adapter.safetensors", "missing tensor", "layer.1.attention.output.adapters.task.adapter_up.bias"],
    );

    let d = broken_copy("houlsby/adapter", |p| {
        edit_tensors(&p.join(ADAPTER_WEIGHTS_FILE), |m| {
            m.insert(
                "bert.encoder.layer.0.output.adapters.task.adapter_down.0.weight".into(),
                Tensor::new(vec![4, 32], vec![0.0; 128]).unwrap(),
            );
        })
    });
    assert_err_contains(
        Adapter::load(d.path(), &cfg),
        &["layer.0.output.adapters.task.adapter_down.0.weight", "[4, 32]", "[8, 32]"],
    );

    // Weights of a Houlsby adapter under a Pfeiffer config: the attention ones are unexpected.
    let d = broken_copy("houlsby/adapter", |p| {
        edit_json(&p.join(ADAPTER_CONFIG_FILE), |v| v["config"]["mh_adapter"] = json!(false))
    });
    assert_err_contains(
        Adapter::load(d.path(), &cfg),
        &["unexpected tensor", "attention.output.adapters.task", "mh_adapter=false"],
    );

    let d = broken_copy("houlsby/adapter", |p| {
        edit_json(&p.join(ADAPTER_CONFIG_FILE), |v| v["config"]["phm_layer"] = json!(true))
    });
    assert_err_contains(Adapter::load(d.path(), &cfg), &["adapter_config.json", "phm_layer"]);

    let d = broken_copy("houlsby/adapter", |p| fs::write(p.join(ADAPTER_CONFIG_FILE), "{\"config\": {").unwrap());
    assert_err_contains(Adapter::load(d.path(), &cfg), &["adapter_config.json", "invalid JSON"]);

    let d =
        broken_copy("houlsby/adapter", |p| edit_json(&p.join(ADAPTER_CONFIG_FILE), |v| v["hidden_size"] = json!(64)));
    assert_err_contains(Adapter::load(d.path(), &cfg), &["hidden_size 64", "32"]);

    let d = broken_copy("houlsby/adapter", |p| {
        edit_json(&p.join(ADAPTER_CONFIG_FILE), |v| v["model_type"] = json!("gpt2"))
    });
    assert_err_contains(Adapter::load(d.path(), &cfg), &["model_type", "gpt2"]);

    let d = broken_copy("houlsby/adapter", |p| {
        edit_json(&p.join(ADAPTER_CONFIG_FILE), |v| drop(v.as_object_mut().unwrap().remove("config")))
    });
    assert_err_contains(Adapter::load(d.path(), &cfg), &["adapter_config.json", "config"]);

    let d = broken_copy("houlsby/adapter", |p| fs::remove_file(p.join(ADAPTER_WEIGHTS_FILE)).unwrap());
    assert_err_contains(Adapter::load(d.path(), &cfg), &["adapter.safetensors"]);

    let d = broken_copy("houlsby/adapter", |p| {
        fs::write(p.join(ADAPTER_WEIGHTS_FILE), b"\x10\0\0\0\0\0\0\0{not json}      ").unwrap()
    });
    assert_err_contains(Adapter::load(d.path(), &cfg), &["adapter.safetensors", "invalid safetensors"]);

    assert_err_contains(Adapter::load(tiny().join("base"), &cfg), &["adapter_config.json", "not an adapter folder"]);

    // A head config without its weights, a head of a type not supported (multiple choice), a head
    // with too many layers.
    let d = broken_copy("houlsby/adapter", |p| fs::remove_file(p.join(HEAD_WEIGHTS_FILE)).unwrap());
    assert_err_contains(Adapter::load(d.path(), &cfg), &["head_config.json", "model_head.safetensors"]);
    let d = broken_copy("houlsby/adapter", |p| {
        edit_json(&p.join(HEAD_CONFIG_FILE), |v| v["config"]["head_type"] = json!("multiple_choice"))
    });
    assert_err_contains(
        Adapter::load(d.path(), &cfg),
        &["head_config.json", "head_type", "multiple_choice", "not supported"],
    );
    let d =
        broken_copy("houlsby/adapter", |p| edit_json(&p.join(HEAD_CONFIG_FILE), |v| v["config"]["layers"] = json!(3)));
    assert_err_contains(
        Adapter::load(d.path(), &cfg),
        &["model_head.safetensors", "heads.task.4.weight", "[3, 32]", "expected [32, 32]"],
    );
    let d = broken_copy("houlsby/adapter", |p| {
        edit_json(&p.join(HEAD_CONFIG_FILE), |v| v["config"]["num_labels"] = json!(4))
    });
    assert_err_contains(Adapter::load(d.path(), &cfg), &["heads.task.4.weight", "[3, 32]", "[4, 32]"]);
    let d = broken_copy("houlsby/adapter", |p| {
        edit_json(&p.join(HEAD_CONFIG_FILE), |v| v["config"]["label2id"] = json!({"a": 0, "b": 0, "c": 2}))
    });
    assert_err_contains(Adapter::load(d.path(), &cfg), &["label2id", "share id 0"]);
    let d = broken_copy("houlsby/adapter", |p| {
        edit_tensors(&p.join(HEAD_WEIGHTS_FILE), |m| {
            m.insert("heads.task.7.weight".into(), Tensor::new(vec![1], vec![0.0]).unwrap());
        })
    });
    assert_err_contains(
        Adapter::load(d.path(), &cfg),
        &["model_head.safetensors", "unexpected tensor", "heads.task.7.weight"],
    );
    let d =
        broken_copy("houlsby/adapter", |p| edit_json(&p.join(HEAD_CONFIG_FILE), |v| v["config"]["layers"] = json!(1)));
    assert_err_contains(Adapter::load(d.path(), &cfg), &["heads.task.1.weight", "[32, 32]", "expected [3, 32]"]);
}

#[test]
fn adapter_tensors_without_prefix_or_renamed_still_load() {
    let cfg = tiny_config();
    let d = broken_copy("pfeiffer/adapter", |p| {
        edit_tensors(&p.join(ADAPTER_WEIGHTS_FILE), |m| {
            let old = std::mem::take(m);
            for (k, v) in old {
                m.insert(k.strip_prefix("bert.").unwrap().replace(".task.", ".other."), v);
            }
        })
    });
    let a = Adapter::load(d.path(), &cfg).unwrap();
    let orig = Adapter::load(tiny().join("pfeiffer/adapter"), &cfg).unwrap();
    assert_eq!(a.name(), "other");
    assert_eq!(a.layers, orig.layers);
}

#[test]
fn broken_fusion_folders_give_clear_errors() {
    let cfg = tiny_config();
    let d = broken_copy("fusion/fusion", |p| {
        edit_tensors(&p.join(FUSION_WEIGHTS_FILE), |m| {
            m.remove("bert.encoder.layer.1.output.adapter_fusion_layer.src1,src2,src3.value.weight");
        })
    });
    assert_err_contains(
        Fusion::load(d.path(), &cfg),
        &["missing tensor", "layer.1.output.adapter_fusion_layer.src1,src2,src3.value.weight"],
    );
    let d = broken_copy("fusion/fusion", |p| {
        edit_json(&p.join(FUSION_CONFIG_FILE), |v| v["config"]["value"] = json!(false))
    });
    assert_err_contains(Fusion::load(d.path(), &cfg), &["unexpected tensor", "value.weight", "value=false"]);
    let d = broken_copy("fusion/fusion", |p| {
        edit_json(&p.join(FUSION_CONFIG_FILE), |v| drop(v["config"].as_object_mut().unwrap().remove("query_before_ln")))
    });
    assert_err_contains(Fusion::load(d.path(), &cfg), &["adapter_fusion_config.json", "query_before_ln"]);
    let d = broken_copy("fusion/fusion", |p| {
        edit_json(&p.join(FUSION_CONFIG_FILE), |v| v["adapter_names"] = json!(["a", "b"]))
    });
    assert_err_contains(Fusion::load(d.path(), &cfg), &["no fusion tensors", "adapter_fusion_layer.a,b"]);
    let d = broken_copy("fusion/fusion", |p| {
        edit_json(&p.join(FUSION_CONFIG_FILE), |v| v["adapter_names"] = json!("src1"))
    });
    assert_err_contains(Fusion::load(d.path(), &cfg), &["adapter_names"]);
    // A fusion folder with a head saved beside it finds it.
    let d = broken_copy("fusion/fusion", |p| copy_dir(&tiny().join("fusion/head"), p));
    let f = Fusion::load(d.path(), &cfg).unwrap();
    assert_eq!(f.head.unwrap().name(), "target");
}
