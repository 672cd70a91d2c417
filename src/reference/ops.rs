//! f64 references of the frozen encoder's ops: LayerNorm, masked multi-head self-attention,
//! embeddings, and softmax cross-entropy, each with its backward (input gradients only: the base
//! is frozen).

/// LayerNorm over the last dimension `d` of `rows` rows. Returns `y`.
pub fn layer_norm(x: &[f64], rows: usize, d: usize, gamma: &[f64], beta: &[f64], eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; rows * d];
    for r in 0..rows {
        let xr = &x[r * d..(r + 1) * d];
        let mean = xr.iter().sum::<f64>() / d as f64;
        let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for i in 0..d {
            y[r * d + i] = (xr[i] - mean) * rstd * gamma[i] + beta[i];
        }
    }
    y
}

/// Gradient of LayerNorm with respect to its input.
pub fn layer_norm_backward(x: &[f64], dy: &[f64], rows: usize, d: usize, gamma: &[f64], eps: f64) -> Vec<f64> {
    let mut dx = vec![0.0; rows * d];
    for r in 0..rows {
        let xr = &x[r * d..(r + 1) * d];
        let mean = xr.iter().sum::<f64>() / d as f64;
        let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        let xhat: Vec<f64> = xr.iter().map(|v| (v - mean) * rstd).collect();
        let g: Vec<f64> = (0..d).map(|i| dy[r * d + i] * gamma[i]).collect();
        let mean_g = g.iter().sum::<f64>() / d as f64;
        let mean_gx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / d as f64;
        for i in 0..d {
            dx[r * d + i] = rstd * (g[i] - mean_g - xhat[i] * mean_gx);
        }
    }
    dx
}

/// Shape of a multi-head self-attention call. Activations are `[batch·seq, heads·head_dim]`
/// (BERT's layout), the mask is `[batch, seq]` with 1 for real tokens and 0 for padding.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
    fn at(&self, b: usize, s: usize, h: usize, k: usize) -> usize {
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
    let (_, probs) = attention(q, k, v, mask, s);
    let (n, hd) = (s.seq, s.head_dim);
    let scale = 1.0 / (hd as f64).sqrt();
    let len = q.len();
    let (mut dq, mut dk, mut dv) = (vec![0.0; len], vec![0.0; len], vec![0.0; len]);
    for b in 0..s.batch {
        for h in 0..s.heads {
            for i in 0..n {
                let p = &probs[((b * s.heads + h) * n + i) * n..][..n];
                // dP_ij = dctx_i · v_j ; dS_ij = P_ij (dP_ij − Σ_l P_il dP_il)
                let dp: Vec<f64> =
                    (0..n).map(|j| (0..hd).map(|c| dctx[s.at(b, i, h, c)] * v[s.at(b, j, h, c)]).sum()).collect();
                let dot: f64 = (0..n).map(|j| p[j] * dp[j]).sum();
                for j in 0..n {
                    let ds = p[j] * (dp[j] - dot) * scale;
                    for c in 0..hd {
                        dv[s.at(b, j, h, c)] += p[j] * dctx[s.at(b, i, h, c)];
                        dq[s.at(b, i, h, c)] += ds * k[s.at(b, j, h, c)];
                        dk[s.at(b, j, h, c)] += ds * q[s.at(b, i, h, c)];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

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

/// Mean softmax cross-entropy over `rows` rows of `classes` logits. Returns `(loss, dlogits)`.
pub fn softmax_cross_entropy(logits: &[f64], labels: &[u32], classes: usize) -> (f64, Vec<f64>) {
    let rows = labels.len();
    let mut loss = 0.0;
    let mut d = vec![0.0; rows * classes];
    for r in 0..rows {
        let l = &logits[r * classes..(r + 1) * classes];
        let max = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = l.iter().map(|x| (x - max).exp()).sum();
        let lse = max + z.ln();
        loss += lse - l[labels[r] as usize];
        for c in 0..classes {
            let p = (l[c] - lse).exp();
            d[r * classes + c] = (p - if c == labels[r] as usize { 1.0 } else { 0.0 }) / rows as f64;
        }
    }
    (loss / rows as f64, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rv(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn fd(f: &dyn Fn(&[f64]) -> f64, x: &[f64], analytic: &[f64], what: &str) {
        let h = 1e-6;
        for i in 0..x.len() {
            let (mut p, mut m) = (x.to_vec(), x.to_vec());
            p[i] += h;
            m[i] -= h;
            let num = (f(&p) - f(&m)) / (2.0 * h);
            assert!((num - analytic[i]).abs() < 1e-6 * (1.0 + num.abs()), "{what}[{i}]: fd {num} vs {}", analytic[i]);
        }
    }

    #[test]
    fn layer_norm_backward_matches_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (rows, d) = (3, 7);
        let x = rv(&mut rng, rows * d);
        let gamma = rv(&mut rng, d);
        let beta = rv(&mut rng, d);
        let dy = rv(&mut rng, rows * d);
        let dx = layer_norm_backward(&x, &dy, rows, d, &gamma, 1e-5);
        let f = |x: &[f64]| layer_norm(x, rows, d, &gamma, &beta, 1e-5).iter().zip(&dy).map(|(a, b)| a * b).sum();
        fd(&f, &x, &dx, "dx");
    }

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

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let logits = rv(&mut rng, 3 * 4);
        let labels = [0u32, 3, 2];
        let (_, d) = softmax_cross_entropy(&logits, &labels, 4);
        fd(&|x: &[f64]| softmax_cross_entropy(x, &labels, 4).0, &logits, &d, "dlogits");
    }
}
