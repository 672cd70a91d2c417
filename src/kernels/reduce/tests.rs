//! The column sum vs the f64 reference on ragged shapes (rows not a multiple of the kernel's four
//! partial sums, columns not a multiple of its workgroup), overwriting a NaN-poisoned output
//! (`beta = 0` must not read it) and accumulating into one, deterministically.

use super::{col_sum, col_sums, reference, ColSum};
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

/// Two column sums in one dispatch: each output bit for bit what [`col_sum`] writes alone (and so
/// the f64 reference's within its tolerance), columns of both tensors not multiples of the
/// workgroup and their total straddling one, NaN-poisoned outputs with `beta = 0`.
#[test]
fn col_sums_pair_equals_two_col_sums() {
    for (i, &(rows, c1, c2)) in [(1usize, 1usize, 1usize), (33, 384, 24), (7, 65, 70), (130, 3, 129)].iter().enumerate()
    {
        let mut rng = rng(50 + i as u64);
        let x1 = rand_f32(&mut rng, rows * c1, 1.0);
        let x2 = rand_f32(&mut rng, rows * c2, 1.0);
        let prev2 = rand_f32(&mut rng, c2, 1.0);
        let (g1, g2) = (upload(&[rows, c1], &x1), upload(&[rows, c2], &x2));
        let (p1, p2) = (poisoned(&[c1]), upload(&[c2], &prev2));
        let (s1, s2) = (poisoned(&[c1]), upload(&[c2], &prev2));
        let mut b = gpu().batch();
        col_sums(
            &mut b,
            rows,
            ColSum { x: &g1, cols: c1, scale: 0.5, beta: 0.0, out: &p1 },
            ColSum { x: &g2, cols: c2, scale: 1.0, beta: 1.0, out: &p2 },
        )
        .unwrap();
        col_sum(&mut b, &g1, rows, c1, 0.5, 0.0, &s1).unwrap();
        col_sum(&mut b, &g2, rows, c2, 1.0, 1.0, &s2).unwrap();
        b.finish().unwrap();
        let what = format!("{rows} rows, {c1} + {c2} columns");
        assert_eq!(bits(&download(&p1)), bits(&download(&s1)), "{what}: first sum");
        assert_eq!(bits(&download(&p2)), bits(&download(&s2)), "{what}: second sum");
        let want = reference::col_sum(&f64s(&x2), rows, c2, 1.0, 1.0, &f64s(&prev2));
        assert_close(&format!("{what}: second sum vs f64"), &download(&p2), &want, 1e-5);
    }
    let (x, out) = (poisoned(&[2, 3]), poisoned(&[3]));
    let mut b = gpu().batch();
    let sum = |out| ColSum { x: &x, cols: 3, scale: 1.0, beta: 0.0, out };
    assert!(col_sums(&mut b, 2, sum(&out), sum(&out)).is_err(), "one output twice");
    assert!(col_sums(&mut b, 3, sum(&out), sum(&poisoned(&[3]))).is_err(), "rows past x");
    assert!(b.is_empty());
}
