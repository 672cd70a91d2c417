//! [`EmbeddingLayout`]: how a family's embeddings differ from BERT's (table widths, RoBERTa's
//! padding-aware positions, DistilBERT's missing token types, ELECTRA's projection), as the
//! encoder's lookup ([`super::encoder`]) and the memory planner ([`super::plan`]) both need it.

use super::config::BertConfig;

/// How a family's embeddings are laid out (BERT's: [`EmbeddingLayout::bert`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddingLayout {
    /// Width of the tables (ELECTRA's `embedding_size`; else the hidden size).
    pub width: usize,
    /// Rows of the position table (`max_position_embeddings`).
    pub positions: usize,
    /// Rows of the token-type table; 0 when the family has none (DistilBERT).
    pub token_types: usize,
    /// RoBERTa / XLM-R: `Some(padding_idx)`: position ids as transformers'
    /// `create_position_ids_from_input_ids` makes them, `padding_idx` + the count of non-padding
    /// tokens up to and including this one, and `padding_idx` for padding tokens.
    pub padding_positions: Option<u32>,
    /// ELECTRA's `embeddings_project` (`[hidden, width]`) after the LayerNorm.
    pub project: bool,
}

impl EmbeddingLayout {
    /// The layout `cfg`'s family implies.
    pub fn from_config(cfg: &BertConfig) -> Self {
        let l = &cfg.layout;
        Self {
            width: cfg.embedding_width(),
            positions: cfg.max_position_embeddings,
            token_types: if l.token_types { cfg.type_vocab_size } else { 0 },
            padding_positions: (l.position_offset > 0).then(|| (l.position_offset - 1) as u32),
            project: l.embedding_size.is_some(),
        }
    }

    /// Elements of the three tables the lookup reads (word, position, token type; see
    /// `encoder::EmbeddingTables`), for the memory planner.
    pub fn table_elements(&self, vocab: usize) -> [u64; 3] {
        let w = self.width as u64;
        let (pos, types) = (self.positions as u64, self.token_types.max(1) as u64);
        match self.padding_positions {
            Some(_) => [vocab as u64 * w, pos * w, pos * types * w],
            None => [vocab as u64 * w, pos * w, types * w],
        }
    }

    /// Elements of what stays resident beside the tables: the LayerNorm's two vectors and ELECTRA's
    /// projection (weight and bias), for the memory planner.
    pub fn resident_elements(&self, hidden: usize) -> Vec<u64> {
        let (w, h) = (self.width as u64, hidden as u64);
        let mut v = vec![w, w];
        if self.project {
            v.extend([h * w, h]);
        }
        v
    }

    /// Row of the combined position + token-type table of each token (RoBERTa's scheme): position
    /// id · types + token type.
    pub fn combined_rows(&self, pad: u32, ids: &[u32], token_types: &[u32], seq: usize) -> Vec<u32> {
        let types = self.token_types.max(1) as u32;
        let mut rows = Vec::with_capacity(ids.len());
        for (ids, tts) in ids.chunks(seq).zip(token_types.chunks(seq)) {
            let mut count = 0u32;
            for (&id, &tt) in ids.iter().zip(tts) {
                let position = if id == pad {
                    pad
                } else {
                    count += 1;
                    pad + count
                };
                rows.push(position * types + tt);
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roberta_positions_count_real_tokens_after_the_padding_id() {
        let layout =
            EmbeddingLayout { width: 4, positions: 12, token_types: 1, padding_positions: Some(1), project: false };
        // Two sequences of 5, padding id 1 at the end of the second; token types all 0.
        let ids = [0, 7, 8, 9, 2, 0, 7, 2, 1, 1];
        assert_eq!(layout.combined_rows(1, &ids, &[0; 10], 5), vec![2, 3, 4, 5, 6, 2, 3, 4, 1, 1]);
        // Two token types: row = position · 2 + type.
        let two = EmbeddingLayout { token_types: 2, ..layout };
        let types = [0, 0, 1, 1, 1, 0, 0, 0, 0, 0];
        assert_eq!(two.combined_rows(1, &ids, &types, 5), vec![4, 6, 9, 11, 13, 4, 6, 8, 2, 2]);
    }
}
