//! The workgroup-memory matmul kernels with explicit tile configurations: `smem` (f32, vec4
//! loads, register tiles) and the f16-input `f16` / `coop` kernels (fragments of 16×16), on
//! shapes that are ragged for every tile size, with operands whose layout allows vec4 loads and
//! ones that do not, C in the middle of a sentinel-filled tensor (nothing outside the view may be
//! written: these kernels run without bounds checks in release builds), and the f16 variants'
//! error against the exact product of the unrounded inputs checked against the f16 rounding bound
//! element by element. A variant this GPU cannot run is skipped with a note.

use super::reference;
use crate::kernels::matmul::{f16_error_bound, FragConfig, Matmul, MatmulVariant, TileConfig, View};
use crate::kernels::reference::{matmul, transpose};
use crate::kernels::test_support::*;
use crate::types::Activation;

const TOL: f64 = 1e-5;

fn supported(v: MatmulVariant) -> bool {
    let g = gpu();
    match v.unsupported_reason(&g) {
        None => true,
        Some(why) => {
            println!("skipping {v}: {why}");
            false
        }
    }
}

fn rounded(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&y| half::f16::from_f32(y).to_f32()).collect()
}

/// One product C = act(alpha·A·B + bias + beta·C0) with A stored transposed or not (`a_t`), B
/// likewise, C a view at offset `c_off` with row stride `n + c_pad` inside a sentinel tensor.
/// Returns the result and checks the sentinels.
struct Case {
    m: usize,
    n: usize,
    k: usize,
    a_t: bool,
    b_t: bool,
    /// Extra elements in front of A and B (misaligns them for vec4 when not a multiple of 4).
    skew: usize,
    alpha: f32,
    beta: f32,
    bias: bool,
    act: Activation,
}

impl Case {
    fn plain(m: usize, n: usize, k: usize, a_t: bool, b_t: bool) -> Self {
        Case { m, n, k, a_t, b_t, skew: 0, alpha: 1.0, beta: 0.0, bias: false, act: Activation::Identity }
    }

    /// Runs `mm` (variant and tiles set) and returns the max relative error against the f64
    /// reference built from `prep(A)`, `prep(B)`, and the f16 bound check when `bound`.
    fn run(&self, mm: Matmul, seed: u64, prep: impl Fn(&[f32]) -> Vec<f32>, bound: bool) -> f64 {
        let Case { m, n, k, a_t, b_t, skew, alpha, beta, bias, act: act_kind } = *self;
        let mut rng = rng(seed);
        let a = rand_f32(&mut rng, m * k, 1.0);
        let b = rand_f32(&mut rng, k * n, 1.0);
        let bias_v = rand_f32(&mut rng, n, 1.0);
        let c0 = rand_f32(&mut rng, m * n, 1.0);
        let store = |x: &[f32], r: usize, c: usize, t: bool| -> Vec<f32> {
            let mut v = vec![f32::NAN; skew];
            if t {
                v.extend(transpose(&f64s(x), r, c).into_iter().map(|y| y as f32));
            } else {
                v.extend_from_slice(x);
            }
            v
        };
        let at = upload(&[skew + m * k], &store(&a, m, k, a_t));
        let bt = upload(&[skew + k * n], &store(&b, k, n, b_t));
        let av = if a_t { View::transposed(&at, m) } else { View::rows(&at, k) }.offset(skew);
        let bv = if b_t { View::transposed(&bt, k) } else { View::rows(&bt, n) }.offset(skew);
        let bias_t = upload(&[n], &bias_v);
        // C: rows of n + 3 (3 sentinel columns after each row), 5 sentinel elements before and 7 after.
        let (c_off, cs) = (5usize, n + 3);
        let sentinel = 7.25f32;
        let mut c_all = vec![sentinel; c_off + m * cs + 7];
        for i in 0..m {
            for j in 0..n {
                c_all[c_off + i * cs + j] = if beta != 0.0 { c0[i * n + j] } else { f32::NAN };
            }
        }
        let ct = upload(&[c_all.len()], &c_all);
        let mut batch = gpu().batch();
        mm.alpha(alpha)
            .beta(beta)
            .act(act_kind)
            .run(&mut batch, av, bv, bias.then_some((&bias_t, 0)), View::rows(&ct, cs).offset(c_off))
            .unwrap();
        batch.finish().unwrap();
        let got_all = download(&ct);
        let mut got = vec![0f32; m * n];
        for (idx, &x) in got_all.iter().enumerate() {
            let inside = idx >= c_off && idx < c_off + m * cs && (idx - c_off) % cs < n;
            if inside {
                got[(idx - c_off) / cs * n + (idx - c_off) % cs] = x;
            } else {
                assert_eq!(x.to_bits(), sentinel.to_bits(), "{m}×{n}×{k}: element {idx} outside C was written");
            }
        }
        let ab = matmul(&f64s(&prep(&a)), &f64s(&prep(&b)), m, k, n);
        let want = reference::epilogue(&ab, n, alpha, beta, &c0, bias.then_some((&bias_v[..], 0)), act_kind);
        let what = format!("{m}×{n}×{k} Aᵀ={a_t} Bᵀ={b_t} skew={skew} {act_kind:?} beta={beta} bias={bias}");
        let err = assert_close(&what, &got, &want, TOL);
        if bound {
            // Against the exact product of the unrounded inputs: |C − C_exact| ≤ bound (identity,
            // no beta, so the activation does not enter).
            assert!(act_kind == Activation::Identity && beta == 0.0 && !bias);
            let exact = matmul(&f64s(&a), &f64s(&b), m, k, n);
            let abs_a: Vec<f64> = a.iter().map(|&x| x.abs() as f64).collect();
            let abs_b: Vec<f64> = b.iter().map(|&x| x.abs() as f64).collect();
            let abs_dot = matmul(&abs_a, &abs_b, m, k, n);
            let mut worst_ratio = 0f64;
            for idx in 0..m * n {
                let e = (got[idx] as f64 - alpha as f64 * exact[idx]).abs();
                let bnd = f16_error_bound(k, abs_dot[idx], alpha as f64);
                assert!(e <= bnd, "{what}: output {idx} off by {e:.3e} > f16 bound {bnd:.3e}");
                worst_ratio = worst_ratio.max(e / bnd);
            }
            let rel =
                crate::kernels::reference::rel_err(&got, &exact.iter().map(|x| alpha as f64 * x).collect::<Vec<_>>());
            println!("{what}: vs unrounded inputs: rel. error {rel:.2e}, worst error / bound {worst_ratio:.2}");
        }
        err
    }
}

/// Ragged shapes × the four layouts, aligned (vec4 loads) and skewed (scalar loads).
fn shapes() -> Vec<Case> {
    let mut v = vec![];
    for &(m, n, k) in &[(1usize, 1usize, 1usize), (37, 70, 41), (130, 68, 36), (64, 132, 20)] {
        for (a_t, b_t) in [(false, false), (false, true), (true, false), (true, true)] {
            for skew in [0usize, 1] {
                v.push(Case { skew, ..Case::plain(m, n, k, a_t, b_t) });
            }
        }
    }
    v
}

/// smem with every tile size the host uses and two others, on every shape and layout.
#[test]
fn smem_tile_configs() {
    if !supported(MatmulVariant::Smem) {
        return;
    }
    let g = gpu();
    let configs = [
        TileConfig::SMALL,
        TileConfig::MEDIUM,
        TileConfig::LARGE,
        TileConfig::LARGE_16K,
        TileConfig { bm: 64, bn: 32, bk: 8, tm: 8, tn: 4 },
        TileConfig { bm: 32, bn: 128, bk: 8, tm: 4, tn: 8 },
    ];
    for t in configs {
        if let Err(e) = t.check(&g) {
            println!("skipping smem {t}: {e:#}");
            continue;
        }
        let mut worst = 0f64;
        for (i, case) in shapes().iter().enumerate() {
            let mm = Matmul::new(case.m, case.n, case.k).variant(MatmulVariant::Smem).smem_tiles(t);
            worst = worst.max(case.run(mm, 100 + i as u64, |x| x.to_vec(), false));
        }
        println!("smem {t}: max relative error {worst:.2e}");
    }
}

/// The f16 kernels with each fragment configuration, on every shape and layout, against the
/// reference of the rounded inputs (f32 tolerance) and the unrounded ones (f16 bound).
#[test]
fn f16_fragment_configs() {
    let g = gpu();
    for v in [MatmulVariant::F16, MatmulVariant::Coop] {
        if !supported(v) {
            continue;
        }
        let sgs = if v == MatmulVariant::Coop { g.description.info.subgroup_max_size } else { 32 };
        let configs = [
            FragConfig::SMALL,
            FragConfig::MEDIUM,
            FragConfig::LARGE,
            FragConfig { bm: 64, bn: 32, bk: 16, sg_m: 1, sg_n: 1 },
            FragConfig { bm: 16, bn: 64, bk: 32, sg_m: 1, sg_n: 2 },
        ];
        for t in configs {
            if let Err(e) = t.check(&g, sgs) {
                println!("skipping {v} {t}: {e:#}");
                continue;
            }
            let mut worst = 0f64;
            for (i, case) in shapes().iter().enumerate() {
                let mm = Matmul::new(case.m, case.n, case.k).variant(v).frag_tiles(t);
                worst = worst.max(case.run(mm, 200 + i as u64, rounded, true));
            }
            println!("{v} {t}: max relative error vs rounded inputs {worst:.2e}");
        }
    }
}

/// The epilogue of the new kernels: alpha, bias, beta and each activation, both precisions.
#[test]
fn epilogue_bias_beta_activation() {
    let acts = [Activation::Identity, Activation::Gelu, Activation::Relu, Activation::Silu, Activation::Tanh];
    for v in [MatmulVariant::Smem, MatmulVariant::F16, MatmulVariant::Coop] {
        if !supported(v) {
            continue;
        }
        let prep = |x: &[f32]| if v.f16_inputs() { rounded(x) } else { x.to_vec() };
        for (i, act_kind) in acts.into_iter().enumerate() {
            for (alpha, beta, bias) in [(1.0f32, 0.0f32, true), (0.5, 1.0, false), (-1.25, -0.5, true)] {
                let case = Case { alpha, beta, bias, act: act_kind, ..Case::plain(33, 37, 24, false, true) };
                case.run(Matmul::new(33, 37, 24).variant(v), 300 + i as u64, prep, false);
            }
        }
    }
}

/// Larger K: the f16 error against the unrounded inputs stays within the bound, and its size is
/// what the module docs predict (≈ u·√(2/3) ≈ 4e-4 typical per output, a few times that at most).
#[test]
fn f16_error_matches_rounding_analysis() {
    for v in [MatmulVariant::F16, MatmulVariant::Coop] {
        if !supported(v) {
            continue;
        }
        let case = Case::plain(48, 40, 512, false, true);
        let mm = Matmul::new(48, 40, 512).variant(v);
        case.run(mm, 400, rounded, true);
    }
}

/// Configurations the shaders cannot run are refused with a message, not run.
#[test]
fn bad_tile_configs_are_refused() {
    let g = gpu();
    for bad in ["64x64x16/3x4", "64x64x6/4x4", "512x512x64/4x4", "64x64"] {
        let t: Result<TileConfig, _> = bad.parse();
        assert!(t.is_err() || t.unwrap().check(&g).is_err(), "{bad} accepted");
    }
    for bad in ["64x64x24/2x2", "128x128x32/1x1", "64x64x32/2"] {
        let t: Result<FragConfig, _> = bad.parse();
        assert!(t.is_err() || t.unwrap().check(&g, 32).is_err(), "{bad} accepted");
    }
    assert_eq!("128x128x8/8x8".parse::<TileConfig>().unwrap(), TileConfig::LARGE);
    assert_eq!("128x128x32/2x4".parse::<FragConfig>().unwrap(), FragConfig::LARGE);
    if supported(MatmulVariant::Smem) {
        let a = upload(&[4], &[1.0; 4]);
        let c = poisoned(&[4]);
        let mut batch = gpu().batch();
        let err = Matmul::new(2, 2, 1)
            .variant(MatmulVariant::Smem)
            .smem_tiles(TileConfig { bm: 64, bn: 64, bk: 16, tm: 3, tn: 4 })
            .run(&mut batch, View::rows(&a, 1), View::rows(&a, 2), None, View::rows(&c, 2))
            .unwrap_err();
        assert!(format!("{err:#}").contains("tm and tn"), "{err:#}");
    }
}
