//! Attention over a packed `[tokens, 3·hidden]` Q|K|V tensor (`attention_forward_packed` /
//! `attention_backward_packed`, the fused QKV projection's layout): bit-identical to the separate
//! tensors' path (the same sums, read through strided views; with each attention kernel), and
//! against the f64 reference;
//! shapes that are not tile multiples, padding, NaN-poisoned outputs, with and without dropout.

use super::reference as ops;
use crate::kernels::attention::{self, AttentionShape, ProbsDropout};
use crate::kernels::dropout::{MaskKey, Rate, Site};
use crate::kernels::test_support::*;

const TOL: f64 = 1e-4;

/// Interleaves three `[tokens, hidden]` row-major tensors into one `[tokens, 3·hidden]`.
fn pack(parts: [&[f32]; 3], hidden: usize) -> Vec<f32> {
    let tokens = parts[0].len() / hidden;
    let mut out = Vec::with_capacity(3 * parts[0].len());
    for t in 0..tokens {
        for p in parts {
            out.extend_from_slice(&p[t * hidden..(t + 1) * hidden]);
        }
    }
    out
}

/// Third `i` (0 = Q, 1 = K, 2 = V) of a packed `[tokens, 3·hidden]` tensor.
fn third(packed: &[f32], hidden: usize, i: usize) -> Vec<f32> {
    packed.chunks(3 * hidden).flat_map(|row| row[i * hidden..(i + 1) * hidden].to_vec()).collect()
}

struct Outputs {
    probs: Vec<f32>,
    ctx: Vec<f32>,
    grads: [Vec<f32>; 3],
}

fn case(s: AttentionShape, seed: u64, dropout_p: Option<f64>) {
    let mut rng = rng(seed);
    let n = s.batch * s.seq * s.hidden();
    let (q, k, v) = (rand_f32(&mut rng, n, 1.5), rand_f32(&mut rng, n, 1.5), rand_f32(&mut rng, n, 1.0));
    let dctx = rand_f32(&mut rng, n, 1.0);
    // Sequence b keeps seq - b tokens (at least one).
    let mask: Vec<f32> = (0..s.batch * s.seq)
        .map(|t| if t % s.seq < s.seq.saturating_sub(t / s.seq).max(1) { 1.0 } else { 0.0 })
        .collect();
    let act = [s.batch * s.seq, s.hidden()];
    let pshape = attention::probs_shape(s);
    let (mg, dg) = (upload(&[s.batch, s.seq], &mask), upload(&act, &dctx));
    let key = MaskKey { seed: 9, step: 1, layer: 0, site: Site::AttentionProbs };
    let rate = dropout_p.map(|p| Rate::new(p).unwrap());
    let drop = |w| rate.map(|rate| ProbsDropout { key, rate, row0: 3, work: w });

    // Separate tensors.
    let (qg, kg, vg) = (upload(&act, &q), upload(&act, &k), upload(&act, &v));
    let (probs, ctx, w1, w2) = (poisoned(&pshape), poisoned(&act), poisoned(&pshape), poisoned(&pshape));
    let (dq, dk, dv, scratch) = (poisoned(&act), poisoned(&act), poisoned(&act), poisoned(&pshape));
    let mut b = gpu().batch();
    attention::attention_forward_with(&mut b, s, &qg, &kg, &vg, &mg, &probs, &ctx, drop(&w1)).unwrap();
    attention::attention_backward_with(&mut b, s, &qg, &kg, &vg, &mg, &probs, &dg, &dq, &dk, &dv, &scratch, drop(&w2))
        .unwrap();
    b.finish().unwrap();
    let separate =
        Outputs { probs: download(&probs), ctx: download(&ctx), grads: [download(&dq), download(&dk), download(&dv)] };

    // Packed.
    let packed_shape = [s.batch * s.seq, 3 * s.hidden()];
    let qkv = upload(&packed_shape, &pack([&q, &k, &v], s.hidden()));
    let (probs, ctx, w1, w2) = (poisoned(&pshape), poisoned(&act), poisoned(&pshape), poisoned(&pshape));
    let (dqkv, scratch) = (poisoned(&packed_shape), poisoned(&pshape));
    let mut b = gpu().batch();
    attention::attention_forward_packed(&mut b, s, &qkv, &mg, &probs, &ctx, drop(&w1)).unwrap();
    attention::attention_backward_packed(&mut b, s, &qkv, &mg, &probs, &dg, &dqkv, &scratch, drop(&w2)).unwrap();
    b.finish().unwrap();
    let dqkv = download(&dqkv);
    let packed =
        Outputs { probs: download(&probs), ctx: download(&ctx), grads: [0, 1, 2].map(|i| third(&dqkv, s.hidden(), i)) };

    let what = format!("{s:?} dropout {dropout_p:?}");
    assert_eq!(bits(&packed.probs), bits(&separate.probs), "{what}: probs");
    assert_eq!(bits(&packed.ctx), bits(&separate.ctx), "{what}: ctx");
    for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
        assert!(packed.grads[i].iter().all(|x| x.is_finite()), "{what}: {name} not fully written");
        assert_eq!(bits(&packed.grads[i]), bits(&separate.grads[i]), "{what}: {name}");
    }
    if dropout_p.is_none() {
        let (q, k, v, m, dctx) = (f64s(&q), f64s(&k), f64s(&v), f64s(&mask), f64s(&dctx));
        let (rctx, rprobs) = ops::attention(&q, &k, &v, &m, s);
        let (rdq, rdk, rdv) = ops::attention_backward(&q, &k, &v, &m, &dctx, s);
        assert_close(&format!("{what} probs"), &packed.probs, &rprobs, TOL);
        assert_close(&format!("{what} ctx"), &packed.ctx, &rctx, TOL);
        for (got, want, name) in
            [(&packed.grads[0], &rdq, "dq"), (&packed.grads[1], &rdk, "dk"), (&packed.grads[2], &rdv, "dv")]
        {
            assert_close(&format!("{what} {name}"), got, want, TOL);
        }
    }
}

#[test]
fn packed_attention_is_the_separate_path_bit_for_bit() {
    for (i, &(batch, seq, heads, head_dim)) in
        [(1usize, 1usize, 1usize, 8usize), (2, 5, 2, 12), (3, 11, 4, 8), (2, 40, 3, 12)].iter().enumerate()
    {
        let s = AttentionShape { batch, seq, heads, head_dim };
        super::tests::each_kernel(|_| {
            case(s, 600 + i as u64, None);
            case(s, 700 + i as u64, Some(0.25));
        });
    }
}

#[test]
fn packed_attention_validates_shapes_and_aliasing() {
    let s = AttentionShape { batch: 2, seq: 3, heads: 2, head_dim: 4 };
    let (act, packed) = ([6, 8], [6, 24]);
    let qkv = poisoned(&packed);
    let mask = poisoned(&[2, 3]);
    let probs = poisoned(&attention::probs_shape(s));
    let (ctx, scratch, dqkv) = (poisoned(&act), poisoned(&attention::probs_shape(s)), poisoned(&packed));
    let mut b = gpu().batch();
    // Q, K, V as a [tokens, hidden] tensor instead of [tokens, 3·hidden].
    assert!(attention::attention_forward_packed(&mut b, s, &ctx, &mask, &probs, &poisoned(&act), None).is_err());
    assert!(attention::attention_forward_packed(&mut b, s, &qkv, &mask, &probs, &poisoned(&[6, 9]), None).is_err());
    // An output in the input's buffer.
    assert!(attention::attention_backward_packed(&mut b, s, &qkv, &mask, &probs, &ctx, &qkv, &scratch, None).is_err());
    assert!(attention::attention_backward_packed(
        &mut b,
        s,
        &qkv,
        &mask,
        &probs,
        &ctx,
        &poisoned(&act),
        &scratch,
        None
    )
    .is_err());
    assert!(attention::attention_backward_packed(&mut b, s, &qkv, &mask, &probs, &ctx, &dqkv, &probs, None).is_err());
    assert!(b.is_empty());
}
