//! LayerNorm (forward with/without residual and saved sum, backward with/without accumulate) vs
//! the f64 reference on seeded random inputs with NaN-poisoned outputs.

use super::reference as ops;
use crate::kernels::layernorm;
use crate::kernels::test_support::*;
use rand::Rng;

const TOL: f64 = 1e-4;

/// Forward (with/without residual and saved sum) and backward (with/without accumulate) of one shape.
fn layer_norm_case(rows: usize, d: usize, seed: u64) -> (f64, f64) {
    let mut rng = rng(seed);
    let eps = 1e-5f32;
    // An offset and a scale so the mean matters and the variance is not 1.
    let offset = rng.random_range(-3.0f32..3.0);
    let x: Vec<f32> = rand_f32(&mut rng, rows * d, 2.0).iter().map(|v| v + offset).collect();
    let r = rand_f32(&mut rng, rows * d, 1.0);
    let gamma = rand_f32(&mut rng, d, 1.0);
    let beta = rand_f32(&mut rng, d, 1.0);
    let dy = rand_f32(&mut rng, rows * d, 1.0);
    let prev = rand_f32(&mut rng, rows * d, 1.0);
    let (xg, rg, gg, bg, dyg) = (
        upload(&[rows, d], &x),
        upload(&[rows, d], &r),
        upload(&[d], &gamma),
        upload(&[d], &beta),
        upload(&[rows, d], &dy),
    );
    let y_plain = poisoned(&[rows, d]);
    let y_res = poisoned(&[rows, d]);
    let sum = poisoned(&[rows, d]);
    let dx = poisoned(&[rows, d]);
    let dx_acc = upload(&[rows, d], &prev);

    let g = gpu();
    let mut b = g.batch();
    layernorm::layer_norm(&mut b, &xg, None, &gg, &bg, eps, None, &y_plain).unwrap();
    layernorm::layer_norm(&mut b, &xg, Some(&rg), &gg, &bg, eps, Some(&sum), &y_res).unwrap();
    layernorm::layer_norm_backward(&mut b, &sum, &gg, eps, &dyg, &dx, false).unwrap();
    layernorm::layer_norm_backward(&mut b, &sum, &gg, eps, &dyg, &dx_acc, true).unwrap();
    b.finish().unwrap();

    let (x64, g64, b64) = (f64s(&x), f64s(&gamma), f64s(&beta));
    let s64: Vec<f64> = x.iter().zip(&r).map(|(a, b)| *a as f64 + *b as f64).collect();
    let what = format!("LN rows={rows} d={d}");
    let mut ef = assert_close(
        &format!("{what} y"),
        &download(&y_plain),
        &ops::layer_norm(&x64, rows, d, &g64, &b64, eps as f64),
        TOL,
    );
    ef = ef.max(assert_close(
        &format!("{what} y (residual)"),
        &download(&y_res),
        &ops::layer_norm(&s64, rows, d, &g64, &b64, eps as f64),
        TOL,
    ));
    // The saved sum is x + r rounded once to f32.
    let want_sum: Vec<f32> = x.iter().zip(&r).map(|(a, b)| a + b).collect();
    assert_eq!(bits(&download(&sum)), bits(&want_sum), "{what}: saved sum");
    let sum_f64 = f64s(&want_sum);
    let rdx = ops::layer_norm_backward(&sum_f64, &f64s(&dy), rows, d, &g64, eps as f64);
    let mut eb = assert_close(&format!("{what} dx"), &download(&dx), &rdx, TOL);
    let racc: Vec<f64> = rdx.iter().zip(&prev).map(|(a, b)| a + *b as f64).collect();
    eb = eb.max(assert_close(&format!("{what} dx (accumulate)"), &download(&dx_acc), &racc, TOL));
    (ef, eb)
}

#[test]
fn layer_norm_matches_reference_over_shapes() {
    // Every row layout on this device: the GPUs' (64–256 threads a row) and the CPU drivers' (8
    // threads with four partial sums each), the latter's backward over column quads where
    // d % 4 == 0 and, forced, a column at a time there too.
    for (cpu_rows, no_quads) in [(false, false), (true, false), (true, true)] {
        layernorm::FORCE_CPU_ROWS.with(|f| f.set(Some(cpu_rows)));
        layernorm::NO_QUADS.with(|f| f.set(no_quads));
        let (mut ef, mut eb, mut n) = (0f64, 0f64, 0);
        for (ri, &rows) in [1usize, 7, 33].iter().enumerate() {
            for (di, &d) in [32usize, 48, 100, 384, 768].iter().enumerate() {
                let (f, b) = layer_norm_case(rows, d, (ri * 10 + di) as u64);
                ef = ef.max(f);
                eb = eb.max(b);
                n += 1;
            }
        }
        for (i, &(rows, d)) in [(3usize, 4096usize), (2, 1), (5, 2049), (4, 3)].iter().enumerate() {
            let (f, b) = layer_norm_case(rows, d, 100 + i as u64);
            ef = ef.max(f);
            eb = eb.max(b);
            n += 1;
        }
        let layout = match (cpu_rows, no_quads) {
            (false, _) => "GPU",
            (true, false) => "CPU-driver, backward over quads",
            (true, true) => "CPU-driver, backward over columns",
        };
        println!("LayerNorm ({layout} rows): {n} shapes; max relative error forward {ef:.2e}, backward {eb:.2e}");
    }
    layernorm::FORCE_CPU_ROWS.with(|f| f.set(None));
    layernorm::NO_QUADS.with(|f| f.set(false));
}

#[test]
fn layer_norm_backward_is_deterministic_and_validates() {
    let mut rng = rng(42);
    let (rows, d) = (65, 768);
    let x = upload(&[rows, d], &rand_f32(&mut rng, rows * d, 1.0));
    let gamma = upload(&[d], &rand_f32(&mut rng, d, 1.0));
    let dy = upload(&[rows, d], &rand_f32(&mut rng, rows * d, 1.0));
    let run = || {
        let dx = poisoned(&[rows, d]);
        let mut b = gpu().batch();
        layernorm::layer_norm_backward(&mut b, &x, &gamma, 1e-12, &dy, &dx, false).unwrap();
        b.finish().unwrap();
        bits(&download(&dx))
    };
    assert_eq!(run(), run());
    // Shape and aliasing errors are reported, not dispatched.
    let mut b = gpu().batch();
    let wrong = poisoned(&[rows, d + 1]);
    assert!(layernorm::layer_norm_backward(&mut b, &x, &gamma, 1e-5, &dy, &wrong, false).is_err());
    assert!(layernorm::layer_norm_backward(&mut b, &x, &gamma, 1e-5, &dy, &dy, false).is_err());
    assert!(layernorm::layer_norm(&mut b, &x, None, &gamma, &gamma, 1e-5, None, &x).is_err());
    assert!(layernorm::layer_norm(&mut b, &x, None, &wrong, &gamma, 1e-5, None, &dy).is_err());
    assert!(b.is_empty());
}

/// `LN((x + r₀) + r₁)` in one dispatch against the f64 reference and, bit for bit, against the two
/// dispatches it replaces (`x + r₀` rounded to f32 first, then a two-term LayerNorm); the
/// backward's second output equals its first bit for bit, with and without accumulate. Both row
/// layouts, shapes that are not multiples of the workgroup, NaN-poisoned outputs.
#[test]
fn layer_norm_of_three_terms_and_backward_into_two() {
    for cpu_rows in [false, true] {
        layernorm::FORCE_CPU_ROWS.with(|f| f.set(Some(cpu_rows)));
        for (seed, &(rows, d)) in [(5usize, 37usize), (3, 384), (2, 771)].iter().enumerate() {
            let mut rng = rng(700 + seed as u64);
            let eps = 1e-12f32;
            let x = rand_f32(&mut rng, rows * d, 2.0);
            let r0 = rand_f32(&mut rng, rows * d, 1.0);
            let r1 = rand_f32(&mut rng, rows * d, 3.0);
            let gamma = rand_f32(&mut rng, d, 1.0);
            let beta = rand_f32(&mut rng, d, 1.0);
            let dy = rand_f32(&mut rng, rows * d, 1.0);
            let prev = rand_f32(&mut rng, rows * d, 1.0);
            let sh = [rows, d];
            let (xg, r0g, r1g) = (upload(&sh, &x), upload(&sh, &r0), upload(&sh, &r1));
            let (gg, bg, dyg) = (upload(&[d], &gamma), upload(&[d], &beta), upload(&sh, &dy));
            let x_r0: Vec<f32> = x.iter().zip(&r0).map(|(a, b)| a + b).collect();
            let x_r0g = upload(&sh, &x_r0);
            let (sum3, y3, sum2, y2) = (poisoned(&sh), poisoned(&sh), poisoned(&sh), poisoned(&sh));
            let (dx, dx2) = (poisoned(&sh), poisoned(&sh));
            let (dxa, dxa2) = (upload(&sh, &prev), poisoned(&sh));
            let mut b = gpu().batch();
            layernorm::layer_norm_sum(&mut b, &xg, &[&r0g, &r1g], &gg, &bg, eps, Some(&sum3), &y3).unwrap();
            layernorm::layer_norm(&mut b, &x_r0g, Some(&r1g), &gg, &bg, eps, Some(&sum2), &y2).unwrap();
            layernorm::layer_norm_backward_twice(&mut b, &sum3, &gg, eps, &dyg, &dx, Some(&dx2), false).unwrap();
            layernorm::layer_norm_backward_twice(&mut b, &sum3, &gg, eps, &dyg, &dxa, Some(&dxa2), true).unwrap();
            b.finish().unwrap();
            let what = format!("LN3 rows={rows} d={d} cpu_rows={cpu_rows}");
            assert_eq!(bits(&download(&sum3)), bits(&download(&sum2)), "{what}: saved sum");
            assert_eq!(bits(&download(&y3)), bits(&download(&y2)), "{what}: output");
            let want_sum: Vec<f32> = x_r0.iter().zip(&r1).map(|(a, b)| a + b).collect();
            assert_eq!(bits(&download(&sum3)), bits(&want_sum), "{what}: (x + r0) + r1");
            let s64 = f64s(&want_sum);
            let (g64, b64) = (f64s(&gamma), f64s(&beta));
            assert_close(
                &format!("{what} y"),
                &download(&y3),
                &ops::layer_norm(&s64, rows, d, &g64, &b64, eps as f64),
                TOL,
            );
            let rdx = ops::layer_norm_backward(&s64, &f64s(&dy), rows, d, &g64, eps as f64);
            assert_close(&format!("{what} dx"), &download(&dx), &rdx, TOL);
            assert_eq!(bits(&download(&dx)), bits(&download(&dx2)), "{what}: second output");
            let racc: Vec<f64> = rdx.iter().zip(&prev).map(|(a, b)| a + *b as f64).collect();
            assert_close(&format!("{what} dx (accumulate)"), &download(&dxa), &racc, TOL);
            assert_eq!(bits(&download(&dxa)), bits(&download(&dxa2)), "{what}: second output (accumulate)");
        }
    }
    layernorm::FORCE_CPU_ROWS.with(|f| f.set(None));
    // Too many residuals, and a second output that is the first or an input, are errors.
    let sh = [2, 8];
    let (x, g, dy) = (poisoned(&sh), poisoned(&[8]), poisoned(&sh));
    let (out, dx) = (poisoned(&sh), poisoned(&sh));
    let mut b = gpu().batch();
    assert!(layernorm::layer_norm_sum(&mut b, &x, &[&dy, &dy, &dy], &g, &g, 1e-5, None, &out).is_err());
    assert!(layernorm::layer_norm_backward_twice(&mut b, &x, &g, 1e-5, &dy, &dx, Some(&dx), false).is_err());
    assert!(layernorm::layer_norm_backward_twice(&mut b, &x, &g, 1e-5, &dy, &dx, Some(&dy), false).is_err());
    assert!(b.is_empty());
}

/// CPU drivers: a thread keeping its columns' values between the passes (`CACHED`, rows of up to
/// 8 × 128 values) gives the bits of reading them again, forward (three terms with the sum, one
/// term) and backward (written and accumulated), at the sizes around the switch.
#[test]
fn cached_rows_give_the_same_bits() {
    layernorm::FORCE_CPU_ROWS.with(|f| f.set(Some(true)));
    for (seed, &(rows, d)) in [(3usize, 37usize), (4, 384), (2, 771), (2, 1024), (2, 1025)].iter().enumerate() {
        let mut rng = rng(900 + seed as u64);
        let sh = [rows, d];
        let t = |rng: &mut rand::rngs::StdRng, n: usize, scale: f32| rand_f32(rng, n, scale);
        let (x, r0, r1, dy, prev) = (
            t(&mut rng, rows * d, 2.0),
            t(&mut rng, rows * d, 1.0),
            t(&mut rng, rows * d, 3.0),
            t(&mut rng, rows * d, 1.0),
            t(&mut rng, rows * d, 1.0),
        );
        let (gamma, beta) = (t(&mut rng, d, 1.0), t(&mut rng, d, 1.0));
        let run = |no_cache: bool| {
            layernorm::NO_CACHE.with(|f| f.set(no_cache));
            let (xg, r0g, r1g, dyg) = (upload(&sh, &x), upload(&sh, &r0), upload(&sh, &r1), upload(&sh, &dy));
            let (gg, bg) = (upload(&[d], &gamma), upload(&[d], &beta));
            let (sum, y3, y1, dx, dxa) =
                (poisoned(&sh), poisoned(&sh), poisoned(&sh), poisoned(&sh), upload(&sh, &prev));
            let mut b = gpu().batch();
            layernorm::layer_norm_sum(&mut b, &xg, &[&r0g, &r1g], &gg, &bg, 1e-12, Some(&sum), &y3).unwrap();
            layernorm::layer_norm(&mut b, &xg, None, &gg, &bg, 1e-5, None, &y1).unwrap();
            layernorm::layer_norm_backward(&mut b, &sum, &gg, 1e-12, &dyg, &dx, false).unwrap();
            layernorm::layer_norm_backward(&mut b, &sum, &gg, 1e-12, &dyg, &dxa, true).unwrap();
            b.finish().unwrap();
            layernorm::NO_CACHE.with(|f| f.set(false));
            [sum, y3, y1, dx, dxa].map(|g| download(&g))
        };
        let (cached, reread) = (run(false), run(true));
        for (name, a, b) in ["sum", "y (three terms)", "y (one term)", "dx", "dx (accumulate)"]
            .iter()
            .zip(&cached)
            .zip(&reread)
            .map(|((n, a), b)| (n, a, b))
        {
            assert!(a.iter().all(|v| v.is_finite()), "rows={rows} d={d}: {name} not finite");
            assert_eq!(bits(a), bits(b), "rows={rows} d={d}: {name}");
        }
    }
    layernorm::FORCE_CPU_ROWS.with(|f| f.set(None));
}
