//! The safetensors reader: any bytes either open as a valid file whose every tensor reads back
//! (converted to f32 where it is a float type) or give an error; never a panic or an
//! out-of-bounds read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peft_wgpu::formats::hf_config::BertConfig;
use peft_wgpu::formats::weights::WeightFile;
use peft_wgpu::model::weights::BertWeightNames;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = WeightFile::from_bytes("fuzz.safetensors", data.to_vec()) else {
        return;
    };
    let _ = f.metadata();
    for name in f.names() {
        let (dtype, shape, bytes) = f.raw(name).expect("listed tensors exist");
        let n: usize = shape.iter().product();
        if let Ok((s, v)) = f.get(name) {
            assert_eq!(s, shape);
            assert_eq!(v.len(), n, "{name}: {dtype:?} {shape:?}, {} bytes", bytes.len());
        }
        let _ = f.check_shape(name, &[n]);
    }
    // What `peft train` does with a base checkpoint: resolve BERT's tensor names against it.
    let cfg = BertConfig::from_json_str(
        r#"{"model_type": "bert", "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 8, "vocab_size": 6, "max_position_embeddings": 5}"#,
        "fuzz/config.json",
    )
    .expect("valid config");
    let _ = BertWeightNames::resolve(&f, &cfg);
});
