//! f64 reference of the matmul's epilogue and of its inner (attention) batch; the product itself is
//! [`crate::kernels::reference::matmul`].

use crate::kernels::reference::act;
use crate::types::Activation;

/// What every variant computes from the product `ab = A·B` (`m×n`, row-major):
/// `act(alpha·ab + beta·c0 (+ bias[bias_off + j]))` per element. `c0` is C's previous contents
/// (read only when `beta ≠ 0`, but always indexed here).
pub fn epilogue(
    ab: &[f64],
    n: usize,
    alpha: f32,
    beta: f32,
    c0: &[f32],
    bias: Option<(&[f32], usize)>,
    act_kind: Activation,
) -> Vec<f64> {
    (0..ab.len())
        .map(|idx| {
            let mut v = alpha as f64 * ab[idx] + beta as f64 * c0[idx] as f64;
            if let Some((bias, bias_off)) = bias {
                v += bias[bias_off + idx % n] as f64;
            }
            act(act_kind, v)
        })
        .collect()
}

/// `C[o, h] = alpha · A[o, h] · B[o, h]ᵀ + beta · C0[o, h]` over an `outer × inner` batch laid out
/// the way attention's heads are: A `[outer, m, inner, k]`, B `[outer, inner, n, k]` (read
/// transposed), C `[outer, inner, m, n]`.
pub fn inner_batch(
    a: &[f32],
    b: &[f32],
    c0: &[f32],
    (outer, inner, m, n, k): (usize, usize, usize, usize, usize),
    alpha: f64,
    beta: f32,
) -> Vec<f64> {
    let mut want = vec![0f64; outer * inner * m * n];
    for o in 0..outer {
        for h in 0..inner {
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0f64;
                    for kk in 0..k {
                        acc += a[o * m * inner * k + i * inner * k + h * k + kk] as f64
                            * b[o * inner * n * k + h * n * k + j * k + kk] as f64;
                    }
                    let ci = o * inner * m * n + h * m * n + i * n + j;
                    want[ci] = alpha * acc + beta as f64 * c0[ci] as f64;
                }
            }
        }
    }
    want
}
