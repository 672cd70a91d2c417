//! The column sum vs the f64 reference on ragged shapes (rows not a multiple of the kernel's four
//! partial sums, columns not a multiple of its workgroup), overwriting a NaN-poisoned output
//! (`beta = 0` must not read it) and accumulating into one, deterministically.

use super::{col_sum, reference};
use crate::kernels::test_support::*;

#[test]
fn col_sum_matches_reference() {
    let mut worst = 0f64;
    for (i, &(rows, cols)) in [(1usize, 1usize), (3, 65), (130, 7), (257, 129)].iter().enumerate() {
        for (scale, beta) in [(1.0f32, 0.0f32), (0.5, 1.0), (-2.0, 0.25)] {
            let mut rng = rng(i as u64);
            let x = rand_f32(&mut rng, rows * cols, 1.0);
            let prev = rand_f32(&mut rng, cols, 1.0);
            let xg = upload(&[rows, cols], &x);
            let run = || {
                let out = if beta == 0.0 { poisoned(&[cols]) } else { upload(&[cols], &prev) };
                let mut b = gpu().batch();
                col_sum(&mut b, &xg, rows, cols, scale, beta, &out).unwrap();
                b.finish().unwrap();
                download(&out)
            };
            let got = run();
            assert_eq!(bits(&got), bits(&run()), "{rows}×{cols}: two runs differ");
            let want = reference::col_sum(&f64s(&x), rows, cols, scale as f64, beta as f64, &f64s(&prev));
            worst = worst.max(assert_close(&format!("{rows}×{cols} scale={scale} beta={beta}"), &got, &want, 1e-5));
        }
    }
    println!("col_sum: max relative error {worst:.2e}");
    let mut b = gpu().batch();
    assert!(col_sum(&mut b, &poisoned(&[3, 4]), 4, 4, 1.0, 0.0, &poisoned(&[4])).is_err());
    assert!(b.is_empty());
}
