//! f64 reference of LayerNorm over the last dimension and its input gradient (gamma and beta are
//! frozen).

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::{finite_differences as fd, uniform_f64 as rv};
    use rand::SeedableRng;

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
}
