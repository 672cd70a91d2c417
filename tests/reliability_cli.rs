//! Reliability of the CLI on bad inputs: bad model folders, adapters and data files fail with one
//! `error:` line naming the file (and line), leave no output behind, and long texts are truncated
//! with one note. Runs the built `peft` binary on the tiny fixture model (see `common::cli`).

mod common;
use common::cli::*;
use common::*;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};

#[test]
fn cli_bad_model_folders_fail_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let (train, dev) = toy_data(d.path());
    let model = tiny_model(d.path());
    let (t, dv) = (s(&train), s(&dev));
    let run = |m: &Path, out: &Path| {
        let (m, o) = (s(m), s(out));
        peft(&train_args(&m, &t, &dv, &o))
    };

    let bad = d.path().join("no-config");
    fs::create_dir_all(&bad).unwrap();
    fs::copy(model.join("model.safetensors"), bad.join("model.safetensors")).unwrap();
    let out = d.path().join("out1");
    assert_clean_failure(&run(&bad, &out), &["config.json"]);
    assert!(!out.exists(), "output folder created for a run that never started");

    let bad = d.path().join("deberta");
    fs::create_dir_all(&bad).unwrap();
    fs::copy(model.join("model.safetensors"), bad.join("model.safetensors")).unwrap();
    write_vocab(&bad);
    let mut c: Value = serde_json::from_str(&fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    c["model_type"] = json!("deberta-v2");
    fs::write(bad.join("config.json"), c.to_string()).unwrap();
    assert_clean_failure(&run(&bad, &out), &["model_type", "deberta-v2"]);

    let bad = d.path().join("truncated");
    fs::create_dir_all(&bad).unwrap();
    fs::copy(model.join("config.json"), bad.join("config.json")).unwrap();
    write_vocab(&bad);
    let bytes = fs::read(model.join("model.safetensors")).unwrap();
    fs::write(bad.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(&run(&bad, &out), &["model.safetensors", "truncated"]);

    let bad = d.path().join("missing-tensor");
    fs::create_dir_all(&bad).unwrap();
    edited_model(&bad, |m| drop(m.remove("embeddings.position_embeddings.weight")));
    write_vocab(&bad);
    assert_clean_failure(&run(&bad, &out), &["missing tensor", "embeddings.position_embeddings.weight"]);
    assert!(!out.exists());
}

#[test]
fn cli_bad_adapters_fail_cleanly_and_leave_no_output() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let (_, dev) = toy_data(d.path());
    let copy = |edit: &dyn Fn(&mut Value)| -> PathBuf {
        let a = d.path().join(format!("adapter-{}", rand_name()));
        fs::create_dir_all(&a).unwrap();
        for e in fs::read_dir(tiny().join("houlsby/adapter")).unwrap() {
            let p = e.unwrap().path();
            fs::copy(&p, a.join(p.file_name().unwrap())).unwrap();
        }
        let cp = a.join("adapter_config.json");
        let mut v: Value = serde_json::from_str(&fs::read_to_string(&cp).unwrap()).unwrap();
        edit(&mut v);
        fs::write(&cp, v.to_string()).unwrap();
        a
    };
    let preds = d.path().join("preds.jsonl");
    let predict = |a: &Path| {
        peft(&["predict", "--model", &s(&model), "--adapter", &s(a), "--text", "a great movie", "--out", &s(&preds)])
    };
    let a = copy(&|v| v["hidden_size"] = json!(64));
    assert_clean_failure(&predict(&a), &["adapter_config.json", "hidden_size 64", "32"]);
    let a = copy(&|v| v["config"]["phm_layer"] = json!(true));
    assert_clean_failure(&predict(&a), &["adapter_config.json", "phm_layer", "not supported"]);
    let a = copy(&|v| v["config"]["use_gating"] = json!(true));
    assert_clean_failure(&predict(&a), &["use_gating"]);
    let a = copy(&|v| v["config"]["shiny_new_option"] = json!(1));
    assert_clean_failure(&predict(&a), &["unknown", "shiny_new_option"]);
    assert!(!preds.exists(), "a prediction file was written by a failed run");
    // eval fails the same way.
    let a = copy(&|v| v["config"]["phm_layer"] = json!(true));
    let out = peft(&["eval", "--model", &s(&model), "--adapter", &s(&a), "--data", &s(&dev), "--max-length", "16"]);
    assert_clean_failure(&out, &["phm_layer"]);
    // And the good adapter works (with the generated vocabulary), writing its file.
    let a = copy(&|_| {});
    let out = predict(&a);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(preds.exists());
    assert_no_temp_files(d.path());
}

fn rand_name() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

#[test]
fn cli_bad_data_fails_cleanly_naming_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let (train, dev) = toy_data(d.path());
    let (m, t, dv) = (s(&model), s(&train), s(&dev));
    let out = d.path().join("out");
    let o = s(&out);

    let empty = d.path().join("empty.csv");
    fs::write(&empty, "").unwrap();
    assert_clean_failure(&peft(&train_args(&m, &s(&empty), &dv, &o)), &["empty.csv", "empty file"]);

    let bad = d.path().join("bad.csv");
    fs::write(&bad, "text,label\ngood movie,positive\nbad movie,negative,extra\n").unwrap();
    assert_clean_failure(&peft(&train_args(&m, &s(&bad), &dv, &o)), &["bad.csv:3", "3 fields"]);

    let bad = d.path().join("bad.jsonl");
    fs::write(&bad, "{\"text\": \"good\", \"label\": \"positive\"}\n{\"text\": \"bad\" \"label\": 1}\n").unwrap();
    assert_clean_failure(&peft(&train_args(&m, &s(&bad), &dv, &o)), &["bad.jsonl:2", "invalid JSON"]);

    // A dev label the training data never had.
    let odd = d.path().join("odd-dev.csv");
    fs::write(&odd, "text,label\ngreat movie,positive\nokay movie,neutral\nbad movie,negative\n").unwrap();
    assert_clean_failure(
        &peft(&train_args(&m, &t, &s(&odd), &o)),
        &["odd-dev.csv", "line 3", "\"neutral\"", "positive"],
    );
    assert!(!out.exists(), "output folder created for a run that never started");
}

#[test]
fn cli_long_texts_are_truncated_with_one_note() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model(d.path());
    let (_, dev) = toy_data(d.path());
    // tiny-bert has 40 positions; --max-length 512 is cut to them, and these texts are longer.
    let long_pos = vec!["great"; 60].join(" ");
    let long_neg = vec!["awful"; 70].join(" ");
    let mut train = String::from("text,label\n");
    for i in 0..3 {
        train.push_str(&format!(
            "{long_pos},positive\n{long_neg},negative\n\"{}\",positive\n\"{}\",negative\n",
            POS[i], NEG[i]
        ));
    }
    let tp = d.path().join("long.csv");
    fs::write(&tp, train).unwrap();
    let out = d.path().join("out");
    let mut args =
        train_args(&s(&model), &s(&tp), &s(&dev), &s(&out)).into_iter().map(String::from).collect::<Vec<_>>();
    let i = args.iter().position(|a| a == "--max-length").unwrap();
    args[i + 1] = "512".into();
    args.extend(["--epochs".into(), "1".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = peft(&args);
    let all = text(&o.stdout) + &text(&o.stderr);
    assert!(o.status.success(), "{all}");
    assert_eq!(all.matches("truncated").count(), 1, "one note:\n{all}");
    assert!(all.contains("6 of 12") && all.contains("40 tokens"), "{all}");
    assert!(all.contains("512") && all.contains("max_position_embeddings"), "{all}");
}
