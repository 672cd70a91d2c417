//! f64 reference of AdapterFusion (Pfeiffer et al. 2021) exactly as AdapterHub's `BertFusion`
//! computes it — the *naive* formula, with a key and a value per adapter (2N+1 products a token),
//! so that the tests prove the GPU's rewrite (`q̃ = W_Kᵀ q`, mix first and project once) exact.
//!
//! Per token, with the query input `h`, the adapter outputs `z_n` and the residual `r` (all `d`):
//! - `x_n = z_n + r` when `residual_before` (AdapterHub adds the residual in place to the tensor
//!   that serves as both key and value), else `x_n = z_n`
//! - `q = W_Q h + b_Q`, `k_n = W_K x_n + b_K`, `v_n = W_V x_n` (no bias; `v_n = x_n` without value)
//! - `s_n = q·k_n / T`, `p = softmax(s)`, `o = Σ_n p_n v_n (+ r unless residual_before)`
//!
//! Layouts: `h`, `r`, `o` are `[T, d]`, `z` is `[N, T, d]` (adapter-major), `p` is `[T, N]`;
//! weights are nn.Linear `[out, in]`.

/// Fusion weights and options. `w_v` is empty when `value` is false (AdapterHub's "static").
#[derive(Clone, Debug)]
pub struct Fusion {
    pub d: usize,
    pub n: usize,
    pub value: bool,
    pub residual_before: bool,
    pub temperature: f64,
    pub w_q: Vec<f64>,
    pub b_q: Vec<f64>,
    pub w_k: Vec<f64>,
    pub b_k: Vec<f64>,
    pub w_v: Vec<f64>,
}

/// Gradients with the layouts of [`Fusion`]'s weights (`w_v` empty without value).
#[derive(Clone, Debug, Default)]
pub struct FusionGrads {
    pub w_q: Vec<f64>,
    pub b_q: Vec<f64>,
    pub w_k: Vec<f64>,
    pub b_k: Vec<f64>,
    pub w_v: Vec<f64>,
}

/// Forward results: the output and what the GPU kernels save (`q` and `p`).
#[derive(Clone, Debug)]
pub struct FusionOutput {
    /// `[T, d]`
    pub o: Vec<f64>,
    /// Attention probabilities `[T, N]`.
    pub p: Vec<f64>,
    /// Query `[T, d]`.
    pub q: Vec<f64>,
}

/// Input gradients of the backward pass.
#[derive(Clone, Debug)]
pub struct FusionInputGrads {
    /// `[T, d]`
    pub dh: Vec<f64>,
    /// `[N, T, d]`
    pub dz: Vec<f64>,
    /// `[T, d]`
    pub dr: Vec<f64>,
}

/// `y = W x (+ b)` for an nn.Linear weight `[out, in]` (square here).
fn linear(w: &[f64], b: Option<&[f64]>, x: &[f64]) -> Vec<f64> {
    let d = x.len();
    (0..w.len() / d)
        .map(|o| {
            let mut s = b.map_or(0.0, |b| b[o]);
            for i in 0..d {
                s += w[o * d + i] * x[i];
            }
            s
        })
        .collect()
}

/// `Wᵀ y` for an nn.Linear weight `[out, in]`.
fn linear_t(w: &[f64], y: &[f64]) -> Vec<f64> {
    let out = y.len();
    let d = w.len() / out;
    let mut x = vec![0.0; d];
    for o in 0..out {
        for i in 0..d {
            x[i] += w[o * d + i] * y[o];
        }
    }
    x
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Everything the naive forward computes for one token.
struct Token {
    q: Vec<f64>,
    x: Vec<Vec<f64>>,
    k: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
    p: Vec<f64>,
    o: Vec<f64>,
}

impl Fusion {
    fn token(&self, h: &[f64], z: &[f64], r: &[f64], t: usize, tt: usize) -> Token {
        let d = self.d;
        let row = |m: &[f64]| m[tt * d..(tt + 1) * d].to_vec();
        let (h, r) = (row(h), row(r));
        let q = linear(&self.w_q, Some(&self.b_q), &h);
        let x: Vec<Vec<f64>> = (0..self.n)
            .map(|n| {
                let zn = &z[(n * t + tt) * d..(n * t + tt + 1) * d];
                zn.iter().zip(&r).map(|(z, r)| if self.residual_before { z + r } else { *z }).collect()
            })
            .collect();
        let k: Vec<Vec<f64>> = x.iter().map(|x| linear(&self.w_k, Some(&self.b_k), x)).collect();
        let v: Vec<Vec<f64>> =
            x.iter().map(|x| if self.value { linear(&self.w_v, None, x) } else { x.clone() }).collect();
        let s: Vec<f64> = k.iter().map(|k| dot(&q, k) / self.temperature).collect();
        let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|s| (s - mx).exp()).collect();
        let sum: f64 = e.iter().sum();
        let p: Vec<f64> = e.iter().map(|e| e / sum).collect();
        let mut o = if self.residual_before { vec![0.0; d] } else { r.clone() };
        for n in 0..self.n {
            for i in 0..d {
                o[i] += p[n] * v[n][i];
            }
        }
        Token { q, x, k, v, p, o }
    }

    /// `h`, `r`: `[t, d]`; `z`: `[N, t, d]`.
    pub fn forward(&self, h: &[f64], z: &[f64], r: &[f64], t: usize) -> FusionOutput {
        let (d, nn) = (self.d, self.n);
        let mut out = FusionOutput { o: vec![0.0; t * d], p: vec![0.0; t * nn], q: vec![0.0; t * d] };
        for tt in 0..t {
            let tok = self.token(h, z, r, t, tt);
            out.o[tt * d..(tt + 1) * d].copy_from_slice(&tok.o);
            out.p[tt * nn..(tt + 1) * nn].copy_from_slice(&tok.p);
            out.q[tt * d..(tt + 1) * d].copy_from_slice(&tok.q);
        }
        out
    }

    /// Backward of the naive formula given the upstream gradient `d_o` (`[t, d]`).
    pub fn backward(&self, h: &[f64], z: &[f64], r: &[f64], d_o: &[f64], t: usize) -> (FusionInputGrads, FusionGrads) {
        let (d, nn) = (self.d, self.n);
        let mut g = FusionGrads {
            w_q: vec![0.0; d * d],
            b_q: vec![0.0; d],
            w_k: vec![0.0; d * d],
            b_k: vec![0.0; d],
            w_v: if self.value { vec![0.0; d * d] } else { vec![] },
        };
        let mut ig = FusionInputGrads { dh: vec![0.0; t * d], dz: vec![0.0; nn * t * d], dr: vec![0.0; t * d] };
        for tt in 0..t {
            let tok = self.token(h, z, r, t, tt);
            let dov = &d_o[tt * d..(tt + 1) * d];
            let hrow = &h[tt * d..(tt + 1) * d];
            // o = Σ p_n v_n (+ r)
            let dp: Vec<f64> = tok.v.iter().map(|v| dot(dov, v)).collect();
            let pdp: f64 = tok.p.iter().zip(&dp).map(|(p, g)| p * g).sum();
            let ds: Vec<f64> = (0..nn).map(|n| tok.p[n] * (dp[n] - pdp)).collect();
            let mut dq = vec![0.0; d];
            let mut dr = if self.residual_before { vec![0.0; d] } else { dov.to_vec() };
            for n in 0..nn {
                // s_n = q·k_n / T
                let dk: Vec<f64> = tok.q.iter().map(|q| ds[n] * q / self.temperature).collect();
                for i in 0..d {
                    dq[i] += ds[n] * tok.k[n][i] / self.temperature;
                }
                // k_n = W_K x_n + b_K
                let mut dx = linear_t(&self.w_k, &dk);
                for o in 0..d {
                    g.b_k[o] += dk[o];
                    for i in 0..d {
                        g.w_k[o * d + i] += dk[o] * tok.x[n][i];
                    }
                }
                // v_n = W_V x_n (or x_n), weighted by p_n
                let dv: Vec<f64> = dov.iter().map(|g| tok.p[n] * g).collect();
                if self.value {
                    let dxv = linear_t(&self.w_v, &dv);
                    for i in 0..d {
                        dx[i] += dxv[i];
                    }
                    for o in 0..d {
                        for i in 0..d {
                            g.w_v[o * d + i] += dv[o] * tok.x[n][i];
                        }
                    }
                } else {
                    for i in 0..d {
                        dx[i] += dv[i];
                    }
                }
                // x_n = z_n (+ r)
                ig.dz[(n * t + tt) * d..(n * t + tt + 1) * d].copy_from_slice(&dx);
                if self.residual_before {
                    for i in 0..d {
                        dr[i] += dx[i];
                    }
                }
            }
            ig.dr[tt * d..(tt + 1) * d].copy_from_slice(&dr);
            // q = W_Q h + b_Q
            let dh = linear_t(&self.w_q, &dq);
            ig.dh[tt * d..(tt + 1) * d].copy_from_slice(&dh);
            for o in 0..d {
                g.b_q[o] += dq[o];
                for i in 0..d {
                    g.w_q[o * d + i] += dq[o] * hrow[i];
                }
            }
        }
        (ig, g)
    }
}

/// AdapterHub's fusion regularization `coef·‖I − W_V‖²_F` and its gradient `2·coef·(W_V − I)`.
pub fn regularization(w_v: &[f64], d: usize, coef: f64) -> (f64, Vec<f64>) {
    let mut loss = 0.0;
    let mut grad = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            let diff = w_v[i * d + j] - if i == j { 1.0 } else { 0.0 };
            loss += diff * diff;
            grad[i * d + j] = 2.0 * coef * diff;
        }
    }
    (coef * loss, grad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn random_fusion(rng: &mut rand::rngs::StdRng, d: usize, n: usize, value: bool, rb: bool, temp: f64) -> Fusion {
        Fusion {
            d,
            n,
            value,
            residual_before: rb,
            temperature: temp,
            w_q: rand_vec(rng, d * d),
            b_q: rand_vec(rng, d),
            w_k: rand_vec(rng, d * d),
            b_k: rand_vec(rng, d),
            w_v: if value { rand_vec(rng, d * d) } else { vec![] },
        }
    }

    /// Finite differences of L = Σ do ⊙ o against the analytic backward, for every input and weight,
    /// in all four configurations (value on/off × residual_before on/off).
    #[test]
    fn backward_matches_finite_differences() {
        let mut seed = 0;
        for value in [true, false] {
            for rb in [false, true] {
                seed += 1;
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let (t, d, nn) = (2, 4, 3);
                let f = random_fusion(&mut rng, d, nn, value, rb, 1.7);
                let h = rand_vec(&mut rng, t * d);
                let z = rand_vec(&mut rng, nn * t * d);
                let r = rand_vec(&mut rng, t * d);
                let d_o = rand_vec(&mut rng, t * d);
                let (ig, g) = f.backward(&h, &z, &r, &d_o, t);
                let loss = |f: &Fusion, h: &[f64], z: &[f64], r: &[f64]| -> f64 {
                    f.forward(h, z, r, t).o.iter().zip(&d_o).map(|(a, b)| a * b).sum()
                };
                let eps = 1e-6;
                let check = |analytic: f64, plus: f64, minus: f64, what: &str| {
                    let num = (plus - minus) / (2.0 * eps);
                    assert!(
                        (num - analytic).abs() < 1e-6 * (1.0 + num.abs()),
                        "value={value} residual_before={rb} {what}: fd {num} vs {analytic}"
                    );
                };
                let perturb = |v: &[f64], i: usize, s: f64| {
                    let mut v = v.to_vec();
                    v[i] += s;
                    v
                };
                for i in 0..h.len() {
                    check(
                        ig.dh[i],
                        loss(&f, &perturb(&h, i, eps), &z, &r),
                        loss(&f, &perturb(&h, i, -eps), &z, &r),
                        "dh",
                    );
                }
                for i in 0..z.len() {
                    check(
                        ig.dz[i],
                        loss(&f, &h, &perturb(&z, i, eps), &r),
                        loss(&f, &h, &perturb(&z, i, -eps), &r),
                        "dz",
                    );
                }
                for i in 0..r.len() {
                    check(
                        ig.dr[i],
                        loss(&f, &h, &z, &perturb(&r, i, eps)),
                        loss(&f, &h, &z, &perturb(&r, i, -eps)),
                        "dr",
                    );
                }
                macro_rules! fd_param {
                    ($field:ident) => {
                        for i in 0..f.$field.len() {
                            let (mut p, mut m) = (f.clone(), f.clone());
                            p.$field[i] += eps;
                            m.$field[i] -= eps;
                            check(g.$field[i], loss(&p, &h, &z, &r), loss(&m, &h, &z, &r), stringify!($field));
                        }
                    };
                }
                fd_param!(w_q);
                fd_param!(b_q);
                fd_param!(w_k);
                fd_param!(b_k);
                fd_param!(w_v);
                // The key bias cancels in the softmax: its gradient is zero up to rounding.
                assert!(g.b_k.iter().all(|v| v.abs() < 1e-12), "db_K = {:?}", g.b_k);
            }
        }
    }

    /// With residual_before the key sees z_n + r, but q·(W_K r) is the same for every adapter, so
    /// the probabilities equal those without it (the GPU kernels rely on this).
    #[test]
    fn residual_before_leaves_probabilities_unchanged() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (t, d, nn) = (3, 5, 4);
        let f = random_fusion(&mut rng, d, nn, true, true, 1.3);
        let mut g = f.clone();
        g.residual_before = false;
        let h = rand_vec(&mut rng, t * d);
        let z = rand_vec(&mut rng, nn * t * d);
        let r = rand_vec(&mut rng, t * d);
        let (a, b) = (f.forward(&h, &z, &r, t), g.forward(&h, &z, &r, t));
        for (x, y) in a.p.iter().zip(&b.p) {
            assert!((x - y).abs() < 1e-12);
        }
    }

    #[test]
    fn regularization_matches_finite_differences() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let d = 4;
        let w = rand_vec(&mut rng, d * d);
        let (_, grad) = regularization(&w, d, 0.01);
        for i in 0..w.len() {
            let (mut p, mut m) = (w.clone(), w.clone());
            p[i] += 1e-6;
            m[i] -= 1e-6;
            let num = (regularization(&p, d, 0.01).0 - regularization(&m, d, 0.01).0) / 2e-6;
            assert!((num - grad[i]).abs() < 1e-8, "{num} vs {}", grad[i]);
        }
        let eye: Vec<f64> = (0..d * d).map(|k| if k / d == k % d { 1.0 } else { 0.0 }).collect();
        assert_eq!(regularization(&eye, d, 0.01).0, 0.0);
    }
}
