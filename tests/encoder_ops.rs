//! The frozen encoder's kernels (LayerNorm, attention, element-wise ops, embeddings, loss, and the
//! matmul's inner batch dimension) vs the f64 reference on seeded random inputs with NaN-poisoned
//! outputs.

mod common;
use common::*;
use peft_wgpu::kernels::attention::{self, AttentionShape};
use peft_wgpu::kernels::matmul::{InnerBatch, Matmul, View};
use peft_wgpu::kernels::{elementwise, layernorm, loss};
use peft_wgpu::reference::{self, ops};
use peft_wgpu::{Activation, GpuTensor};
use rand::Rng;

const TOL: f64 = 1e-4;

fn upload_u32(shape: &[usize], data: &[u32]) -> GpuTensor {
    GpuTensor::from_u32(&gpu(), shape, data).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---------------------------------------------------------------- LayerNorm

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
    let (mut ef, mut eb, mut n) = (0f64, 0f64, 0);
    for (ri, &rows) in [1usize, 7, 33].iter().enumerate() {
        for (di, &d) in [32usize, 48, 100, 384, 768].iter().enumerate() {
            let (f, b) = layer_norm_case(rows, d, (ri * 10 + di) as u64);
            ef = ef.max(f);
            eb = eb.max(b);
            n += 1;
        }
    }
    for (i, &(rows, d)) in [(3usize, 4096usize), (2, 1), (5, 2049)].iter().enumerate() {
        let (f, b) = layer_norm_case(rows, d, 100 + i as u64);
        ef = ef.max(f);
        eb = eb.max(b);
        n += 1;
    }
    println!("LayerNorm: {n} shapes; max relative error forward {ef:.2e}, backward {eb:.2e}");
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

// ---------------------------------------------------------------- attention

/// A `[batch, seq]` mask: sequence b keeps `lens[b]` tokens, followed by padding; with `holes`,
/// some kept tokens inside are masked too (the kernel must not assume suffix padding).
fn make_mask(rng: &mut rand::rngs::StdRng, batch: usize, seq: usize, holes: bool) -> Vec<f32> {
    let mut m = vec![0.0f32; batch * seq];
    for b in 0..batch {
        // The first sequence is unpadded, the last keeps a single token (mostly masked keys).
        let len = if b == 0 {
            seq
        } else if b + 1 == batch {
            1
        } else {
            rng.random_range(1..=seq)
        };
        for j in 0..len {
            m[b * seq + j] = 1.0;
        }
        if holes {
            for j in 1..len {
                if rng.random_range(0..3) == 0 {
                    m[b * seq + j] = 0.0;
                }
            }
        }
    }
    m
}

struct AttnData {
    s: AttentionShape,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dctx: Vec<f32>,
    mask: Vec<f32>,
}

impl AttnData {
    fn new(s: AttentionShape, seed: u64, holes: bool) -> Self {
        let mut rng = rng(seed);
        let n = s.batch * s.seq * s.heads * s.head_dim;
        // Scores of a few units, so the softmax is neither flat nor one-hot.
        let q = rand_f32(&mut rng, n, 1.5);
        let k = rand_f32(&mut rng, n, 1.5);
        let v = rand_f32(&mut rng, n, 1.0);
        let dctx = rand_f32(&mut rng, n, 1.0);
        let mask = make_mask(&mut rng, s.batch, s.seq, holes);
        Self { s, q, k, v, dctx, mask }
    }
}

struct AttnOut {
    probs: Vec<f32>,
    ctx: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

fn run_attention(a: &AttnData) -> AttnOut {
    let s = a.s;
    let act = [s.batch * s.seq, s.heads * s.head_dim];
    let pshape = attention::probs_shape(s);
    let (q, k, v, dctx) = (upload(&act, &a.q), upload(&act, &a.k), upload(&act, &a.v), upload(&act, &a.dctx));
    let mask = upload(&[s.batch, s.seq], &a.mask);
    let probs = poisoned(&pshape);
    let ctx = poisoned(&act);
    let (dq, dk, dv) = (poisoned(&act), poisoned(&act), poisoned(&act));
    let scratch = poisoned(&pshape);
    let mut b = gpu().batch();
    attention::attention_forward(&mut b, s, &q, &k, &v, &mask, &probs, &ctx).unwrap();
    attention::attention_backward(&mut b, s, &q, &k, &v, &mask, &probs, &dctx, &dq, &dk, &dv, &scratch).unwrap();
    b.finish().unwrap();
    AttnOut { probs: download(&probs), ctx: download(&ctx), dq: download(&dq), dk: download(&dk), dv: download(&dv) }
}

/// Returns the max relative errors (forward, backward).
fn attention_case(s: AttentionShape, seed: u64, holes: bool) -> (f64, f64) {
    let a = AttnData::new(s, seed, holes);
    let o = run_attention(&a);
    let (q, k, v, m, dctx) = (f64s(&a.q), f64s(&a.k), f64s(&a.v), f64s(&a.mask), f64s(&a.dctx));
    let (rctx, rprobs) = ops::attention(&q, &k, &v, &m, s);
    let (rdq, rdk, rdv) = ops::attention_backward(&q, &k, &v, &m, &dctx, s);
    let what = format!("attention {s:?} holes={holes}");
    let mut ef = assert_close(&format!("{what} probs"), &o.probs, &rprobs, TOL);
    ef = ef.max(assert_close(&format!("{what} ctx"), &o.ctx, &rctx, TOL));
    let mut eb = assert_close(&format!("{what} dq"), &o.dq, &rdq, TOL);
    eb = eb.max(assert_close(&format!("{what} dk"), &o.dk, &rdk, TOL));
    eb = eb.max(assert_close(&format!("{what} dv"), &o.dv, &rdv, TOL));
    // Masked keys: probability exactly 0, and no gradient reaches their k and v.
    let (n, hid) = (s.seq, s.heads * s.head_dim);
    for bi in 0..s.batch {
        for j in 0..n {
            if a.mask[bi * n + j] == 0.0 {
                for h in 0..s.heads {
                    for i in 0..n {
                        assert_eq!(o.probs[((bi * s.heads + h) * n + i) * n + j], 0.0, "{what}: masked probability");
                    }
                }
                let t = bi * n + j;
                assert!(o.dk[t * hid..(t + 1) * hid].iter().all(|&g| g == 0.0), "{what}: dk of a masked key");
                assert!(o.dv[t * hid..(t + 1) * hid].iter().all(|&g| g == 0.0), "{what}: dv of a masked key");
            }
        }
    }
    (ef, eb)
}

#[test]
fn attention_matches_reference_over_shapes() {
    let (mut ef, mut eb, mut n) = (0f64, 0f64, 0);
    let shapes = [
        (1usize, 1usize, 1usize, 8usize),
        (1, 5, 2, 12),
        (2, 5, 1, 32),
        (3, 11, 4, 8),
        (2, 11, 3, 12),
        (3, 40, 2, 32),
        (2, 40, 4, 12),
        (1, 33, 3, 8),
    ];
    for (i, &(batch, seq, heads, head_dim)) in shapes.iter().enumerate() {
        for holes in [false, true] {
            let s = AttentionShape { batch, seq, heads, head_dim };
            let (f, b) = attention_case(s, 200 + 2 * i as u64 + holes as u64, holes);
            ef = ef.max(f);
            eb = eb.max(b);
            n += 1;
        }
    }
    println!("attention: {n} cases; max relative error forward {ef:.2e}, backward {eb:.2e}");
}

/// BERT-base-like head size and a longer sequence (the row kernels' widest threads-per-row).
#[test]
fn attention_long_sequence() {
    let s = AttentionShape { batch: 2, seq: 130, heads: 2, head_dim: 64 };
    let (f, b) = attention_case(s, 300, false);
    println!("attention seq=130 hd=64: forward {f:.2e}, backward {b:.2e}");
}

#[test]
fn attention_backward_is_deterministic() {
    let a = AttnData::new(AttentionShape { batch: 2, seq: 37, heads: 3, head_dim: 16 }, 400, true);
    let (x, y) = (run_attention(&a), run_attention(&a));
    for (name, p, q) in [
        ("probs", &x.probs, &y.probs),
        ("ctx", &x.ctx, &y.ctx),
        ("dq", &x.dq, &y.dq),
        ("dk", &x.dk, &y.dk),
        ("dv", &x.dv, &y.dv),
    ] {
        assert_eq!(bits(p), bits(q), "{name} differs between two runs");
    }
}

/// A sequence with every key masked gets zero probabilities, context and gradients (no NaN), and
/// does not disturb the other sequences.
#[test]
fn attention_fully_masked_sequence_is_zero() {
    let s = AttentionShape { batch: 2, seq: 6, heads: 2, head_dim: 8 };
    let mut a = AttnData::new(s, 500, false);
    for j in 0..s.seq {
        a.mask[s.seq + j] = 0.0;
    }
    let o = run_attention(&a);
    let half = s.seq * s.heads * s.head_dim;
    let phalf = s.heads * s.seq * s.seq;
    assert!(o.probs[phalf..].iter().all(|&p| p == 0.0));
    for t in [&o.ctx, &o.dq, &o.dk, &o.dv] {
        assert!(t[half..].iter().all(|&g| g == 0.0));
    }
    // Sequence 0 alone against the reference.
    let s1 = AttentionShape { batch: 1, ..s };
    let (q, k, v, dctx) = (f64s(&a.q[..half]), f64s(&a.k[..half]), f64s(&a.v[..half]), f64s(&a.dctx[..half]));
    let m = f64s(&a.mask[..s.seq]);
    let (rctx, rprobs) = ops::attention(&q, &k, &v, &m, s1);
    let (rdq, rdk, rdv) = ops::attention_backward(&q, &k, &v, &m, &dctx, s1);
    assert_close("probs", &o.probs[..phalf], &rprobs, TOL);
    assert_close("ctx", &o.ctx[..half], &rctx, TOL);
    assert_close("dq", &o.dq[..half], &rdq, TOL);
    assert_close("dk", &o.dk[..half], &rdk, TOL);
    assert_close("dv", &o.dv[..half], &rdv, TOL);
}

#[test]
fn attention_validates_shapes_and_aliasing() {
    let s = AttentionShape { batch: 2, seq: 3, heads: 2, head_dim: 4 };
    let act = [6, 8];
    let (q, k, v) = (poisoned(&act), poisoned(&act), poisoned(&act));
    let mask = poisoned(&[2, 3]);
    let probs = poisoned(&attention::probs_shape(s));
    let ctx = poisoned(&act);
    let mut b = gpu().batch();
    assert!(attention::attention_forward(&mut b, s, &q, &k, &v, &poisoned(&[2, 4]), &probs, &ctx).is_err());
    assert!(attention::attention_forward(&mut b, s, &q, &k, &v, &mask, &poisoned(&[2, 2, 3, 4]), &ctx).is_err());
    assert!(attention::attention_forward(&mut b, s, &q, &k, &poisoned(&[6, 9]), &mask, &probs, &ctx).is_err());
    assert!(attention::attention_forward(&mut b, s, &q, &k, &v, &mask, &probs, &q).is_err());
    let bad = AttentionShape { head_dim: 0, ..s };
    assert!(attention::attention_forward(&mut b, bad, &q, &k, &v, &mask, &probs, &ctx).is_err());
    assert!(attention::attention_backward(&mut b, s, &q, &k, &v, &mask, &probs, &ctx, &q, &k, &v, &probs).is_err());
    assert!(b.is_empty());
}

// ---------------------------------------------------------------- matmul inner batch

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
        let mut want = vec![0f64; c_len];
        for o in 0..outer {
            for h in 0..inner {
                for i in 0..m {
                    for j in 0..n {
                        let mut acc = 0f64;
                        for kk in 0..k {
                            acc += a[o * m * inner * k + i * inner * k + h * k + kk] as f64
                                * bm[o * inner * n * k + h * n * k + j * k + kk] as f64;
                        }
                        let ci = o * inner * m * n + h * m * n + i * n + j;
                        want[ci] = 0.75 * acc + beta as f64 * c0[ci] as f64;
                    }
                }
            }
        }
        assert_close(&format!("inner-batch matmul {outer}x{inner} {m}x{n}x{k}"), &download(&cg), &want, TOL);
    }
}

// ---------------------------------------------------------------- element-wise

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
        for (act, dx) in acts.iter().zip(&dxs) {
            elementwise::act_backward(&mut b, *act, &ag, &bg, dx).unwrap();
        }
        b.finish().unwrap();
        let want: Vec<f32> = a.iter().zip(&bv).map(|(x, y)| x + y).collect();
        assert_eq!(bits(&download(&sum)), bits(&want), "add n={n}");
        assert_eq!(bits(&download(&copied)), bits(&a), "copy n={n}");
        assert!(download(&filled).iter().all(|&v| v == -2.5), "fill n={n}");
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
    assert!(b.is_empty());
}

#[test]
fn embeddings_match_reference() {
    let mut rng = rng(800);
    for &(batch, seq, d, vocab, types, positions) in
        [(1usize, 1usize, 32usize, 50usize, 2usize, 8usize), (3, 7, 48, 100, 2, 7), (2, 33, 100, 1000, 3, 64)].iter()
    {
        let t = batch * seq;
        let ids: Vec<u32> = (0..t).map(|_| rng.random_range(0..vocab as u32)).collect();
        let tts: Vec<u32> = (0..t).map(|_| rng.random_range(0..types as u32)).collect();
        let word = rand_f32(&mut rng, vocab * d, 1.0);
        let pos = rand_f32(&mut rng, positions * d, 1.0);
        let tt = rand_f32(&mut rng, types * d, 1.0);
        let out = poisoned(&[t, d]);
        let (wg, pg, tg) = (upload(&[vocab, d], &word), upload(&[positions, d], &pos), upload(&[types, d], &tt));
        let mut b = gpu().batch();
        elementwise::embeddings(&mut b, &upload_u32(&[t], &ids), &upload_u32(&[t], &tts), seq, &wg, &pg, &tg, &out)
            .unwrap();
        b.finish().unwrap();
        let r = ops::embeddings(&ids, &tts, seq, d, &f64s(&word), &f64s(&pos), &f64s(&tt));
        assert_close(&format!("embeddings B={batch} S={seq} d={d}"), &download(&out), &r, TOL);
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
    elementwise::embeddings(&mut b, &ids, &tts, 2, &wg, &pg, &tg, &out).unwrap();
    // Errors: sequence longer than the position table, ragged ids, wrong output shape.
    assert!(elementwise::embeddings(&mut b, &ids, &tts, 1, &wg, &upload(&[0, d], &[]), &tg, &out).is_err());
    assert!(elementwise::embeddings(&mut b, &upload_u32(&[3], &[0, 1, 2]), &tts, 2, &wg, &pg, &tg, &out).is_err());
    assert!(elementwise::embeddings(&mut b, &ids, &tts, 2, &wg, &pg, &tg, &poisoned(&[2, d + 1])).is_err());
    b.finish().unwrap();
    let r = ops::embeddings(&[4, 4], &[1, 1], 2, d, &f64s(&word), &f64s(&pos), &f64s(&tt));
    assert_close("embeddings clamped ids", &download(&out), &r, TOL);
}

#[test]
fn gather_and_scatter_rows() {
    let mut rng = rng(900);
    for &(batch, stride, d) in [(1usize, 1usize, 32usize), (3, 7, 48), (5, 33, 100), (2, 4, 384)].iter() {
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

// ---------------------------------------------------------------- loss

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

/// The largest sizes the encoder uses per head: seq 512, head_dim 128.
#[test]
fn attention_largest_head() {
    let s = AttentionShape { batch: 1, seq: 512, heads: 1, head_dim: 128 };
    let (f, b) = attention_case(s, 310, true);
    println!("attention seq=512 hd=128: forward {f:.2e}, backward {b:.2e}");
}
