//! The fused attention kernels (`fused.rs`) against the f64 reference and against the separate
//! path: sequence lengths that are no multiple of a workgroup (7, 33, 130), several heads, padding
//! holes and an all-padding sequence, packed and whole Q|K|V, NaN-poisoned outputs, dropout off and
//! on (the same Philox masks as the dropout kernel), both workgroup layouts (CPU drivers' and GPUs').

use super::tests::AttnData;
use super::{reference as ops, reference_dropout as rd};
use crate::kernels::attention::{self, AttentionKernel, AttentionShape, ProbsDropout, FORCE_CPU_ROWS, FORCE_KERNEL};
use crate::kernels::dropout::reference::keep_mask;
use crate::kernels::dropout::{MaskKey, MaskLayout, Rate, Site};
use crate::kernels::test_support::*;

const TOL: f64 = 1e-4;

/// Runs `f` with the attention kernel and the row layout forced, restoring both after.
fn with<T>(kernel: AttentionKernel, cpu_rows: Option<bool>, f: impl FnOnce() -> T) -> T {
    FORCE_KERNEL.with(|k| k.set(Some(kernel)));
    FORCE_CPU_ROWS.with(|c| c.set(cpu_rows));
    let out = f();
    FORCE_KERNEL.with(|k| k.set(None));
    FORCE_CPU_ROWS.with(|c| c.set(None));
    out
}

/// Sequence 0 unpadded, the last all padding (when batch > 1), the others suffix padding plus a
/// hole; Q, K, V and dctx as the separate path's tests draw them.
fn inputs(s: AttentionShape, seed: u64) -> AttnData {
    AttnData::with_mask(s, seed, |_| {
        let mut mask = vec![1.0f32; s.batch * s.seq];
        for b in 1..s.batch {
            let len = if b + 1 == s.batch { 0 } else { s.seq - (b * 3) % s.seq };
            for j in len..s.seq {
                mask[b * s.seq + j] = 0.0;
            }
            if len > 2 {
                mask[b * s.seq + 1] = 0.0;
            }
        }
        mask
    })
}

/// What one forward + backward returns.
struct Outputs {
    probs: Vec<f32>,
    ctx: Vec<f32>,
    dropped: Option<Vec<f32>>,
    grads: [Vec<f32>; 3],
    dispatches: (usize, usize),
}

/// Interleaves Q, K, V into one `[tokens, 3·hidden]` tensor.
fn pack(parts: [&[f32]; 3], hidden: usize) -> Vec<f32> {
    let rows = parts[0].len() / hidden;
    (0..rows).flat_map(|t| parts.iter().flat_map(move |p| p[t * hidden..(t + 1) * hidden].to_vec())).collect()
}

/// Forward and backward through the packed entry points (`packed`) or the whole tensors.
fn run(a: &AttnData, packed: bool, dropout: Option<(MaskKey, Rate, usize)>) -> Outputs {
    let s = a.s;
    let (act, pshape) = ([s.batch * s.seq, s.hidden()], attention::probs_shape(s));
    let (mask, dctx) = (upload(&[s.batch, s.seq], &a.mask), upload(&act, &a.dctx));
    let (probs, ctx, scratch, w1, w2) =
        (poisoned(&pshape), poisoned(&act), poisoned(&pshape), poisoned(&pshape), poisoned(&pshape));
    let drop = |w| dropout.map(|(key, rate, row0)| ProbsDropout { key, rate, row0, work: w });
    let mut b = gpu().batch();
    let (grads, dispatches) = if packed {
        let wide = [s.batch * s.seq, 3 * s.hidden()];
        let (qkv, dqkv) = (upload(&wide, &pack([&a.q, &a.k, &a.v], s.hidden())), poisoned(&wide));
        attention::attention_forward_packed(&mut b, s, &qkv, &mask, &probs, &ctx, drop(&w1)).unwrap();
        let fwd = b.len();
        attention::attention_backward_packed(&mut b, s, &qkv, &mask, &probs, &dctx, &dqkv, &scratch, drop(&w2))
            .unwrap();
        let bwd = b.len() - fwd;
        b.finish().unwrap();
        let d = download(&dqkv);
        let third = |i: usize| -> Vec<f32> {
            d.chunks(3 * s.hidden()).flat_map(|r| r[i * s.hidden()..(i + 1) * s.hidden()].to_vec()).collect()
        };
        ([third(0), third(1), third(2)], (fwd, bwd))
    } else {
        let (q, k, v) = (upload(&act, &a.q), upload(&act, &a.k), upload(&act, &a.v));
        let (dq, dk, dv) = (poisoned(&act), poisoned(&act), poisoned(&act));
        attention::attention_forward_with(&mut b, s, &q, &k, &v, &mask, &probs, &ctx, drop(&w1)).unwrap();
        let fwd = b.len();
        attention::attention_backward_with(
            &mut b,
            s,
            &q,
            &k,
            &v,
            &mask,
            &probs,
            &dctx,
            &dq,
            &dk,
            &dv,
            &scratch,
            drop(&w2),
        )
        .unwrap();
        let bwd = b.len() - fwd;
        b.finish().unwrap();
        ([download(&dq), download(&dk), download(&dv)], (fwd, bwd))
    };
    let dropped = dropout.map(|_| download(&w1));
    Outputs { probs: download(&probs), ctx: download(&ctx), dropped, grads, dispatches }
}

/// The fused kernels against the f64 reference (with the dropout kernel's keep mask when `p` > 0).
fn reference_case(s: AttentionShape, seed: u64, packed: bool, p: Option<f64>, cpu_rows: bool) {
    let a = inputs(s, seed);
    let row0 = 5;
    let key = MaskKey { seed: 77, step: 4, layer: 1, site: Site::AttentionProbs };
    let dropout = p.map(|p| (key, Rate::new(p).unwrap(), row0));
    let o = with(AttentionKernel::Fused, Some(cpu_rows), || run(&a, packed, dropout));
    let what = format!("fused {s:?} packed={packed} p={p:?} cpu_rows={cpu_rows}");
    assert_eq!(o.dispatches, (1, 2), "{what}: dispatches (forward, backward)");
    let (q, k, v, m, dctx) = (f64s(&a.q), f64s(&a.k), f64s(&a.v), f64s(&a.mask), f64s(&a.dctx));
    let (rctx, rprobs) = ops::attention(&q, &k, &v, &m, s);
    assert_close(&format!("{what} probs"), &o.probs, &rprobs, TOL);
    let (rctx, [rdq, rdk, rdv]) = match dropout {
        None => {
            let (dq, dk, dv) = ops::attention_backward(&q, &k, &v, &m, &dctx, s);
            (rctx, [dq, dk, dv])
        }
        Some((key, rate, row0)) => {
            let layout = MaskLayout::Attention { heads: s.heads, seq: s.seq, row0 };
            let keep = keep_mask(key, rate, layout, attention::probs_len(s));
            let p = rate.p as f64;
            let ctx = rd::attention_dropout(&q, &k, &v, &m, &keep, p, s);
            let (dq, dk, dv) = rd::attention_dropout_backward(&q, &k, &v, &m, &keep, p, &dctx, s);
            let dropped: Vec<f64> =
                rprobs.iter().zip(&keep).map(|(&x, &kp)| if kp { x / (1.0 - p) } else { 0.0 }).collect();
            assert_close(&format!("{what} P'"), o.dropped.as_ref().unwrap(), &dropped, TOL);
            (ctx, [dq, dk, dv])
        }
    };
    assert_close(&format!("{what} ctx"), &o.ctx, &rctx, TOL);
    for (got, want, name) in [(&o.grads[0], &rdq, "dq"), (&o.grads[1], &rdk, "dk"), (&o.grads[2], &rdv, "dv")] {
        assert_close(&format!("{what} {name}"), got, want, TOL);
    }
    // The all-padding sequence: zero probabilities, context and gradients (no NaN).
    if s.batch > 1 {
        let (act0, p0) = ((s.batch - 1) * s.seq * s.hidden(), (s.batch - 1) * s.heads * s.seq * s.seq);
        assert!(o.probs[p0..].iter().all(|&x| x == 0.0), "{what}: probabilities of the all-padding sequence");
        for t in [&o.ctx, &o.grads[0], &o.grads[1], &o.grads[2]] {
            assert!(t[act0..].iter().all(|&x| x == 0.0), "{what}: the all-padding sequence");
        }
    }
}

#[test]
fn fused_attention_matches_the_f64_reference() {
    let shapes = [(3usize, 7usize, 2usize, 5usize), (3, 33, 3, 16), (2, 130, 2, 64), (1, 1, 1, 3)];
    for (i, &(batch, seq, heads, head_dim)) in shapes.iter().enumerate() {
        let s = AttentionShape { batch, seq, heads, head_dim };
        for (packed, p) in [(true, None), (false, None), (true, Some(0.3)), (false, Some(0.1))] {
            for cpu_rows in [true, false] {
                reference_case(s, 900 + i as u64, packed, p, cpu_rows);
            }
        }
    }
}

/// Fused and separate paths with dropout on: the same masks (P' is zero at exactly the same
/// places, where the probability is not), and every output within fp32 rounding.
#[test]
fn fused_and_separate_draw_the_same_dropout_masks() {
    for (i, &(batch, seq, heads, head_dim, p)) in
        [(2usize, 13usize, 3usize, 8usize, 0.5f64), (3, 33, 2, 12, 0.2), (1, 6, 4, 4, 0.9)].iter().enumerate()
    {
        let s = AttentionShape { batch, seq, heads, head_dim };
        let a = inputs(s, 950 + i as u64);
        let key = MaskKey { seed: 0x1234_5678_9abc, step: 11, layer: 3, site: Site::AttentionProbs };
        let dropout = Some((key, Rate::new(p).unwrap(), 40));
        let fused = with(AttentionKernel::Fused, None, || run(&a, true, dropout));
        let separate = with(AttentionKernel::Separate, None, || run(&a, true, dropout));
        assert_eq!(fused.dispatches, (1, 2));
        assert!(separate.dispatches.0 >= 4 && separate.dispatches.1 >= 6, "{:?}", separate.dispatches);
        let what = format!("{s:?} p={p}");
        let (fd, sd) = (fused.dropped.unwrap(), separate.dropped.unwrap());
        let mut dropped = 0;
        for (e, ((&f, &sep), &pr)) in fd.iter().zip(&sd).zip(&separate.probs).enumerate() {
            if pr != 0.0 {
                assert_eq!(f == 0.0, sep == 0.0, "{what}: element {e} dropped by one path only");
                dropped += (f == 0.0) as usize;
            }
        }
        assert!(dropped > 0, "{what}: nothing dropped");
        assert_close(&format!("{what} P'"), &fd, &f64s(&sd), TOL);
        assert_close(&format!("{what} probs"), &fused.probs, &f64s(&separate.probs), TOL);
        assert_close(&format!("{what} ctx"), &fused.ctx, &f64s(&separate.ctx), TOL);
        for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
            assert_close(&format!("{what} {name}"), &fused.grads[i], &f64s(&separate.grads[i]), TOL);
        }
    }
}

/// Two runs agree bit for bit, and the packed and whole layouts give the same bits.
#[test]
fn fused_attention_is_deterministic_in_both_layouts() {
    let a = inputs(AttentionShape { batch: 2, seq: 21, heads: 3, head_dim: 8 }, 970);
    let key = MaskKey { seed: 3, step: 2, layer: 0, site: Site::AttentionProbs };
    let dropout = Some((key, Rate::new(0.25).unwrap(), 0));
    let runs = with(AttentionKernel::Fused, None, || {
        [run(&a, true, dropout), run(&a, true, dropout), run(&a, false, dropout)]
    });
    for o in &runs[1..] {
        assert_eq!(bits(&o.probs), bits(&runs[0].probs));
        assert_eq!(bits(&o.ctx), bits(&runs[0].ctx));
        for i in 0..3 {
            assert_eq!(bits(&o.grads[i]), bits(&runs[0].grads[i]));
        }
    }
}

/// Sequences over `FUSED_MAX_SEQ` and heads wider than `FUSED_MAX_HEAD_DIM` run the separate
/// kernels whatever the policy.
#[test]
fn long_sequences_and_wide_heads_fall_back_to_separate() {
    let b = gpu().batch();
    let kernel = |seq, head_dim| {
        let s = AttentionShape { batch: 1, seq, heads: 1, head_dim };
        with(AttentionKernel::Fused, None, || attention::kernel_for(&b, s))
    };
    let (seq, hd) = (attention::FUSED_MAX_SEQ, attention::FUSED_MAX_HEAD_DIM);
    assert_eq!(kernel(seq, hd), AttentionKernel::Fused);
    assert_eq!(kernel(seq + 1, hd), AttentionKernel::Separate);
    assert_eq!(kernel(seq, hd + 1), AttentionKernel::Separate);
}

/// The widest head and the longest sequence the fused kernels take, against the reference.
#[test]
fn fused_attention_widest_head_and_longest_sequence() {
    let s =
        AttentionShape { batch: 2, seq: attention::FUSED_MAX_SEQ, heads: 1, head_dim: attention::FUSED_MAX_HEAD_DIM };
    reference_case(s, 990, true, Some(0.1), true);
}
