//! Every matmul kernel variant (`MatmulVariant`, forced per product) vs the f64 reference, on
//! shapes that are not multiples of any tile (1×1×1, 5×7×3, 33×65×17, 100×31×129, odd K), every
//! operand layout, NaN-poisoned outputs, bias / alpha / beta / activations, batches with offsets and
//! gaps, and the inner (attention) batch. A variant this GPU cannot run is skipped with a note.
//! These tests name their variant, so they hold whatever `PEFT_MATMUL_VARIANT` says.
//!
//! The f16-input variants (`f16`, `coop`) are compared with a reference computed in f64 from the
//! inputs rounded to f16 (what they are specified to multiply), at the same f32 tolerance: the
//! products of f16 values are exact in f32, so only f32 summation error remains. Their error
//! against the unrounded inputs is checked separately against the f16 rounding bound.

use super::reference;
use crate::kernels::matmul::{default_variant, InnerBatch, Matmul, MatmulVariant, View};
use crate::kernels::reference::{matmul, transpose};
use crate::kernels::test_support::*;
use crate::types::Activation;

const TOL: f64 = 1e-5;

/// The inputs as `v` multiplies them: rounded to f16 (nearest even) for the f16-input variants.
fn as_used(v: MatmulVariant, x: &[f32]) -> Vec<f32> {
    if v.f16_inputs() {
        x.iter().map(|&y| half::f16::from_f32(y).to_f32()).collect()
    } else {
        x.to_vec()
    }
}

/// (m, n, k): C is m×n, the inner dimension k. None is a multiple of 4 except the 64×64×64 tile.
const SHAPES: [(usize, usize, usize); 8] =
    [(1, 1, 1), (5, 7, 3), (33, 65, 17), (100, 31, 129), (9, 70, 13), (64, 64, 64), (65, 33, 1), (2, 97, 35)];

/// The variants this GPU runs (the others are reported and skipped).
fn variants() -> Vec<MatmulVariant> {
    let g = gpu();
    MatmulVariant::ALL
        .into_iter()
        .filter(|v| {
            let ok = v.is_supported(&g);
            if !ok {
                println!("skipping matmul variant {v}: not supported by {}", g.description.summary());
            }
            ok
        })
        .collect()
}

/// Stores the logical `[rows, cols]` matrix `x` as itself or as its transpose.
fn store(x: &[f32], rows: usize, cols: usize, transposed: bool) -> Vec<f32> {
    if transposed {
        transpose(&f64s(x), rows, cols).into_iter().map(|v| v as f32).collect()
    } else {
        x.to_vec()
    }
}

fn view<'a>(t: &'a crate::gpu::GpuTensor, rows: usize, cols: usize, transposed: bool) -> View<'a> {
    if transposed {
        View::transposed(t, rows)
    } else {
        View::rows(t, cols)
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// C = A·B for every shape, layout (A·B, A·Bᵀ, Aᵀ·B, Aᵀ·Bᵀ) and variant, into NaN-poisoned C.
#[test]
fn variants_shapes_and_transposes() {
    for v in variants() {
        let mut worst = 0f64;
        for (si, &(m, n, k)) in SHAPES.iter().enumerate() {
            for (li, (a_t, b_t)) in [(false, false), (false, true), (true, false), (true, true)].into_iter().enumerate()
            {
                let mut rng = rng((si * 10 + li) as u64 + 1000);
                let a = rand_f32(&mut rng, m * k, 1.0);
                let b = rand_f32(&mut rng, k * n, 1.0);
                let at = upload(&[a.len()], &store(&a, m, k, a_t));
                let bt = upload(&[b.len()], &store(&b, k, n, b_t));
                let c = poisoned(&[m, n]);
                let mut batch = gpu().batch();
                Matmul::new(m, n, k)
                    .variant(v)
                    .run(&mut batch, view(&at, m, k, a_t), view(&bt, k, n, b_t), None, View::rows(&c, n))
                    .unwrap();
                batch.finish().unwrap();
                let want = matmul(&f64s(&as_used(v, &a)), &f64s(&as_used(v, &b)), m, k, n);
                let what = format!("{v}: {m}×{n}×{k} Aᵀ={a_t} Bᵀ={b_t}");
                worst = worst.max(assert_close(&what, &download(&c), &want, TOL));
            }
        }
        println!("{v}: shapes × layouts, max relative error {worst:.2e}");
    }
}

/// C = act(alpha·A·B + bias + beta·C) with each activation, bias from an offset, beta reading C.
#[test]
fn variants_bias_alpha_beta_and_activation() {
    let acts = [Activation::Identity, Activation::Gelu, Activation::Relu, Activation::Silu, Activation::Tanh];
    for v in variants() {
        let mut worst = 0f64;
        for &(m, n, k) in &[(13usize, 70usize, 33usize), (33, 5, 6)] {
            for (i, act_kind) in acts.into_iter().enumerate() {
                for (alpha, beta, with_bias) in [(1.0f32, 0.0f32, true), (0.5, 1.0, false), (-1.25, -0.5, true)] {
                    let mut rng = rng(2000 + i as u64 + m as u64);
                    let a = rand_f32(&mut rng, m * k, 1.0);
                    let b = rand_f32(&mut rng, k * n, 1.0);
                    let bias_off = 3;
                    let bias = rand_f32(&mut rng, bias_off + n + 2, 1.0);
                    let c0 = rand_f32(&mut rng, m * n, 1.0);
                    let (at, bt, bias_t) =
                        (upload(&[m, k], &a), upload(&[n, k], &store(&b, k, n, true)), upload(&[bias.len()], &bias));
                    let c = if beta == 0.0 { poisoned(&[m, n]) } else { upload(&[m, n], &c0) };
                    let mut batch = gpu().batch();
                    Matmul::new(m, n, k)
                        .alpha(alpha)
                        .beta(beta)
                        .act(act_kind)
                        .variant(v)
                        .run(
                            &mut batch,
                            View::rows(&at, k),
                            View::transposed(&bt, k),
                            with_bias.then_some((&bias_t, bias_off)),
                            View::rows(&c, n),
                        )
                        .unwrap();
                    batch.finish().unwrap();
                    let ab = matmul(&f64s(&as_used(v, &a)), &f64s(&as_used(v, &b)), m, k, n);
                    let bias = with_bias.then_some((&bias[..], bias_off));
                    let want = reference::epilogue(&ab, n, alpha, beta, &c0, bias, act_kind);
                    let what = format!("{v}: {m}×{n}×{k} {act_kind:?} alpha={alpha} beta={beta} bias={with_bias}");
                    worst = worst.max(assert_close(&what, &download(&c), &want, TOL));
                }
            }
        }
        println!("{v}: bias/alpha/beta/activation, max relative error {worst:.2e}");
    }
}

/// A batch of products through offsets and batch strides with gaps; C's elements between the
/// matrices keep their sentinel.
#[test]
fn variants_batched_with_offsets_and_strides() {
    for v in variants() {
        for &(nb, m, n, k) in &[(3usize, 9usize, 37usize, 20usize), (5, 33, 3, 7), (2, 1, 65, 129)] {
            let mut rng = rng(3000 + m as u64);
            let (a_off, a_sb) = (5, m * k + 3);
            let (b_off, b_sb) = (2, k * n + 11);
            let (c_off, c_sb) = (4, m * n + 6);
            let a_all = rand_f32(&mut rng, a_off + nb * a_sb, 1.0);
            let b_all = rand_f32(&mut rng, b_off + nb * b_sb, 1.0);
            let sentinel = 7.5f32;
            let c_all = vec![sentinel; c_off + nb * c_sb];
            let (at, bt, ct) =
                (upload(&[a_all.len()], &a_all), upload(&[b_all.len()], &b_all), upload(&[c_all.len()], &c_all));
            // Aᵀ·B per batch (A stored [k, m], B [k, n]), the weight-gradient layout.
            let mut batch = gpu().batch();
            Matmul::new(m, n, k)
                .batch(nb)
                .variant(v)
                .run(
                    &mut batch,
                    View::transposed(&at, m).offset(a_off).batch_stride(a_sb),
                    View::rows(&bt, n).offset(b_off).batch_stride(b_sb),
                    None,
                    View::rows(&ct, n).offset(c_off).batch_stride(c_sb),
                )
                .unwrap();
            batch.finish().unwrap();
            let got = download(&ct);
            let mut written = vec![false; got.len()];
            for z in 0..nb {
                let a_km = f64s(&as_used(v, &a_all[a_off + z * a_sb..][..m * k]));
                let b = f64s(&as_used(v, &b_all[b_off + z * b_sb..][..k * n]));
                let want = matmul(&transpose(&a_km, k, m), &b, m, k, n);
                let c = &got[c_off + z * c_sb..][..m * n];
                assert_close(&format!("{v}: batch {z} of {nb}×{m}×{n}×{k}"), c, &want, TOL);
                written[c_off + z * c_sb..][..m * n].iter_mut().for_each(|w| *w = true);
            }
            for (i, (&x, &w)) in got.iter().zip(&written).enumerate() {
                assert!(w || x == sentinel, "{v}: element {i} outside the batch's matrices was overwritten with {x}");
            }
        }
    }
}

/// The inner batch (attention's heads): A [outer, m, inner, k], B [outer, inner, n, k] read
/// transposed, C [outer, inner, m, n], alpha and beta.
#[test]
fn variants_inner_batch() {
    for v in variants() {
        let mut rng = rng(4000);
        for &(outer, inner, m, n, k, beta) in &[
            (2usize, 3usize, 5usize, 7usize, 9usize, 0.0f32),
            (1, 4, 33, 6, 3, 0.5),
            (3, 2, 1, 1, 17, 0.0),
            (2, 12, 32, 32, 32, 0.0),
            (1, 2, 40, 33, 5, 1.0),
        ] {
            let (a_len, b_len, c_len) = (outer * m * inner * k, outer * inner * n * k, outer * inner * m * n);
            let a = rand_f32(&mut rng, a_len, 1.0);
            let bm = rand_f32(&mut rng, b_len, 1.0);
            let c0 = rand_f32(&mut rng, c_len, 1.0);
            let (ag, bg) = (upload(&[a_len], &a), upload(&[b_len], &bm));
            let (a, bm) = (as_used(v, &a), as_used(v, &bm));
            let cg = if beta == 0.0 { poisoned(&[c_len]) } else { upload(&[c_len], &c0) };
            let av = View { t: &ag, off: 0, s_row: inner * k, s_col: 1, s_batch: m * inner * k };
            let bv = View { t: &bg, off: 0, s_row: 1, s_col: k, s_batch: inner * n * k };
            let cv = View { t: &cg, off: 0, s_row: n, s_col: 1, s_batch: inner * m * n };
            let ib = InnerBatch { count: inner, a: k, b: n * k, c: m * n };
            let mut b = gpu().batch();
            Matmul::new(m, n, k)
                .batch(outer)
                .alpha(0.75)
                .beta(beta)
                .variant(v)
                .run_inner(&mut b, ib, av, bv, None, cv)
                .unwrap();
            b.finish().unwrap();
            let want = reference::inner_batch(&a, &bm, &c0, (outer, inner, m, n, k), 0.75, beta);
            let what = format!("{v}: inner batch {outer}×{inner} {m}×{n}×{k} beta={beta}");
            assert_close(&what, &download(&cg), &want, TOL);
        }
    }
}

/// Each variant twice on the same product gives the same bits; the variants that share the fma
/// chain (all but `basic`) agree bit for bit on a CPU driver and to rounding elsewhere.
#[test]
fn variants_are_deterministic_and_agree() {
    let (m, n, k) = (45usize, 70usize, 300usize);
    let mut rng = rng(5000);
    let a = upload(&[k, m], &rand_f32(&mut rng, k * m, 1.0));
    let b = upload(&[n, k], &rand_f32(&mut rng, n * k, 1.0));
    let bias = upload(&[n], &rand_f32(&mut rng, n, 1.0));
    let run = |v: MatmulVariant| {
        let c = poisoned(&[m, n]);
        let mut batch = gpu().batch();
        Matmul::new(m, n, k)
            .act(Activation::Gelu)
            .variant(v)
            .run(&mut batch, View::transposed(&a, m), View::transposed(&b, k), Some((&bias, 0)), View::rows(&c, n))
            .unwrap();
        batch.finish().unwrap();
        download(&c)
    };
    let cpu = gpu().is_cpu();
    let mut first: Option<(MatmulVariant, Vec<f32>)> = None;
    for v in variants() {
        let x = run(v);
        assert_eq!(bits(&x), bits(&run(v)), "{v}: two runs differ");
        // basic has another fma chain; the f16-input variants multiply other numbers.
        if v == MatmulVariant::Basic || v.f16_inputs() {
            continue;
        }
        match &first {
            None => first = Some((v, x)),
            Some((v0, x0)) => {
                if cpu {
                    assert_eq!(bits(&x), bits(x0), "{v} and {v0} differ");
                } else {
                    let r: Vec<f64> = x0.iter().map(|&y| y as f64).collect();
                    assert_close(&format!("{v} vs {v0}"), &x, &r, 1e-6);
                }
            }
        }
    }
}

/// The device rule (no PEFT_MATMUL_VARIANT): CPU drivers with subgroups of 8 (lavapipe) get the
/// subgroup kernel, other CPU drivers the register tile, discrete GPUs the vec4 workgroup-memory
/// kernel (`smem`), other GPUs the first workgroup-memory kernel (`tiled`); never an f16 variant.
#[test]
fn auto_variant_follows_the_device() {
    let g = gpu();
    let info = &g.description.info;
    let want = match info.device_type {
        wgpu::DeviceType::Cpu => {
            if g.has(wgpu::Features::SUBGROUP) && info.subgroup_min_size == 8 && info.subgroup_max_size == 8 {
                MatmulVariant::Subgroup
            } else {
                MatmulVariant::Register
            }
        }
        wgpu::DeviceType::DiscreteGpu => MatmulVariant::Smem,
        _ => MatmulVariant::Tiled,
    };
    assert_eq!(MatmulVariant::auto(&g), want);
    println!("{}: auto variant {want}, in use {}", g.description.summary(), default_variant(&g).unwrap());
}
