//! Matmul benchmark: every kernel variant (and tile configuration) on the encoder's products and
//! on 4096³, each checked against a CPU reference on sampled outputs before it is timed, one JSON
//! object per result ([`BenchResult`]). Used by `examples/matmul_bench.rs`; callable from other
//! harnesses: [`shapes`], [`configs_for`], [`bench`].
//!
//! Timing: each sample queues the product `reps` times in one batch (one compute pass; wgpu
//! serialises the dispatches, which all write C) and reads GPU timestamps at the start and end of
//! the pass (wall clock around submit + full sync where the GPU has no timestamp queries); `reps`
//! is chosen after a warm-up so that a sample takes at least `min_sample_s`; the result is the
//! median over `samples` (and the best). TFLOP/s = 2·m·n·k·batch / time.
//!
//! Check: `check_samples` outputs (spread over rows, columns and the batch) are recomputed in f64
//! from the same inputs. f32 variants must agree to [`F32_CHECK_TOL`] relative to the largest
//! sampled output; f16-input variants must (a) agree with the f64 product of the f16-rounded
//! inputs to the same tolerance and (b) stay within [`f16_error_bound`] of the exact product for
//! every sampled output. A variant that fails, or whose pipeline the driver rejects, is reported
//! with `ok: false` and not timed.

use crate::gpu::{Gpu, GpuTensor};
use crate::kernels::matmul::{
    available_variants, f16_error_bound, FragConfig, InnerBatch, Matmul, MatmulVariant, TileConfig,
};
use anyhow::{anyhow, bail, Result};

mod shapes;
use serde::Serialize;
pub use shapes::{shapes, Layout, Shape};
use std::sync::Arc;
use std::time::Instant;

/// Relative tolerance of the sampled check for f32 products (and for f16 variants against the
/// reference of their rounded inputs): f32 summation over K ≤ 4096 stays near 1e-6.
pub const F32_CHECK_TOL: f64 = 1e-5;

/// One kernel variant with fixed tiles (`None`: the host's choice per shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiles {
    Auto,
    Smem(TileConfig),
    Frag(FragConfig),
}

impl std::fmt::Display for Tiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tiles::Auto => f.write_str("auto"),
            Tiles::Smem(t) => write!(f, "{t}"),
            Tiles::Frag(t) => write!(f, "{t}"),
        }
    }
}

/// The tile configurations to time for `variant`: `auto` only, or with `sweep` a set of sizes
/// around the host's choices (smem: 128², 64², 32², 128² with bk 8, 128×64, 64×128; f16 / coop:
/// 128²×32, 64²×32, 32²×16, 128²×16, 128×64×32, 64×128×32), each valid on this GPU.
pub fn configs_for(gpu: &Gpu, variant: MatmulVariant, sweep: bool) -> Vec<Tiles> {
    let mut v = vec![Tiles::Auto];
    if !sweep {
        return v;
    }
    match variant {
        MatmulVariant::Smem => {
            for t in [
                TileConfig::LARGE,
                TileConfig::MEDIUM,
                TileConfig::SMALL,
                TileConfig { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8 },
                TileConfig { bm: 128, bn: 64, bk: 16, tm: 8, tn: 4 },
                TileConfig { bm: 64, bn: 128, bk: 16, tm: 4, tn: 8 },
            ] {
                if t.check(gpu).is_ok() {
                    v.push(Tiles::Smem(t));
                }
            }
        }
        MatmulVariant::Coop | MatmulVariant::F16 => {
            let sgs = if variant == MatmulVariant::Coop { gpu.description.info.subgroup_max_size } else { 32 };
            let list: &[FragConfig] = if variant == MatmulVariant::Coop {
                &[
                    FragConfig::LARGE,
                    FragConfig::MEDIUM,
                    FragConfig::SMALL,
                    FragConfig { bm: 128, bn: 128, bk: 16, sg_m: 2, sg_n: 4 },
                    FragConfig { bm: 128, bn: 64, bk: 32, sg_m: 2, sg_n: 2 },
                    FragConfig { bm: 64, bn: 128, bk: 32, sg_m: 2, sg_n: 4 },
                ]
            } else {
                &[]
            };
            for &t in list {
                if t.check(gpu, sgs).is_ok() {
                    v.push(Tiles::Frag(t));
                }
            }
        }
        _ => {}
    }
    v
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Timed samples per (shape, variant, tiles); the median is reported.
    pub samples: usize,
    /// A sample queues enough products to take at least this long.
    pub min_sample_s: f64,
    /// Outputs recomputed on the CPU for the check.
    pub check_samples: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self { samples: 10, min_sample_s: 0.02, check_samples: 257 }
    }
}

/// The sampled check of one variant's output.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub samples: usize,
    /// max |ours − reference| / max |reference| over the samples (reference: the exact inputs for
    /// f32 variants, the f16-rounded inputs for f16 variants).
    pub max_rel_err: f64,
    /// f16 variants: the same against the exact (unrounded) inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rel_err_vs_unrounded: Option<f64>,
    /// f16 variants: max over the samples of |error vs unrounded| / f16 bound (must be ≤ 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f16_bound_ratio: Option<f64>,
}

/// One line of the benchmark's output.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub bench: &'static str,
    pub device: String,
    pub shape: String,
    pub group: &'static str,
    pub variant: String,
    pub tiles: String,
    pub f16_inputs: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// `gpu-timestamps` or `wall-clock`.
    pub timing: &'static str,
    pub reps: usize,
    pub samples: usize,
    pub median_us: f64,
    pub best_us: f64,
    pub tflops: f64,
    pub best_tflops: f64,
}

/// Inputs of one shape on the GPU and on the host (kept for the checks).
pub struct ShapeData {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    at: GpuTensor,
    bt: GpuTensor,
    ct: GpuTensor,
    c_len: usize,
}

/// Deterministic uniform values in [-1, 1).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

impl ShapeData {
    pub fn new(gpu: &Gpu, s: &Shape, seed: u64) -> Result<Self> {
        let (al, bl, cl) = (
            s.a.len(s.outer, s.inner, s.m, s.k),
            s.b.len(s.outer, s.inner, s.k, s.n),
            s.c.len(s.outer, s.inner, s.m, s.n),
        );
        let a = random(al, seed);
        let b = random(bl, seed + 7919);
        let at = GpuTensor::from_slice(gpu, &[al], &a)?;
        let bt = GpuTensor::from_slice(gpu, &[bl], &b)?;
        let ct = GpuTensor::zeros(gpu, &[cl])?;
        Ok(Self { a, b, at, bt, ct, c_len: cl })
    }
}

fn queue(
    batch: &mut crate::gpu::CommandRecorder,
    s: &Shape,
    d: &ShapeData,
    v: MatmulVariant,
    tiles: Tiles,
) -> Result<()> {
    let mut mm = Matmul::new(s.m, s.n, s.k).batch(s.outer).variant(v);
    match tiles {
        Tiles::Auto => {}
        Tiles::Smem(t) => mm = mm.smem_tiles(t),
        Tiles::Frag(t) => mm = mm.frag_tiles(t),
    }
    let ib = InnerBatch { count: s.inner, a: s.a.si, b: s.b.si, c: s.c.si };
    mm.run_inner(batch, ib, s.a.view(&d.at), s.b.view(&d.bt), None, s.c.view(&d.ct))
}

/// Runs `f` with wgpu's validation / internal / out-of-memory errors captured (instead of the
/// default handler's panic) and panics caught, so one rejected kernel does not end the run.
fn guarded<T>(gpu: &Gpu, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let scopes = [
        gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
        gpu.device.push_error_scope(wgpu::ErrorFilter::Internal),
        gpu.device.push_error_scope(wgpu::ErrorFilter::Validation),
    ];
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let mut errors = vec![];
    for scope in scopes.into_iter().rev() {
        if let Some(e) = pollster::block_on(scope.pop()) {
            errors.push(format!("{e}"));
        }
    }
    let r = match r {
        Ok(r) => r,
        Err(p) => Err(anyhow!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    };
    if !errors.is_empty() {
        bail!("wgpu error: {}", errors.join("; "));
    }
    r
}

/// Runs once into a NaN-filled C and checks sampled outputs.
fn check(gpu: &Arc<Gpu>, s: &Shape, d: &ShapeData, v: MatmulVariant, tiles: Tiles, samples: usize) -> Result<Check> {
    d.ct.write(gpu, &vec![f32::NAN; d.c_len])?;
    guarded(gpu, || {
        let mut batch = gpu.batch();
        queue(&mut batch, s, d, v, tiles)?;
        batch.finish()
    })?;
    let got = d.ct.to_vec(gpu)?;
    let f16 = v.f16_inputs();
    let r16 = |x: f32| half::f16::from_f32(x).to_f32() as f64;
    let (mut worst, mut scale, mut worst_x, mut scale_x, mut ratio) = (0f64, 0f64, 0f64, 0f64, 0f64);
    let z_count = s.outer * s.inner;
    for q in 0..samples {
        let (z, i, j) = ((q * 7919) % z_count, (q * 31 + q / 3 + q * q) % s.m, (q * 17 + 5 + q * q * 3) % s.n);
        let (o, h) = (z / s.inner, z % s.inner);
        let (mut exact, mut used, mut abs_dot) = (0f64, 0f64, 0f64);
        for kk in 0..s.k {
            let x = d.a[s.a.at(o, h, i, kk)];
            let y = d.b[s.b.at(o, h, kk, j)];
            exact += x as f64 * y as f64;
            abs_dot += (x as f64 * y as f64).abs();
            if f16 {
                used += r16(x) * r16(y);
            }
        }
        let want = if f16 { used } else { exact };
        let g = got[s.c.at(o, h, i, j)] as f64;
        if !g.is_finite() {
            bail!("output ({o}, {h}, {i}, {j}) is {g} (not written or overflowed)");
        }
        worst = worst.max((g - want).abs());
        scale = scale.max(want.abs());
        if f16 {
            worst_x = worst_x.max((g - exact).abs());
            scale_x = scale_x.max(exact.abs());
            let bound = f16_error_bound(s.k, abs_dot, 1.0);
            ratio = ratio.max((g - exact).abs() / bound.max(f64::MIN_POSITIVE));
        }
    }
    let rel = |w: f64, s: f64| w / s.max(f64::MIN_POSITIVE);
    let c = Check {
        samples,
        max_rel_err: rel(worst, scale),
        rel_err_vs_unrounded: f16.then(|| rel(worst_x, scale_x)),
        f16_bound_ratio: f16.then_some(ratio),
    };
    if c.max_rel_err.is_nan() || c.max_rel_err > F32_CHECK_TOL {
        bail!("wrong result: relative error {:.3e} > {F32_CHECK_TOL:.0e} on sampled outputs", c.max_rel_err);
    }
    if ratio > 1.0 {
        bail!("wrong result: an output exceeds the f16 error bound ({ratio:.2}× the bound)");
    }
    Ok(c)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Checks and times one (shape, variant, tiles); errors become `ok: false` results.
pub fn bench(
    gpu: &Arc<Gpu>,
    s: &Shape,
    d: &ShapeData,
    v: MatmulVariant,
    tiles: Tiles,
    opts: &BenchOptions,
) -> BenchResult {
    let mut r = BenchResult {
        bench: "matmul",
        device: gpu.description.info.name.clone(),
        shape: s.name.clone(),
        group: s.group,
        variant: v.name().to_string(),
        tiles: tiles.to_string(),
        f16_inputs: v.f16_inputs(),
        m: s.m,
        n: s.n,
        k: s.k,
        batch: s.outer * s.inner,
        ok: false,
        error: None,
        check: None,
        timing: if gpu.has(wgpu::Features::TIMESTAMP_QUERY) { "gpu-timestamps" } else { "wall-clock" },
        reps: 0,
        samples: 0,
        median_us: f64::NAN,
        best_us: f64::NAN,
        tflops: f64::NAN,
        best_tflops: f64::NAN,
    };
    let timed = |reps: usize| -> Result<f64> {
        guarded(gpu, || {
            let mut batch = gpu.batch();
            for _ in 0..reps {
                queue(&mut batch, s, d, v, tiles)?;
            }
            let t = Instant::now();
            let gpu_t = batch.submit_timed()?;
            let wall = t.elapsed().as_secs_f64();
            Ok(gpu_t.map(|g| g.gpu_seconds).filter(|&g| g > 0.0).unwrap_or(wall) / reps as f64)
        })
    };
    let result = (|| -> Result<()> {
        r.check = Some(check(gpu, s, d, v, tiles, opts.check_samples)?);
        timed(1)?; // warm-up
        let once = timed(1)?.max(1e-7);
        let reps = ((opts.min_sample_s / once).ceil() as usize).clamp(1, 1000);
        let mut times = (0..opts.samples.max(1)).map(|_| timed(reps)).collect::<Result<Vec<f64>>>()?;
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        let med = median(&mut times);
        r.reps = reps;
        r.samples = times.len();
        r.median_us = med * 1e6;
        r.best_us = best * 1e6;
        r.tflops = s.flop() / med / 1e12;
        r.best_tflops = s.flop() / best / 1e12;
        Ok(())
    })();
    match result {
        Ok(()) => r.ok = true,
        Err(e) => r.error = Some(format!("{e:#}")),
    }
    r
}

/// Every available variant (or those named in `only`), f32 variants first and the cooperative
/// matrix last (a driver crash there loses the least).
pub fn variants_to_run(gpu: &Gpu, only: &[MatmulVariant]) -> Vec<MatmulVariant> {
    let mut v: Vec<MatmulVariant> =
        available_variants(gpu).into_iter().filter(|x| only.is_empty() || only.contains(x)).collect();
    v.sort_by_key(|x| (x.f16_inputs(), *x == MatmulVariant::Coop));
    v
}
