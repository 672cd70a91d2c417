//! The optimizer on the GPU (AdamW, global-norm clipping, sums of squares) vs the f64 reference
//! over several steps, determinism, argument checks, and the linear warmup/decay schedule.

use super::reference as r;
use crate::gpu::GpuTensor;
use crate::kernels::optim::{self, AdamW, LinearSchedule};
use crate::kernels::test_support::*;

/// Tensor sizes: none a multiple of the 256-thread workgroup or the 4096-element sum chunk.
const SIZES: [usize; 4] = [1, 7, 1000, 70001];
const STEPS: u32 = 5;
const TOL: f64 = 1e-5;

#[derive(Clone, Copy, Debug)]
enum Scale {
    /// Gradients as they are.
    None,
    /// A fixed host-side multiplier (`grad_scale`).
    Fixed(f64),
    /// Global-norm clipping to this max norm, factor computed on the GPU (`grad_scale_tensor`).
    ClipNorm(f64),
}

#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    lr: f64,
    weight_decay: f64,
    warmup: u32,
    total: u32,
    scale: Scale,
    /// Initial parameters uniform in ±init (0: all zero, as AdapterHub's near-zero up-projection;
    /// then p itself is the accumulated update and its relative error that of the update).
    init: f32,
}

impl Case {
    fn adamw(&self) -> AdamW {
        AdamW { lr: self.lr as f32, weight_decay: self.weight_decay as f32, ..Default::default() }
    }
    fn hyper(&self) -> r::AdamWHyper {
        r::AdamWHyper { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: self.weight_decay }
    }
    fn schedule(&self) -> LinearSchedule {
        LinearSchedule { base_lr: self.lr as f32, warmup_steps: self.warmup, total_steps: self.total }
    }
    /// The schedule in f64, HF's formula.
    fn lr_ref(&self, s: u32) -> f64 {
        let (s, w, t) = (s as f64, self.warmup as f64, self.total as f64);
        let f = if s < w { s / w.max(1.0) } else { ((t - s) / (t - w).max(1.0)).max(0.0) };
        self.lr * f
    }
}

/// Initial parameters, one gradient set per step, and which tensors take weight decay.
struct Data {
    init: Vec<Vec<f32>>,
    grads: Vec<Vec<Vec<f32>>>,
    decay: Vec<bool>,
}

fn data(seed: u64, init: f32) -> Data {
    let mut rng = rng(seed);
    let init = SIZES.iter().map(|&n| if init > 0.0 { rand_f32(&mut rng, n, init) } else { vec![0.0; n] }).collect();
    // Gradient scales differ per tensor and step, so the moments see changing magnitudes.
    let grads = (0..STEPS)
        .map(|s| SIZES.iter().enumerate().map(|(i, &n)| rand_f32(&mut rng, n, 0.5 + (i + s as usize) as f32)).collect())
        .collect();
    // Like HF: weights decay, biases (here every other tensor) do not.
    let decay = (0..SIZES.len()).map(|i| i % 2 == 0).collect();
    Data { init, grads, decay }
}

/// Final parameters and state of every tensor, and the per-step GPU norm and scale factor.
#[derive(PartialEq)]
struct GpuRun {
    p: Vec<Vec<f32>>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    norms: Vec<f32>,
    factors: Vec<f32>,
}

impl GpuRun {
    fn bits(&self) -> Vec<u32> {
        let all = [&self.p, &self.m, &self.v];
        let mut b: Vec<u32> = all.iter().flat_map(|x| x.iter().flatten()).map(|x| x.to_bits()).collect();
        b.extend(self.norms.iter().chain(&self.factors).map(|x| x.to_bits()));
        b
    }
}

fn run_gpu(c: &Case, d: &Data) -> GpuRun {
    let g = gpu();
    let opt = c.adamw();
    let sched = c.schedule();
    let params: Vec<GpuTensor> = d.init.iter().map(|p| upload(&[p.len()], p)).collect();
    let ms: Vec<GpuTensor> = SIZES.iter().map(|&n| GpuTensor::zeros(&g, &[n]).unwrap()).collect();
    let vs: Vec<GpuTensor> = SIZES.iter().map(|&n| GpuTensor::zeros(&g, &[n]).unwrap()).collect();
    let grads: Vec<GpuTensor> = SIZES.iter().map(|&n| poisoned(&[n])).collect();
    let grad_refs: Vec<&GpuTensor> = grads.iter().collect();
    let scratch = poisoned(&[optim::sum_of_squares_scratch_len(&grad_refs)]);
    let ss = poisoned(&[1]);
    let factor = poisoned(&[1]);
    let (mut norms, mut factors) = (vec![], vec![]);
    for step in 1..=STEPS {
        for (t, gr) in grads.iter().zip(&d.grads[step as usize - 1]) {
            t.write(&g, gr).unwrap();
        }
        // Poison every step's outputs: each step must write them again.
        ss.write(&g, &[f32::NAN]).unwrap();
        factor.write(&g, &[f32::NAN]).unwrap();
        let lr = sched.lr_at(step - 1);
        let mut batch = g.batch();
        optim::sum_of_squares_with_scratch(&mut batch, &grad_refs, &scratch, &ss).unwrap();
        let (host_scale, tensor_scale) = match c.scale {
            Scale::None => (1.0, None),
            Scale::Fixed(s) => (s as f32, None),
            Scale::ClipNorm(mx) => {
                optim::clip_factor(&mut batch, &ss, mx as f32, &factor).unwrap();
                (1.0, Some(&factor))
            }
        };
        for i in 0..SIZES.len() {
            optim::adamw_step(
                &mut batch,
                &opt,
                step,
                lr,
                host_scale,
                tensor_scale,
                d.decay[i],
                &params[i],
                &grads[i],
                &ms[i],
                &vs[i],
            )
            .unwrap();
        }
        batch.finish().unwrap();
        norms.push(optim::grad_norm(&g, &ss).unwrap());
        if tensor_scale.is_some() {
            factors.push(download(&factor)[0]);
        }
    }
    GpuRun {
        p: params.iter().map(download).collect(),
        m: ms.iter().map(download).collect(),
        v: vs.iter().map(download).collect(),
        norms,
        factors,
    }
}

struct RefRun {
    tensors: Vec<r::AdamWTensor>,
    norms: Vec<f64>,
    factors: Vec<f64>,
}

fn run_ref(c: &Case, d: &Data) -> RefRun {
    let h = c.hyper();
    let mut tensors: Vec<r::AdamWTensor> =
        d.init.iter().zip(&d.decay).map(|(p, &dec)| r::AdamWTensor::new(f64s(p), dec)).collect();
    let (mut norms, mut factors) = (vec![], vec![]);
    for step in 1..=STEPS {
        let grads: Vec<Vec<f64>> = d.grads[step as usize - 1].iter().map(|g| f64s(g)).collect();
        let lr = c.lr_ref(step - 1);
        match c.scale {
            Scale::ClipNorm(mx) => {
                let norm = r::trainer_step(&h, step, lr, Some(mx), &mut tensors, &grads);
                norms.push(norm);
                factors.push(r::clip_factor(norm, mx));
            }
            Scale::None | Scale::Fixed(_) => {
                let s = if let Scale::Fixed(s) = c.scale { s } else { 1.0 };
                let gs: Vec<&[f64]> = grads.iter().map(|g| g.as_slice()).collect();
                norms.push(r::sum_of_squares(&gs).sqrt());
                for (t, g) in tensors.iter_mut().zip(&grads) {
                    r::adamw_update(&h, step, lr, s, t, g);
                }
            }
        }
    }
    RefRun { tensors, norms, factors }
}

/// Runs a case on the GPU and the reference; returns the worst relative error of the parameters,
/// the moments, the parameter change (p − p₀, a stricter measure of the update itself) and the
/// norms / clip factors.
fn check_case(c: &Case, seed: u64) -> [f64; 4] {
    let d = data(seed, c.init);
    let ours = run_gpu(c, &d);
    let refr = run_ref(c, &d);
    let (mut ep, mut em, mut ed, mut en) = (0f64, 0f64, 0f64, 0f64);
    for (i, t) in refr.tensors.iter().enumerate() {
        let what = format!("{} n={}", c.name, SIZES[i]);
        ep = ep.max(assert_close(&format!("{what} param"), &ours.p[i], &t.p, TOL));
        em = em.max(assert_close(&format!("{what} exp_avg"), &ours.m[i], &t.m, TOL));
        em = em.max(assert_close(&format!("{what} exp_avg_sq"), &ours.v[i], &t.v, TOL));
        // The change of the parameters p − p₀ (computed in f64 from the f32 values): a stricter
        // measure of the update itself. Beyond the kernel's own error it carries the f32 rounding
        // of p, at most two half-ulps per step (decay, update), i.e. ≤ ε_f32·max|p| per step.
        let delta: Vec<f64> = ours.p[i].iter().zip(&d.init[i]).map(|(&a, &b)| a as f64 - b as f64).collect();
        let delta_ref: Vec<f64> = t.p.iter().zip(&d.init[i]).map(|(&a, &b)| a - b as f64).collect();
        let abs = delta.iter().zip(&delta_ref).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
        let dmax = delta_ref.iter().fold(0f64, |a, b| a.max(b.abs()));
        let pmax = t.p.iter().chain(&f64s(&d.init[i])).fold(0f64, |a, b| a.max(b.abs()));
        let rounding = STEPS as f64 * f32::EPSILON as f64 * pmax;
        assert!(abs <= TOL * dmax + rounding, "{what} update: error {abs:.3e} > {TOL:.0e}·{dmax:.3e} + {rounding:.3e}");
        if dmax > 0.0 {
            ed = ed.max(abs / dmax);
        }
    }
    en = en.max(assert_close(&format!("{} grad norms", c.name), &ours.norms, &refr.norms, TOL));
    if !refr.factors.is_empty() {
        en = en.max(assert_close(&format!("{} clip factors", c.name), &ours.factors, &refr.factors, TOL));
    }
    println!(
        "{}: param {ep:.2e}, moments {em:.2e}, update (p - p0) {ed:.2e}, norms/factors {en:.2e}; factors {:?}",
        c.name, ours.factors
    );
    [ep, em, ed, en]
}

const CASES: [Case; 6] = [
    Case { name: "plain", lr: 1e-2, weight_decay: 0.0, warmup: 0, total: 10, scale: Scale::None, init: 1.0 },
    Case {
        name: "decay+clip active",
        lr: 1e-2,
        weight_decay: 0.1,
        warmup: 2,
        total: 8,
        scale: Scale::ClipNorm(1.0),
        init: 1.0,
    },
    Case {
        name: "decay+clip inactive",
        lr: 3e-3,
        weight_decay: 0.05,
        warmup: 1,
        total: 6,
        scale: Scale::ClipNorm(1e4),
        init: 1.0,
    },
    Case {
        name: "fixed scale",
        lr: 1e-3,
        weight_decay: 0.01,
        warmup: 0,
        total: 5,
        scale: Scale::Fixed(0.5),
        init: 1.0,
    },
    Case {
        name: "defaults",
        lr: 1e-4,
        weight_decay: 0.0,
        warmup: 2,
        total: 100,
        scale: Scale::ClipNorm(1.0),
        init: 1.0,
    },
    Case {
        name: "zero init",
        lr: 1e-4,
        weight_decay: 0.01,
        warmup: 0,
        total: 50,
        scale: Scale::ClipNorm(1.0),
        init: 0.0,
    },
];

#[test]
fn adamw_matches_reference_over_steps() {
    let mut worst = [0f64; 4];
    for (i, c) in CASES.iter().enumerate() {
        let e = check_case(c, 10 + i as u64);
        for k in 0..4 {
            worst[k] = worst[k].max(e[k]);
        }
    }
    println!(
        "worst relative error over {} cases × {STEPS} steps: param {:.2e}, moments {:.2e}, update {:.2e}, \
         norms/factors {:.2e}",
        CASES.len(),
        worst[0],
        worst[1],
        worst[2],
        worst[3]
    );
}

#[test]
fn clip_case_actually_clips() {
    // Sanity of the test data: with max_norm 1 the factor is well below 1, with 1e4 it is 1.
    let d = data(11, 1.0);
    let r1 = run_gpu(&CASES[1], &d);
    assert!(r1.factors.iter().all(|&f| f > 0.0 && f < 0.05), "{:?}", r1.factors);
    let r2 = run_gpu(&CASES[2], &d);
    assert!(r2.factors.iter().all(|&f| f == 1.0), "{:?}", r2.factors);
}

#[test]
fn optimizer_steps_are_bit_identical() {
    let d = data(77, 1.0);
    let a = run_gpu(&CASES[1], &d);
    let b = run_gpu(&CASES[1], &d);
    assert!(a.bits() == b.bits(), "two identical runs differ");
    let a = run_gpu(&CASES[0], &d);
    let b = run_gpu(&CASES[0], &d);
    assert!(a.bits() == b.bits(), "two identical runs differ");
}

#[test]
fn sum_of_squares_matches_reference() {
    let g = gpu();
    let mut rng = rng(5);
    let sizes = [0usize, 1, 7, 255, 4095, 4096, 4097, 70001, 1_000_003];
    let data: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(i, &n)| rand_f32(&mut rng, n, 1.0 + i as f32)).collect();
    let tensors: Vec<GpuTensor> = data.iter().map(|x| upload(&[x.len()], x)).collect();
    let mut worst = 0f64;
    // Every tensor alone, then all together.
    for (x, t) in data.iter().zip(&tensors) {
        let out = poisoned(&[1]);
        let mut batch = g.batch();
        optim::sum_of_squares(&mut batch, &[t], &out).unwrap();
        batch.finish().unwrap();
        let want = r::sum_of_squares(&[&f64s(x)]);
        worst = worst.max(assert_close(&format!("Σx² n={}", x.len()), &download(&out), &[want], TOL));
    }
    let refs: Vec<&GpuTensor> = tensors.iter().collect();
    let out = poisoned(&[1]);
    let mut batch = g.batch();
    optim::sum_of_squares(&mut batch, &refs, &out).unwrap();
    batch.finish().unwrap();
    let all: Vec<Vec<f64>> = data.iter().map(|x| f64s(x)).collect();
    let want = r::sum_of_squares(&all.iter().map(|x| x.as_slice()).collect::<Vec<_>>());
    let got = download(&out);
    worst = worst.max(assert_close("Σx² all", &got, &[want], TOL));
    // No tensors at all: 0.
    let empty = poisoned(&[1]);
    let mut batch = g.batch();
    optim::sum_of_squares(&mut batch, &[], &empty).unwrap();
    batch.finish().unwrap();
    assert_eq!(download(&empty), vec![0.0]);
    // Deterministic.
    let again = poisoned(&[1]);
    let mut batch = g.batch();
    optim::sum_of_squares(&mut batch, &refs, &again).unwrap();
    batch.finish().unwrap();
    assert_eq!(got[0].to_bits(), download(&again)[0].to_bits());
    println!("sum of squares: worst relative error {worst:.2e} (up to 1,000,003 elements)");
}

#[test]
fn clip_factor_matches_torch_formula() {
    let g = gpu();
    let cases: [(f32, f32); 6] = [(0.0, 1.0), (4.0, 1.0), (0.25, 1.0), (1e6, 5.0), (1e-14, 1e-9), (2.0, 0.1)];
    for (ss, max_norm) in cases {
        let s = upload(&[1], &[ss]);
        let out = poisoned(&[1]);
        let mut batch = g.batch();
        optim::clip_factor(&mut batch, &s, max_norm, &out).unwrap();
        batch.finish().unwrap();
        let want = r::clip_factor((ss as f64).sqrt(), max_norm as f64);
        assert_close(&format!("clip factor ss={ss} max={max_norm}"), &download(&out), &[want], TOL);
    }
    for ss in [f32::NAN, f32::INFINITY] {
        let s = upload(&[1], &[ss]);
        let out = upload(&[1], &[0.5]);
        let mut batch = g.batch();
        optim::clip_factor(&mut batch, &s, 1.0, &out).unwrap();
        batch.finish().unwrap();
        assert!(download(&out)[0].is_nan(), "non-finite ss {ss} must give a NaN factor");
        assert!(!optim::grad_norm(&g, &s).unwrap().is_finite());
    }
}

#[test]
fn adamw_rejects_bad_arguments() {
    let g = gpu();
    let p = upload(&[3], &[1.0, 2.0, 3.0]);
    let gr = upload(&[3], &[0.1, 0.2, 0.3]);
    let m = upload(&[3], &[0.0; 3]);
    let v = upload(&[3], &[0.0; 3]);
    let short = upload(&[2], &[0.0; 2]);
    let empty = GpuTensor::zeros(&g, &[0]).unwrap();
    let opt = AdamW::default();
    let mut batch = g.batch();
    {
        let mut step = |opt: &AdamW, t: u32, scale: Option<&GpuTensor>, p: &GpuTensor, m: &GpuTensor, v: &GpuTensor| {
            optim::adamw_step(&mut batch, opt, t, 1e-3, 1.0, scale, true, p, &gr, m, v)
        };
        assert!(step(&opt, 0, None, &p, &m, &v).is_err(), "step 0");
        assert!(step(&opt, 1, None, &p, &short, &v).is_err(), "shape mismatch");
        assert!(step(&opt, 1, None, &p, &m, &m).is_err(), "m and v alias");
        assert!(step(&opt, 1, Some(&p), &p, &m, &v).is_err(), "scale tensor aliases param");
        assert!(step(&opt, 1, Some(&empty), &p, &m, &v).is_err(), "empty scale tensor");
        assert!(step(&AdamW { beta2: 1.0, ..opt }, 1, None, &p, &m, &v).is_err(), "beta2 = 1");
        assert!(step(&AdamW { eps: -1.0, ..opt }, 1, None, &p, &m, &v).is_err(), "negative eps");
    }
    let ss = poisoned(&[1]);
    assert!(optim::clip_factor(&mut batch, &ss, 0.0, &poisoned(&[1])).is_err(), "max_norm 0");
    assert!(optim::clip_factor(&mut batch, &ss, 1.0, &ss).is_err(), "out aliases ss");
    assert!(optim::clip_factor(&mut batch, &ss, f32::INFINITY, &poisoned(&[1])).is_err(), "max_norm inf");
    assert!(optim::sum_of_squares(&mut batch, &[&gr], &gr).is_err(), "out aliases an input");
    assert!(optim::sum_of_squares_with_scratch(&mut batch, &[&gr], &empty, &ss).is_err(), "scratch too small");
    assert!(batch.is_empty(), "a rejected call queued work");
}

#[test]
fn adamw_defaults_are_torch_and_adapterhub() {
    let d = AdamW::default();
    assert_eq!((d.lr, d.beta1, d.beta2, d.eps, d.weight_decay), (1e-4, 0.9, 0.999, 1e-8, 0.0));
}

#[test]
fn linear_schedule_matches_hf() {
    let s = LinearSchedule { base_lr: 1e-4, warmup_steps: 10, total_steps: 100 };
    let want = |step: u32| -> f64 {
        // HF get_linear_schedule_with_warmup's lr_lambda, times the base lr.
        let (st, w, t) = (step as f64, 10.0, 100.0);
        1e-4 * if st < w { st / w } else { ((t - st) / (t - w)).max(0.0) }
    };
    let cases = [(0u32, 0.0), (1, 1e-5), (5, 5e-5), (10, 1e-4), (55, 5e-5), (91, 1e-5), (100, 0.0), (150, 0.0)];
    for (step, value) in cases {
        assert!((want(step) - value).abs() <= 1e-12, "test table at {step}");
        let got = s.lr_at(step) as f64;
        assert!((got - value).abs() <= 1e-7 * 1e-4, "lr_at({step}) = {got}, want {value}");
    }
    // No warmup: full lr at once, then decay.
    let s = LinearSchedule { base_lr: 2e-3, warmup_steps: 0, total_steps: 4 };
    let got: Vec<f32> = (0..=5).map(|k| s.lr_at(k)).collect();
    assert_eq!(got, vec![2e-3, 1.5e-3, 1e-3, 5e-4, 0.0, 0.0]);
    // Warmup as long as training (HF's max(1, total − warmup) denominator): up to the base, then 0.
    let s = LinearSchedule { base_lr: 1.0, warmup_steps: 4, total_steps: 4 };
    let got: Vec<f32> = (0..=5).map(|k| s.lr_at(k)).collect();
    assert_eq!(got, vec![0.0, 0.25, 0.5, 0.75, 0.0, 0.0]);
}
