//! f64 reference of the column sum.

/// `scale · Σ_i x[i, j] + beta · prev[j]` for a row-major `x` of `rows × cols`.
pub fn col_sum(x: &[f64], rows: usize, cols: usize, scale: f64, beta: f64, prev: &[f64]) -> Vec<f64> {
    (0..cols).map(|j| scale * (0..rows).map(|i| x[i * cols + j]).sum::<f64>() + beta * prev[j]).collect()
}
