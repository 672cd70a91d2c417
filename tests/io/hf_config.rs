//! Hugging Face `config.json`: what `BertConfig` reads and the errors that name the field.

use super::*;

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
        parse_modified(|m| drop(m.insert("model_type".into(), json!("deberta-v2")))),
        &["model_type", "deberta-v2", "bert, roberta, xlm-roberta, distilbert, electra"],
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
