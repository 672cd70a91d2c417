//! Heads beyond classification on each family's own tokenizer and CLI, against what the
//! `adapters` library and HF's tokenizer made (`tests/fixtures/make_heads.py`): pre-split words
//! tokenize as HF's fast tokenizer with `add_prefix_space=True` does (first-sub-token labels
//! included), `peft predict` on the library's saves prints the library's logits, and tagging
//! trains on every family. Parity of logits, loss and gradients is in `tests/heads.rs`.

mod common;
use common::cli::*;
use common::*;
use peft_wgpu::formats::weights::WeightFile;
use peft_wgpu::kernels::loss::IGNORE_LABEL;
use peft_wgpu::model::config::BertConfig;
use peft_wgpu::train::data::{tag_map, tokenize_tagged, TaggedSentence};
use peft_wgpu::train::tokenizer::Tokenizer;
use serde_json::json;
use std::path::{Path, PathBuf};

fn case_dir(family: &str, case: &str) -> PathBuf {
    fixtures().join(format!("heads-{family}")).join(case)
}

fn base(family: &str) -> PathBuf {
    fixtures().join(format!("tiny-{family}")).join("base")
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Pre-split words (`heads-<family>/words.json`): our ids, word ids and first-sub-token labels are
/// what HF's fast tokenizer gives with `add_prefix_space=True` and `is_split_into_words=True`
/// (truncation included), for byte-level BPE (RoBERTa), SentencePiece (XLM-R) and WordPiece.
#[test]
fn words_tokenize_as_hf_with_add_prefix_space() {
    for family in ["roberta", "xlmr", "distilbert", "electra"] {
        let fx = read_json(&fixtures().join(format!("heads-{family}/words.json")));
        let cfg = BertConfig::from_model_dir(base(family)).unwrap();
        let cases = fx["cases"].as_array().unwrap();
        let sentences: Vec<TaggedSentence> = cases
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let strings = |k: &str| -> Vec<String> {
                    c[k].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect()
                };
                TaggedSentence { words: strings("words"), tags: strings("tags"), line: i + 1 }
            })
            .collect();
        let tags = tag_map(&sentences).unwrap();
        let tag_list: Vec<&str> = fx["tag_list"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(tags.labels, tag_list, "{family}: tag ids in sorted order, as run_ner");
        for (c, sentence) in cases.iter().zip(&sentences) {
            let max_length = c["max_length"].as_u64().unwrap() as usize;
            let tok = Tokenizer::for_model(base(family), &cfg, max_length).unwrap();
            let what = format!("{family} {:?}", sentence.words);
            let enc = tok.encode_words(&sentence.words).unwrap();
            assert_eq!(enc.ids, u32s(&c["input_ids"]), "{what}: ids");
            let word_ids: Vec<Option<u32>> =
                c["word_ids"].as_array().unwrap().iter().map(|w| w.as_u64().map(|x| x as u32)).collect();
            assert_eq!(enc.word_ids, word_ids, "{what}: word ids");
            assert_eq!(enc.truncated, max_length < 64, "{what}: truncation");
            let (tagged, cut) =
                tokenize_tagged(&tok, std::slice::from_ref(sentence), Some(&tags), "words.json").unwrap();
            assert_eq!(cut, enc.truncated as usize);
            let labels: Vec<i64> = c["labels"].as_array().unwrap().iter().map(|l| l.as_i64().unwrap()).collect();
            let ours: Vec<i64> =
                tagged[0].labels.iter().map(|&l| if l == IGNORE_LABEL { -100 } else { l as i64 }).collect();
            assert_eq!(ours, labels, "{what}: first-sub-token labels");
        }
        // Byte-level BPE: the words' ids are not the joined text's (whose first word has no space),
        // so the prefix space is what makes them match.
        let tok = Tokenizer::for_model(base(family), &cfg, 64).unwrap();
        let text = tok.encode_batch(&[sentences[0].words.join(" ")]).unwrap();
        let words = tok.encode_words(&sentences[0].words).unwrap();
        assert_eq!(
            text.input_ids[0] != words.ids,
            family == "roberta",
            "{family}: {:?} {:?}",
            text.input_ids,
            words.ids
        );
    }
}

/// `peft predict` on the library's saves (safetensors and the default `.bin`), one head kind per
/// family, prints the library's logits for the first text of the fixture's batch (tagging: the
/// logits at each word's first sub-token). Tiny BERT has no tokenizer: its heads are checked above.
#[test]
fn predict_cli_matches_library_logits_for_each_head_kind() {
    for (family, case) in
        [("roberta", "multilabel"), ("xlmr", "regression"), ("distilbert", "tagging"), ("electra", "tagging2")]
    {
        let dir = case_dir(family, case);
        let first = read_json(&fixtures().join(format!("tiny-{family}/houlsby/inputs.json")))["texts"][0]
            .as_str()
            .unwrap()
            .to_string();
        let inputs = read_json(&dir.join("inputs.json"));
        let row0 = u32s(&inputs["input_ids"][0]);
        let seq = row0.len();
        let (_, all) = WeightFile::open(dir.join("expected.safetensors")).unwrap().get("logits").unwrap();
        let c = all.len() / if case.starts_with("tagging") { 3 * seq } else { 3 };
        let expected: Vec<f32> = if case.starts_with("tagging") {
            // Word-split tokenization gives the fixture's ids (WordPiece, no punctuation here).
            let cfg = BertConfig::from_model_dir(base(family)).unwrap();
            let words: Vec<&str> = first.split_whitespace().collect();
            let enc = Tokenizer::for_model(base(family), &cfg, 512).unwrap().encode_words(&words).unwrap();
            assert_eq!(enc.ids[..], row0[..enc.ids.len()], "{family}: the words' ids are the fixture's first row");
            let mut firsts = vec![];
            for (t, w) in enc.word_ids.iter().enumerate() {
                if w.is_some() && (t == 0 || enc.word_ids[t - 1] != *w) {
                    firsts.extend_from_slice(&all[t * c..(t + 1) * c]);
                }
            }
            assert_eq!(firsts.len(), words.len() * c);
            firsts
        } else {
            all[..c].to_vec()
        };
        for adapter in ["adapter", "adapter-bin"] {
            let what = format!("{family} {case} {adapter}");
            let run =
                peft(&["predict", "--model", &s(&base(family)), "--adapter", &s(&dir.join(adapter)), "--text", &first]);
            assert!(run.status.success(), "{what}: {}", text(&run.stderr));
            let p: serde_json::Value = serde_json::from_str(text(&run.stdout).trim()).unwrap();
            let logits: Vec<f32> = p["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            assert_close(&format!("{what} predict logits"), &logits, &f64s(&expected), 1e-4);
        }
    }
}

/// `peft train --head-type tagging` on each family's own model and tokenizer (byte-level BPE with
/// the prefix space, SentencePiece, WordPiece; DistilBERT without token types): the epoch reports
/// entity F1, the head is saved for the family's `adapters` model class, `peft predict` tags words.
#[test]
fn tagging_trains_on_every_family() {
    let dir = std::env::temp_dir().join(format!("peft-heads-families-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (train, dev) = toy_tagging_data(&dir);
    let (t, d) = (s(&train), s(&dev));
    for family in ["roberta", "xlmr", "distilbert", "electra"] {
        let out = dir.join(family);
        let (m, o) = (s(&base(family)), s(&out));
        let mut args = train_args(&m, &t, &d, &o);
        args.extend(["--head-type", "tagging", "--epochs", "1"]);
        let run = peft(&args);
        let log = format!("{}{}", text(&run.stdout), text(&run.stderr));
        assert!(run.status.success() && log.contains("epoch 1: dev entity F1"), "{family}: {log}");
        let head = read_json(&out.join("head_config.json"));
        let cfg = BertConfig::from_model_dir(base(family)).unwrap();
        assert_eq!(head["model_type"], json!(cfg.model_type), "{family}");
        assert_eq!(head["model_class"], json!(cfg.family().adapter_model_class()), "{family}");
        assert_eq!(head["config"]["head_type"], json!("tagging"), "{family}");
        let pred = peft(&["predict", "--model", &m, "--adapter", &o, "--text", "a wonderful film, truly"]);
        assert!(pred.status.success(), "{family}: {}", text(&pred.stderr));
        let p: serde_json::Value = serde_json::from_str(text(&pred.stdout).trim()).unwrap();
        let tags = p["tags"].as_array().unwrap();
        assert_eq!(tags.len(), 4, "{family}: {p}");
        assert_eq!((&tags[1][0], &tags[3][0]), (&json!("wonderful"), &json!("truly")), "{family}: {p}");
        assert_eq!(p["logits"].as_array().unwrap().len(), 4 * 3, "{family}: a row of 3 tags per word: {p}");
    }
    std::fs::remove_dir_all(dir).ok();
}

/// The toy sentences of `common::cli` as tagging data: `B-POS` / `B-NEG` on their sentiment words.
fn toy_tagging_data(dir: &Path) -> (PathBuf, PathBuf) {
    let tagged = |text: &str, tag: &str| -> String {
        let words: Vec<&str> = text.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let key = ["wonderful", "great", "loved", "brilliant", "dull", "terrible", "hated", "awful"];
        let tags: Vec<&str> = words.iter().map(|w| if key.contains(w) { tag } else { "O" }).collect();
        json!({"tokens": words, "tags": tags}).to_string() + "\n"
    };
    let lines: Vec<String> = (0..8).flat_map(|i| [tagged(POS[i], "B-POS"), tagged(NEG[i], "B-NEG")]).collect();
    let (t, d) = (dir.join("train.jsonl"), dir.join("dev.jsonl"));
    std::fs::write(&t, lines.concat()).unwrap();
    std::fs::write(&d, lines[..8].concat()).unwrap();
    (t, d)
}
