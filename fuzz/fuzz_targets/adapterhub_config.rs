//! AdapterHub config files (`adapter_config.json`, `head_config.json`,
//! `adapter_fusion_config.json`) and Hugging Face's `config.json`: any text gives a typed config
//! or an error, never a panic; what parses writes back and parses again to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peft_wgpu::formats::adapterhub::{BottleneckConfig, FusionConfig, HeadConfig, SavedConfig};
use peft_wgpu::formats::hf_config::{BertConfig, Family};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = BertConfig::from_json_str(text, "fuzz/config.json") {
        let _ = (c.max_sequence_length(), c.embedding_width(), c.family().prefix());
    }
    let Ok(saved) = SavedConfig::from_json_str(text) else {
        return;
    };
    let _ = (saved.name(), saved.hidden_size(), saved.model_type(), saved.version());
    let _ = saved.check_model("fuzz", 32, None);
    let _ = saved.check_model("fuzz", 32, Some(Family::DistilBert));
    let again = SavedConfig::from_json_str(&saved.to_json()).expect("what we write parses");
    assert_eq!(again, saved);
    if let Ok(c) = BottleneckConfig::from_config(saved.config()) {
        for layer in 0..4 {
            let _ = c.bottleneck_dim(32, layer);
            let _ = c.has_layer(layer);
        }
        let _ = c.sites();
        let back = BottleneckConfig::from_config(&c.to_config()).expect("a written adapter config parses");
        assert_eq!(back, c);
    }
    if let Ok(c) = HeadConfig::from_config(saved.config()) {
        let _ = (c.linear_indices(), c.linear_shapes(32));
        let back = HeadConfig::from_config(&c.to_config()).expect("a written head config parses");
        assert_eq!(back.num_labels, c.num_labels);
    }
    if let Ok(c) = FusionConfig::from_config(saved.config()) {
        let back = FusionConfig::from_config(&c.to_config()).expect("a written fusion config parses");
        assert_eq!(back, c);
    }
});
