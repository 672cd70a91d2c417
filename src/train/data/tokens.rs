//! Tokenizing examples (single texts and pairs) without padding.

use super::Example;
use crate::train::tokenizer::Tokenizer;
use anyhow::Result;

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
