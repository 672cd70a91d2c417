//! f64 reference of masked multi-head self-attention and its input gradients.

use super::AttentionShape;

impl AttentionShape {
    /// Index of element `k` of head `h` of token `s` of sequence `b` in an activation.
    pub(super) fn at(&self, b: usize, s: usize, h: usize, k: usize) -> usize {
        (b * self.seq + s) * self.hidden() + h * self.head_dim + k
    }
}

/// `ctx = softmax(q·kᵀ/√hd + mask) · v` per batch and head; masked keys get probability 0.
/// Returns `(ctx, probs)` with probs `[batch, heads, seq, seq]`.
pub fn attention(q: &[f64], k: &[f64], v: &[f64], mask: &[f64], s: AttentionShape) -> (Vec<f64>, Vec<f64>) {
    let (n, hd) = (s.seq, s.head_dim);
    let scale = 1.0 / (hd as f64).sqrt();
    let mut ctx = vec![0.0; s.batch * n * s.hidden()];
    let mut probs = vec![0.0; s.batch * s.heads * n * n];
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..n {
                let mut scores = vec![f64::NEG_INFINITY; n];
                for j in 0..n {
                    if mask[b * n + j] > 0.5 {
                        scores[j] = (0..hd).map(|c| q[s.at(b, i, h, c)] * k[s.at(b, j, h, c)]).sum::<f64>() * scale;
                    }
                }
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|&x| if x.is_finite() { (x - max).exp() } else { 0.0 }).collect();
                let z: f64 = e.iter().sum();
                let p = &mut probs[((b * s.heads + h) * n + i) * n..][..n];
                for j in 0..n {
                    p[j] = e[j] / z;
                }
                for c in 0..hd {
                    ctx[s.at(b, i, h, c)] = (0..n).map(|j| p[j] * v[s.at(b, j, h, c)]).sum();
                }
            }
        }
    }
    (ctx, probs)
}

/// Gradients of [`attention`] with respect to q, k and v.
pub fn attention_backward(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: &[f64],
    dctx: &[f64],
    s: AttentionShape,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    backward_scaled(q, k, v, mask, dctx, s, |_| 1.0)
}

/// [`attention_backward`] with the probabilities multiplied by `factor(e)` (element `e` of the
/// `[batch, heads, seq, seq]` probabilities) before `·v`: 1 for plain attention, the keep mask's
/// `0` or `1/(1 − p)` for dropout on them (`super::reference_dropout`).
pub(super) fn backward_scaled(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: &[f64],
    dctx: &[f64],
    s: AttentionShape,
    factor: impl Fn(usize) -> f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (_, probs) = attention(q, k, v, mask, s);
    let (n, hd) = (s.seq, s.head_dim);
    let scale = 1.0 / (hd as f64).sqrt();
    let len = q.len();
    let (mut dq, mut dk, mut dv) = (vec![0.0; len], vec![0.0; len], vec![0.0; len]);
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..n {
                let row = ((b * s.heads + h) * n + i) * n;
                let p = &probs[row..][..n];
                // dP'_ij = dctx_i · v_j ; dP = factor ⊙ dP' ; dS_ij = P_ij (dP_ij − Σ_l P_il dP_il) / √hd
                let dp: Vec<f64> = (0..n)
                    .map(|j| {
                        factor(row + j) * (0..hd).map(|c| dctx[s.at(b, i, h, c)] * v[s.at(b, j, h, c)]).sum::<f64>()
                    })
                    .collect();
                let dot: f64 = (0..n).map(|j| p[j] * dp[j]).sum();
                for j in 0..n {
                    let ds = p[j] * (dp[j] - dot) * scale;
                    for c in 0..hd {
                        dv[s.at(b, j, h, c)] += p[j] * factor(row + j) * dctx[s.at(b, i, h, c)];
                        dq[s.at(b, i, h, c)] += ds * k[s.at(b, j, h, c)];
                        dk[s.at(b, j, h, c)] += ds * q[s.at(b, i, h, c)];
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
    use rand::SeedableRng;

    #[test]
    fn attention_backward_matches_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let s = AttentionShape { batch: 2, seq: 4, heads: 2, head_dim: 3 };
        let n = s.batch * s.seq * s.hidden();
        let (q, k, v, dctx) = (rv(&mut rng, n), rv(&mut rng, n), rv(&mut rng, n), rv(&mut rng, n));
        let mask = vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0];
        let (dq, dk, dv) = attention_backward(&q, &k, &v, &mask, &dctx, s);
        let dot = |c: Vec<f64>| c.iter().zip(&dctx).map(|(a, b)| a * b).sum::<f64>();
        fd(&|x: &[f64]| dot(attention(x, &k, &v, &mask, s).0), &q, &dq, "dq");
        fd(&|x: &[f64]| dot(attention(&q, x, &v, &mask, s).0), &k, &dk, "dk");
        fd(&|x: &[f64]| dot(attention(&q, &k, x, &mask, s).0), &v, &dv, "dv");
        // Masked keys get no gradient.
        for t in [6usize, 7] {
            assert!(dk[t * s.hidden()..(t + 1) * s.hidden()].iter().all(|&g| g == 0.0));
        }
    }
}
