//! The shared matmul kernel (`C = act(alpha·A·B + bias + beta·C)`, transposes as strides) vs the
//! f64 reference, on shapes that are not multiples of its 32×32 workgroup tile.

use super::reference;
use crate::kernels::matmul::InnerBatch;
use crate::kernels::matmul::{Matmul, View};
use crate::kernels::reference::{matmul, transpose};
use crate::kernels::test_support::*;
use crate::types::Activation;

const TOL: f64 = 1e-5;

/// (m, n, k): C is m×n, the inner dimension k.
const SHAPES: [(usize, usize, usize); 4] = [(1, 1, 1), (5, 7, 3), (33, 65, 17), (100, 31, 129)];

/// How A and B are stored: plain row-major `[m, k]` / `[k, n]`, or as their transposes
/// (`[k, m]` / `[n, k]`, e.g. an nn.Linear weight) read through `View::transposed`.
#[derive(Clone, Copy, Debug)]
struct Layout {
    a_t: bool,
    b_t: bool,
}

const LAYOUTS: [Layout; 4] = [
    Layout { a_t: false, b_t: false }, // A·B
    Layout { a_t: false, b_t: true },  // A·Bᵀ (nn.Linear)
    Layout { a_t: true, b_t: false },  // Aᵀ·B (weight gradients)
    Layout { a_t: true, b_t: true },   // Aᵀ·Bᵀ
];

/// Stores the logical `[rows, cols]` matrix `x` as itself or as its transpose.
fn store(x: &[f32], rows: usize, cols: usize, transposed: bool) -> Vec<f32> {
    if transposed {
        transpose(&f64s(x), rows, cols).into_iter().map(|v| v as f32).collect()
    } else {
        x.to_vec()
    }
}

fn view<'a>(t: &'a crate::gpu::GpuTensor, rows: usize, cols: usize, transposed: bool) -> View<'a> {
    // A stored transpose is `[cols, rows]` row-major: its row stride is `rows`.
    if transposed {
        View::transposed(t, rows)
    } else {
        View::rows(t, cols)
    }
}

/// C = A·B for every shape and operand layout, into a NaN-poisoned C (beta = 0 must not read it).
#[test]
fn matmul_shapes_and_transposes() {
    let mut worst = 0f64;
    for (si, &(m, n, k)) in SHAPES.iter().enumerate() {
        for (li, &lay) in LAYOUTS.iter().enumerate() {
            let mut rng = rng((si * 10 + li) as u64);
            let a = rand_f32(&mut rng, m * k, 1.0);
            let b = rand_f32(&mut rng, k * n, 1.0);
            let at = upload(&[a.len()], &store(&a, m, k, lay.a_t));
            let bt = upload(&[b.len()], &store(&b, k, n, lay.b_t));
            let c = poisoned(&[m, n]);
            let mut batch = gpu().batch();
            Matmul::new(m, n, k)
                .run(&mut batch, view(&at, m, k, lay.a_t), view(&bt, k, n, lay.b_t), None, View::rows(&c, n))
                .unwrap();
            batch.finish().unwrap();
            let want = matmul(&f64s(&a), &f64s(&b), m, k, n);
            worst = worst.max(assert_close(&format!("{m}×{n}×{k} {lay:?}"), &download(&c), &want, TOL));
        }
    }
    println!("shapes × layouts: max relative error {worst:.2e}");
}

/// A batch of products through offsets and batch strides with gaps; elements between the batch's
/// matrices in C are left alone.
#[test]
fn matmul_batched_with_offsets_and_strides() {
    let (nb, m, n, k) = (3usize, 9usize, 37usize, 20usize);
    let mut rng = rng(100);
    let (a_off, a_sb) = (5, m * k + 3);
    let (b_off, b_sb) = (2, k * n + 11);
    let (c_off, c_sb) = (4, m * n + 6);
    let a_all = rand_f32(&mut rng, a_off + nb * a_sb, 1.0);
    let b_all = rand_f32(&mut rng, b_off + nb * b_sb, 1.0);
    let sentinel = 7.5f32;
    let c_all = vec![sentinel; c_off + nb * c_sb];
    let (at, bt, ct) = (upload(&[a_all.len()], &a_all), upload(&[b_all.len()], &b_all), upload(&[c_all.len()], &c_all));
    // A·Bᵀ per batch: A row-major [m, k], B stored [n, k].
    let mut batch = gpu().batch();
    Matmul::new(m, n, k)
        .batch(nb)
        .run(
            &mut batch,
            View::rows(&at, k).offset(a_off).batch_stride(a_sb),
            View::transposed(&bt, k).offset(b_off).batch_stride(b_sb),
            None,
            View::rows(&ct, n).offset(c_off).batch_stride(c_sb),
        )
        .unwrap();
    batch.finish().unwrap();
    let got = download(&ct);
    let mut worst = 0f64;
    let mut written = vec![false; got.len()];
    for z in 0..nb {
        let a = f64s(&a_all[a_off + z * a_sb..][..m * k]);
        let b_nk = f64s(&b_all[b_off + z * b_sb..][..n * k]);
        let want = matmul(&a, &transpose(&b_nk, n, k), m, k, n);
        let c = &got[c_off + z * c_sb..][..m * n];
        worst = worst.max(assert_close(&format!("batch {z}"), c, &want, TOL));
        written[c_off + z * c_sb..][..m * n].iter_mut().for_each(|w| *w = true);
    }
    for (i, (&v, &w)) in got.iter().zip(&written).enumerate() {
        assert!(w || v == sentinel, "element {i} outside the batch's matrices was overwritten with {v}");
    }
    println!("batched: max relative error {worst:.2e}");
}

/// C = act(alpha·A·B + bias + beta·C) for each activation, a bias read from an offset, and beta
/// accumulating into C's previous contents.
#[test]
fn matmul_bias_alpha_beta_and_activation() {
    let (m, n, k) = (13usize, 70usize, 33usize);
    let acts = [Activation::Identity, Activation::Gelu, Activation::Relu, Activation::Silu, Activation::Tanh];
    let mut worst = 0f64;
    for (i, act_kind) in acts.into_iter().enumerate() {
        for (alpha, beta, with_bias) in [(1.0f32, 0.0f32, true), (0.5, 1.0, false), (-1.25, -0.5, true)] {
            let mut rng = rng(200 + i as u64);
            let a = rand_f32(&mut rng, m * k, 1.0);
            let b = rand_f32(&mut rng, k * n, 1.0);
            let bias_off = 3;
            let bias = rand_f32(&mut rng, bias_off + n, 1.0);
            let c0 = rand_f32(&mut rng, m * n, 1.0);
            let (at, bt, bias_t) = (upload(&[m, k], &a), upload(&[k, n], &b), upload(&[bias.len()], &bias));
            // beta = 0 must not read C: poison it then.
            let c = if beta == 0.0 { poisoned(&[m, n]) } else { upload(&[m, n], &c0) };
            let mut batch = gpu().batch();
            Matmul::new(m, n, k)
                .alpha(alpha)
                .beta(beta)
                .act(act_kind)
                .run(
                    &mut batch,
                    View::rows(&at, k),
                    View::rows(&bt, n),
                    with_bias.then_some((&bias_t, bias_off)),
                    View::rows(&c, n),
                )
                .unwrap();
            batch.finish().unwrap();
            let ab = matmul(&f64s(&a), &f64s(&b), m, k, n);
            let want =
                reference::epilogue(&ab, n, alpha, beta, &c0, with_bias.then_some((&bias[..], bias_off)), act_kind);
            let what = format!("{act_kind:?} alpha={alpha} beta={beta} bias={with_bias}");
            worst = worst.max(assert_close(&what, &download(&c), &want, TOL));
        }
    }
    println!("bias/alpha/beta/activation: max relative error {worst:.2e}");
}

/// Same product twice: identical bits (one thread sums each output in a fixed order).
#[test]
fn matmul_is_deterministic() {
    let (m, n, k) = (45usize, 52usize, 300usize);
    let mut rng = rng(300);
    let a = upload(&[k, m], &rand_f32(&mut rng, k * m, 1.0));
    let b = upload(&[k, n], &rand_f32(&mut rng, k * n, 1.0));
    let run = || {
        let c = poisoned(&[m, n]);
        let mut batch = gpu().batch();
        Matmul::new(m, n, k)
            .run(&mut batch, View::transposed(&a, m), View::rows(&b, n), None, View::rows(&c, n))
            .unwrap();
        batch.finish().unwrap();
        download(&c).iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn matmul_rejects_views_past_the_end() {
    let g = gpu();
    let a = upload(&[4, 3], &[0.0; 12]);
    let b = upload(&[3, 5], &[0.0; 15]);
    let c = poisoned(&[4, 5]);
    let mut batch = g.batch();
    // k = 4 reads past A's rows of 3.
    let err = Matmul::new(4, 5, 4)
        .run(&mut batch, View::rows(&a, 3), View::rows(&b, 5), None, View::rows(&c, 5))
        .unwrap_err()
        .to_string();
    assert!(err.contains("operand A") || err.contains("operand B"), "{err}");
    let err = Matmul::new(4, 5, 3)
        .run(&mut batch, View::rows(&a, 3), View::rows(&b, 5), None, View::rows(&c, 5).offset(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("operand C"), "{err}");
    let bias = upload(&[4], &[0.0; 4]);
    let err = Matmul::new(4, 5, 3)
        .run(&mut batch, View::rows(&a, 3), View::rows(&b, 5), Some((&bias, 0)), View::rows(&c, 5))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bias"), "{err}");
    assert!(batch.is_empty(), "a rejected product must queue nothing");
}

/// `C[o, i] = alpha · A[o, i] · B[o, i] + beta · C` over an outer × inner batch with strides that
/// interleave the operands the way attention does, vs a plain f64 loop.
#[test]
fn matmul_inner_batch_matches_reference() {
    let mut rng = rng(600);
    for &(outer, inner, m, n, k, beta) in
        [(2usize, 3usize, 5usize, 7usize, 9usize, 0.0f32), (1, 4, 33, 6, 3, 0.5), (3, 2, 1, 1, 17, 0.0)].iter()
    {
        // A: [outer, m, inner, k] (inner = heads between rows); B: [outer, inner, n, k] read transposed;
        // C: [outer, inner, m, n].
        let (a_len, b_len, c_len) = (outer * m * inner * k, outer * inner * n * k, outer * inner * m * n);
        let a = rand_f32(&mut rng, a_len, 1.0);
        let bm = rand_f32(&mut rng, b_len, 1.0);
        let c0 = rand_f32(&mut rng, c_len, 1.0);
        let (ag, bg) = (upload(&[a_len], &a), upload(&[b_len], &bm));
        let cg = if beta == 0.0 { poisoned(&[c_len]) } else { upload(&[c_len], &c0) };
        let av = View { t: &ag, off: 0, s_row: inner * k, s_col: 1, s_batch: m * inner * k };
        let bv = View { t: &bg, off: 0, s_row: 1, s_col: k, s_batch: inner * n * k };
        let cv = View { t: &cg, off: 0, s_row: n, s_col: 1, s_batch: inner * m * n };
        let ib = InnerBatch { count: inner, a: k, b: n * k, c: m * n };
        let mut b = gpu().batch();
        Matmul::new(m, n, k).batch(outer).alpha(0.75).beta(beta).run_inner(&mut b, ib, av, bv, None, cv).unwrap();
        // A view one element too long is refused.
        let short = upload(&[a_len - 1], &a[..a_len - 1]);
        let sv = View { t: &short, ..av };
        assert!(Matmul::new(m, n, k).batch(outer).run_inner(&mut b, ib, sv, bv, None, cv).is_err());
        b.finish().unwrap();
        let want = reference::inner_batch(&a, &bm, &c0, (outer, inner, m, n, k), 0.75, beta);
        assert_close(&format!("inner-batch matmul {outer}x{inner} {m}x{n}x{k}"), &download(&cg), &want, TOL);
    }
}

/// `linear` over stacked weights (the fused Q|K|V projection) and `linear_parts` (one product per
/// block of rows, the CPU drivers' path) give the same bits, and both match the f64 reference;
/// the device's default variant, ragged sizes, NaN-poisoned outputs; parts must divide the rows.
#[test]
fn linear_parts_is_linear_bit_for_bit() {
    use crate::kernels::matmul::{linear, linear_parts};
    let mut rng = rng(77);
    for (t, inp, part) in [(1usize, 3usize, 1usize), (37, 20, 13), (70, 48, 33)] {
        let out = 3 * part;
        let x = rand_f32(&mut rng, t * inp, 1.0);
        let w = rand_f32(&mut rng, out * inp, 1.0);
        let bias = rand_f32(&mut rng, out, 1.0);
        let (xg, wg, bg) = (upload(&[t, inp], &x), upload(&[out, inp], &w), upload(&[out], &bias));
        let (one, three) = (poisoned(&[t, out]), poisoned(&[t, out]));
        let mut b = gpu().batch();
        linear(&mut b, &xg, &wg, Some(&bg), &one).unwrap();
        linear_parts(&mut b, &xg, &wg, Some(&bg), &three, 3).unwrap();
        // 3·part rows, part odd: no two equal halves.
        assert!(linear_parts(&mut b, &xg, &wg, Some(&bg), &three, 2).is_err());
        b.finish().unwrap();
        let (one, three) = (download(&one), download(&three));
        assert_eq!(bits(&one), bits(&three), "t={t} in={inp} out={out}");
        // y = x·wᵀ + bias in f64.
        let mut want = matmul(&f64s(&x), &transpose(&f64s(&w), out, inp), t, inp, out);
        for (i, v) in want.iter_mut().enumerate() {
            *v += bias[i % out] as f64;
        }
        assert_close(&format!("linear t={t} in={inp} out={out}"), &one, &want, TOL);
    }
}
