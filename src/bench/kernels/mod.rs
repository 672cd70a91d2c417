//! Kernel benchmarks: adapter forward/backward, fusion forward/backward, every matmul variant the
//! device runs, attention and LayerNorm. Each workload is first checked against the f64
//! reference at a small shape with ragged sizes (the same kernels and options; the reference at
//! the timed shapes would take minutes on one CPU core), then timed at the requested shape.

mod adapter;
mod attention;
mod fusion;

pub use adapter::adapter;
pub use attention::attention;
pub use fusion::fusion;

use super::{time_batches, Measurement, Peaks, Reps};
use crate::gpu::{CommandRecorder, Gpu, GpuTensor};
use crate::kernels::attention::AttentionShape;
use crate::kernels::layernorm;
use crate::kernels::matmul::{Matmul, MatmulVariant, View};
use crate::kernels::reference::{self, rel_err, to_f64};
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// Shapes of the kernel benchmarks (defaults: the table).
#[derive(Clone, Copy, Debug)]
pub struct KernelShapes {
    /// Tokens.
    pub t: usize,
    /// Hidden size.
    pub d: usize,
    /// Adapter bottleneck.
    pub m: usize,
    /// Fused adapters.
    pub n: usize,
    /// Square matmul size.
    pub mm: usize,
    pub attention: AttentionShape,
}

impl Default for KernelShapes {
    fn default() -> Self {
        Self {
            t: 4096,
            d: 768,
            m: 64,
            n: 8,
            mm: 4096,
            attention: AttentionShape { batch: 32, seq: 128, heads: 12, head_dim: 64 },
        }
    }
}

/// Relative error above which a checked f32 kernel is reported as wrong.
pub const F32_TOLERANCE: f64 = 1e-4;

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

fn rand_vec(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-scale..scale)).collect()
}

fn upload(gpu: &Gpu, shape: &[usize], v: &[f32]) -> Result<GpuTensor> {
    GpuTensor::from_slice(gpu, shape, v)
}

/// Output tensors start as NaN, so an element a kernel never writes fails the check.
fn poisoned(gpu: &Gpu, shape: &[usize]) -> Result<GpuTensor> {
    GpuTensor::filled(gpu, shape, f32::NAN)
}

fn ensure_ok(what: &str, err: f64, tol: f64) -> Result<f64> {
    if err.is_nan() || err > tol {
        bail!(
            "{what}: relative error {err:.2e} against the f64 reference exceeds {tol:.0e}: not timing a wrong kernel"
        );
    }
    Ok(err)
}

/// `C = A·B` (row-major, `[m, k]·[k, n]`) with one variant; returns max relative error.
fn matmul_check(gpu: &Arc<Gpu>, v: MatmulVariant, m: usize, n: usize, k: usize, seed: u64) -> Result<f64> {
    let mut r = rng(seed);
    let (a, b) = (rand_vec(&mut r, m * k, 1.0), rand_vec(&mut r, k * n, 1.0));
    let (ga, gb, gc) = (upload(gpu, &[m, k], &a)?, upload(gpu, &[k, n], &b)?, poisoned(gpu, &[m, n])?);
    let mut bt = gpu.batch();
    Matmul::new(m, n, k).variant(v).run(&mut bt, View::rows(&ga, k), View::rows(&gb, n), None, View::rows(&gc, n))?;
    bt.finish()?;
    let want = reference::matmul(&to_f64(&a), &to_f64(&b), m, k, n);
    Ok(rel_err(&gc.to_vec(gpu)?, &want))
}

/// Tolerance of a matmul variant: f32 variants as every f32 kernel; variants that round their
/// inputs to f16 (11-bit significand, unit roundoff 2⁻¹¹ ≈ 4.9e-4 per input) get 1e-2, which a
/// k ≤ 200 product of uniform inputs stays well inside.
pub fn matmul_tolerance(v: MatmulVariant) -> f64 {
    if v.f16_inputs() {
        1e-2
    } else {
        F32_TOLERANCE
    }
}

/// Every matmul variant this device runs, on `mm³` (checked first at 257×193×161).
pub fn matmul(gpu: &Arc<Gpu>, s: KernelShapes, reps: Reps, peaks: Option<Peaks>) -> Result<Vec<Measurement>> {
    let n = s.mm;
    let mut r = rng(31);
    let a = upload(gpu, &[n, n], &rand_vec(&mut r, n * n, 1.0))?;
    let b = upload(gpu, &[n, n], &rand_vec(&mut r, n * n, 1.0))?;
    let c = GpuTensor::zeros(gpu, &[n, n])?;
    let mut out = vec![];
    for v in MatmulVariant::ALL.into_iter().filter(|v| v.is_supported(gpu)) {
        // A variant the driver rejects (an experimental feature, say) is reported, not fatal.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<Measurement> {
            let err = matmul_check(gpu, v, 257, 193, 161, 32)?;
            if err > matmul_tolerance(v) {
                bail!("relative error {err:.2e} exceeds {:.0e}; not timed", matmul_tolerance(v));
            }
            let (times, clock) = time_batches(gpu, reps, |bt| {
                Matmul::new(n, n, n).variant(v).run(bt, View::rows(&a, n), View::rows(&b, n), None, View::rows(&c, n))
            })?;
            let flops = 2.0 * (n as f64).powi(3);
            let bytes = 4.0 * 3.0 * (n * n) as f64;
            Ok(Measurement::new("matmul", format!("{n}x{n}x{n}"), v.name(), &times, clock, flops, bytes)
                .with_peaks(peaks)
                .with_error(err))
        }));
        match run {
            Ok(Ok(m)) => out.push(m),
            Ok(Err(e)) => eprintln!("matmul {v}: {e:#}"),
            Err(_) => eprintln!("matmul {v}: the kernel panicked (see above); skipped"),
        }
    }
    Ok(out)
}

/// LayerNorm forward (with the residual add, as in every encoder sub-layer) over `[T, d]`.
pub fn layer_norm(gpu: &Arc<Gpu>, s: KernelShapes, reps: Reps, peaks: Option<Peaks>) -> Result<Vec<Measurement>> {
    type Case = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, [GpuTensor; 6]);
    let run = |t: usize, seed: u64| -> Result<Case> {
        let mut r = rng(seed);
        let d = s.d;
        let (x, res, g, bb) = (
            rand_vec(&mut r, t * d, 2.0),
            rand_vec(&mut r, t * d, 2.0),
            rand_vec(&mut r, d, 1.0),
            rand_vec(&mut r, d, 1.0),
        );
        let ts = [
            upload(gpu, &[t, d], &x)?,
            upload(gpu, &[t, d], &res)?,
            upload(gpu, &[d], &g)?,
            upload(gpu, &[d], &bb)?,
            poisoned(gpu, &[t, d])?,
            poisoned(gpu, &[t, d])?,
        ];
        Ok((x, res, g, bb, ts))
    };
    let record = |b: &mut CommandRecorder, ts: &[GpuTensor; 6]| {
        layernorm::layer_norm(b, &ts[0], Some(&ts[1]), &ts[2], &ts[3], 1e-12, Some(&ts[4]), &ts[5])
    };
    let (x, res, g, bb, ts) = run(67, 51)?;
    let mut b = gpu.batch();
    record(&mut b, &ts)?;
    b.finish()?;
    let sum: Vec<f64> = x.iter().zip(&res).map(|(a, b)| *a as f64 + *b as f64).collect();
    let want = crate::kernels::layernorm::reference::layer_norm(&sum, 67, s.d, &to_f64(&g), &to_f64(&bb), 1e-12);
    let err = ensure_ok("layer_norm", rel_err(&ts[5].to_vec(gpu)?, &want), F32_TOLERANCE)?;
    let (_, _, _, _, ts) = run(s.t, 52)?;
    let (times, clock) = time_batches(gpu, reps, |b| record(b, &ts))?;
    let td = (s.t * s.d) as f64;
    Ok(vec![Measurement::new(
        "layer_norm_forward",
        format!("T={} d={}", s.t, s.d),
        "residual",
        &times,
        clock,
        8.0 * td,
        4.0 * 4.0 * td,
    )
    .with_peaks(peaks)
    .with_error(err)])
}

/// Every kernel benchmark.
pub fn all(gpu: &Arc<Gpu>, s: KernelShapes, reps: Reps, peaks: Option<Peaks>) -> Result<Vec<Measurement>> {
    let mut out = adapter(gpu, s, reps, peaks)?;
    out.extend(fusion(gpu, s, reps, peaks)?);
    out.extend(matmul(gpu, s, reps, peaks)?);
    out.extend(attention(gpu, s, reps, peaks)?);
    out.extend(layer_norm(gpu, s, reps, peaks)?);
    Ok(out)
}
