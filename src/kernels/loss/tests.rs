//! The losses (softmax cross-entropy with and without ignored rows, MSE, BCE with logits) and the
//! row softmax vs the f64 references on seeded random inputs with NaN-poisoned outputs.

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

#[test]
fn cross_entropy_leaves_ignored_rows_out() {
    let mut rng = rng(1001);
    for &(rows, classes, every) in [(1usize, 2usize, 2usize), (37, 5, 3), (515, 9, 4), (1030, 3, 2)].iter() {
        let logits = rand_f32(&mut rng, rows * classes, 4.0);
        // Row r is ignored when r % every == 1 (a tagger's sub-tokens and padding).
        let labels: Vec<u32> = (0..rows)
            .map(|r| if r % every == 1 { loss::IGNORE_LABEL } else { rng.random_range(0..classes as u32) })
            .collect();
        let (l, d) = (poisoned(&[1]), poisoned(&[rows, classes]));
        let mut b = gpu().batch();
        loss::softmax_cross_entropy(&mut b, &upload(&[rows, classes], &logits), &upload_u32(&[rows], &labels), &l, &d)
            .unwrap();
        b.finish().unwrap();
        let (rl, rd) = ops::softmax_cross_entropy(&f64s(&logits), &labels, classes);
        let what = format!("cross-entropy ignoring every {every}th row, B={rows} C={classes}");
        assert_close(&format!("{what} loss"), &download(&l), &[rl], TOL);
        assert_close(&format!("{what} dlogits"), &download(&d), &rd, TOL);
        let d = download(&d);
        assert!((0..rows)
            .filter(|r| labels[*r] == loss::IGNORE_LABEL)
            .all(|r| d[r * classes..(r + 1) * classes].iter().all(|&g| g == 0.0)));
    }
    // Every row ignored: zero loss and gradient, not NaN.
    let (l, d) = (poisoned(&[1]), poisoned(&[2, 3]));
    let mut b = gpu().batch();
    let ignored = upload_u32(&[2], &[loss::IGNORE_LABEL; 2]);
    loss::softmax_cross_entropy(&mut b, &upload(&[2, 3], &[1.0; 6]), &ignored, &l, &d).unwrap();
    b.finish().unwrap();
    assert_eq!((download(&l), download(&d)), (vec![0.0], vec![0.0; 6]));
}

/// Runs `mse` or `bce_with_logits` (by `bce`) twice on poisoned outputs; checks determinism and
/// returns `(loss, dlogits)`.
fn float_loss(bce: bool, rows: usize, classes: usize, logits: &[f32], targets: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (lg, tg) = (upload(&[rows, classes], logits), upload(&[rows, classes], targets));
    let run = || {
        let (l, d) = (poisoned(&[1]), poisoned(&[rows, classes]));
        let mut b = gpu().batch();
        if bce {
            loss::bce_with_logits(&mut b, &lg, &tg, &l, &d).unwrap();
        } else {
            loss::mse(&mut b, &lg, &tg, &l, &d).unwrap();
        }
        b.finish().unwrap();
        (download(&l), download(&d))
    };
    let (l, d) = run();
    let (l2, d2) = run();
    assert_eq!((bits(&l), bits(&d)), (bits(&l2), bits(&d2)), "float-target loss is not deterministic");
    (l, d)
}

#[test]
fn mse_and_bce_with_logits_match_reference() {
    let mut rng = rng(1002);
    for &(rows, classes) in [(1usize, 1usize), (7, 1), (33, 5), (300, 1), (257, 13), (3, 700)].iter() {
        let logits = rand_f32(&mut rng, rows * classes, 4.0);
        let values = rand_f32(&mut rng, rows * classes, 3.0);
        let (l, d) = float_loss(false, rows, classes, &logits, &values);
        let (rl, rd) = ops::mse(&f64s(&logits), &f64s(&values));
        assert_close(&format!("mse B={rows} C={classes} loss"), &l, &[rl], TOL);
        assert_close(&format!("mse B={rows} C={classes} dlogits"), &d, &rd, TOL);
        // Multi-label targets are 0 / 1.
        let bits01: Vec<f32> = (0..rows * classes).map(|_| rng.random_range(0..2u32) as f32).collect();
        let (l, d) = float_loss(true, rows, classes, &logits, &bits01);
        let (rl, rd) = ops::bce_with_logits(&f64s(&logits), &f64s(&bits01));
        assert_close(&format!("bce B={rows} C={classes} loss"), &l, &[rl], TOL);
        assert_close(&format!("bce B={rows} C={classes} dlogits"), &d, &rd, TOL);
    }
}

#[test]
fn bce_with_logits_is_finite_on_large_logits() {
    // |x| up to 200: exp(|x|) overflows f32; the stable form never computes it.
    let logits = [200.0f32, -200.0, 90.0, -90.0, 30.0, -30.0, 0.0, 1e-3];
    let targets = [0.0f32, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0];
    let (l, d) = float_loss(true, 2, 4, &logits, &targets);
    assert!(l[0].is_finite() && d.iter().all(|g| g.is_finite()), "loss {l:?}, dlogits {d:?}");
    let (rl, rd) = ops::bce_with_logits(&f64s(&logits), &f64s(&targets));
    assert_close("bce large logits loss", &l, &[rl], TOL);
    assert_close("bce large logits dlogits", &d, &rd, TOL);
}

#[test]
fn float_target_losses_validate_shapes() {
    let lg = upload(&[2, 3], &[0.0; 6]);
    let mut b = gpu().batch();
    assert!(loss::mse(&mut b, &lg, &upload(&[3, 2], &[0.0; 6]), &poisoned(&[1]), &poisoned(&[2, 3])).is_err());
    assert!(
        loss::bce_with_logits(&mut b, &lg, &upload(&[2, 3], &[0.0; 6]), &poisoned(&[2]), &poisoned(&[2, 3])).is_err()
    );
    assert!(loss::mse(&mut b, &lg, &upload(&[2, 3], &[0.0; 6]), &poisoned(&[1]), &lg).is_err());
    b.finish().unwrap();
}
