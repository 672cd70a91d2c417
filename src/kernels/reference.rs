//! Numerical helpers shared by the f64 references of the kernels (`kernels/<op>/reference.rs`):
//! activations and their derivatives, a plain matmul and transpose, and the error measure the tests
//! use. Compiled for tests and with the `reference` feature (the product never falls back to the
//! CPU). Written for readability: one loop nest per formula.

use crate::types::Activation;

pub fn act(kind: Activation, x: f64) -> f64 {
    match kind {
        Activation::Gelu => 0.5 * x * libm::erfc(-x / std::f64::consts::SQRT_2),
        Activation::Relu => x.max(0.0),
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Identity => x,
        Activation::Tanh => x.tanh(),
    }
}

pub fn act_grad(kind: Activation, x: f64) -> f64 {
    match kind {
        Activation::Gelu => {
            let cdf = 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            cdf + x * pdf
        }
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::Silu => {
            let s = 1.0 / (1.0 + (-x).exp());
            s + x * s * (1.0 - s)
        }
        Activation::Identity => 1.0,
        Activation::Tanh => 1.0 - x.tanh().powi(2),
    }
}

/// `C[m, n] = A[m, k] · B[k, n]`, all row-major.
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for kk in 0..k {
            let av = a[i * k + kk];
            for j in 0..n {
                c[i * n + j] += av * b[kk * n + j];
            }
        }
    }
    c
}

/// Transpose of a row-major `[rows, cols]` matrix.
pub fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

/// Normwise relative error `‖ours − ref‖∞ / ‖ref‖∞` (ref all zero: absolute error). NaN in `ours`
/// gives infinity, so a poisoned output that a kernel never wrote fails every tolerance.
pub fn rel_err(ours: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "length mismatch");
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (&o, &r) in ours.iter().zip(reference) {
        if !o.is_finite() {
            return f64::INFINITY;
        }
        num = num.max((o as f64 - r).abs());
        den = den.max(r.abs());
    }
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Uniform in [-1, 1): random inputs of the references' own finite-difference tests.
#[cfg(test)]
pub(crate) fn uniform_f64(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f64> {
    use rand::Rng;
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Asserts that central finite differences of `f` at `x` match the `analytic` gradient.
#[cfg(test)]
#[track_caller]
pub(crate) fn finite_differences(f: &dyn Fn(&[f64]) -> f64, x: &[f64], analytic: &[f64], what: &str) {
    let h = 1e-6;
    for i in 0..x.len() {
        let (mut p, mut m) = (x.to_vec(), x.to_vec());
        p[i] += h;
        m[i] -= h;
        let num = (f(&p) - f(&m)) / (2.0 * h);
        assert!((num - analytic[i]).abs() < 1e-6 * (1.0 + num.abs()), "{what}[{i}]: fd {num} vs {}", analytic[i]);
    }
}
