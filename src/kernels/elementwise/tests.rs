//! The element-wise kernels (add, copy, fill, activations, embeddings, gather/scatter rows) vs
//! the f64 reference on seeded random inputs with NaN-poisoned outputs.

use super::reference as ops;
use crate::gpu::GpuTensor;
use crate::kernels::elementwise;
use crate::kernels::reference;
use crate::kernels::test_support::*;
use crate::types::Activation;
use rand::Rng;

const TOL: f64 = 1e-4;

#[test]
fn add_copy_fill_and_act_backward() {
    let mut rng = rng(700);
    for &n in &[1usize, 7, 1000, 70_001] {
        let a = rand_f32(&mut rng, n, 3.0);
        let bv = rand_f32(&mut rng, n, 3.0);
        let (ag, bg) = (upload(&[n], &a), upload(&[n], &bv));
        let sum = poisoned(&[n]);
        let copied = poisoned(&[n]);
        let filled = poisoned(&[n]);
        let scaled = poisoned(&[n]);
        let acts = [Activation::Gelu, Activation::Relu, Activation::Silu, Activation::Tanh, Activation::Identity];
        let dxs: Vec<GpuTensor> = acts.iter().map(|_| poisoned(&[n])).collect();
        let ys: Vec<GpuTensor> = acts.iter().map(|_| poisoned(&[n])).collect();
        let mut b = gpu().batch();
        for (act, y) in acts.iter().zip(&ys) {
            elementwise::activate(&mut b, *act, &ag, y).unwrap();
        }
        elementwise::add(&mut b, &ag, &bg, &sum).unwrap();
        elementwise::copy(&mut b, &ag, &copied).unwrap();
        elementwise::fill(&mut b, &filled, -2.5).unwrap();
        elementwise::scale(&mut b, &ag, 1.0 / 3.0, &scaled).unwrap();
        for (act, dx) in acts.iter().zip(&dxs) {
            elementwise::act_backward(&mut b, *act, &ag, &bg, dx).unwrap();
        }
        b.finish().unwrap();
        let want: Vec<f32> = a.iter().zip(&bv).map(|(x, y)| x + y).collect();
        assert_eq!(bits(&download(&sum)), bits(&want), "add n={n}");
        assert_eq!(bits(&download(&copied)), bits(&a), "copy n={n}");
        assert!(download(&filled).iter().all(|&v| v == -2.5), "fill n={n}");
        // One f32 product per element: the f32 rounding of x · (1/3 rounded to f32).
        let third = 1.0f32 / 3.0;
        assert_eq!(bits(&download(&scaled)), bits(&a.iter().map(|x| x * third).collect::<Vec<_>>()), "scale n={n}");
        for (act, y) in acts.iter().zip(&ys) {
            let r: Vec<f64> = a.iter().map(|x| reference::act(*act, *x as f64)).collect();
            assert_close(&format!("activate {act:?} n={n}"), &download(y), &r, TOL);
        }
        for (act, dx) in acts.iter().zip(&dxs) {
            let r: Vec<f64> =
                a.iter().zip(&bv).map(|(x, dy)| *dy as f64 * reference::act_grad(*act, *x as f64)).collect();
            assert_close(&format!("act_backward {act:?} n={n}"), &download(dx), &r, TOL);
        }
    }
    let x = poisoned(&[4]);
    let mut b = gpu().batch();
    assert!(elementwise::add(&mut b, &x, &x, &x).is_err());
    assert!(elementwise::add(&mut b, &x, &poisoned(&[5]), &poisoned(&[4])).is_err());
    assert!(elementwise::copy(&mut b, &x, &poisoned(&[3])).is_err());
    assert!(elementwise::scale(&mut b, &x, 2.0, &x).is_err());
    assert!(elementwise::scale(&mut b, &x, 2.0, &poisoned(&[3])).is_err());
    assert!(b.is_empty());
}

#[test]
fn embeddings_match_reference() {
    let mut rng = rng(800);
    // d = 30: the element-at-a-time kernel; the others (multiples of 4): the quad kernel, and
    // forced, the element-at-a-time one too.
    for &(batch, seq, d, vocab, types, positions, no_quads) in [
        (1usize, 1usize, 32usize, 50usize, 2usize, 8usize, false),
        (3, 7, 48, 100, 2, 7, false),
        (3, 7, 48, 100, 2, 7, true),
        (2, 33, 100, 1000, 3, 64, false),
        (2, 5, 30, 40, 2, 9, false),
    ]
    .iter()
    {
        elementwise::NO_QUADS.with(|f| f.set(no_quads));
        let t = batch * seq;
        let ids: Vec<u32> = (0..t).map(|_| rng.random_range(0..vocab as u32)).collect();
        let tts: Vec<u32> = (0..t).map(|_| rng.random_range(0..types as u32)).collect();
        let word = rand_f32(&mut rng, vocab * d, 1.0);
        let pos = rand_f32(&mut rng, positions * d, 1.0);
        let tt = rand_f32(&mut rng, types * d, 1.0);
        let out = poisoned(&[t, d]);
        let (wg, pg, tg) = (upload(&[vocab, d], &word), upload(&[positions, d], &pos), upload(&[types, d], &tt));
        let mut b = gpu().batch();
        elementwise::embeddings(
            &mut b,
            &upload_u32(&[t], &ids),
            &upload_u32(&[t], &tts),
            seq,
            std::slice::from_ref(&wg),
            &pg,
            &tg,
            &out,
        )
        .unwrap();
        b.finish().unwrap();
        let r = ops::embeddings(&ids, &tts, seq, d, &f64s(&word), &f64s(&pos), &f64s(&tt));
        elementwise::NO_QUADS.with(|f| f.set(false));
        assert_close(&format!("embeddings B={batch} S={seq} d={d} no_quads={no_quads}"), &download(&out), &r, TOL);
    }
    // Ids past the tables are clamped to their last rows instead of reading out of bounds.
    let (d, vocab, types) = (8, 5, 2);
    let word = rand_f32(&mut rng, vocab * d, 1.0);
    let pos = rand_f32(&mut rng, 2 * d, 1.0);
    let tt = rand_f32(&mut rng, types * d, 1.0);
    let out = poisoned(&[2, d]);
    let mut b = gpu().batch();
    let (ids, tts) = (upload_u32(&[2], &[7, u32::MAX]), upload_u32(&[2], &[9, 1]));
    let (wg, pg, tg) = (upload(&[vocab, d], &word), upload(&[2, d], &pos), upload(&[types, d], &tt));
    elementwise::embeddings(&mut b, &ids, &tts, 2, std::slice::from_ref(&wg), &pg, &tg, &out).unwrap();
    // Errors: sequence longer than the position table, ragged ids, wrong output shape.
    assert!(elementwise::embeddings(
        &mut b,
        &ids,
        &tts,
        1,
        std::slice::from_ref(&wg),
        &upload(&[0, d], &[]),
        &tg,
        &out
    )
    .is_err());
    assert!(elementwise::embeddings(
        &mut b,
        &upload_u32(&[3], &[0, 1, 2]),
        &tts,
        2,
        std::slice::from_ref(&wg),
        &pg,
        &tg,
        &out
    )
    .is_err());
    assert!(elementwise::embeddings(
        &mut b,
        &ids,
        &tts,
        2,
        std::slice::from_ref(&wg),
        &pg,
        &tg,
        &poisoned(&[2, d + 1])
    )
    .is_err());
    b.finish().unwrap();
    let r = ops::embeddings(&[4, 4], &[1, 1], 2, d, &f64s(&word), &f64s(&pos), &f64s(&tt));
    assert_close("embeddings clamped ids", &download(&out), &r, TOL);
}

/// A word table split into blocks of rows (as the encoder splits a table larger than one storage
/// binding) looks up exactly what the whole table does, ids past the table clamped to its last row.
#[test]
fn embeddings_from_a_split_word_table_equal_the_whole_table() {
    let mut rng = rng(810);
    let (batch, seq, d, vocab, types) = (3usize, 11usize, 20usize, 37usize, 2usize);
    let t = batch * seq;
    let mut ids: Vec<u32> = (0..t).map(|_| rng.random_range(0..vocab as u32)).collect();
    ids[5] = vocab as u32 + 3;
    let tts: Vec<u32> = (0..t).map(|_| rng.random_range(0..types as u32)).collect();
    let word = rand_f32(&mut rng, vocab * d, 1.0);
    let pos = rand_f32(&mut rng, seq * d, 1.0);
    let tt = rand_f32(&mut rng, types * d, 1.0);
    let (ids_g, tts_g) = (upload_u32(&[t], &ids), upload_u32(&[t], &tts));
    let (pg, tg) = (upload(&[seq, d], &pos), upload(&[types, d], &tt));
    let lookup = |bounds: &[usize]| {
        let blocks: Vec<GpuTensor> =
            bounds.windows(2).map(|w| upload(&[w[1] - w[0], d], &word[w[0] * d..w[1] * d])).collect();
        let out = poisoned(&[t, d]);
        let mut b = gpu().batch();
        elementwise::embeddings(&mut b, &ids_g, &tts_g, seq, &blocks, &pg, &tg, &out).unwrap();
        b.finish().unwrap();
        download(&out)
    };
    let whole = lookup(&[0, vocab]);
    let clamped: Vec<u32> = ids.iter().map(|&i| i.min(vocab as u32 - 1)).collect();
    let r = ops::embeddings(&clamped, &tts, seq, d, &f64s(&word), &f64s(&pos), &f64s(&tt));
    assert_close("embeddings, whole table", &whole, &r, TOL);
    for bounds in [vec![0, 10, 20, 30, vocab], vec![0, 1, vocab], vec![0, vocab - 1, vocab]] {
        assert_eq!(lookup(&bounds), whole, "blocks at {bounds:?}");
    }
    // Blocks of different widths, or none, are refused.
    let mut b = gpu().batch();
    let out = poisoned(&[t, d]);
    let ragged = [upload(&[10, d], &word[..10 * d]), upload(&[1, d - 1], &word[..d - 1])];
    let e = elementwise::embeddings(&mut b, &ids_g, &tts_g, seq, &ragged, &pg, &tg, &out).unwrap_err();
    assert!(e.to_string().contains("different widths"), "{e}");
    let e = elementwise::embeddings(&mut b, &ids_g, &tts_g, seq, &[], &pg, &tg, &out).unwrap_err();
    assert!(e.to_string().contains("no word table"), "{e}");
    assert!(b.is_empty());
}

#[test]
fn gather_and_scatter_rows() {
    let mut rng = rng(900);
    // d = 30: the element-at-a-time scatter; the others the quad one (and d = 48 forced, the
    // element-at-a-time one too).
    for &(batch, stride, d, no_quads) in [
        (1usize, 1usize, 32usize, false),
        (3, 7, 48, false),
        (3, 7, 48, true),
        (5, 33, 100, false),
        (2, 4, 384, false),
        (3, 5, 30, false),
    ]
    .iter()
    {
        elementwise::NO_QUADS.with(|f| f.set(no_quads));
        let x = rand_f32(&mut rng, batch * stride * d, 1.0);
        let src = rand_f32(&mut rng, batch * d, 1.0);
        let prev = rand_f32(&mut rng, batch * stride * d, 1.0);
        let gathered = poisoned(&[batch, d]);
        let scattered = poisoned(&[batch * stride, d]);
        let accumulated = upload(&[batch * stride, d], &prev);
        let srcg = upload(&[batch, d], &src);
        let mut b = gpu().batch();
        elementwise::gather_rows(&mut b, &upload(&[batch * stride, d], &x), stride, &gathered).unwrap();
        elementwise::scatter_rows(&mut b, &srcg, stride, &scattered, false).unwrap();
        elementwise::scatter_rows(&mut b, &srcg, stride, &accumulated, true).unwrap();
        b.finish().unwrap();
        let want_g: Vec<f32> = (0..batch).flat_map(|bi| x[bi * stride * d..][..d].to_vec()).collect();
        assert_eq!(bits(&download(&gathered)), bits(&want_g), "gather B={batch} S={stride} d={d}");
        let mut want_s = vec![0f32; batch * stride * d];
        let mut want_a = prev.clone();
        for bi in 0..batch {
            for c in 0..d {
                want_s[bi * stride * d + c] = src[bi * d + c];
                want_a[bi * stride * d + c] += src[bi * d + c];
            }
        }
        assert_eq!(bits(&download(&scattered)), bits(&want_s), "scatter B={batch} S={stride} d={d}");
        assert_eq!(bits(&download(&accumulated)), bits(&want_a), "scatter accumulate B={batch} S={stride} d={d}");
    }
    let mut b = gpu().batch();
    assert!(elementwise::gather_rows(&mut b, &poisoned(&[10, 4]), 3, &poisoned(&[3, 4])).is_err());
    assert!(elementwise::scatter_rows(&mut b, &poisoned(&[2, 4]), 3, &poisoned(&[6, 5]), false).is_err());
    assert!(b.is_empty());
}

/// f16 weights: the host packs with round-to-nearest-even (subnormals to zero), the kernel widens
/// exactly: every value comes back as the f16 the `half` crate rounds it to, for odd and even counts
/// and counts past one workgroup; values beyond f16's range are refused.
#[test]
fn pack_and_unpack_f16() {
    let mut rng = rng(731);
    for &n in &[1usize, 2, 7, 513, 70_001] {
        let mut v = rand_f32(&mut rng, n, 4.0);
        // Edge values: f16's largest, its smallest normal, subnormal range, a tie, zero, negatives.
        let edges = [65504.0f32, -65504.0, 6.1035156e-5, 3.0e-5, -1.0e-7, 1.0 + 1.0 / 4096.0, 0.0, -0.0];
        for (x, e) in v.iter_mut().zip(edges) {
            *x = e;
        }
        let packed = elementwise::pack_f16(&v).unwrap();
        assert_eq!(packed.len(), n.div_ceil(2));
        let pg = GpuTensor::from_u32(&gpu(), &[packed.len()], &packed).unwrap();
        let out = poisoned(&[n]);
        let mut b = gpu().batch();
        elementwise::unpack_f16(&mut b, &pg, &out).unwrap();
        b.finish().unwrap();
        let got = out.to_vec(&gpu()).unwrap();
        for (i, (&x, &g)) in v.iter().zip(&got).enumerate() {
            let h = half::f16::from_f32(x);
            let want = if h.is_normal() { h.to_f32() } else { 0.0 };
            assert_eq!(g.to_bits() & 0x7fff_ffff, want.to_bits() & 0x7fff_ffff, "n {n}, element {i}: {x} -> {g}");
            assert!(g == 0.0 || g.signum() == x.signum(), "n {n}, element {i}: sign of {x} -> {g}");
            assert!((g - x).abs() <= x.abs() * 4.9e-4 + 6.2e-5, "n {n}, element {i}: {x} -> {g}");
        }
    }
    for bad in [65520.0f32, -1.0e6, f32::NAN, f32::INFINITY] {
        let err = elementwise::pack_f16(&[0.5, bad]).unwrap_err().to_string();
        assert!(err.contains("does not fit in f16"), "{err}");
    }
    let pg = GpuTensor::from_u32(&gpu(), &[2], &[0, 0]).unwrap();
    let err = elementwise::unpack_f16(&mut gpu().batch(), &pg, &poisoned(&[5])).unwrap_err().to_string();
    assert!(err.contains("packed words"), "{err}");
}
