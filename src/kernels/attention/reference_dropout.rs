//! f64 reference of attention with dropout on the probabilities (`attention_forward_with` /
//! `attention_backward_with`), given the probabilities' keep mask.

use super::reference::attention;
use super::AttentionShape;
use crate::kernels::dropout::reference::apply;

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
}
