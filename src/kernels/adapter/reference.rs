//! f64 reference of the bottleneck adapter: `y = x + s·(W_up·act(W_down·x + b_down) + b_up)`.

use crate::kernels::reference::{act, act_grad};
use crate::types::Activation;

/// Adapter weights in nn.Linear layout: `w_down [m, d]`, `w_up [d, m]`.
#[derive(Clone, Debug)]
pub struct Adapter {
    pub d: usize,
    pub m: usize,
    pub act: Activation,
    pub scale: f64,
    pub w_down: Vec<f64>,
    pub b_down: Vec<f64>,
    pub w_up: Vec<f64>,
    pub b_up: Vec<f64>,
}

/// Gradients with the same layout as [`Adapter`]'s weights.
#[derive(Clone, Debug, Default)]
pub struct AdapterGrads {
    pub w_down: Vec<f64>,
    pub b_down: Vec<f64>,
    pub w_up: Vec<f64>,
    pub b_up: Vec<f64>,
}

impl Adapter {
    /// Returns `(y, a)` for `x` of `t` rows; `a` is the pre-activation `[t, m]`.
    pub fn forward(&self, x: &[f64], t: usize) -> (Vec<f64>, Vec<f64>) {
        let (d, m) = (self.d, self.m);
        let mut a = vec![0.0; t * m];
        let mut y = vec![0.0; t * d];
        for r in 0..t {
            let xr = &x[r * d..(r + 1) * d];
            for j in 0..m {
                let mut s = self.b_down[j];
                for i in 0..d {
                    s += self.w_down[j * d + i] * xr[i];
                }
                a[r * m + j] = s;
            }
            for k in 0..d {
                let mut u = self.b_up[k];
                for j in 0..m {
                    u += self.w_up[k * m + j] * act(self.act, a[r * m + j]);
                }
                y[r * d + k] = xr[k] + self.scale * u;
            }
        }
        (y, a)
    }

    /// Returns `(dx, grads)` given the upstream gradient `dy`.
    pub fn backward(&self, x: &[f64], dy: &[f64], t: usize) -> (Vec<f64>, AdapterGrads) {
        let (d, m) = (self.d, self.m);
        let (_, a) = self.forward(x, t);
        let mut g =
            AdapterGrads { w_down: vec![0.0; m * d], b_down: vec![0.0; m], w_up: vec![0.0; d * m], b_up: vec![0.0; d] };
        let mut dx = dy.to_vec();
        for r in 0..t {
            let dyr = &dy[r * d..(r + 1) * d];
            let xr = &x[r * d..(r + 1) * d];
            for k in 0..d {
                g.b_up[k] += self.scale * dyr[k];
                for j in 0..m {
                    g.w_up[k * m + j] += self.scale * dyr[k] * act(self.act, a[r * m + j]);
                }
            }
            for j in 0..m {
                let mut dg = 0.0;
                for k in 0..d {
                    dg += self.scale * self.w_up[k * m + j] * dyr[k];
                }
                let da = dg * act_grad(self.act, a[r * m + j]);
                g.b_down[j] += da;
                for i in 0..d {
                    g.w_down[j * d + i] += da * xr[i];
                    dx[r * d + i] += self.w_down[j * d + i] * da;
                }
            }
        }
        (dx, g)
    }
}

/// `y = x ⊙ s + add` over rows of `d` (`s`: one value or `d`; `add`: none, `[d]` or `[t·d]`).
pub fn channel_scale(x: &[f64], s: &[f64], add: Option<&[f64]>, d: usize) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(i, v)| {
            let k = i % d;
            let scaled = v * s[if s.len() == 1 { 0 } else { k }];
            match add {
                Some(a) if a.len() == d => scaled + a[k],
                Some(a) => scaled + a[i],
                None => scaled,
            }
        })
        .collect()
}

/// Gradient of `s` in `y = u ⊙ s`: per channel, or one sum when `s` is one value.
pub fn scale_grad(dy: &[f64], u: &[f64], d: usize, scalar: bool) -> Vec<f64> {
    let mut g = vec![0.0; d];
    for (i, (a, b)) in dy.iter().zip(u).enumerate() {
        g[i % d] += a * b;
    }
    if scalar {
        vec![g.iter().sum()]
    } else {
        g
    }
}

/// A LayerNorm with trainable gamma and beta: `(dx, d_gamma, d_beta)` for upstream `dy`.
pub fn layer_norm_grads(x: &[f64], gamma: &[f64], eps: f64, dy: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let d = gamma.len();
    let rows = x.len() / d;
    let ones = vec![1.0; d];
    let zeros = vec![0.0; d];
    let x_hat = crate::kernels::layernorm::reference::layer_norm(x, rows, d, &ones, &zeros, eps);
    let d_gamma = scale_grad(dy, &x_hat, d, false);
    let d_beta = scale_grad(dy, &vec![1.0; x.len()], d, false);
    let dx = crate::kernels::layernorm::reference::layer_norm_backward(x, dy, rows, d, gamma, eps);
    (dx, d_gamma, d_beta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Finite differences of L = Σ dy ⊙ y against the analytic backward.
    #[test]
    fn backward_matches_finite_differences() {
        for (act_kind, seed) in [(Activation::Gelu, 1), (Activation::Relu, 2), (Activation::Silu, 3)] {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (t, d, m) = (3, 5, 2);
            let ad = Adapter {
                d,
                m,
                act: act_kind,
                scale: 0.7,
                w_down: rand_vec(&mut rng, m * d),
                b_down: rand_vec(&mut rng, m),
                w_up: rand_vec(&mut rng, d * m),
                b_up: rand_vec(&mut rng, d),
            };
            let x = rand_vec(&mut rng, t * d);
            let dy = rand_vec(&mut rng, t * d);
            let (dx, g) = ad.backward(&x, &dy, t);
            let loss = |ad: &Adapter, x: &[f64]| -> f64 {
                let (y, _) = ad.forward(x, t);
                y.iter().zip(&dy).map(|(a, b)| a * b).sum()
            };
            let h = 1e-6;
            let check = |analytic: f64, plus: f64, minus: f64, what: &str| {
                let num = (plus - minus) / (2.0 * h);
                assert!(
                    (num - analytic).abs() < 1e-6 * (1.0 + num.abs()),
                    "{act_kind:?} {what}: fd {num} vs {analytic}"
                );
            };
            for i in 0..x.len() {
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[i] += h;
                xm[i] -= h;
                check(dx[i], loss(&ad, &xp), loss(&ad, &xm), "dx");
            }
            macro_rules! fd_param {
                ($field:ident) => {
                    for i in 0..ad.$field.len() {
                        let (mut p, mut mi) = (ad.clone(), ad.clone());
                        p.$field[i] += h;
                        mi.$field[i] -= h;
                        check(g.$field[i], loss(&p, &x), loss(&mi, &x), stringify!($field));
                    }
                };
            }
            fd_param!(w_down);
            fd_param!(b_down);
            fd_param!(w_up);
            fd_param!(b_up);
        }
    }
}
