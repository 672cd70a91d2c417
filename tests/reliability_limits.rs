//! Reliability at the limits: data files that are empty, malformed or too long, batches too large
//! for the GPU, and GPU errors and a lost device become clear errors, not panics.

mod common;
use common::*;
use peft_wgpu::model::load;
use peft_wgpu::train::data::{self, DataOptions, Example};
use peft_wgpu::train::tokenizer::{BertVocabOptions, Tokenizer};
use std::fs;
use std::path::Path;

// ------------------------------------------------------------------------------------------------
// Data: truncation, labels
// ------------------------------------------------------------------------------------------------

fn vocab_tokenizer(dir: &Path, max_length: usize) -> Tokenizer {
    let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "a", "very", "!"];
    let p = dir.join("vocab.txt");
    fs::write(&p, vocab.join("\n") + "\n").unwrap();
    Tokenizer::from_vocab_txt(&p, &BertVocabOptions::default(), max_length).unwrap()
}

#[test]
fn truncation_is_counted_and_noted_once() {
    let d = tempfile::tempdir().unwrap();
    let tok = vocab_tokenizer(d.path(), 6);
    let ex = vec![
        Example::new("good movie", "1"),
        Example::new("a very very very very good movie !", "1"),
        Example { text: "good".into(), pair: Some("bad movie".into()), label: Some("0".into()), line: 3 },
        Example { text: "very very good".into(), pair: Some("bad bad movie".into()), label: Some("0".into()), line: 4 },
        Example::new("bad !", "0"),
    ];
    let (toks, truncated) = data::tokenize_counting(&tok, &ex).unwrap();
    assert_eq!(truncated, 2, "the long single and the long pair");
    assert!(toks.iter().all(|t| t.len() <= 6));
    assert_eq!(toks[1].len(), 6);
    assert_eq!(toks[0].len(), 4);
    assert_eq!(toks, data::tokenize(&tok, &ex).unwrap());
    let note = data::truncation_note("train.csv", truncated, ex.len(), 6).unwrap();
    assert!(note.contains("2 of 5") && note.contains("train.csv") && note.contains("truncated"), "{note}");
    assert!(data::truncation_note("x", 0, 5, 6).is_none());
}

#[test]
fn empty_and_malformed_data_files_name_the_line() {
    let d = tempfile::tempdir().unwrap();
    let o = DataOptions::default();
    let cases: [(&str, &str, &[&str]); 6] = [
        ("empty.csv", "", &["empty.csv", "empty file"]),
        ("header.csv", "text,label\n", &["header.csv", "no examples"]),
        ("ragged.csv", "text,label\nfine,1\n\"open quote,1\nx,1,extra\n", &["ragged.csv:"]),
        ("fields.csv", "text,label\nok,1\ntoo,many,fields\n", &["fields.csv:3", "3 fields", "2"]),
        (
            "bad.jsonl",
            "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": \n",
            &["bad.jsonl:2", "invalid JSON"],
        ),
        ("nolabel.jsonl", "{\"text\": \"a\", \"label\": 1}\n\n{\"text\": \"b\"}\n", &["nolabel.jsonl:3", "label"]),
    ];
    for (name, text, parts) in cases {
        let p = d.path().join(name);
        fs::write(&p, text).unwrap();
        assert_err_contains(data::load_examples(&p, &o), parts);
    }
}

// ------------------------------------------------------------------------------------------------
// GPU limits and faults
// ------------------------------------------------------------------------------------------------

#[test]
fn batch_too_large_for_the_gpu_is_refused_before_dispatch() {
    use peft_wgpu::train::guard;
    let g = gpu();
    let dims = load::dims(&tiny_config());
    guard::check_batch_fits(&g, &dims, 8, 40).unwrap();
    let limit = g.max_binding_bytes().min(g.limits.max_buffer_size);
    let fits = guard::max_batch(&g, &dims, 40);
    assert!(fits >= 8);
    // The largest batch that fits passes; one more does not, and the message says what to do.
    let biggest = guard::largest_buffers(&dims, fits, 40).iter().map(|x| x.1).max().unwrap();
    assert!(biggest <= limit);
    guard::check_batch_fits(&g, &dims, fits, 40).unwrap();
    let e = assert_err_contains(
        guard::check_batch_fits(&g, &dims, fits + 1, 40),
        &["--batch-size", &format!("{fits} or less"), "--resident-layers", "MiB"],
    );
    println!("{e}");
    // A sequence so long that one example does not fit.
    let mut wide = dims;
    wide.heads = 4096;
    assert_err_contains(guard::check_batch_fits(&g, &wide, 1, 4096), &["--max-length"]);
}

#[test]
fn gpu_errors_and_device_loss_become_errors_not_panics() {
    // A GPU of its own: this test breaks it.
    let g = peft_wgpu::Gpu::new(&Default::default()).unwrap();
    g.check().unwrap();
    let t = peft_wgpu::GpuTensor::from_slice(&g, &[3], &[1.0, 2.0, 3.0]).unwrap();
    assert_eq!(t.to_vec(&g).unwrap(), [1.0, 2.0, 3.0]);
    // A buffer larger than the device allows: wgpu's default handler would panic.
    let _b = g.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("too big"),
        size: g.limits.max_buffer_size.saturating_add(4),
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let e = assert_err_contains(g.sync(), &["GPU error"]);
    assert_err_contains(g.check(), &[&e[..20]]);

    let g = peft_wgpu::Gpu::new(&Default::default()).unwrap();
    let t = peft_wgpu::GpuTensor::from_slice(&g, &[2], &[1.0, 2.0]).unwrap();
    g.device.destroy();
    assert_err_contains(t.to_vec(&g), &["device was lost"]);
    assert_err_contains(g.check(), &["device was lost"]);
}
