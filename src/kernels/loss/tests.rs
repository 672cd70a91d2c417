//! Softmax cross-entropy and the row softmax vs the f64 reference on seeded random inputs with
//! NaN-poisoned outputs.

use super::reference as ops;
use crate::kernels::loss;
use crate::kernels::test_support::*;
use rand::Rng;

const TOL: f64 = 1e-4;

#[test]
fn softmax_cross_entropy_matches_reference() {
    let mut rng = rng(1000);
    let (mut el, mut ed) = (0f64, 0f64);
    for &(rows, classes) in [(1usize, 2usize), (7, 3), (33, 10), (300, 2), (2500, 5), (4, 1000)].iter() {
        let logits = rand_f32(&mut rng, rows * classes, 4.0);
        let labels: Vec<u32> = (0..rows).map(|_| rng.random_range(0..classes as u32)).collect();
        let lg = upload(&[rows, classes], &logits);
        let lab = upload_u32(&[rows], &labels);
        let run = || {
            let (l, d, p) = (poisoned(&[1]), poisoned(&[rows, classes]), poisoned(&[rows, classes]));
            let mut b = gpu().batch();
            loss::softmax_cross_entropy(&mut b, &lg, &lab, &l, &d).unwrap();
            loss::softmax(&mut b, &lg, &p).unwrap();
            b.finish().unwrap();
            (download(&l), download(&d), download(&p))
        };
        let (l, d, p) = run();
        let (l2, d2, _) = run();
        assert_eq!((bits(&l), bits(&d)), (bits(&l2), bits(&d2)), "cross-entropy is not deterministic");
        let (rl, rd) = ops::softmax_cross_entropy(&f64s(&logits), &labels, classes);
        let what = format!("cross-entropy B={rows} C={classes}");
        el = el.max(assert_close(&format!("{what} loss"), &l, &[rl], TOL));
        ed = ed.max(assert_close(&format!("{what} dlogits"), &d, &rd, TOL));
        // softmax = rows · dlogits + onehot
        let rp: Vec<f64> = rd
            .iter()
            .enumerate()
            .map(|(i, g)| g * rows as f64 + if labels[i / classes] as usize == i % classes { 1.0 } else { 0.0 })
            .collect();
        assert_close(&format!("softmax B={rows} C={classes}"), &p, &rp, TOL);
    }
    println!("cross-entropy: max relative error loss {el:.2e}, dlogits {ed:.2e}");
}

#[test]
fn cross_entropy_clamps_labels_and_validates() {
    let logits = [0.5f32, -1.0, 2.0, 0.0, 1.0, 3.0];
    let lg = upload(&[2, 3], &logits);
    let (l, d) = (poisoned(&[1]), poisoned(&[2, 3]));
    let mut b = gpu().batch();
    loss::softmax_cross_entropy(&mut b, &lg, &upload_u32(&[2], &[99, 1]), &l, &d).unwrap();
    assert!(loss::softmax_cross_entropy(&mut b, &lg, &upload_u32(&[3], &[0, 1, 2]), &l, &d).is_err());
    assert!(loss::softmax_cross_entropy(&mut b, &lg, &upload_u32(&[2], &[0, 1]), &poisoned(&[2]), &d).is_err());
    assert!(loss::softmax(&mut b, &lg, &lg).is_err());
    b.finish().unwrap();
    let (rl, rd) = ops::softmax_cross_entropy(&f64s(&logits), &[2, 1], 3);
    assert_close("clamped label loss", &download(&l), &[rl], TOL);
    assert_close("clamped label dlogits", &download(&d), &rd, TOL);
}
