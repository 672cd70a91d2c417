//! The multi-tensor optimizer kernels against the per-tensor ones (bit for bit) and the f64
//! reference: many tensors of sizes that are not multiples of the workgroup or the 4096-element
//! chunk (and one empty), more than one dispatch's worth, several steps with weight decay on some
//! tensors and the clip factor from the GPU; plus the per-tensor fallback and validation.

use super::reference::{self as r, AdamWHyper, AdamWTensor as RefTensor};
use super::{adamw_step, clip_factor, sum_of_squares, sum_of_squares_scratch_len, AdamW};
use super::{adamw_step_multi, multi::FORCE_MULTI, sum_of_squares_and_clip, AdamWTensor};
use crate::gpu::GpuTensor;
use crate::kernels::test_support::*;

/// Sizes: 19 tensors (three `adamw_multi` dispatches, two `sumsq_multi`), from empty to several
/// chunks, mostly ragged.
const SIZES: [usize; 19] = [1, 255, 257, 4095, 4097, 9000, 0, 3, 64, 1000, 12289, 7, 513, 2, 8191, 300, 5, 4096, 77];

struct State {
    p: Vec<GpuTensor>,
    g: Vec<GpuTensor>,
    m: Vec<GpuTensor>,
    v: Vec<GpuTensor>,
}

fn state(seed: u64) -> (State, Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut rng = rng(seed);
    let p0: Vec<Vec<f32>> = SIZES.iter().map(|&n| rand_f32(&mut rng, n, 1.0)).collect();
    // Gradient scales differ per tensor so the norm mixes magnitudes.
    let g0: Vec<Vec<f32>> =
        SIZES.iter().enumerate().map(|(i, &n)| rand_f32(&mut rng, n, 0.01 * (1 + i % 5) as f32)).collect();
    let up = |xs: &[Vec<f32>]| xs.iter().map(|x| upload(&[x.len()], x)).collect::<Vec<_>>();
    let zeros = || SIZES.iter().map(|&n| upload(&[n], &vec![0.0; n])).collect::<Vec<_>>();
    (State { p: up(&p0), g: up(&g0), m: zeros(), v: zeros() }, p0, g0)
}

const OPT: AdamW = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
const MAX_NORM: f32 = 0.5;

fn decay(i: usize) -> bool {
    i % 3 != 0
}

/// Per tensor: params, m and v after the steps; then each step's squared norm and clip factor.
type Outcome = (Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<f32>);

/// Three steps with clipping, multi-tensor (`multi`) or per tensor.
fn run(multi: bool, seed: u64) -> Outcome {
    let (st, _, _) = state(seed);
    let (ss, factor) = (poisoned(&[1]), poisoned(&[1]));
    let grads: Vec<&GpuTensor> = st.g.iter().collect();
    let mut sums = vec![];
    for step in 1..=3u32 {
        let mut b = gpu().batch();
        let lr = OPT.lr * step as f32 / 3.0;
        if multi {
            let scratch = poisoned(&[sum_of_squares_scratch_len(&grads)]);
            sum_of_squares_and_clip(&mut b, &grads, &scratch, MAX_NORM, &ss, &factor).unwrap();
            let tensors: Vec<AdamWTensor> = (0..SIZES.len())
                .map(|i| AdamWTensor { param: &st.p[i], grad: &st.g[i], m: &st.m[i], v: &st.v[i], decay: decay(i) })
                .collect();
            adamw_step_multi(&mut b, &OPT, step, lr, 1.0, Some(&factor), &tensors).unwrap();
        } else {
            sum_of_squares(&mut b, &grads, &ss).unwrap();
            clip_factor(&mut b, &ss, MAX_NORM, &factor).unwrap();
            for i in 0..SIZES.len() {
                adamw_step(
                    &mut b,
                    &OPT,
                    step,
                    lr,
                    1.0,
                    Some(&factor),
                    decay(i),
                    &st.p[i],
                    &st.g[i],
                    &st.m[i],
                    &st.v[i],
                )
                .unwrap();
            }
        }
        b.finish().unwrap();
        sums.push(download(&ss)[0]);
        sums.push(download(&factor)[0]);
    }
    (
        st.p.iter().map(download).collect(),
        st.m.iter().map(download).collect(),
        st.v.iter().map(download).collect(),
        sums,
    )
}

#[test]
fn multi_tensor_step_is_the_per_tensor_step_bit_for_bit() {
    let on = super::multi_tensor_supported(&gpu());
    println!("multi-tensor kernels on this device: {on} (else the per-tensor fallback runs both ways)");
    let multi = run(true, 900);
    let single = run(false, 900);
    assert_eq!(bits(&multi.3), bits(&single.3), "sum of squares and clip factors");
    for i in 0..SIZES.len() {
        assert_eq!(bits(&multi.0[i]), bits(&single.0[i]), "param {i} ({} values)", SIZES[i]);
        assert_eq!(bits(&multi.1[i]), bits(&single.1[i]), "m {i}");
        assert_eq!(bits(&multi.2[i]), bits(&single.2[i]), "v {i}");
    }
    // The fallback on this device (as on one without 33 storage bindings) gives the same bits.
    FORCE_MULTI.with(|f| f.set(Some(false)));
    let fallback = run(true, 900);
    FORCE_MULTI.with(|f| f.set(None));
    assert_eq!(bits(&fallback.3), bits(&single.3), "fallback sums");
    assert!((0..SIZES.len()).all(|i| bits(&fallback.0[i]) == bits(&single.0[i])), "fallback params");
}

#[test]
fn multi_tensor_step_matches_the_f64_reference() {
    let (_, p0, g0) = state(901);
    let (params, _, _, sums) = run(true, 901);
    let h = AdamWHyper { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let mut tensors: Vec<RefTensor> = p0.iter().enumerate().map(|(i, p)| RefTensor::new(f64s(p), decay(i))).collect();
    let grads: Vec<Vec<f64>> = g0.iter().map(|g| f64s(g)).collect();
    for step in 1..=3u32 {
        let lr = (OPT.lr * step as f32 / 3.0) as f64;
        let mut g = grads.clone();
        let norm = r::clip_grad_norm(&mut g, MAX_NORM as f64);
        assert_close(&format!("step {step} norm"), &[sums[2 * (step as usize - 1)].sqrt()], &[norm], 1e-5);
        for (t, g) in tensors.iter_mut().zip(&g) {
            r::adamw_update(&h, step, lr, 1.0, t, g);
        }
    }
    for (i, t) in tensors.iter().enumerate() {
        assert_close(&format!("param {i}"), &params[i], &t.p, 1e-5);
    }
}

#[test]
fn multi_tensor_step_validates() {
    let (st, _, _) = state(902);
    let (ss, factor, scratch) = (poisoned(&[1]), poisoned(&[1]), poisoned(&[64]));
    let t = |i: usize| AdamWTensor { param: &st.p[i], grad: &st.g[i], m: &st.m[i], v: &st.v[i], decay: true };
    let mut b = gpu().batch();
    // Mismatched shapes, a shared buffer, step 0, a bad learning rate.
    let bad = AdamWTensor { grad: &st.g[3], ..t(2) };
    assert!(adamw_step_multi(&mut b, &OPT, 1, 0.1, 1.0, None, &[t(0), bad]).is_err());
    let shared = AdamWTensor { m: &st.p[1], ..t(1) };
    assert!(adamw_step_multi(&mut b, &OPT, 1, 0.1, 1.0, None, &[t(0), shared]).is_err());
    assert!(adamw_step_multi(&mut b, &OPT, 1, 0.1, 1.0, None, &[t(0), t(0)]).is_err());
    assert!(adamw_step_multi(&mut b, &OPT, 0, 0.1, 1.0, None, &[t(0)]).is_err());
    assert!(adamw_step_multi(&mut b, &OPT, 1, f32::NAN, 1.0, None, &[t(0)]).is_err());
    // Clipping: a bad norm, a short scratch, an output that is an input.
    let grads: Vec<&GpuTensor> = st.g.iter().collect();
    assert!(sum_of_squares_and_clip(&mut b, &grads, &scratch, 0.0, &ss, &factor).is_err());
    assert!(sum_of_squares_and_clip(&mut b, &grads, &poisoned(&[2]), 1.0, &ss, &factor).is_err());
    assert!(sum_of_squares_and_clip(&mut b, &grads, &scratch, 1.0, &st.g[0], &factor).is_err());
    assert!(b.is_empty());
}
