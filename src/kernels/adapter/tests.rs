//! Fused bottleneck-adapter kernels vs the f64 reference.

use super::reference::Adapter;
use crate::kernels::adapter::{AdapterKernel, AdapterScratch, AdapterShape, AdapterWeights, Residual};
use crate::kernels::test_support::*;
use crate::types::Activation;

struct Case {
    t: usize,
    d: usize,
    m: usize,
    act: Activation,
    scale: f32,
}

struct Errors {
    y: f64,
    dx: f64,
    grads: f64,
}

/// Runs forward + backward on the GPU and the reference; returns the max relative errors.
fn run_case(c: &Case, seed: u64) -> Errors {
    let mut rng = rng(seed);
    let (t, d, m) = (c.t, c.d, c.m);
    // Weights and biases all random and of a size where every term matters.
    let wd = rand_f32(&mut rng, m * d, 1.0 / (d as f32).sqrt());
    let bd = rand_f32(&mut rng, m, 0.5);
    let wu = rand_f32(&mut rng, d * m, 1.0 / (m as f32).sqrt());
    let bu = rand_f32(&mut rng, d, 0.5);
    let x = rand_f32(&mut rng, t * d, 1.0);
    let dy = rand_f32(&mut rng, t * d, 1.0);

    let shape = AdapterShape { d, m, act: c.act, scale: c.scale };
    let w = AdapterWeights {
        w_down: upload(&[m, d], &wd),
        b_down: upload(&[m], &bd),
        w_up: upload(&[d, m], &wu),
        b_up: upload(&[d], &bu),
    };
    let xg = upload(&[t, d], &x);
    let dyg = upload(&[t, d], &dy);
    let y = poisoned(&[t, d]);
    let a = poisoned(&[t, m]);
    let dx = poisoned(&[t, d]);
    let grads = AdapterWeights {
        w_down: poisoned(&[m, d]),
        b_down: poisoned(&[m]),
        w_up: poisoned(&[d, m]),
        b_up: poisoned(&[d]),
    };
    let scratch = AdapterScratch { da: poisoned(&[t, m]), g: poisoned(&[t, m]) };

    let g = gpu();
    let mut batch = g.batch();
    // The fused kernels explicitly: the policy's default is the matmul path (tests_matmul.rs).
    shape.forward_with(AdapterKernel::Fused, &mut batch, &w, &xg, Residual::Input, &y, &a).unwrap();
    shape.backward_with(AdapterKernel::Fused, &mut batch, &w, &xg, false, &a, &dyg, &dx, &grads, &scratch).unwrap();
    batch.finish().unwrap();

    let r = Adapter {
        d,
        m,
        act: c.act,
        scale: c.scale as f64,
        w_down: f64s(&wd),
        b_down: f64s(&bd),
        w_up: f64s(&wu),
        b_up: f64s(&bu),
    };
    let (ry, ra) = r.forward(&f64s(&x), t);
    let (rdx, rg) = r.backward(&f64s(&x), &f64s(&dy), t);
    let what = format!("T={t} d={d} m={m} {:?} s={}", c.act, c.scale);
    let tol = 1e-4;
    let ey = assert_close(&format!("{what} y"), &download(&y), &ry, tol);
    assert_close(&format!("{what} a"), &download(&a), &ra, tol);
    let edx = assert_close(&format!("{what} dx"), &download(&dx), &rdx, tol);
    let mut eg = 0f64;
    eg = eg.max(assert_close(&format!("{what} dW_down"), &download(&grads.w_down), &rg.w_down, tol));
    eg = eg.max(assert_close(&format!("{what} db_down"), &download(&grads.b_down), &rg.b_down, tol));
    eg = eg.max(assert_close(&format!("{what} dW_up"), &download(&grads.w_up), &rg.w_up, tol));
    eg = eg.max(assert_close(&format!("{what} db_up"), &download(&grads.b_up), &rg.b_up, tol));
    Errors { y: ey, dx: edx, grads: eg }
}

#[test]
fn adapter_forward_backward_match_reference_over_shapes() {
    let acts = [Activation::Gelu, Activation::Relu, Activation::Silu];
    let mut worst = Errors { y: 0.0, dx: 0.0, grads: 0.0 };
    let mut n = 0;
    for (ti, &t) in [1usize, 7, 129].iter().enumerate() {
        for (di, &d) in [32usize, 48, 100, 768].iter().enumerate() {
            for (mi, &m) in [1usize, 3, 8, 64].iter().enumerate() {
                let act = acts[(ti + di + mi) % 3];
                let scale = if (ti + mi) % 2 == 0 { 1.0 } else { 0.5 };
                let e = run_case(&Case { t, d, m, act, scale }, (ti * 100 + di * 10 + mi) as u64);
                worst.y = worst.y.max(e.y);
                worst.dx = worst.dx.max(e.dx);
                worst.grads = worst.grads.max(e.grads);
                n += 1;
            }
        }
    }
    println!("{n} cases; max relative error: y {:.2e}, dx {:.2e}, weight grads {:.2e}", worst.y, worst.dx, worst.grads);
}

#[test]
fn adapter_every_activation_and_scaling() {
    for (i, act) in [Activation::Gelu, Activation::Relu, Activation::Silu].into_iter().enumerate() {
        for (j, scale) in [1.0f32, 0.25, 2.0].into_iter().enumerate() {
            run_case(&Case { t: 13, d: 40, m: 5, act, scale }, 1000 + (i * 3 + j) as u64);
        }
    }
}

/// Bottleneck wider than one workgroup chunk (64): several chunks, m up to d.
#[test]
fn adapter_wide_bottleneck_chunks() {
    for (i, &(t, d, m)) in [(9usize, 100usize, 65usize), (5, 130, 130), (17, 96, 200)].iter().enumerate() {
        run_case(&Case { t, d, m, act: Activation::Gelu, scale: 1.0 }, 2000 + i as u64);
    }
}

#[test]
fn adapter_large_hidden_size() {
    run_case(&Case { t: 3, d: 4096, m: 16, act: Activation::Silu, scale: 1.0 }, 3000);
}

/// Same inputs twice: identical bits for outputs and gradients.
#[test]
fn adapter_backward_is_deterministic() {
    let mut rng = rng(7);
    let (t, d, m) = (257, 96, 24);
    let shape = AdapterShape { d, m, act: Activation::Gelu, scale: 1.0 };
    let w = AdapterWeights {
        w_down: upload(&[m, d], &rand_f32(&mut rng, m * d, 0.2)),
        b_down: upload(&[m], &rand_f32(&mut rng, m, 0.2)),
        w_up: upload(&[d, m], &rand_f32(&mut rng, d * m, 0.2)),
        b_up: upload(&[d], &rand_f32(&mut rng, d, 0.2)),
    };
    let x = upload(&[t, d], &rand_f32(&mut rng, t * d, 1.0));
    let dy = upload(&[t, d], &rand_f32(&mut rng, t * d, 1.0));
    let run = || {
        let y = poisoned(&[t, d]);
        let a = poisoned(&[t, m]);
        let dx = poisoned(&[t, d]);
        let grads = AdapterWeights::zeros(&gpu(), d, m).unwrap();
        let scratch = AdapterScratch::new(&gpu(), t, m).unwrap();
        let mut b = gpu().batch();
        shape.forward(&mut b, &w, &x, &y, &a).unwrap();
        shape.backward(&mut b, &w, &x, &a, &dy, &dx, &grads, &scratch).unwrap();
        b.finish().unwrap();
        [
            download(&y),
            download(&dx),
            download(&grads.w_down),
            download(&grads.b_down),
            download(&grads.w_up),
            download(&grads.b_up),
        ]
        .map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>())
    };
    assert_eq!(run(), run());
}

/// The residual and both biases matter: dropping any of them from the reference breaks the match.
#[test]
fn adapter_test_detects_missing_residual_or_bias() {
    let mut rng = rng(11);
    let (t, d, m) = (5, 32, 4);
    let wd = rand_f32(&mut rng, m * d, 0.3);
    let bd = rand_f32(&mut rng, m, 0.5);
    let wu = rand_f32(&mut rng, d * m, 0.3);
    let bu = rand_f32(&mut rng, d, 0.5);
    let x = rand_f32(&mut rng, t * d, 1.0);
    let shape = AdapterShape { d, m, act: Activation::Gelu, scale: 1.0 };
    let w = AdapterWeights {
        w_down: upload(&[m, d], &wd),
        b_down: upload(&[m], &bd),
        w_up: upload(&[d, m], &wu),
        b_up: upload(&[d], &bu),
    };
    let y = poisoned(&[t, d]);
    let a = poisoned(&[t, m]);
    let mut b = gpu().batch();
    shape.forward(&mut b, &w, &upload(&[t, d], &x), &y, &a).unwrap();
    b.finish().unwrap();
    let y = download(&y);
    let full = Adapter {
        d,
        m,
        act: Activation::Gelu,
        scale: 1.0,
        w_down: f64s(&wd),
        b_down: f64s(&bd),
        w_up: f64s(&wu),
        b_up: f64s(&bu),
    };
    assert!(crate::kernels::reference::rel_err(&y, &full.forward(&f64s(&x), t).0) < 1e-5);
    let mut no_bu = full.clone();
    no_bu.b_up.iter_mut().for_each(|v| *v = 0.0);
    let mut no_bd = full.clone();
    no_bd.b_down.iter_mut().for_each(|v| *v = 0.0);
    for (name, r) in [("b_up", no_bu), ("b_down", no_bd)] {
        assert!(crate::kernels::reference::rel_err(&y, &r.forward(&f64s(&x), t).0) > 1e-3, "{name} has no effect");
    }
    // Without the residual, y - x would equal the output.
    let (ry, _) = full.forward(&f64s(&x), t);
    let no_residual: Vec<f64> = ry.iter().zip(&x).map(|(a, b)| a - *b as f64).collect();
    assert!(crate::kernels::reference::rel_err(&y, &no_residual) > 1e-2);
}

#[test]
fn adapter_rejects_wrong_shapes() {
    let g = gpu();
    let shape = AdapterShape { d: 8, m: 2, act: Activation::Relu, scale: 1.0 };
    let w = AdapterWeights::zeros(&g, 8, 2).unwrap();
    let x = upload(&[3, 7], &[0.0; 21]);
    let y = poisoned(&[3, 7]);
    let a = poisoned(&[3, 2]);
    let err = shape.forward(&mut g.batch(), &w, &x, &y, &a).unwrap_err().to_string();
    assert!(err.contains("hidden size 8"), "{err}");
    let bad = AdapterWeights::zeros(&g, 8, 3).unwrap();
    let x = upload(&[3, 8], &[0.0; 24]);
    let err = shape.forward(&mut g.batch(), &bad, &x, &poisoned(&[3, 8]), &a).unwrap_err().to_string();
    assert!(err.contains("w_down"), "{err}");
}

/// Pfeiffer-style separate residual and fusion-style no residual: y = r + s·(...) / s·(...), and
/// backward's dx is then only the path through the bottleneck.
#[test]
fn adapter_separate_and_no_residual() {
    let mut rng = rng(21);
    let (t, d, m) = (11, 40, 6);
    let wd = rand_f32(&mut rng, m * d, 0.3);
    let bd = rand_f32(&mut rng, m, 0.5);
    let wu = rand_f32(&mut rng, d * m, 0.3);
    let bu = rand_f32(&mut rng, d, 0.5);
    let x = rand_f32(&mut rng, t * d, 1.0);
    let r = rand_f32(&mut rng, t * d, 1.0);
    let dy = rand_f32(&mut rng, t * d, 1.0);
    let shape = AdapterShape { d, m, act: Activation::Silu, scale: 0.5 };
    let w = AdapterWeights {
        w_down: upload(&[m, d], &wd),
        b_down: upload(&[m], &bd),
        w_up: upload(&[d, m], &wu),
        b_up: upload(&[d], &bu),
    };
    let reference = Adapter {
        d,
        m,
        act: Activation::Silu,
        scale: 0.5,
        w_down: f64s(&wd),
        b_down: f64s(&bd),
        w_up: f64s(&wu),
        b_up: f64s(&bu),
    };
    let (ry, _) = reference.forward(&f64s(&x), t);
    let (rdx, rg) = reference.backward(&f64s(&x), &f64s(&dy), t);
    let rdx_bottleneck: Vec<f64> = rdx.iter().zip(&dy).map(|(a, b)| a - *b as f64).collect();
    let (xg, rg_t, dyg) = (upload(&[t, d], &x), upload(&[t, d], &r), upload(&[t, d], &dy));
    for (name, residual, offset) in [("tensor", Residual::Tensor(&rg_t), Some(&r)), ("none", Residual::None, None)] {
        let y = poisoned(&[t, d]);
        let a = poisoned(&[t, m]);
        let dx = poisoned(&[t, d]);
        let grads = AdapterWeights::zeros(&gpu(), d, m).unwrap();
        let scratch = AdapterScratch::new(&gpu(), t, m).unwrap();
        let mut b = gpu().batch();
        shape.forward_residual(&mut b, &w, &xg, residual, &y, &a).unwrap();
        shape.backward_residual(&mut b, &w, &xg, true, &a, &dyg, &dx, &grads, &scratch).unwrap();
        b.finish().unwrap();
        let want: Vec<f64> = ry
            .iter()
            .zip(&x)
            .enumerate()
            .map(|(i, (yv, xv))| yv - *xv as f64 + offset.map_or(0.0, |r| r[i] as f64))
            .collect();
        assert_close(&format!("{name} y"), &download(&y), &want, 1e-5);
        assert_close(&format!("{name} dx"), &download(&dx), &rdx_bottleneck, 1e-5);
        assert_close(&format!("{name} dW_down"), &download(&grads.w_down), &rg.w_down, 1e-5);
        assert_close(&format!("{name} dW_up"), &download(&grads.w_up), &rg.w_up, 1e-5);
    }
}

/// GPU timestamps where the device has them (lavapipe does): a positive duration for real work.
#[test]
fn batch_timing_reports_gpu_time() {
    let g = gpu();
    let (t, d, m) = (64, 96, 16);
    let shape = AdapterShape { d, m, act: Activation::Gelu, scale: 1.0 };
    let w = AdapterWeights::zeros(&g, d, m).unwrap();
    let x = upload(&[t, d], &vec![0.5; t * d]);
    let (y, a) = (poisoned(&[t, d]), poisoned(&[t, m]));
    let mut b = g.batch();
    shape.forward(&mut b, &w, &x, &y, &a).unwrap();
    let timing = b.submit_timed().unwrap();
    if g.has(wgpu::Features::TIMESTAMP_QUERY) {
        let s = timing.expect("timestamps supported").gpu_seconds;
        assert!(s > 0.0 && s < 10.0, "implausible GPU time {s}");
    } else {
        assert!(timing.is_none());
    }
    // With zero weights the adapter is the identity.
    assert_eq!(download(&y), vec![0.5; t * d]);
}
