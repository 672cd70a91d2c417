//! f64 reference of the BERT embeddings kernel (the other element-wise kernels are checked
//! against one-line formulas in their tests).

/// BERT embeddings before their LayerNorm: `word[id] + position[s] + token_type[tt]` for each
/// token of `[batch, seq]` ids.
pub fn embeddings(
    ids: &[u32],
    token_types: &[u32],
    seq: usize,
    d: usize,
    word: &[f64],
    position: &[f64],
    token_type: &[f64],
) -> Vec<f64> {
    let mut out = vec![0.0; ids.len() * d];
    for (t, (&id, &tt)) in ids.iter().zip(token_types).enumerate() {
        let pos = t % seq;
        for i in 0..d {
            out[t * d + i] = word[id as usize * d + i] + position[pos * d + i] + token_type[tt as usize * d + i];
        }
    }
    out
}
