//! f64 references of the heads' losses and their logit gradients.

use super::IGNORE_LABEL;

/// Mean softmax cross-entropy over the rows (of `classes` logits) whose label is not
/// [`IGNORE_LABEL`]. Returns `(loss, dlogits)`; with no labelled row both are zero.
pub fn softmax_cross_entropy(logits: &[f64], labels: &[u32], classes: usize) -> (f64, Vec<f64>) {
    let rows = labels.len();
    let labelled = labels.iter().filter(|&&l| l != IGNORE_LABEL).count();
    let mut loss = 0.0;
    let mut d = vec![0.0; rows * classes];
    if labelled == 0 {
        return (0.0, d);
    }
    for r in 0..rows {
        if labels[r] == IGNORE_LABEL {
            continue;
        }
        let l = &logits[r * classes..(r + 1) * classes];
        let max = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = l.iter().map(|x| (x - max).exp()).sum();
        let lse = max + z.ln();
        loss += lse - l[labels[r] as usize];
        for c in 0..classes {
            let p = (l[c] - lse).exp();
            d[r * classes + c] = (p - if c == labels[r] as usize { 1.0 } else { 0.0 }) / labelled as f64;
        }
    }
    (loss / labelled as f64, d)
}

/// Mean squared error of `x` against `y`. Returns `(loss, dx)`.
pub fn mse(x: &[f64], y: &[f64]) -> (f64, Vec<f64>) {
    let n = x.len() as f64;
    let loss = x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / n;
    (loss, x.iter().zip(y).map(|(a, b)| 2.0 * (a - b) / n).collect())
}

/// Mean binary cross-entropy of `sigmoid(x)` against `y`: per element
/// `−(y·log σ(x) + (1 − y)·log σ(−x))` with `log σ(v) = −ln_1p(exp(−v))` for `v ≥ 0` and
/// `v − ln_1p(exp(v))` below (finite for any logit). Returns `(loss, dx)`.
pub fn bce_with_logits(x: &[f64], y: &[f64]) -> (f64, Vec<f64>) {
    let n = x.len() as f64;
    let log_sigmoid = |v: f64| if v >= 0.0 { -(-v).exp().ln_1p() } else { v - v.exp().ln_1p() };
    let sigmoid = |v: f64| log_sigmoid(v).exp();
    let loss = x.iter().zip(y).map(|(&a, &b)| -(b * log_sigmoid(a) + (1.0 - b) * log_sigmoid(-a))).sum::<f64>() / n;
    (loss, x.iter().zip(y).map(|(&a, &b)| (sigmoid(a) - b) / n).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::{finite_differences as fd, uniform_f64 as rv};
    use rand::SeedableRng;

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let logits = rv(&mut rng, 3 * 4);
        let labels = [0u32, 3, 2];
        let (_, d) = softmax_cross_entropy(&logits, &labels, 4);
        fd(&|x: &[f64]| softmax_cross_entropy(x, &labels, 4).0, &logits, &d, "dlogits");
        let ignoring = [0u32, IGNORE_LABEL, 2];
        let (_, d) = softmax_cross_entropy(&logits, &ignoring, 4);
        fd(&|x: &[f64]| softmax_cross_entropy(x, &ignoring, 4).0, &logits, &d, "dlogits with an ignored row");
    }

    #[test]
    fn mse_and_bce_gradients_match_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let x = rv(&mut rng, 6);
        let y: Vec<f64> = rv(&mut rng, 6).iter().map(|v| v.abs()).collect();
        let (_, d) = mse(&x, &y);
        fd(&|v: &[f64]| mse(v, &y).0, &x, &d, "mse dx");
        let (_, d) = bce_with_logits(&x, &y);
        fd(&|v: &[f64]| bce_with_logits(v, &y).0, &x, &d, "bce dx");
    }
}
