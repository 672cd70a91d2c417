//! Plain f64 CPU implementations of every kernel, for tests only (the product never falls back to
//! the CPU). Written for readability: one loop nest per formula.

pub mod adapter;
pub mod fusion;
pub mod ops;
pub mod optim;

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
