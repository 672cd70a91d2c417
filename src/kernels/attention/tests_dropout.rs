//! Attention with dropout on the probabilities (`attention_forward_with` /
//! `attention_backward_with`) against the f64 reference with the same masks, on shapes that are
//! not tile multiples, with padding holes and NaN-poisoned outputs.

use super::reference_dropout as r;
use crate::kernels::attention::{self, AttentionShape, ProbsDropout};
use crate::kernels::dropout::reference::keep_mask;
use crate::kernels::dropout::{MaskKey, MaskLayout, Rate, Site};
use crate::kernels::test_support::*;

const TOL: f64 = 2e-5;

/// Runs attention forward and backward with dropout, checks them against the f64 reference and
/// returns (ctx, dq, dk, dv, probs).
fn case(s: AttentionShape, row0: usize, p: f64, seed: u64) -> [Vec<f32>; 5] {
    let mut rng = rng(seed);
    let n = s.batch * s.seq * s.hidden();
    let (q, k, v, dctx) = (
        rand_f32(&mut rng, n, 1.0),
        rand_f32(&mut rng, n, 1.0),
        rand_f32(&mut rng, n, 1.0),
        rand_f32(&mut rng, n, 1.0),
    );
    // Padding at the end of every other sequence.
    let mask: Vec<f32> =
        (0..s.batch * s.seq).map(|t| if t % s.seq >= s.seq - (t / s.seq) % 2 * 2 { 0.0 } else { 1.0 }).collect();
    let rate = Rate::new(p).unwrap();
    let key = MaskKey { seed: 5, step: 3, layer: 2, site: Site::AttentionProbs };
    let act = [s.batch * s.seq, s.hidden()];
    let pshape = attention::probs_shape(s);
    let (qg, kg, vg, dg) = (upload(&act, &q), upload(&act, &k), upload(&act, &v), upload(&act, &dctx));
    let mg = upload(&[s.batch, s.seq], &mask);
    let (probs, ctx, work) = (poisoned(&pshape), poisoned(&act), poisoned(&pshape));
    let (dq, dk, dv, scratch, work2) =
        (poisoned(&act), poisoned(&act), poisoned(&act), poisoned(&pshape), poisoned(&pshape));
    let drop = |w| Some(ProbsDropout { key, rate, row0, work: w });
    let mut b = gpu().batch();
    attention::attention_forward_with(&mut b, s, &qg, &kg, &vg, &mg, &probs, &ctx, drop(&work)).unwrap();
    attention::attention_backward_with(
        &mut b,
        s,
        &qg,
        &kg,
        &vg,
        &mg,
        &probs,
        &dg,
        &dq,
        &dk,
        &dv,
        &scratch,
        drop(&work2),
    )
    .unwrap();
    b.finish().unwrap();
    let keep =
        keep_mask(key, rate, MaskLayout::Attention { heads: s.heads, seq: s.seq, row0 }, attention::probs_len(s));
    let (q, k, v, m, dctx) = (f64s(&q), f64s(&k), f64s(&v), f64s(&mask), f64s(&dctx));
    let p64 = rate.p as f64;
    let what = format!("{s:?} row0={row0} p={p}");
    assert_close(&format!("{what} ctx"), &download(&ctx), &r::attention_dropout(&q, &k, &v, &m, &keep, p64, s), TOL);
    let (rdq, rdk, rdv) = r::attention_dropout_backward(&q, &k, &v, &m, &keep, p64, &dctx, s);
    assert_close(&format!("{what} dq"), &download(&dq), &rdq, TOL);
    assert_close(&format!("{what} dk"), &download(&dk), &rdk, TOL);
    assert_close(&format!("{what} dv"), &download(&dv), &rdv, TOL);
    // The saved probabilities are the softmax itself (backward needs them undropped).
    let (_, rprobs) = attention::reference::attention(&q, &k, &v, &m, s);
    assert_close(&format!("{what} probs"), &download(&probs), &rprobs, TOL);
    [ctx, dq, dk, dv, probs].map(|t| download(&t))
}

#[test]
fn attention_with_probs_dropout_matches_the_f64_reference() {
    super::tests::each_kernel(|_| {
        case(AttentionShape { batch: 3, seq: 13, heads: 2, head_dim: 5 }, 0, 0.1, 81);
        case(AttentionShape { batch: 2, seq: 33, heads: 3, head_dim: 17 }, 66, 0.37, 82);
        case(AttentionShape { batch: 1, seq: 1, heads: 1, head_dim: 1 }, 4, 0.5, 83);
        // Multiples of 4 keys: on CPU drivers the softmax and the dropout in one pass.
        case(AttentionShape { batch: 2, seq: 32, heads: 3, head_dim: 7 }, 100, 0.2, 84);
    });
}

/// CPU drivers, rows of a multiple of 4 keys: the softmax that drops its probabilities in the
/// same pass gives the bits of the softmax followed by the dropout kernel (and the reference's
/// values: `case`), padding holes included.
#[test]
fn softmax_with_dropout_in_one_pass_gives_the_two_passes_bits() {
    use crate::kernels::attention::{AttentionKernel, FORCE_CPU_ROWS, FORCE_KERNEL, NO_ROW_QUADS};
    FORCE_KERNEL.with(|c| c.set(Some(AttentionKernel::Separate)));
    FORCE_CPU_ROWS.with(|f| f.set(Some(true)));
    for (i, &(seq, row0)) in [(4usize, 0usize), (8, 13), (64, 640), (128, 0)].iter().enumerate() {
        let s = AttentionShape { batch: 2, seq, heads: 3, head_dim: 5 };
        let run = |no_quads: bool| {
            NO_ROW_QUADS.with(|f| f.set(no_quads));
            case(s, row0, 0.3, 90 + i as u64)
        };
        let (two, one) = (run(true), run(false));
        for (name, a, b) in ["ctx", "dq", "dk", "dv", "probs"].iter().zip(&two).zip(&one).map(|((n, a), b)| (n, a, b)) {
            assert_eq!(bits(a), bits(b), "seq {seq}: {name}");
        }
    }
    NO_ROW_QUADS.with(|f| f.set(false));
    FORCE_CPU_ROWS.with(|f| f.set(None));
    FORCE_KERNEL.with(|c| c.set(None));
}

#[test]
fn attention_dropout_validates_its_work_tensor() {
    let s = AttentionShape { batch: 1, seq: 3, heads: 2, head_dim: 2 };
    let act = [3, 4];
    let (q, probs, ctx) = (poisoned(&act), poisoned(&attention::probs_shape(s)), poisoned(&act));
    let mask = upload(&[1, 3], &[1.0; 3]);
    let key = MaskKey { seed: 1, step: 1, layer: 0, site: Site::AttentionProbs };
    let rate = Rate::new(0.1).unwrap();
    let mut b = gpu().batch();
    let small = poisoned(&[1, 2, 3, 2]);
    let bad = Some(ProbsDropout { key, rate, row0: 0, work: &small });
    assert!(attention::attention_forward_with(&mut b, s, &q, &q, &q, &mask, &probs, &ctx, bad).is_err());
    let aliased = Some(ProbsDropout { key, rate, row0: 0, work: &probs });
    assert!(attention::attention_forward_with(&mut b, s, &q, &q, &q, &mask, &probs, &ctx, aliased).is_err());
    assert!(b.is_empty());
}
