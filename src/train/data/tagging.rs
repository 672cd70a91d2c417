//! Token-classification (tagging) data: sentences of words with a tag per word, from JSON Lines
//! (`{"tokens": [...], "tags": [...]}`, tags as names or integers) or CoNLL columns (one word per
//! line, the word first and its tag last, whitespace between; a blank line between sentences;
//! `-DOCSTART-` lines skipped). Tokenized from the pre-split words, with each word's tag on its
//! first sub-token and [`IGNORE_LABEL`] on the rest and on the special tokens, as HF's `run_ner`
//! labels them.

use super::{LabelMap, Tokenized};
use crate::kernels::loss::IGNORE_LABEL;
use crate::train::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// The JSONL keys of tagging data: `tokens` and `tags`, unless `--text-column` /
/// `--label-column` name others than their defaults (`text`, `label`).
pub fn tagging_keys<'a>(text_column: &'a str, label_column: &'a str) -> (&'a str, &'a str) {
    (
        if text_column == "text" { "tokens" } else { text_column },
        if label_column == "label" { "tags" } else { label_column },
    )
}

/// One sentence: its words and their tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaggedSentence {
    pub words: Vec<String>,
    pub tags: Vec<String>,
    /// 1-based line where it starts.
    pub line: usize,
}

/// Reads tagged sentences: JSON Lines for `.jsonl` / `.json` / `.ndjson` (keys `words_key`,
/// `tags_key`), CoNLL columns otherwise.
pub fn load_tagged(path: &Path, words_key: &str, tags_key: &str) -> Result<Vec<TaggedSentence>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let out = match ext.as_str() {
        "jsonl" | "json" | "ndjson" => parse_jsonl(path, &text, words_key, tags_key)?,
        _ => parse_conll(path, &text)?,
    };
    if out.is_empty() {
        bail!("{}: no sentences", path.display());
    }
    Ok(out)
}

fn parse_jsonl(path: &Path, text: &str, words_key: &str, tags_key: &str) -> Result<Vec<TaggedSentence>> {
    let mut out = vec![];
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{line}", path.display());
        let v: Value = serde_json::from_str(raw).with_context(|| format!("{}: invalid JSON", at()))?;
        let list = |key: &str| -> Result<Vec<String>> {
            let items = v.get(key).and_then(Value::as_array).ok_or_else(|| {
                anyhow!("{}: no list {key:?} (tagging data: {{\"{words_key}\": [...], \"{tags_key}\": [...]}})", at())
            })?;
            items
                .iter()
                .map(|x| match x {
                    Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                    Value::Number(n) if n.is_u64() => Ok(n.to_string()),
                    other => Err(anyhow!("{}: {key:?} must hold non-empty strings or integers, got {other}", at())),
                })
                .collect()
        };
        let (words, tags) = (list(words_key)?, list(tags_key)?);
        out.push(sentence(path, words, tags, line)?);
    }
    Ok(out)
}

fn parse_conll(path: &Path, text: &str) -> Result<Vec<TaggedSentence>> {
    let mut out = vec![];
    let (mut words, mut tags, mut start) = (vec![], vec![], 0);
    for (i, raw) in text.lines().enumerate() {
        let fields: Vec<&str> = raw.split_whitespace().collect();
        if fields.is_empty() || fields[0] == "-DOCSTART-" {
            if !words.is_empty() {
                out.push(sentence(path, std::mem::take(&mut words), std::mem::take(&mut tags), start)?);
            }
            continue;
        }
        if fields.len() < 2 {
            bail!(
                "{}:{}: a CoNLL line needs the word and its tag (at least two columns), got {raw:?}",
                path.display(),
                i + 1
            );
        }
        if words.is_empty() {
            start = i + 1;
        }
        words.push(fields[0].to_string());
        tags.push(fields[fields.len() - 1].to_string());
    }
    if !words.is_empty() {
        out.push(sentence(path, words, tags, start)?);
    }
    Ok(out)
}

fn sentence(path: &Path, words: Vec<String>, tags: Vec<String>, line: usize) -> Result<TaggedSentence> {
    if words.is_empty() {
        bail!("{}:{line}: a sentence with no words", path.display());
    }
    if words.len() != tags.len() {
        bail!("{}:{line}: {} words but {} tags", path.display(), words.len(), tags.len());
    }
    Ok(TaggedSentence { words, tags, line })
}

/// The tags of the training sentences, sorted (integers numerically).
pub fn tag_map(sentences: &[TaggedSentence]) -> Result<LabelMap> {
    let map = LabelMap::from_labels(sentences.iter().flat_map(|s| s.tags.iter()));
    if map.len() < 2 {
        bail!("the training data has {} tag(s); tagging needs at least 2", map.len());
    }
    Ok(map)
}

/// A tokenized sentence: its tokens, the tag id on each word's first sub-token
/// ([`IGNORE_LABEL`] elsewhere), and the token index of each word's first sub-token (`None` for
/// words cut off by truncation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaggedTokens {
    pub tokens: Tokenized,
    pub labels: Vec<u32>,
    pub word_starts: Vec<Option<usize>>,
}

/// Tokenizes `sentences` from their words; `tags` maps tag names to ids (`None`: prediction,
/// every label ignored). Returns them with the number truncated at the tokenizer's max length.
pub fn tokenize_tagged(
    tok: &Tokenizer,
    sentences: &[TaggedSentence],
    tags: Option<&LabelMap>,
    source: &str,
) -> Result<(Vec<TaggedTokens>, usize)> {
    let mut out = Vec::with_capacity(sentences.len());
    let mut truncated = 0;
    for s in sentences {
        let crate::train::tokenizer::EncodedWords { ids, types, word_ids, truncated: cut } =
            tok.encode_words(&s.words)?;
        truncated += cut as usize;
        let mut labels = vec![IGNORE_LABEL; ids.len()];
        let mut word_starts = vec![None; s.words.len()];
        let mut previous = None;
        for (t, w) in word_ids.iter().enumerate() {
            if let Some(w) = *w {
                if previous != Some(w) {
                    let wi = w as usize;
                    word_starts[wi] = Some(t);
                    if let Some(map) = tags {
                        labels[t] = map
                            .id(&s.tags[wi])
                            .map_err(|e| anyhow!("{source}:{}: {e} (a tag the training data does not have)", s.line))?;
                    }
                }
            }
            previous = *w;
        }
        out.push(TaggedTokens { tokens: Tokenized { ids, types }, labels, word_starts });
    }
    Ok((out, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conll_and_jsonl_read_alike() {
        let p = Path::new("x.conll");
        let conll = "-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\n\nPeter B-PER\nBlackburn I-PER\n";
        let a = parse_conll(p, conll).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].words, ["EU", "rejects"]);
        assert_eq!(a[0].tags, ["B-ORG", "O"]);
        assert_eq!((a[0].line, a[1].line), (3, 6));
        let jsonl = "{\"tokens\": [\"EU\", \"rejects\"], \"tags\": [\"B-ORG\", \"O\"]}\n\n\
                     {\"tokens\": [\"Peter\", \"Blackburn\"], \"tags\": [\"B-PER\", \"I-PER\"]}\n";
        let b = parse_jsonl(Path::new("x.jsonl"), jsonl, "tokens", "tags").unwrap();
        assert_eq!(a.iter().map(|s| &s.words).collect::<Vec<_>>(), b.iter().map(|s| &s.words).collect::<Vec<_>>());
        assert_eq!(tag_map(&a).unwrap().labels, ["B-ORG", "B-PER", "I-PER", "O"]);
        let e = parse_conll(p, "EU B-ORG\nrejects\n").unwrap_err();
        assert!(format!("{e}").contains("x.conll:2"), "{e}");
        let e = parse_jsonl(Path::new("x.jsonl"), "{\"tokens\": [\"a\"], \"tags\": []}", "tokens", "tags").unwrap_err();
        assert!(format!("{e}").contains("1 words but 0 tags"), "{e}");
        let e = parse_jsonl(Path::new("x.jsonl"), "{\"text\": \"a\"}", "tokens", "tags").unwrap_err();
        assert!(format!("{e}").contains("no list \"tokens\""), "{e}");
    }

    /// Seeded random edits of valid files (bytes dropped, swapped in from a set of separators and
    /// quotes, lines cut): both readers return sentences or an error, never panic, and every
    /// sentence they return has as many tags as words.
    #[test]
    fn mangled_files_give_errors_not_panics() {
        use rand::{Rng, SeedableRng};
        let conll = "EU B-ORG\nrejects O\n\n-DOCSTART- O\nPeter B-PER\nBlackburn I-PER\n\n";
        let jsonl =
            "{\"tokens\": [\"EU\", \"rejects\"], \"tags\": [\"B-ORG\", 3]}\n{\"tokens\": [\"a\"], \"tags\": [\"O\"]}\n";
        let pieces = [" ", "\n", "\t", "\"", "[", "]", ",", "-", "{", "}", "\u{e9}", ""];
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for round in 0..2000 {
            let base = if round % 2 == 0 { conll } else { jsonl };
            let mut chars: Vec<String> = base.chars().map(String::from).collect();
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..chars.len());
                chars[i] = pieces[rng.random_range(0..pieces.len())].to_string();
            }
            let text: String = chars.concat();
            let got = if round % 2 == 0 {
                parse_conll(Path::new("m.conll"), &text)
            } else {
                parse_jsonl(Path::new("m.jsonl"), &text, "tokens", "tags")
            };
            if let Ok(sentences) = got {
                assert!(sentences.iter().all(|s| !s.words.is_empty() && s.words.len() == s.tags.len()), "{text:?}");
            }
        }
    }
}
