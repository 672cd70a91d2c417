//! Masked multi-head self-attention, forward and input gradients, vs the f64 reference on seeded
//! random inputs with NaN-poisoned outputs.

use super::reference as ops;
use crate::kernels::attention::{self, AttentionKernel, AttentionShape, FORCE_KERNEL};
use crate::kernels::test_support::*;
use rand::Rng;

const TOL: f64 = 1e-4;

/// Runs `f` once with each attention kernel forced (the separate and the fused path).
pub(super) fn each_kernel(mut f: impl FnMut(AttentionKernel)) {
    for k in [AttentionKernel::Separate, AttentionKernel::Fused] {
        FORCE_KERNEL.with(|c| c.set(Some(k)));
        f(k);
    }
    FORCE_KERNEL.with(|c| c.set(None));
}

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

/// Seeded attention inputs (also the fused kernels' tests', `tests_fused.rs`).
pub(super) struct AttnData {
    pub(super) s: AttentionShape,
    pub(super) q: Vec<f32>,
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
    pub(super) dctx: Vec<f32>,
    pub(super) mask: Vec<f32>,
}

impl AttnData {
    fn new(s: AttentionShape, seed: u64, holes: bool) -> Self {
        Self::with_mask(s, seed, |rng| make_mask(rng, s.batch, s.seq, holes))
    }

    /// Q, K, V and dctx drawn from `seed`, then the mask `mask` makes (from the same generator).
    pub(super) fn with_mask(
        s: AttentionShape,
        seed: u64,
        mask: impl FnOnce(&mut rand::rngs::StdRng) -> Vec<f32>,
    ) -> Self {
        let mut rng = rng(seed);
        let n = s.batch * s.seq * s.heads * s.head_dim;
        // Scores of a few units, so the softmax is neither flat nor one-hot.
        let q = rand_f32(&mut rng, n, 1.5);
        let k = rand_f32(&mut rng, n, 1.5);
        let v = rand_f32(&mut rng, n, 1.0);
        let dctx = rand_f32(&mut rng, n, 1.0);
        let mask = mask(&mut rng);
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
    // Both kernels, each with both row layouts on this device: the GPUs' (several threads a row,
    // or the fused kernels' wider workgroups) and the CPU drivers'.
    each_kernel(|_| {
        for cpu_rows in [false, true] {
            crate::kernels::attention::FORCE_CPU_ROWS.with(|f| f.set(Some(cpu_rows)));
            for (i, &(batch, seq, heads, head_dim)) in shapes.iter().enumerate() {
                for holes in [false, true] {
                    let s = AttentionShape { batch, seq, heads, head_dim };
                    let (f, b) = attention_case(s, 200 + 2 * i as u64 + holes as u64, holes);
                    ef = ef.max(f);
                    eb = eb.max(b);
                    n += 1;
                }
            }
        }
    });
    crate::kernels::attention::FORCE_CPU_ROWS.with(|f| f.set(None));
    println!(
        "attention: {n} cases (both kernels and row layouts); max relative error forward {ef:.2e}, backward {eb:.2e}"
    );
}

/// BERT-base-like head size and a longer sequence (the row kernels' widest threads-per-row).
#[test]
fn attention_long_sequence() {
    let s = AttentionShape { batch: 2, seq: 130, heads: 2, head_dim: 64 };
    // The GPUs' layout (the CPU drivers' has at most 8 threads a row).
    crate::kernels::attention::FORCE_CPU_ROWS.with(|f| f.set(Some(false)));
    each_kernel(|k| {
        let (f, b) = attention_case(s, 300, false);
        println!("attention {k:?} seq=130 hd=64: forward {f:.2e}, backward {b:.2e}");
    });
    crate::kernels::attention::FORCE_CPU_ROWS.with(|f| f.set(None));
}

/// The CPU drivers' one-thread-a-row softmax (rows of at most 128 keys) keeps the partial sums of
/// their threads-per-row layout, so both give the same bits (probabilities, context and the three
/// gradients), with masked keys and at the lengths around the switch (129 runs threads a row in both).
#[test]
fn softmax_row_layouts_give_the_same_bits() {
    use crate::kernels::attention::{FORCE_CPU_ROWS, NO_ROW_QUADS, NO_ROW_THREAD};
    FORCE_KERNEL.with(|c| c.set(Some(AttentionKernel::Separate)));
    FORCE_CPU_ROWS.with(|f| f.set(Some(true)));
    // Threads a row; one thread a row key by key; and where the length is a multiple of 4 (8, 32,
    // 64, 100, 128), one thread a row over key quads.
    for (i, &seq) in [1usize, 5, 8, 32, 33, 61, 64, 65, 100, 128, 129].iter().enumerate() {
        let a = AttnData::new(AttentionShape { batch: 3, seq, heads: 2, head_dim: 8 }, 500 + i as u64, true);
        let run = |threads_a_row: bool, no_quads: bool| {
            NO_ROW_THREAD.with(|f| f.set(threads_a_row));
            NO_ROW_QUADS.with(|f| f.set(no_quads));
            run_attention(&a)
        };
        let (threads, keys, quads) = (run(true, true), run(false, true), run(false, false));
        for (one, name) in [(&keys, "key by key"), (&quads, "over quads")] {
            assert!(one.probs.iter().chain(&one.dq).all(|v| v.is_finite()), "seq {seq} {name}: poison left");
            assert_same_bits(&threads, one, &format!("seq {seq}: threads a row vs one thread a row {name}"));
        }
    }
    NO_ROW_THREAD.with(|f| f.set(false));
    NO_ROW_QUADS.with(|f| f.set(false));
    FORCE_CPU_ROWS.with(|f| f.set(None));
    FORCE_KERNEL.with(|c| c.set(None));
}

#[test]
fn attention_backward_is_deterministic() {
    let a = AttnData::new(AttentionShape { batch: 2, seq: 37, heads: 3, head_dim: 16 }, 400, true);
    each_kernel(|k| deterministic(&a, k));
}

fn deterministic(a: &AttnData, k: AttentionKernel) {
    let (x, y) = (run_attention(a), run_attention(a));
    assert_same_bits(&x, &y, &format!("{k:?}: two runs"));
}

/// Probabilities, context and the three gradients of two runs, bit for bit.
fn assert_same_bits(x: &AttnOut, y: &AttnOut, what: &str) {
    for (name, p, q) in [
        ("probs", &x.probs, &y.probs),
        ("ctx", &x.ctx, &y.ctx),
        ("dq", &x.dq, &y.dq),
        ("dk", &x.dk, &y.dk),
        ("dv", &x.dv, &y.dv),
    ] {
        let differ = bits(p).iter().zip(bits(q)).filter(|(a, b)| **a != *b).count();
        assert_eq!(differ, 0, "{what}: {name}: {differ} of {} values differ", p.len());
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
    each_kernel(|_| fully_masked(&a));
}

fn fully_masked(a: &AttnData) {
    let s = a.s;
    let o = run_attention(a);
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

/// The largest sizes the encoder uses per head: seq 512, head_dim 128.
#[test]
fn attention_largest_head() {
    let s = AttentionShape { batch: 1, seq: 512, heads: 1, head_dim: 128 };
    each_kernel(|k| {
        let (f, b) = attention_case(s, 310, true);
        println!("attention {k:?} seq=512 hd=128: forward {f:.2e}, backward {b:.2e}");
    });
}
