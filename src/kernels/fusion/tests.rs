//! AdapterFusion kernels (the rewrite: q̃ = W_Kᵀ q, mix then project) vs the f64 reference of the
//! naive formula (a key and a value per adapter).

use super::reference::Fusion;
use super::{Temperature, MAX_COLS};
use crate::kernels::fusion::{
    regularization, FusionHostWeights, FusionSaved, FusionScratch, FusionShape, FusionWeights, REGULARIZATION_COEF,
};
use crate::kernels::test_support::*;

#[derive(Clone, Copy, Debug)]
struct Case {
    t: usize,
    d: usize,
    n: usize,
    value: bool,
    residual_before: bool,
    temp: f32,
}

/// Max relative errors of one or more cases.
#[derive(Clone, Copy, Debug, Default)]
struct Errors {
    o: f64,
    p: f64,
    dh: f64,
    dz: f64,
    dr: f64,
    weights: f64,
}

impl Errors {
    fn max(&mut self, e: Errors) {
        self.o = self.o.max(e.o);
        self.p = self.p.max(e.p);
        self.dh = self.dh.max(e.dh);
        self.dz = self.dz.max(e.dz);
        self.dr = self.dr.max(e.dr);
        self.weights = self.weights.max(e.weights);
    }

    fn print(&self, what: &str) {
        println!(
            "{what}: max relative error o {:.2e}, p {:.2e}, dh {:.2e}, dz {:.2e}, dr {:.2e}, weight grads {:.2e}",
            self.o, self.p, self.dh, self.dz, self.dr, self.weights
        );
    }
}

pub(super) struct Inputs {
    pub w: FusionHostWeights,
    pub h: Vec<f32>,
    pub z: Vec<f32>,
    pub r: Vec<f32>,
    pub d_o: Vec<f32>,
}

/// Scales of the uniform draws of [`draw_inputs`]: W_Q and W_K, their biases, W_V, the query input h.
pub(super) struct Scales {
    pub qk: f32,
    pub bias: f32,
    pub v: f32,
    pub h: f32,
}

/// Seeded inputs of a `t`-token, `n`-adapter fusion of width `d`, drawn in one fixed order (shared
/// by the accuracy tests, which only change the scales).
pub(super) fn draw_inputs(t: usize, d: usize, n: usize, value: bool, sc: Scales, seed: u64) -> Inputs {
    let mut rng = rng(seed);
    let w = FusionHostWeights {
        w_q: rand_f32(&mut rng, d * d, sc.qk),
        b_q: rand_f32(&mut rng, d, sc.bias),
        w_k: rand_f32(&mut rng, d * d, sc.qk),
        b_k: rand_f32(&mut rng, d, sc.bias),
        w_v: value.then(|| rand_f32(&mut rng, d * d, sc.v)),
    };
    Inputs {
        w,
        h: rand_f32(&mut rng, t * d, sc.h),
        z: rand_f32(&mut rng, n * t * d, 1.0),
        r: rand_f32(&mut rng, t * d, 1.0),
        d_o: rand_f32(&mut rng, t * d, 1.0),
    }
}

/// Random weights and biases, all of a size where every term matters (scores of order 1).
fn random_inputs(c: &Case, seed: u64) -> Inputs {
    let s = 1.0 / (c.d as f32).sqrt();
    draw_inputs(c.t, c.d, c.n, c.value, Scales { qk: s, bias: 0.5, v: s, h: 1.0 }, seed)
}

fn reference(c: &Case, w: &FusionHostWeights) -> Fusion {
    Fusion {
        d: c.d,
        n: c.n,
        value: c.value,
        residual_before: c.residual_before,
        temperature: c.temp as f64,
        w_q: f64s(&w.w_q),
        b_q: f64s(&w.b_q),
        w_k: f64s(&w.w_k),
        b_k: f64s(&w.b_k),
        w_v: w.w_v.as_deref().map(f64s).unwrap_or_default(),
    }
}

fn shape(c: &Case) -> FusionShape {
    FusionShape { d: c.d, n: c.n, value: c.value, residual_before: c.residual_before }
}

fn poisoned_weights(c: &Case) -> FusionWeights {
    let d = c.d;
    FusionWeights {
        w_q: poisoned(&[d, d]),
        b_q: poisoned(&[d]),
        w_k: poisoned(&[d, d]),
        b_k: poisoned(&[d]),
        w_v: c.value.then(|| poisoned(&[d, d])),
    }
}

struct GpuRun {
    o: Vec<f32>,
    p: Vec<f32>,
    q: Vec<f32>,
    dh: Vec<f32>,
    dz: Vec<f32>,
    dr: Vec<f32>,
    w_q: Vec<f32>,
    b_q: Vec<f32>,
    w_k: Vec<f32>,
    b_k: Vec<f32>,
    w_v: Option<Vec<f32>>,
}

/// Forward + backward on the GPU, every output and saved tensor poisoned with NaN first.
fn run_gpu(c: &Case, x: &Inputs) -> GpuRun {
    let (t, d, n) = (c.t, c.d, c.n);
    let g = gpu();
    let w = x.w.upload(&g).unwrap();
    let h = upload(&[t, d], &x.h);
    let z = upload(&[n, t, d], &x.z);
    let r = upload(&[t, d], &x.r);
    let d_o = upload(&[t, d], &x.d_o);
    let o = poisoned(&[t, d]);
    let saved =
        FusionSaved { q: poisoned(&[t, d]), qt: poisoned(&[t, d]), p: poisoned(&[t, n]), mix: poisoned(&[t, d]) };
    let scratch = FusionScratch { du: poisoned(&[t, d]), dqt: poisoned(&[t, d]), dq: poisoned(&[t, d]) };
    let (dh, dz, dr) = (poisoned(&[t, d]), poisoned(&[n, t, d]), poisoned(&[t, d]));
    let grads = poisoned_weights(c);
    let sh = shape(c);
    let mut b = g.batch();
    sh.forward(&mut b, &w, &h, &z, &r, c.temp, &o, &saved).unwrap();
    sh.backward(&mut b, &w, &h, &z, &saved, c.temp, &d_o, &dh, &dz, &dr, &grads, &scratch).unwrap();
    b.finish().unwrap();
    GpuRun {
        o: download(&o),
        p: download(&saved.p),
        q: download(&saved.q),
        dh: download(&dh),
        dz: download(&dz),
        dr: download(&dr),
        w_q: download(&grads.w_q),
        b_q: download(&grads.b_q),
        w_k: download(&grads.w_k),
        b_k: download(&grads.b_k),
        w_v: grads.w_v.as_ref().map(download),
    }
}

const TOL: f64 = 1e-4;

/// Runs one case on the GPU and the reference; asserts and returns the max relative errors.
fn run_case(c: &Case, seed: u64) -> Errors {
    let x = random_inputs(c, seed);
    let ours = run_gpu(c, &x);
    let f = reference(c, &x.w);
    let (h, z, r, d_o) = (f64s(&x.h), f64s(&x.z), f64s(&x.r), f64s(&x.d_o));
    let fwd = f.forward(&h, &z, &r, c.t);
    let (ig, rg) = f.backward(&h, &z, &r, &d_o, c.t);
    let what = format!("{c:?}");
    let mut e = Errors {
        o: assert_close(&format!("{what} o"), &ours.o, &fwd.o, TOL),
        p: assert_close(&format!("{what} p"), &ours.p, &fwd.p, TOL),
        dh: assert_close(&format!("{what} dh"), &ours.dh, &ig.dh, TOL),
        dz: assert_close(&format!("{what} dz"), &ours.dz, &ig.dz, TOL),
        dr: assert_close(&format!("{what} dr"), &ours.dr, &ig.dr, TOL),
        weights: 0.0,
    };
    assert_close(&format!("{what} saved q"), &ours.q, &fwd.q, TOL);
    e.weights = e.weights.max(assert_close(&format!("{what} dW_Q"), &ours.w_q, &rg.w_q, TOL));
    e.weights = e.weights.max(assert_close(&format!("{what} db_Q"), &ours.b_q, &rg.b_q, TOL));
    e.weights = e.weights.max(assert_close(&format!("{what} dW_K"), &ours.w_k, &rg.w_k, TOL));
    if let Some(wv) = &ours.w_v {
        e.weights = e.weights.max(assert_close(&format!("{what} dW_V"), wv, &rg.w_v, TOL));
    }
    // db_K: exactly zero on the GPU, zero up to f64 rounding in the naive reference.
    assert!(ours.b_k.iter().all(|&v| v == 0.0), "{what} db_K not zero: {:?}", ours.b_k);
    let scale = rg.w_q.iter().chain(&rg.b_q).fold(1.0f64, |m, v| m.max(v.abs()));
    assert!(rg.b_k.iter().all(|v| v.abs() < 1e-12 * scale), "{what} reference db_K {:?}", rg.b_k);
    e
}

/// N ∈ {1, 2, 3, 8, 17} × odd and even d × T ∈ {1, 7, 29}, dynamic and static, with and without
/// residual_before, temperatures ≠ 1.
#[test]
fn fusion_matches_naive_reference_over_shapes() {
    let mut worst = Errors::default();
    let mut cases = 0;
    for (ni, &n) in [1usize, 2, 3, 8, 17].iter().enumerate() {
        for (si, &(d, t)) in [(33usize, 1usize), (48, 7), (100, 29)].iter().enumerate() {
            for value in [true, false] {
                let residual_before = (ni + si + value as usize) % 2 == 1;
                let temp = [1.0f32, 0.7, 2.5][(ni + si) % 3];
                let c = Case { t, d, n, value, residual_before, temp };
                worst.max(run_case(&c, (ni * 100 + si * 10 + value as usize) as u64));
                cases += 1;
            }
        }
    }
    worst.print(&format!("{cases} cases"));
}

/// N = 32 (eight full chunks) and N = 33 (a remainder), every configuration.
#[test]
fn fusion_many_adapters() {
    let mut worst = Errors::default();
    for (i, (n, value, residual_before)) in
        [(32, true, false), (32, false, false), (32, true, true), (33, false, true)].into_iter().enumerate()
    {
        worst.max(run_case(&Case { t: 7, d: 48, n, value, residual_before, temp: 1.3 }, 500 + i as u64));
    }
    worst.print("N = 32, 33");
}

/// AdapterHub's annealing starts at T = 50 (nearly uniform p); a small T saturates the softmax.
#[test]
fn fusion_extreme_temperatures() {
    for (i, temp) in [50.0f32, 0.05].into_iter().enumerate() {
        run_case(&Case { t: 9, d: 40, n: 5, value: true, residual_before: false, temp }, 600 + i as u64);
    }
}

/// BERT-base's hidden size (256 threads a token), dynamic and static.
#[test]
fn fusion_bert_base_hidden_size() {
    let mut worst = Errors::default();
    for (i, value) in [true, false].into_iter().enumerate() {
        worst.max(run_case(&Case { t: 2, d: 768, n: 8, value, residual_before: false, temp: 1.0 }, 700 + i as u64));
    }
    worst.print("d = 768, N = 8");
}

/// Adapter outputs that share a large common component: scores and gradients depend only on the
/// small differences, which the kernels keep by working relative to adapter 0.
#[test]
fn fusion_common_component_keeps_accuracy() {
    let c = Case { t: 7, d: 64, n: 6, value: true, residual_before: false, temp: 1.0 };
    let mut x = random_inputs(&c, 800);
    let mut rng = rng(801);
    let common = rand_f32(&mut rng, c.t * c.d, 4.0);
    for n in 0..c.n {
        for k in 0..c.t * c.d {
            x.z[n * c.t * c.d + k] = common[k] + 1e-3 * x.z[n * c.t * c.d + k];
        }
    }
    // Scores of order 1 from differences of 1e-3: a larger W_K.
    for v in x.w.w_k.iter_mut() {
        *v *= 300.0;
    }
    let ours = run_gpu(&c, &x);
    let f = reference(&c, &x.w);
    let (h, z, r, d_o) = (f64s(&x.h), f64s(&x.z), f64s(&x.r), f64s(&x.d_o));
    let fwd = f.forward(&h, &z, &r, c.t);
    let (ig, rg) = f.backward(&h, &z, &r, &d_o, c.t);
    let spread = fwd.p.iter().fold(0.0f64, |m, &p| m.max(p)) - fwd.p.iter().fold(1.0f64, |m, &p| m.min(p));
    assert!(spread > 0.1, "probabilities too uniform for the test to mean anything: spread {spread}");
    let e = [
        assert_close("common o", &ours.o, &fwd.o, TOL),
        assert_close("common p", &ours.p, &fwd.p, TOL),
        assert_close("common dh", &ours.dh, &ig.dh, TOL),
        assert_close("common dz", &ours.dz, &ig.dz, TOL),
        assert_close("common dW_Q", &ours.w_q, &rg.w_q, TOL),
        assert_close("common dW_K", &ours.w_k, &rg.w_k, TOL),
        assert_close("common dW_V", ours.w_v.as_ref().unwrap(), &rg.w_v, TOL),
    ];
    let e: Vec<String> = e.iter().map(|v| format!("{v:.2e}")).collect();
    println!("common component: relative errors (o, p, dh, dz, dW_Q, dW_K, dW_V) {}", e.join(", "));
}

/// Same inputs twice: identical bits for every output, saved tensor and gradient.
#[test]
fn fusion_is_deterministic() {
    for value in [true, false] {
        let c = Case { t: 37, d: 100, n: 8, value, residual_before: false, temp: 1.0 };
        let x = random_inputs(&c, 900);
        let bits = |r: GpuRun| -> Vec<Vec<u32>> {
            let mut all = vec![r.o, r.p, r.q, r.dh, r.dz, r.dr, r.w_q, r.b_q, r.w_k, r.b_k];
            all.extend(r.w_v);
            all.into_iter().map(|v| v.iter().map(|f| f.to_bits()).collect()).collect()
        };
        assert_eq!(bits(run_gpu(&c, &x)), bits(run_gpu(&c, &x)), "value={value}");
    }
}

/// The key bias has no effect on the output (it cancels in the softmax), but the query bias does.
#[test]
fn fusion_key_bias_cancels_query_bias_does_not() {
    let c = Case { t: 5, d: 33, n: 4, value: true, residual_before: false, temp: 1.0 };
    let x = random_inputs(&c, 1000);
    let ours = run_gpu(&c, &x);
    let mut no_bk = reference(&c, &x.w);
    no_bk.b_k.iter_mut().for_each(|v| *v = 0.0);
    let mut no_bq = reference(&c, &x.w);
    no_bq.b_q.iter_mut().for_each(|v| *v = 0.0);
    let (h, z, r) = (f64s(&x.h), f64s(&x.z), f64s(&x.r));
    assert!(crate::kernels::reference::rel_err(&ours.o, &no_bk.forward(&h, &z, &r, c.t).o) < 1e-5);
    assert!(crate::kernels::reference::rel_err(&ours.p, &no_bq.forward(&h, &z, &r, c.t).p) > 1e-3);
}

/// AdapterHub's init: W_V = I (+1e-6) makes the dynamic output ≈ the static one.
#[test]
fn fusion_adapterhub_init_value_is_identity() {
    let (t, d, n) = (4, 48, 3);
    let g = gpu();
    let mut rng = rng(1100);
    let dynamic = FusionHostWeights::adapterhub_init(d, true, &mut rng);
    let mut stat = dynamic.clone();
    stat.w_v = None;
    let (h, z, r) =
        (rand_f32(&mut rng, t * d, 1.0), rand_f32(&mut rng, n * t * d, 1.0), rand_f32(&mut rng, t * d, 1.0));
    let mut outs = vec![];
    for (w, sh) in [(&dynamic, FusionShape::dynamic(d, n)), (&stat, FusionShape::static_config(d, n))] {
        let o = poisoned(&[t, d]);
        let saved = FusionSaved::new(&g, &sh, t).unwrap();
        let mut b = g.batch();
        sh.forward(
            &mut b,
            &w.upload(&g).unwrap(),
            &upload(&[t, d], &h),
            &upload(&[n, t, d], &z),
            &upload(&[t, d], &r),
            1.0,
            &o,
            &saved,
        )
        .unwrap();
        b.finish().unwrap();
        outs.push(download(&o));
    }
    let e = crate::kernels::reference::rel_err(&outs[0], &f64s(&outs[1]));
    assert!(e < 1e-4, "identity-initialized W_V changed the output: {e:.2e}");
}

/// The regularization loss and gradient on the GPU vs f64, overwrite and accumulate.
#[test]
fn fusion_regularization_matches_reference() {
    let g = gpu();
    for (i, d) in [1usize, 33, 300].into_iter().enumerate() {
        let mut rng = rng(1200 + i as u64);
        let mut wv = FusionHostWeights::adapterhub_init(d, true, &mut rng).w_v.unwrap();
        for (v, e) in wv.iter_mut().zip(rand_f32(&mut rng, d * d, 0.05)) {
            *v += e;
        }
        let (loss_ref, grad_ref) = super::reference::regularization(&f64s(&wv), d, 0.01);
        let w_v = upload(&[d, d], &wv);
        let grad = poisoned(&[d, d]);
        let loss = poisoned(&[1]);
        let mut b = g.batch();
        regularization(&mut b, &w_v, REGULARIZATION_COEF, &grad, Some(&loss), false).unwrap();
        b.finish().unwrap();
        let el = assert_close("reg loss", &download(&loss), &[loss_ref], 1e-5);
        let eg = assert_close("reg grad", &download(&grad), &grad_ref, 1e-5);
        // Accumulate: a second call adds the same again.
        let mut b = g.batch();
        regularization(&mut b, &w_v, REGULARIZATION_COEF, &grad, Some(&loss), true).unwrap();
        b.finish().unwrap();
        assert_close("reg loss x2", &download(&loss), &[2.0 * loss_ref], 1e-5);
        let twice: Vec<f64> = grad_ref.iter().map(|v| 2.0 * v).collect();
        assert_close("reg grad x2", &download(&grad), &twice, 1e-5);
        println!("d={d}: regularization loss {loss_ref:.4e}, relative error loss {el:.2e}, grad {eg:.2e}");
    }
}

#[test]
fn fusion_rejects_wrong_shapes() {
    let g = gpu();
    let sh = FusionShape::dynamic(8, 3);
    let w = FusionWeights::zeros(&g, &sh).unwrap();
    let saved = FusionSaved::new(&g, &sh, 2).unwrap();
    let h = upload(&[2, 8], &[0.0; 16]);
    let o = poisoned(&[2, 8]);
    let z_bad = upload(&[2, 2, 8], &[0.0; 32]);
    let err = sh.forward(&mut g.batch(), &w, &h, &z_bad, &h, 1.0, &o, &saved).unwrap_err().to_string();
    assert!(err.contains("adapter outputs z"), "{err}");
    let z = upload(&[3, 2, 8], &[0.0; 48]);
    let err = sh.forward(&mut g.batch(), &w, &h, &z, &h, 0.0, &o, &saved).unwrap_err().to_string();
    assert!(err.contains("temperature"), "{err}");
    let no_value = FusionWeights { w_v: None, ..w.clone() };
    let err = sh.forward(&mut g.batch(), &no_value, &h, &z, &h, 1.0, &o, &saved).unwrap_err().to_string();
    assert!(err.contains("w_v"), "{err}");
}

// ---------------------------------------------------------------- host-side (no GPU)

#[test]
fn temperature_anneals_like_adapterhub() {
    let mut t = Temperature::annealed();
    assert_eq!(t.next_forward(), 50.0);
    assert!((t.next_forward() - 49.95).abs() < 1e-5);
    for _ in 0..2000 {
        t.next_forward();
    }
    assert_eq!(t.next_forward(), 1.0);
    let mut f = Temperature::from_config(false);
    assert_eq!((f.next_forward(), f.next_forward()), (1.0, 1.0));
}

#[test]
fn rewrite_flops_for_bert_base() {
    let f = FusionShape::dynamic(768, 8).flops_per_token();
    let mm = 2 * 768 * 768;
    assert_eq!(f.naive_forward, 17 * mm + 4 * 8 * 768);
    assert_eq!(f.rewrite_forward, 3 * mm + 4 * 8 * 768);
    assert!(f.naive_forward > 5 * f.rewrite_forward);
}

#[test]
fn launch_covers_hidden_sizes() {
    for d in [1usize, 33, 64, 100, 256, 257, 512, 513, 768, 1024, 1100, 2048, 2100, 4096] {
        let (wg, cols) = super::launch(d).unwrap();
        assert!(wg * cols >= d && wg * (cols - 1) < d && cols <= MAX_COLS && (64..=256).contains(&wg), "d={d}");
    }
    assert!(super::launch(4097).is_err());
}

#[test]
fn adapterhub_init_values() {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    let w = FusionHostWeights::adapterhub_init(64, true, &mut rng);
    let v = w.w_v.as_ref().unwrap();
    assert_eq!((v[0], v[1], v[65]), (1.0, 1e-6, 1.0));
    assert!(w.b_q.iter().chain(&w.b_k).all(|&b| b == 0.0));
    let std = (w.w_q.iter().map(|x| x * x).sum::<f32>() / w.w_q.len() as f32).sqrt();
    assert!((std - 0.02).abs() < 0.002, "std {std}");
    assert!(FusionHostWeights::adapterhub_init(8, false, &mut rng).w_v.is_none());
}
