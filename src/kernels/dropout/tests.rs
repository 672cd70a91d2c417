//! The dropout kernels: the GPU's draws bit-equal to the CPU Philox, the generator's statistics
//! (keep fraction within binomial bounds, independence across keys and neighbours), chunks drawing
//! the whole batch's masks, and forward / backward against the f64 reference on ragged shapes
//! with NaN-poisoned outputs.

use super::reference as r;
use super::{apply, apply_pair, draws, MaskKey, MaskLayout, Rate, Site};
use crate::kernels::test_support::*;

fn key(seed: u64, step: u32, layer: u32, site: Site) -> MaskKey {
    MaskKey { seed, step, layer, site }
}

fn gpu_draws(k: MaskKey, layout: MaskLayout, n: usize) -> Vec<u32> {
    let out = poisoned(&[n]);
    let mut b = gpu().batch();
    draws(&mut b, k, layout, &out).unwrap();
    b.finish().unwrap();
    bits(&download(&out))
}

fn gpu_apply(k: MaskKey, rate: Rate, layout: MaskLayout, x: &[f32]) -> Vec<f32> {
    let (xg, out) = (upload(&[x.len()], x), poisoned(&[x.len()]));
    let mut b = gpu().batch();
    apply(&mut b, k, rate, layout, &xg, &out).unwrap();
    b.finish().unwrap();
    download(&out)
}

#[test]
fn gpu_draws_equal_the_cpu_philox() {
    let layouts = [
        MaskLayout::Rows { cols: 129, row0: 0 },
        MaskLayout::Rows { cols: 7, row0: 1000 },
        MaskLayout::RowsEvery { cols: 65, row0: 17, every: 17 },
        MaskLayout::Attention { heads: 3, seq: 13, row0: 26 },
    ];
    for (i, layout) in layouts.into_iter().enumerate() {
        let n = match layout {
            MaskLayout::Rows { cols, .. } | MaskLayout::RowsEvery { cols, .. } => cols * 37,
            MaskLayout::Attention { heads, seq, .. } => 2 * heads * seq * seq,
        };
        let k = key(0x1234_5678_9abc_def0 + i as u64, 17 + i as u32, 5, Site::AttentionProbs);
        let want: Vec<u32> = (0..n).map(|e| r::draw(k, layout, e)).collect();
        assert_eq!(gpu_draws(k, layout, n), want, "draws of {layout:?}");
    }
}

/// The threads split into (row, group) by `divmod` without an integer division (FAST_DIVMOD)
/// up to its limit: thread indices just below 2²², three groups a row (a divisor that is not a
/// power of two): the draws are the exact division's and the CPU Philox's.
#[test]
fn fast_divmod_splits_threads_up_to_its_limit() {
    let cols: usize = 9;
    let rows = (crate::kernels::FAST_DIVMOD_LIMIT - 1) / cols.div_ceil(4);
    let layout = MaskLayout::Rows { cols, row0: 3 };
    let n = cols * rows;
    assert_eq!(
        super::constants(
            layout,
            n,
            &super::params(key(1, 0, 0, Site::Embeddings), layout, n, Rate { p: 0.0 }).unwrap()
        )[1]
        .1,
        1.0
    );
    let k = key(77, 3, 1, Site::FfnOutput);
    let fast = gpu_draws(k, layout, n);
    crate::kernels::FORCE_EXACT_DIVMOD.with(|f| f.set(true));
    let exact = gpu_draws(k, layout, n);
    crate::kernels::FORCE_EXACT_DIVMOD.with(|f| f.set(false));
    assert!(fast == exact, "fast and exact divmod draw differently");
    for e in (0..n).step_by(9973).chain(n - 5000..n) {
        assert_eq!(fast[e], r::draw(k, layout, e), "element {e} of {n}");
    }
}

/// |z| of a binomial count against its mean.
fn z_score(count: usize, n: usize, q: f64) -> f64 {
    (count as f64 - n as f64 * q) / (n as f64 * q * (1.0 - q)).sqrt()
}

#[test]
fn keep_fraction_is_binomial_and_kept_values_are_scaled() {
    let n = 384 * 521;
    let ones = vec![1.0f32; n];
    for (i, &p) in [0.02, 0.1, 0.25, 0.5, 0.9].iter().enumerate() {
        let rate = Rate::new(p).unwrap();
        let k = key(42, i as u32, 2, Site::FfnOutput);
        let y = gpu_apply(k, rate, MaskLayout::Rows { cols: 384, row0: 0 }, &ones);
        let kept = y.iter().filter(|&&v| v != 0.0).count();
        assert!(y.iter().all(|&v| v == 0.0 || v == rate.scale()), "p={p}: a kept value is not 1/(1-p)");
        let z = z_score(kept, n, 1.0 - p);
        // 5 standard deviations: a false failure once in ~3.5 million runs of a correct generator.
        assert!(z.abs() < 5.0, "p={p}: {kept} of {n} kept, z = {z:.2}");
    }
    // p = 0 keeps everything unscaled.
    let y = gpu_apply(
        key(1, 1, 0, Site::Embeddings),
        Rate::new(0.0).unwrap(),
        MaskLayout::Rows { cols: 5, row0: 0 },
        &ones[..50],
    );
    assert_eq!(bits(&y), bits(&ones[..50]));
}

/// Pearson correlation of two keep masks.
fn correlation(a: &[bool], b: &[bool]) -> f64 {
    let n = a.len() as f64;
    let f = |x: &[bool]| x.iter().filter(|&&v| v).count() as f64 / n;
    let (ma, mb) = (f(a), f(b));
    let both = a.iter().zip(b).filter(|(&x, &y)| x && y).count() as f64 / n;
    (both - ma * mb) / (ma * (1.0 - ma) * mb * (1.0 - mb)).sqrt()
}

#[test]
fn masks_of_different_keys_and_neighbours_are_uncorrelated() {
    let (n, cols) = (120_000, 300);
    let rate = Rate::new(0.3).unwrap();
    let rows = MaskLayout::Rows { cols, row0: 0 };
    let base = key(7, 100, 3, Site::AttentionOutput);
    let mask = |k: MaskKey, layout: MaskLayout| r::keep_mask(k, rate, layout, n);
    let m0 = mask(base, rows);
    let others = [
        ("seed", mask(MaskKey { seed: 8, ..base }, rows)),
        ("step", mask(MaskKey { step: 101, ..base }, rows)),
        ("layer", mask(MaskKey { layer: 4, ..base }, rows)),
        ("site", mask(MaskKey { site: Site::FfnOutput, ..base }, rows)),
        ("row", mask(base, MaskLayout::Rows { cols, row0: 1 })),
    ];
    // |r| below 5/√n: a false failure about once in 3.5 million for independent masks.
    let bound = 5.0 / (n as f64).sqrt();
    for (what, m) in &others {
        assert_ne!(&m0, m, "another {what} gives the same mask");
        let c = correlation(&m0, m);
        assert!(c.abs() < bound, "masks of a different {what}: correlation {c:.4}");
    }
    // Neighbours in a row and in a column.
    let c = correlation(&m0[..n - 1], &m0[1..]);
    assert!(c.abs() < bound, "adjacent columns: correlation {c:.4}");
    let c = correlation(&m0[..n - cols], &m0[cols..]);
    assert!(c.abs() < bound, "adjacent rows: correlation {c:.4}");
}

#[test]
fn a_chunk_draws_the_whole_batch_masks() {
    let mut rng = rng(90);
    let rate = Rate::new(0.4).unwrap();
    let k = key(3, 9, 1, Site::AttentionProbs);
    // Rows: rows 5..12 of a 17-row batch.
    let cols = 33;
    let x = rand_f32(&mut rng, 17 * cols, 2.0);
    let whole = gpu_apply(k, rate, MaskLayout::Rows { cols, row0: 0 }, &x);
    let part = gpu_apply(k, rate, MaskLayout::Rows { cols, row0: 5 }, &x[5 * cols..12 * cols]);
    assert_eq!(bits(&part), bits(&whole[5 * cols..12 * cols]));
    // Attention: sequences 2..4 of a batch of 5.
    let (heads, seq) = (2, 7);
    let per = heads * seq * seq;
    let x = rand_f32(&mut rng, 5 * per, 2.0);
    let whole = gpu_apply(k, rate, MaskLayout::Attention { heads, seq, row0: 0 }, &x);
    let part = gpu_apply(k, rate, MaskLayout::Attention { heads, seq, row0: 2 * seq }, &x[2 * per..4 * per]);
    assert_eq!(bits(&part), bits(&whole[2 * per..4 * per]));
    // One row a sequence (the [CLS] rows of sequences 1..4, 9 tokens each, from global row 9):
    // each draws the mask its row draws over the whole batch.
    let (seq, cols) = (9, 33);
    let x = rand_f32(&mut rng, 5 * seq * cols, 2.0);
    let whole = gpu_apply(k, rate, MaskLayout::Rows { cols, row0: 0 }, &x);
    let cls: Vec<f32> = (1..4).flat_map(|b| x[b * seq * cols..(b * seq + 1) * cols].to_vec()).collect();
    let part = gpu_apply(k, rate, MaskLayout::RowsEvery { cols, row0: seq, every: seq }, &cls);
    let want: Vec<f32> = (1..4).flat_map(|b| whole[b * seq * cols..(b * seq + 1) * cols].to_vec()).collect();
    assert_eq!(bits(&part), bits(&want));
    assert!(
        part.iter().zip(&cls).any(|(y, x)| *y == 0.0 && *x != 0.0),
        "rate 0.4 dropped nothing in {} values",
        cls.len()
    );
}

#[test]
fn forward_and_backward_match_the_f64_reference() {
    let mut rng = rng(91);
    let cases = [
        (MaskLayout::Rows { cols: 129, row0: 3 }, 129 * 37),
        (MaskLayout::Rows { cols: 1, row0: 0 }, 1),
        (MaskLayout::RowsEvery { cols: 67, row0: 13, every: 13 }, 67 * 5),
        (MaskLayout::Attention { heads: 3, seq: 11, row0: 11 }, 2 * 3 * 11 * 11),
        // Groups of four consecutive elements: the vec4 kernel.
        (MaskLayout::Rows { cols: 132, row0: 5 }, 132 * 9),
        (MaskLayout::RowsEvery { cols: 68, row0: 13, every: 13 }, 68 * 5),
        (MaskLayout::Attention { heads: 3, seq: 12, row0: 12 }, 2 * 3 * 12 * 12),
    ];
    for (layout, n) in cases {
        for p in [0.1, 0.37] {
            let rate = Rate::new(p).unwrap();
            let k = key(11, 2, 0, Site::HeadHidden);
            let x = rand_f32(&mut rng, n, 3.0);
            let dy = rand_f32(&mut rng, n, 3.0);
            let keep = r::keep_mask(k, rate, layout, n);
            let y = gpu_apply(k, rate, layout, &x);
            let dx = gpu_apply(k, rate, layout, &dy);
            let p64 = rate.p as f64;
            assert_close(&format!("forward {layout:?} p={p}"), &y, &r::apply(&f64s(&x), &keep, p64), 1e-6);
            assert_close(&format!("backward {layout:?} p={p}"), &dx, &r::apply(&f64s(&dy), &keep, p64), 1e-6);
            // Dropped exactly where the reference drops.
            for (e, &kept) in keep.iter().enumerate() {
                assert_eq!(y[e] == 0.0, !kept || x[e] == 0.0, "{layout:?} element {e}");
            }
            // Backward is the adjoint of forward: <dy, D x> = <Dᵀ dy, x>, up to the f32 rounding of
            // each scaled element (at most 2⁻²⁴ relative on either side).
            let lhs: f64 = dy.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
            let rhs: f64 = dx.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            let size: f64 = dy.iter().zip(&y).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
            assert!((lhs - rhs).abs() <= 2f64.powi(-23) * size, "adjoint: {lhs} vs {rhs}");
        }
    }
}

/// Where a group's four columns are consecutive elements (rows of a multiple of 4 columns,
/// attention rows of a multiple of 4 keys) the vec4 kernel runs: the same bits as the scalar one.
#[test]
fn vec4_kernel_gives_the_scalar_kernels_bits() {
    let mut rng = rng(93);
    for (layout, n) in [
        (MaskLayout::Rows { cols: 384, row0: 7 }, 384 * 11),
        (MaskLayout::Rows { cols: 4, row0: 0 }, 4 * 3),
        (MaskLayout::RowsEvery { cols: 8, row0: 2, every: 5 }, 8 * 7),
        (MaskLayout::Attention { heads: 2, seq: 8, row0: 16 }, 3 * 2 * 8 * 8),
        (MaskLayout::Attention { heads: 12, seq: 32, row0: 0 }, 2 * 12 * 32 * 32),
    ] {
        assert!(layout.groups_of_four_consecutive(), "{layout:?}");
        let (k, rate) = (key(5, 9, 2, Site::AttentionProbs), Rate::new(0.1).unwrap());
        let mut x = rand_f32(&mut rng, n, 2.0);
        x[n / 2] = f32::NAN;
        let vec4 = gpu_apply(k, rate, layout, &x);
        super::FORCE_SCALAR.with(|f| f.set(true));
        let scalar = gpu_apply(k, rate, layout, &x);
        super::FORCE_SCALAR.with(|f| f.set(false));
        assert!(vec4.iter().enumerate().all(|(i, v)| v.is_finite() || i == n / 2), "{layout:?}: poison left");
        assert_eq!(bits(&vec4), bits(&scalar), "{layout:?}");
    }
    assert!(!MaskLayout::Rows { cols: 6, row0: 0 }.groups_of_four_consecutive());
    assert!(!MaskLayout::Attention { heads: 2, seq: 10, row0: 0 }.groups_of_four_consecutive());
}

/// The pair kernels (the attention backward's P → P' and dP' → dP in one dispatch): the same bits
/// as two single calls with the key, in the vec4 and the scalar kernels, every element written
/// (outputs poisoned), a NaN input kept NaN where dropped too.
#[test]
fn pair_gives_two_single_calls_bits() {
    let mut rng = rng(94);
    for (layout, n) in [
        (MaskLayout::Attention { heads: 3, seq: 8, row0: 16 }, 2 * 3 * 8 * 8),
        (MaskLayout::Attention { heads: 2, seq: 13, row0: 5 }, 3 * 2 * 13 * 13),
        (MaskLayout::Rows { cols: 37, row0: 4 }, 37 * 9),
    ] {
        let (k, rate) = (key(8, 3, 1, Site::AttentionProbs), Rate::new(0.3).unwrap());
        let mut x = rand_f32(&mut rng, n, 2.0);
        let mut z = rand_f32(&mut rng, n, 3.0);
        x[n / 3] = f32::NAN;
        z[n / 2] = f32::NAN;
        let want = (gpu_apply(k, rate, layout, &x), gpu_apply(k, rate, layout, &z));
        for scalar in [false, true] {
            super::FORCE_SCALAR.with(|f| f.set(scalar));
            let (xg, out, zg) = (upload(&[n], &x), poisoned(&[n]), upload(&[n], &z));
            let mut b = gpu().batch();
            apply_pair(&mut b, k, rate, layout, &xg, &out, &zg).unwrap();
            b.finish().unwrap();
            super::FORCE_SCALAR.with(|f| f.set(false));
            assert_eq!(bits(&download(&out)), bits(&want.0), "{layout:?} scalar {scalar}: out");
            assert_eq!(bits(&download(&zg)), bits(&want.1), "{layout:?} scalar {scalar}: z in place");
        }
    }
    let t = |n: usize| upload(&[n], &vec![0.0; n]);
    let (x, out, z) = (t(8), t(8), t(12));
    let mut b = gpu().batch();
    let layout = MaskLayout::Rows { cols: 4, row0: 0 };
    let err = apply_pair(&mut b, key(1, 0, 0, Site::AttentionProbs), Rate::new(0.1).unwrap(), layout, &x, &out, &z);
    assert!(format!("{:#}", err.unwrap_err()).contains("in-place operand shape"));
    let err = apply_pair(&mut b, key(1, 0, 0, Site::AttentionProbs), Rate::new(0.1).unwrap(), layout, &x, &out, &out);
    assert!(format!("{:#}", err.unwrap_err()).contains("shares its buffer"));
}

#[test]
fn bad_calls_fail_clearly() {
    assert!(Rate::new(1.0).is_err());
    assert!(Rate::new(-0.1).is_err());
    assert!(Rate::new(f64::NAN).is_err());
    let k = key(1, 1, 1, Site::Embeddings);
    let rate = Rate::new(0.1).unwrap();
    let x = poisoned(&[6]);
    let mut b = gpu().batch();
    assert!(apply(&mut b, k, rate, MaskLayout::Rows { cols: 3, row0: 0 }, &x, &x).is_err());
    assert!(apply(&mut b, k, rate, MaskLayout::Rows { cols: 3, row0: 0 }, &x, &poisoned(&[5])).is_err());
    assert!(apply(&mut b, k, rate, MaskLayout::Rows { cols: 4, row0: 0 }, &x, &poisoned(&[6])).is_err());
    assert!(apply(&mut b, k, rate, MaskLayout::Attention { heads: 2, seq: 2, row0: 0 }, &x, &poisoned(&[6])).is_err());
    let every0 = MaskLayout::RowsEvery { cols: 3, row0: 0, every: 0 };
    assert!(apply(&mut b, k, rate, every0, &x, &poisoned(&[6])).is_err(), "a row step of 0");
    let past_u32 = MaskLayout::RowsEvery { cols: 3, row0: 0, every: 1 << 32 };
    assert!(apply(&mut b, k, rate, past_u32, &x, &poisoned(&[6])).is_err(), "global rows past u32");
    assert!(MaskKey { layer: 1 << 24, ..k }.stream().is_err());
    assert!(b.is_empty());
}
