//! CPU reference of the dropout kernels: Philox4x32-10 in plain u64 arithmetic, the element →
//! (row, column) keys of [`MaskLayout`], and inverted dropout in f64.

use super::{MaskKey, MaskLayout, Rate};
use crate::kernels::attention::reference::attention;
use crate::kernels::attention::AttentionShape;

const M0: u64 = 0xD251_1F53;
const M1: u64 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32-10 (Salmon et al., SC 2011): the four output words of `counter` under `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = M0 * c[0] as u64;
        let p1 = M1 * c[2] as u64;
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// The (global row, column) whose draw decides element `e`.
pub fn row_col(layout: MaskLayout, e: usize) -> (u32, u32) {
    match layout {
        MaskLayout::Rows { cols, row0 } => ((row0 + e / cols) as u32, (e % cols) as u32),
        MaskLayout::Attention { heads, seq, row0 } => {
            let ss = seq * seq;
            let (b, h, i, j) = (e / (heads * ss), (e / ss) % heads, (e / seq) % seq, e % seq);
            ((row0 + b * seq + i) as u32, (h * seq + j) as u32)
        }
    }
}

/// The draw of element `e`: the first word of Philox at counter (column, row, step, stream) under
/// key (seed low, seed high).
pub fn draw(key: MaskKey, layout: MaskLayout, e: usize) -> u32 {
    let (row, col) = row_col(layout, e);
    let stream = key.stream().expect("a valid mask key");
    philox4x32_10([col, row, key.step, stream], [key.seed as u32, (key.seed >> 32) as u32])[0]
}

/// The keep mask of `n` elements (true: kept).
pub fn keep_mask(key: MaskKey, rate: Rate, layout: MaskLayout, n: usize) -> Vec<bool> {
    let t = rate.threshold();
    (0..n).map(|e| draw(key, layout, e) >= t).collect()
}

/// Inverted dropout in f64: `x · mask / (1 − p)` (the forward on activations, the backward on
/// gradients).
pub fn apply(x: &[f64], keep: &[bool], p: f64) -> Vec<f64> {
    x.iter().zip(keep).map(|(&v, &k)| if k { v / (1.0 - p) } else { 0.0 }).collect()
}

/// Index of element `c` of head `h` of token `i` of sequence `b` in a `[batch·seq, hidden]` activation.
fn at(s: AttentionShape, b: usize, i: usize, h: usize, c: usize) -> usize {
    (b * s.seq + i) * s.hidden() + h * s.head_dim + c
}

/// Attention with dropout on the probabilities: `ctx = dropout(softmax(q·kᵀ/√hd, masked))·v`, the
/// probabilities' keep mask `keep` (`[batch, heads, seq, seq]`) and rate `p`.
pub fn attention_dropout(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: &[f64],
    keep: &[bool],
    p: f64,
    s: AttentionShape,
) -> Vec<f64> {
    let (_, probs) = attention(q, k, v, mask, s);
    let dropped = apply(&probs, keep, p);
    let n = s.seq;
    let mut ctx = vec![0.0; q.len()];
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..n {
                let pr = &dropped[((b * s.heads + h) * n + i) * n..][..n];
                for c in 0..s.head_dim {
                    ctx[at(s, b, i, h, c)] = (0..n).map(|j| pr[j] * v[at(s, b, j, h, c)]).sum();
                }
            }
        }
    }
    ctx
}

/// Gradients of [`attention_dropout`] with respect to q, k and v.
#[allow(clippy::too_many_arguments)]
pub fn attention_dropout_backward(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: &[f64],
    keep: &[bool],
    p: f64,
    dctx: &[f64],
    s: AttentionShape,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (_, probs) = attention(q, k, v, mask, s);
    let (n, hd) = (s.seq, s.head_dim);
    let scale = 1.0 / (hd as f64).sqrt();
    let len = q.len();
    let (mut dq, mut dk, mut dv) = (vec![0.0; len], vec![0.0; len], vec![0.0; len]);
    let kept = |e: usize| if keep[e] { 1.0 / (1.0 - p) } else { 0.0 };
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..n {
                let row = ((b * s.heads + h) * n + i) * n;
                let pr = &probs[row..][..n];
                // dP'_ij = dctx_i · v_j ; dP = mask ⊙ dP' / (1 − p) ; dS = P ⊙ (dP − Σ P dP) / √hd
                let dp: Vec<f64> = (0..n)
                    .map(|j| {
                        kept(row + j) * (0..hd).map(|c| dctx[at(s, b, i, h, c)] * v[at(s, b, j, h, c)]).sum::<f64>()
                    })
                    .collect();
                let dot: f64 = (0..n).map(|j| pr[j] * dp[j]).sum();
                for j in 0..n {
                    let ds = pr[j] * (dp[j] - dot) * scale;
                    for c in 0..hd {
                        dv[at(s, b, j, h, c)] += pr[j] * kept(row + j) * dctx[at(s, b, i, h, c)];
                        dq[at(s, b, i, h, c)] += ds * k[at(s, b, j, h, c)];
                        dk[at(s, b, j, h, c)] += ds * q[at(s, b, i, h, c)];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::{finite_differences as fd, uniform_f64 as rv};
    use rand::{Rng, SeedableRng};

    #[test]
    fn attention_dropout_backward_matches_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(61);
        let s = AttentionShape { batch: 2, seq: 4, heads: 2, head_dim: 3 };
        let n = s.batch * s.seq * s.hidden();
        let (q, k, v, dctx) = (rv(&mut rng, n), rv(&mut rng, n), rv(&mut rng, n), rv(&mut rng, n));
        let mask = vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0];
        let keep: Vec<bool> = (0..s.batch * s.heads * s.seq * s.seq).map(|_| rng.random_bool(0.7)).collect();
        let p = 0.3;
        let (dq, dk, dv) = attention_dropout_backward(&q, &k, &v, &mask, &keep, p, &dctx, s);
        let dot = |c: Vec<f64>| c.iter().zip(&dctx).map(|(a, b)| a * b).sum::<f64>();
        fd(&|x: &[f64]| dot(attention_dropout(x, &k, &v, &mask, &keep, p, s)), &q, &dq, "dq");
        fd(&|x: &[f64]| dot(attention_dropout(&q, x, &v, &mask, &keep, p, s)), &k, &dk, "dk");
        fd(&|x: &[f64]| dot(attention_dropout(&q, &k, x, &mask, &keep, p, s)), &v, &dv, "dv");
    }

    /// The Random123 known-answer vectors of Philox4x32-10 (its `kat_vectors`).
    #[test]
    fn philox_known_answers() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]);
        assert_eq!(
            philox4x32_10([0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344], [0xa409_3822, 0x299f_31d0]),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }
}
