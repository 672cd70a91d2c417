//! f64 reference of the mean softmax cross-entropy and its logit gradient.

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
    use crate::kernels::reference::{finite_differences as fd, uniform_f64 as rv};
    use rand::SeedableRng;

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let logits = rv(&mut rng, 3 * 4);
        let labels = [0u32, 3, 2];
        let (_, d) = softmax_cross_entropy(&logits, &labels, 4);
        fd(&|x: &[f64]| softmax_cross_entropy(x, &labels, 4).0, &logits, &d, "dlogits");
    }
}
