//! f64 reference of attention with dropout on the probabilities (`attention_forward_with` /
//! `attention_backward_with`), given the probabilities' keep mask.

use super::reference::{attention, backward_scaled};
use super::AttentionShape;
use crate::kernels::dropout::reference::apply;

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
                    ctx[s.at(b, i, h, c)] = (0..n).map(|j| pr[j] * v[s.at(b, j, h, c)]).sum();
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
    backward_scaled(q, k, v, mask, dctx, s, |e| if keep[e] { 1.0 / (1.0 - p) } else { 0.0 })
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
