//! Data files (CSV, TSV, JSON Lines / JSON arrays): any bytes give examples or an error naming
//! the file, never a panic. The first byte picks the format and the options.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peft_wgpu::train::data::{self, DataOptions, Format, LabelMap};
use std::path::Path;

fuzz_target!(|input: &[u8]| {
    let Some((&sel, bytes)) = input.split_first() else {
        return;
    };
    let format = match sel % 3 {
        0 => Format::Csv,
        1 => Format::Tsv,
        _ => Format::Jsonl,
    };
    let opts = DataOptions {
        text_pair_column: (sel & 4 != 0).then(|| "pair".to_string()),
        require_labels: sel & 8 == 0,
        ..DataOptions::default()
    };
    let path = Path::new("fuzz.data");
    match data::parse_examples(path, bytes, format, &opts) {
        Ok(examples) => {
            assert!(!examples.is_empty());
            if let Ok(labels) = LabelMap::from_examples(&examples) {
                let ids = labels.encode(&examples, "fuzz.data").expect("every label is in the map built from them");
                assert!(ids.iter().all(|&i| (i as usize) < labels.len()));
            }
        }
        Err(e) => assert!(format!("{e:#}").contains("fuzz.data"), "error does not name the file: {e:#}"),
    }
});
