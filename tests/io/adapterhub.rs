//! AdapterHub folders: load, check, write back bit for bit; new configs as Python writes them.

use super::*;

#[test]
fn houlsby_adapter_loads_and_round_trips() {
    let cfg = tiny_config();
    let dir = tiny().join("houlsby/adapter");
    let a = Adapter::load(&dir, &cfg).unwrap();
    assert_eq!(a.name(), "task");
    let c = &a.config;
    assert!(c.mh_adapter && c.output_adapter);
    assert_eq!(c.non_linearity, Activation::Gelu);
    assert_eq!(c.reduction_factor, ReductionFactor::Uniform(4.0));
    assert_eq!((c.original_ln_before, c.original_ln_after), (false, true));
    assert_eq!(c.residual_before_ln, ResidualBeforeLn::True);
    assert_eq!(c.scaling, 1.0);
    assert_eq!(c.bottleneck_dim(32, 0).unwrap(), 8);
    assert_eq!(a.saved.model_name(), Some("tiny-bert"));
    assert_eq!(a.saved.version(), Some("adapters.1.3.0"));
    assert_eq!(a.layers.len(), 2);
    let raw = raw_tensors(&dir.join(ADAPTER_WEIGHTS_FILE));
    for l in 0..2 {
        for site in [AdapterSite::Attention, AdapterSite::Output] {
            let w = a.layers[l].site(site).unwrap();
            for p in BottleneckParam::ALL {
                let name = adapter_param_name("task", l, site, p);
                assert_eq!(w.get(p).data, f32s(&raw[&name].2), "{name}");
                assert_eq!(w.get(p).shape, p.shape(32, 8));
            }
        }
    }
    assert!(raw.contains_key("bert.encoder.layer.1.attention.output.adapters.task.adapter_down.0.weight"));
    let head = a.head.as_ref().expect("head saved with the adapter");
    assert_eq!(head.name(), "task");
    assert_eq!(head.config.num_labels, 3);
    assert_eq!(head.config.linear_indices(), vec![1, 4]);
    assert_eq!(head.config.activation_function, Some(Activation::Tanh));
    assert_eq!(head.config.id2label, vec!["LABEL_0", "LABEL_1", "LABEL_2"]);
    assert!(!head.config.use_pooler);
    assert_eq!(head.linears[1].weight.shape, vec![3, 32]);
    let hraw = raw_tensors(&dir.join(HEAD_WEIGHTS_FILE));
    assert_eq!(head.linears[0].bias.as_ref().unwrap().data, f32s(&hraw["heads.task.1.bias"].2));
    assert_eq!(head.linears[1].weight.data, f32s(&hraw["heads.task.4.weight"].2));

    let out = tempfile::tempdir().unwrap();
    a.save(out.path()).unwrap();
    assert_same_files(&dir, out.path());
    assert_eq!(Adapter::load(out.path(), &cfg).unwrap(), a);
}

#[test]
fn pfeiffer_and_minilm_adapters_round_trip() {
    let cfg = tiny_config();
    let dir = tiny().join("pfeiffer/adapter");
    let a = Adapter::load(&dir, &cfg).unwrap();
    assert!(!a.config.mh_adapter && a.config.output_adapter);
    assert_eq!(a.config.non_linearity, Activation::Relu);
    assert_eq!((a.config.original_ln_before, a.config.original_ln_after), (true, true));
    assert!(a.layers.iter().all(|l| l.attention.is_none() && l.output.is_some()));
    let out = tempfile::tempdir().unwrap();
    a.save(out.path()).unwrap();
    assert_same_files(&dir, out.path());

    let dir = fixtures().join("minilm/adapter");
    let a = Adapter::load(&dir, &minilm_config()).unwrap();
    assert_eq!(a.name(), "sentiment");
    assert_eq!(a.config.bottleneck_dim(384, 3).unwrap(), 24);
    assert_eq!(a.layers[5].output.as_ref().unwrap().down_weight.shape, vec![24, 384]);
    let head = a.head.as_ref().unwrap();
    assert_eq!(head.config.id2label, vec!["neg", "pos"]);
    assert_eq!(head.linears[1].weight.shape, vec![2, 384]);
    let out = tempfile::tempdir().unwrap();
    a.save(out.path()).unwrap();
    assert_same_files(&dir, out.path());
}

#[test]
fn fusion_head_and_sources_round_trip() {
    let cfg = tiny_config();
    let root = tiny().join("fusion");
    let fdir = root.join("fusion");
    let f = Fusion::load(&fdir, &cfg).unwrap();
    assert_eq!(f.adapter_names, vec!["src1", "src2", "src3"]);
    assert_eq!(f.fusion_name(), "src1,src2,src3");
    assert_eq!(f.saved.name(), "src1,src2,src3");
    assert_eq!(f.config, FusionConfig::dynamic());
    assert!(f.head.is_none());
    assert_eq!(f.layers.len(), 2);
    let raw = raw_tensors(&fdir.join(FUSION_WEIGHTS_FILE));
    assert_eq!(raw.len(), 10);
    for l in 0..2 {
        let fl = f.layers[l].as_ref().unwrap();
        for p in FusionParam::for_config(&f.config) {
            let name = fusion_param_name("src1,src2,src3", l, p);
            assert_eq!(fl.get(p).unwrap().data, f32s(&raw[&name].2), "{name}");
        }
    }
    assert!(raw.contains_key("bert.encoder.layer.1.output.adapter_fusion_layer.src1,src2,src3.value.weight"));
    assert!(!raw.keys().any(|k| k.ends_with("value.bias")));
    let out = tempfile::tempdir().unwrap();
    f.save(out.path()).unwrap();
    assert_same_files(&fdir, out.path());

    let hdir = root.join("head");
    let h = Head::load(&hdir, 32).unwrap();
    assert_eq!(h.name(), "target");
    let out = tempfile::tempdir().unwrap();
    h.save(out.path()).unwrap();
    assert_same_files(&hdir, out.path());

    for s in ["src1", "src2", "src3"] {
        let d = root.join("adapters").join(s);
        let a = Adapter::load(&d, &cfg).unwrap();
        assert_eq!(a.name(), s);
        assert!(a.head.is_none());
        let out = tempfile::tempdir().unwrap();
        a.save(out.path()).unwrap();
        assert_same_files(&d, out.path());
    }
}

/// A fusion over Houlsby adapters (the library's `options-fusion-houlsby` fixture) has fusion
/// layers at the attention output too: read under the library's names, written back byte for byte.
#[test]
fn houlsby_fusion_round_trips_with_both_sites() {
    let cfg = tiny_config();
    let fdir = fixtures().join("options-fusion-houlsby/fusion");
    let f = Fusion::load(&fdir, &cfg).unwrap();
    assert_eq!(f.fusion_name(), "src1,src2");
    let raw = raw_tensors(&fdir.join(FUSION_WEIGHTS_FILE));
    assert_eq!(raw.len(), 20);
    for l in 0..2 {
        for (site, fl) in [(AdapterSite::Attention, &f.attention_layers[l]), (AdapterSite::Output, &f.layers[l])] {
            let fl = fl.as_ref().unwrap();
            for p in FusionParam::for_config(&f.config) {
                let name = fusion_site_param_name("src1,src2", l, site, p);
                assert_eq!(fl.get(p).unwrap().data, f32s(&raw[&name].2), "{name}");
            }
        }
    }
    let out = tempfile::tempdir().unwrap();
    f.save(out.path()).unwrap();
    assert_same_files(&fdir, out.path());
}

#[test]
fn new_configs_match_what_python_writes() {
    let read = |p: &str| fs::read_to_string(tiny().join(p)).unwrap();
    let houlsby =
        SavedConfig::new("task", 32, "tiny-bert", BottleneckConfig::houlsby(4.0, Activation::Gelu).to_config());
    assert_eq!(houlsby.to_json(), read("houlsby/adapter/adapter_config.json"));
    let pfeiffer =
        SavedConfig::new("task", 32, "tiny-bert", BottleneckConfig::pfeiffer(4.0, Activation::Relu).to_config());
    assert_eq!(pfeiffer.to_json(), read("pfeiffer/adapter/adapter_config.json"));
    let minilm = SavedConfig::new(
        "sentiment",
        384,
        "sentence-transformers/all-MiniLM-L6-v2",
        BottleneckConfig::pfeiffer(16.0, Activation::Relu).to_config(),
    );
    assert_eq!(minilm.to_json(), fs::read_to_string(fixtures().join("minilm/adapter/adapter_config.json")).unwrap());
    let labels: Vec<String> = (0..3).map(|i| format!("LABEL_{i}")).collect();
    let head = SavedConfig::new("target", 32, "tiny-bert", HeadConfig::classification(&labels).to_config());
    assert_eq!(head.to_json(), read("fusion/head/head_config.json"));
    let names: Vec<String> = ["src1", "src2", "src3"].iter().map(|s| s.to_string()).collect();
    let fusion = Fusion::new_saved_config(&names, 32, "tiny-bert", &FusionConfig::dynamic());
    assert_eq!(fusion.to_json(), read("fusion/fusion/adapter_fusion_config.json"));
    // Typed views of the presets read back as written.
    let back = BottleneckConfig::from_config(houlsby.config()).unwrap();
    assert_eq!(back, BottleneckConfig::houlsby(4.0, Activation::Gelu));
    // A swish Houlsby adapter writes AdapterHub's name for it.
    assert_eq!(BottleneckConfig::houlsby(16.0, Activation::Silu).to_config()["non_linearity"], json!("swish"));
    assert_eq!(BottleneckConfig::houlsby(16.0, Activation::Silu).to_config()["reduction_factor"], json!(16));
}

#[test]
fn adapter_built_in_memory_saves_and_loads() {
    let cfg = tiny_config();
    let config = BottleneckConfig::houlsby(16.0, Activation::Silu);
    let bn = config.bottleneck_dim(32, 0).unwrap();
    assert_eq!(bn, 2);
    let mk = |shape: Vec<usize>, seed: f32| {
        let n: usize = shape.iter().product();
        Tensor::new(shape, (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect()).unwrap()
    };
    let bw = |s: f32| BottleneckWeights {
        down_weight: mk(vec![bn, 32], s),
        down_bias: mk(vec![bn], s + 1.0),
        up_weight: mk(vec![32, bn], s + 2.0),
        up_bias: mk(vec![32], s + 3.0),
    };
    let labels = vec!["neg".to_string(), "pos".to_string()];
    let hc = HeadConfig::classification(&labels);
    let head = Head {
        saved: SavedConfig::new("mine", 32, "tiny-bert", hc.to_config()),
        linears: vec![
            HeadLinear { weight: mk(vec![32, 32], 5.0), bias: Some(mk(vec![32], 6.0)) },
            HeadLinear { weight: mk(vec![2, 32], 7.0), bias: Some(mk(vec![2], 8.0)) },
        ],
        config: hc,
    };
    let a = Adapter {
        saved: SavedConfig::new("mine", 32, "tiny-bert", config.to_config()),
        config,
        layers: (0..2)
            .map(|l| LayerAdapters { attention: Some(bw(l as f32 * 10.0)), output: Some(bw(l as f32 * 10.0 + 4.0)) })
            .collect(),
        options: Default::default(),
        head: Some(head),
    };
    let out = tempfile::tempdir().unwrap();
    a.save(out.path()).unwrap();
    let back = Adapter::load(out.path(), &cfg).unwrap();
    assert_eq!(back, a);
    let raw = raw_tensors(&out.path().join(ADAPTER_WEIGHTS_FILE));
    assert!(raw.contains_key("bert.encoder.layer.1.attention.output.adapters.mine.adapter_up.bias"));
    let files: Vec<String> =
        fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    // Two configs, and the weights both as safetensors and as torch .bin.
    assert_eq!(files.len(), 6, "{files:?}");
    // Saving again over the same folder replaces the files.
    a.save(out.path()).unwrap();
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 6);
}

#[test]
fn reduction_factor_per_layer() {
    let mut m = BottleneckConfig::pfeiffer(4.0, Activation::Relu).to_config();
    m.insert("reduction_factor".into(), json!({"default": 16, "1": 8, "3": 2.5}));
    let c = BottleneckConfig::from_config(&m).unwrap();
    assert_eq!(c.bottleneck_dim(384, 0).unwrap(), 24);
    assert_eq!(c.bottleneck_dim(384, 1).unwrap(), 48);
    assert_eq!(c.bottleneck_dim(384, 3).unwrap(), 153);
    assert_eq!(c.to_config()["reduction_factor"], json!({"default": 16, "1": 8, "3": 2.5}));
    m.insert("reduction_factor".into(), json!({"0": 16}));
    let c = BottleneckConfig::from_config(&m).unwrap();
    assert_err_contains(c.bottleneck_dim(384, 1), &["reduction_factor", "layer 1", "default"]);
    m.insert("reduction_factor".into(), json!({"x": 16}));
    assert_err_contains(BottleneckConfig::from_config(&m), &["reduction_factor", "\"x\""]);
    m.insert("reduction_factor".into(), json!(0));
    assert_err_contains(BottleneckConfig::from_config(&m), &["reduction_factor", "positive"]);
    m.insert("reduction_factor".into(), json!(64));
    assert_err_contains(
        BottleneckConfig::from_config(&m).unwrap().bottleneck_dim(32, 0),
        &["reduction_factor", "no bottleneck units"],
    );
}

#[test]
fn unsupported_adapter_options_are_named() {
    let base = BottleneckConfig::houlsby(4.0, Activation::Gelu).to_config();
    let check = |k: &str, v: Value, parts: &[&str]| {
        let mut m = base.clone();
        m.insert(k.into(), v);
        assert_err_contains(BottleneckConfig::from_config(&m), parts);
    };
    check("phm_layer", json!(true), &["phm_layer", "not supported"]);
    check("use_gating", json!(true), &["use_gating"]);
    check("cross_adapter", json!(true), &["cross_adapter"]);
    check("inv_adapter", json!("nice"), &["inv_adapter", "nice"]);
    check("scaling", json!("learnt"), &["scaling", "\"learned\"", "learnt"]);
    check("scaling", json!([1]), &["scaling", "number"]);
    check("init_weights", json!("lora"), &["init_weights", "mam_adapter", "lora"]);
    check("architecture", json!("lora"), &["architecture", "lora"]);
    check("residual_before_ln", json!("pre_add"), &["residual_before_ln", "post_add"]);
    check("non_linearity", json!("gelu_new"), &["non_linearity", "gelu_new"]);
    check("mh_adapter", json!("yes"), &["mh_adapter", "true or false"]);
    check("leave_out", json!([0, "a"]), &["leave_out"]);
    let mut m = base.clone();
    m.remove("reduction_factor");
    assert_err_contains(BottleneckConfig::from_config(&m), &["missing option \"reduction_factor\""]);
    let mut m = base.clone();
    m.insert("mh_adapter".into(), json!(false));
    m.insert("output_adapter".into(), json!(false));
    assert_err_contains(BottleneckConfig::from_config(&m), &["mh_adapter", "output_adapter"]);
    // Supported variants parse.
    let mut m = base.clone();
    m.insert("residual_before_ln".into(), json!("post_add"));
    m.insert("scaling".into(), json!(2.5));
    m.insert("leave_out".into(), json!([1]));
    m.insert("dropout".into(), json!(0.1));
    let c = BottleneckConfig::from_config(&m).unwrap();
    assert_eq!(c.residual_before_ln, ResidualBeforeLn::PostAdd);
    assert_eq!((c.scaling, c.dropout), (2.5, 0.1));
    assert!(c.has_layer(0) && !c.has_layer(1));
    // The options of issue 17 parse (par_bn, adapter LayerNorms, a trained scaling).
    let mut m = base.clone();
    for k in ["is_parallel", "ln_before", "ln_after"] {
        m.insert(k.into(), json!(true));
    }
    m.insert("scaling".into(), json!("channel"));
    m.insert("init_weights".into(), json!("mam_adapter"));
    let c = BottleneckConfig::from_config(&m).unwrap();
    assert!(c.is_parallel && c.ln_before && c.ln_after);
    assert_eq!(c.trained_scaling, Some(peft_wgpu::formats::adapterhub::TrainedScaling::Channel));
    assert_eq!(BottleneckConfig::from_config(&c.to_config()).unwrap(), c);
}
