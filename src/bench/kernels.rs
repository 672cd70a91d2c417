//! Kernel benchmarks: adapter forward/backward, fusion forward/backward, every matmul variant the
//! device runs, attention and LayerNorm. Each workload is first checked against the f64
//! reference at a small shape with ragged sizes (the same kernels and options; the reference at
//! the timed shapes would take minutes on one CPU core), then timed at the requested shape.

use super::{time_batches, Measurement, Peaks, Reps};
use crate::gpu::{CommandRecorder, Gpu, GpuTensor};
use crate::kernels::adapter::{AdapterScratch, AdapterShape, AdapterWeights};
use crate::kernels::attention::{self, AttentionShape};
use crate::kernels::fusion::{FusionHostWeights, FusionSaved, FusionScratch, FusionShape, FusionWeights};
use crate::kernels::layernorm;
use crate::kernels::matmul::{Matmul, MatmulVariant, View};
#[cfg(feature = "reference")]
use crate::kernels::reference::{rel_err, to_f64};
#[cfg(feature = "reference")]
use crate::kernels::{adapter, attention::reference as attention_ref, fusion, layernorm::reference as layernorm_ref};
use crate::types::Activation;
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

/// Without the `reference` feature a kernel cannot be checked, so it is not timed.
#[cfg(not(feature = "reference"))]
fn no_reference<T>() -> Result<T> {
    bail!("built without the `reference` feature: the kernels cannot be checked against the f64 reference")
}

#[cfg(not(feature = "reference"))]
impl AdapterCase {
    fn check(&self, _: &Arc<Gpu>, _: bool) -> Result<f64> {
        no_reference()
    }
}

#[cfg(not(feature = "reference"))]
impl FusionCase {
    fn check(&self, _: &Arc<Gpu>, _: bool) -> Result<f64> {
        no_reference()
    }
}

#[cfg(not(feature = "reference"))]
fn matmul_check(_: &Arc<Gpu>, _: MatmulVariant, _: usize, _: usize, _: usize, _: u64) -> Result<f64> {
    no_reference()
}

struct AdapterCase {
    shape: AdapterShape,
    #[cfg_attr(not(feature = "reference"), allow(dead_code))]
    t: usize,
    w: AdapterWeights,
    grads: AdapterWeights,
    x: GpuTensor,
    y: GpuTensor,
    a: GpuTensor,
    dy: GpuTensor,
    dx: GpuTensor,
    scratch: AdapterScratch,
    #[cfg(feature = "reference")]
    host: (adapter::reference::Adapter, Vec<f32>, Vec<f32>),
}

impl AdapterCase {
    fn new(gpu: &Gpu, t: usize, d: usize, m: usize, seed: u64) -> Result<Self> {
        let mut r = rng(seed);
        let shape = AdapterShape { d, m, act: Activation::Gelu, scale: 1.0 };
        let (wd, bd, wu, bu) = (
            rand_vec(&mut r, m * d, 1.0 / (d as f32).sqrt()),
            rand_vec(&mut r, m, 0.1),
            rand_vec(&mut r, d * m, 1.0 / (m as f32).sqrt()),
            rand_vec(&mut r, d, 0.1),
        );
        let (x, dy) = (rand_vec(&mut r, t * d, 1.0), rand_vec(&mut r, t * d, 1.0));
        let w = AdapterWeights {
            w_down: upload(gpu, &[m, d], &wd)?,
            b_down: upload(gpu, &[m], &bd)?,
            w_up: upload(gpu, &[d, m], &wu)?,
            b_up: upload(gpu, &[d], &bu)?,
        };
        #[cfg(feature = "reference")]
        let host = adapter::reference::Adapter {
            d,
            m,
            act: shape.act,
            scale: 1.0,
            w_down: to_f64(&wd),
            b_down: to_f64(&bd),
            w_up: to_f64(&wu),
            b_up: to_f64(&bu),
        };
        Ok(Self {
            shape,
            t,
            w,
            grads: AdapterWeights {
                w_down: poisoned(gpu, &[m, d])?,
                b_down: poisoned(gpu, &[m])?,
                w_up: poisoned(gpu, &[d, m])?,
                b_up: poisoned(gpu, &[d])?,
            },
            x: upload(gpu, &[t, d], &x)?,
            y: poisoned(gpu, &[t, d])?,
            a: poisoned(gpu, &[t, m])?,
            dy: upload(gpu, &[t, d], &dy)?,
            dx: poisoned(gpu, &[t, d])?,
            scratch: AdapterScratch::new(gpu, t, m)?,
            #[cfg(feature = "reference")]
            host: (host, x, dy),
        })
    }

    fn forward(&self, b: &mut CommandRecorder) -> Result<()> {
        self.shape.forward(b, &self.w, &self.x, &self.y, &self.a)
    }

    fn backward(&self, b: &mut CommandRecorder) -> Result<()> {
        self.shape.backward(b, &self.w, &self.x, &self.a, &self.dy, &self.dx, &self.grads, &self.scratch)
    }

    /// Max relative error of y (and with `backward`, dx and the weight gradients).
    #[cfg(feature = "reference")]
    fn check(&self, gpu: &Arc<Gpu>, backward: bool) -> Result<f64> {
        let mut b = gpu.batch();
        self.forward(&mut b)?;
        if backward {
            self.backward(&mut b)?;
        }
        b.finish()?;
        let (host, x, dy) = &self.host;
        let (y, _) = host.forward(&to_f64(x), self.t);
        let mut err = rel_err(&self.y.to_vec(gpu)?, &y);
        if backward {
            let (dx, g) = host.backward(&to_f64(x), &to_f64(dy), self.t);
            err = err.max(rel_err(&self.dx.to_vec(gpu)?, &dx));
            for (got, want) in [
                (&self.grads.w_down, &g.w_down),
                (&self.grads.b_down, &g.b_down),
                (&self.grads.w_up, &g.w_up),
                (&self.grads.b_up, &g.b_up),
            ] {
                err = err.max(rel_err(&got.to_vec(gpu)?, want));
            }
        }
        Ok(err)
    }
}

/// Adapter forward, and forward + backward (dx and all weight gradients).
pub fn adapter(gpu: &Arc<Gpu>, s: KernelShapes, reps: Reps, peaks: Option<Peaks>) -> Result<Vec<Measurement>> {
    let (t, d, m) = (s.t, s.d, s.m);
    let small = AdapterCase::new(gpu, 67, d, m.min(d), 11)?;
    let err_f = ensure_ok("adapter forward", small.check(gpu, false)?, F32_TOLERANCE)?;
    let err_b = ensure_ok("adapter forward+backward", small.check(gpu, true)?, F32_TOLERANCE)?;
    let c = AdapterCase::new(gpu, t, d, m, 12)?;
    let shape = format!("T={t} d={d} m={m}");
    let f4 = 4.0;
    // Forward: two products (4·T·d·m FLOPs); x read, y written, a saved; weights once.
    let fwd_flops = 4.0 * (t * d * m) as f64;
    let fwd_bytes = f4 * (2 * t * d + t * m + 2 * d * m + d + m) as f64;
    let (times, clock) = time_batches(gpu, reps, |b| c.forward(b))?;
    let variant = match crate::kernels::adapter::AdapterKernel::for_gpu(gpu) {
        crate::kernels::adapter::AdapterKernel::Fused => "fused",
        crate::kernels::adapter::AdapterKernel::Matmul => "matmul",
    };
    let fwd = Measurement::new("adapter_forward", shape.clone(), variant, &times, clock, fwd_flops, fwd_bytes)
        .with_peaks(peaks)
        .with_error(err_f);
    // Backward: four more products; x and dy read, dx written, a read (the T·m scratch is not compulsory).
    let bwd_flops = 8.0 * (t * d * m) as f64;
    let bwd_bytes = f4 * (3 * t * d + t * m + 4 * d * m + 2 * d + 2 * m) as f64;
    let (times, clock) = time_batches(gpu, reps, |b| {
        c.forward(b)?;
        c.backward(b)
    })?;
    let both = Measurement::new(
        "adapter_forward_backward",
        shape,
        variant,
        &times,
        clock,
        fwd_flops + bwd_flops,
        fwd_bytes + bwd_bytes,
    )
    .with_peaks(peaks)
    .with_error(err_b);
    Ok(vec![fwd, both])
}

struct FusionCase {
    shape: FusionShape,
    #[cfg_attr(not(feature = "reference"), allow(dead_code))]
    t: usize,
    w: FusionWeights,
    grads: FusionWeights,
    h: GpuTensor,
    z: GpuTensor,
    r: GpuTensor,
    o: GpuTensor,
    d_o: GpuTensor,
    dh: GpuTensor,
    dz: GpuTensor,
    dr: GpuTensor,
    saved: FusionSaved,
    scratch: FusionScratch,
    #[cfg_attr(not(feature = "reference"), allow(dead_code))]
    host: (FusionHostWeights, [Vec<f32>; 4]),
}

impl FusionCase {
    fn new(gpu: &Gpu, t: usize, d: usize, n: usize, seed: u64) -> Result<Self> {
        let mut r = rng(seed);
        let shape = FusionShape { d, n, value: true, residual_before: false };
        let s = 1.0 / (d as f32).sqrt();
        let hw = FusionHostWeights {
            w_q: rand_vec(&mut r, d * d, s),
            b_q: rand_vec(&mut r, d, 0.5),
            w_k: rand_vec(&mut r, d * d, s),
            b_k: rand_vec(&mut r, d, 0.5),
            w_v: Some(rand_vec(&mut r, d * d, s)),
        };
        let inputs = [
            rand_vec(&mut r, t * d, 1.0),
            rand_vec(&mut r, n * t * d, 1.0),
            rand_vec(&mut r, t * d, 1.0),
            rand_vec(&mut r, t * d, 1.0),
        ];
        let grads = FusionWeights {
            w_q: poisoned(gpu, &[d, d])?,
            b_q: poisoned(gpu, &[d])?,
            w_k: poisoned(gpu, &[d, d])?,
            b_k: poisoned(gpu, &[d])?,
            w_v: Some(poisoned(gpu, &[d, d])?),
        };
        Ok(Self {
            shape,
            t,
            w: hw.upload(gpu)?,
            grads,
            h: upload(gpu, &[t, d], &inputs[0])?,
            z: upload(gpu, &[n, t, d], &inputs[1])?,
            r: upload(gpu, &[t, d], &inputs[2])?,
            o: poisoned(gpu, &[t, d])?,
            d_o: upload(gpu, &[t, d], &inputs[3])?,
            dh: poisoned(gpu, &[t, d])?,
            dz: poisoned(gpu, &[n, t, d])?,
            dr: poisoned(gpu, &[t, d])?,
            saved: FusionSaved::new(gpu, &shape, t)?,
            scratch: FusionScratch::new(gpu, &shape, t)?,
            host: (hw, inputs),
        })
    }

    fn forward(&self, b: &mut CommandRecorder) -> Result<()> {
        self.shape.forward(b, &self.w, &self.h, &self.z, &self.r, 1.0, &self.o, &self.saved)
    }

    fn backward(&self, b: &mut CommandRecorder) -> Result<()> {
        self.shape.backward(
            b,
            &self.w,
            &self.h,
            &self.z,
            &self.saved,
            1.0,
            &self.d_o,
            &self.dh,
            &self.dz,
            &self.dr,
            &self.grads,
            &self.scratch,
        )
    }

    #[cfg(feature = "reference")]
    fn check(&self, gpu: &Arc<Gpu>, backward: bool) -> Result<f64> {
        let mut b = gpu.batch();
        self.forward(&mut b)?;
        if backward {
            self.backward(&mut b)?;
        }
        b.finish()?;
        let (hw, [h, z, r, d_o]) = &self.host;
        let f = fusion::reference::Fusion {
            d: self.shape.d,
            n: self.shape.n,
            value: true,
            residual_before: false,
            temperature: 1.0,
            w_q: to_f64(&hw.w_q),
            b_q: to_f64(&hw.b_q),
            w_k: to_f64(&hw.w_k),
            b_k: to_f64(&hw.b_k),
            w_v: to_f64(hw.w_v.as_ref().expect("dynamic fusion has a value matrix")),
        };
        let (h, z, r) = (to_f64(h), to_f64(z), to_f64(r));
        let out = f.forward(&h, &z, &r, self.t);
        let mut err = rel_err(&self.o.to_vec(gpu)?, &out.o).max(rel_err(&self.saved.p.to_vec(gpu)?, &out.p));
        if backward {
            let (ig, g) = f.backward(&h, &z, &r, &to_f64(d_o), self.t);
            for (got, want) in [(&self.dh, &ig.dh), (&self.dz, &ig.dz), (&self.dr, &ig.dr)] {
                err = err.max(rel_err(&got.to_vec(gpu)?, want));
            }
            let gv = self.grads.w_v.as_ref().expect("value gradient");
            for (got, want) in
                [(&self.grads.w_q, &g.w_q), (&self.grads.b_q, &g.b_q), (&self.grads.w_k, &g.w_k), (gv, &g.w_v)]
            {
                err = err.max(rel_err(&got.to_vec(gpu)?, want));
            }
        }
        Ok(err)
    }
}

/// AdapterFusion ("dynamic": query, key, value) forward, and forward + backward.
pub fn fusion(gpu: &Arc<Gpu>, s: KernelShapes, reps: Reps, peaks: Option<Peaks>) -> Result<Vec<Measurement>> {
    let (t, d, n) = (s.t, s.d, s.n);
    let small = FusionCase::new(gpu, 33, d, n, 21)?;
    let err_f = ensure_ok("fusion forward", small.check(gpu, false)?, F32_TOLERANCE)?;
    let err_b = ensure_ok("fusion forward+backward", small.check(gpu, true)?, F32_TOLERANCE)?;
    let c = FusionCase::new(gpu, t, d, n, 22)?;
    let shape = format!("N={n} T={t} d={d}");
    let mm = 2.0 * (t * d * d) as f64;
    // Forward (the rewrite): q, q̃ = W_Kᵀq, W_V·mix = 3 products + scores and mix (4·N·d a token).
    let fwd_flops = 3.0 * mm + 4.0 * (n * t * d) as f64;
    // h, z, r read; o written; q, q̃, mix saved.
    let fwd_bytes = 4.0 * ((n + 3) * t * d + 3 * t * d + 3 * d * d) as f64;
    let (times, clock) = time_batches(gpu, reps, |b| c.forward(b))?;
    let fwd = Measurement::new("fusion_forward", shape.clone(), "rewrite", &times, clock, fwd_flops, fwd_bytes)
        .with_peaks(peaks)
        .with_error(err_f);
    // Backward: dū, dq, dh and dW_V, dW_K, dW_Q = 6 products + the fused score/mix backward.
    let bwd_flops = 6.0 * mm + 6.0 * (n * t * d) as f64;
    let bwd_bytes = 4.0 * ((2 * n + 4) * t * d + 3 * t * d + 6 * d * d) as f64;
    let (times, clock) = time_batches(gpu, reps, |b| {
        c.forward(b)?;
        c.backward(b)
    })?;
    let both = Measurement::new(
        "fusion_forward_backward",
        shape,
        "rewrite",
        &times,
        clock,
        fwd_flops + bwd_flops,
        fwd_bytes + bwd_bytes,
    )
    .with_peaks(peaks)
    .with_error(err_b);
    Ok(vec![fwd, both])
}

/// `C = A·B` (row-major, `[m, k]·[k, n]`) with one variant; returns max relative error.
#[cfg(feature = "reference")]
fn matmul_check(gpu: &Arc<Gpu>, v: MatmulVariant, m: usize, n: usize, k: usize, seed: u64) -> Result<f64> {
    let mut r = rng(seed);
    let (a, b) = (rand_vec(&mut r, m * k, 1.0), rand_vec(&mut r, k * n, 1.0));
    let (ga, gb, gc) = (upload(gpu, &[m, k], &a)?, upload(gpu, &[k, n], &b)?, poisoned(gpu, &[m, n])?);
    let mut bt = gpu.batch();
    Matmul::new(m, n, k).variant(v).run(&mut bt, View::rows(&ga, k), View::rows(&gb, n), None, View::rows(&gc, n))?;
    bt.finish()?;
    let want = crate::kernels::reference::matmul(&to_f64(&a), &to_f64(&b), m, k, n);
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

/// Masked multi-head attention forward, and forward + backward (input gradients).
pub fn attention(gpu: &Arc<Gpu>, s: KernelShapes, reps: Reps, peaks: Option<Peaks>) -> Result<Vec<Measurement>> {
    #[cfg(feature = "reference")]
    let check = {
        let sh = AttentionShape { batch: 2, seq: 37, ..s.attention };
        let (q, k, v, dctx, mask) = attention_inputs(sh, 41);
        let tg = attention_tensors(gpu, sh, &q, &k, &v, &dctx, &mask)?;
        let mut b = gpu.batch();
        tg.forward(&mut b, sh)?;
        tg.backward(&mut b, sh)?;
        b.finish()?;
        let (q, k, v, dctx, mask) = (to_f64(&q), to_f64(&k), to_f64(&v), to_f64(&dctx), to_f64(&mask));
        let (ctx, _) = attention_ref::attention(&q, &k, &v, &mask, sh);
        let (dq, dk, dv) = attention_ref::attention_backward(&q, &k, &v, &mask, &dctx, sh);
        let mut e = rel_err(&tg.ctx.to_vec(gpu)?, &ctx);
        for (g, w) in [(&tg.dq, &dq), (&tg.dk, &dk), (&tg.dv, &dv)] {
            e = e.max(rel_err(&g.to_vec(gpu)?, w));
        }
        ensure_ok("attention", e, F32_TOLERANCE)?
    };
    #[cfg(not(feature = "reference"))]
    let check: f64 = no_reference()?;
    let sh = s.attention;
    let (q, k, v, dctx, mask) = attention_inputs(sh, 42);
    let tg = attention_tensors(gpu, sh, &q, &k, &v, &dctx, &mask)?;
    let (bsz, n, h, hd) = (sh.batch, sh.seq, sh.heads, sh.head_dim);
    let shape = format!("B={bsz} S={n} H={h} hd={hd}");
    let act = (bsz * n * h * hd) as f64;
    let probs = (bsz * h * n * n) as f64;
    let fwd_flops = 4.0 * (bsz * h * n * n * hd) as f64;
    let fwd_bytes = 4.0 * (4.0 * act + probs);
    let (times, clock) = time_batches(gpu, reps, |b| tg.forward(b, sh))?;
    let fwd = Measurement::new("attention_forward", shape.clone(), "", &times, clock, fwd_flops, fwd_bytes)
        .with_peaks(peaks)
        .with_error(check);
    let (times, clock) = time_batches(gpu, reps, |b| {
        tg.forward(b, sh)?;
        tg.backward(b, sh)
    })?;
    let both = Measurement::new(
        "attention_forward_backward",
        shape,
        "",
        &times,
        clock,
        3.0 * fwd_flops,
        fwd_bytes + 4.0 * (7.0 * act + 2.0 * probs),
    )
    .with_peaks(peaks)
    .with_error(check);
    Ok(vec![fwd, both])
}

/// q, k, v, dctx and the mask.
type AttentionHost = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

fn attention_inputs(s: AttentionShape, seed: u64) -> AttentionHost {
    let mut r = rng(seed);
    let len = s.batch * s.seq * s.heads * s.head_dim;
    let mut mask = vec![1.0f32; s.batch * s.seq];
    // The last sequence is padded to 3/4 of its length (as dynamic padding leaves batches).
    for j in (s.seq * 3 / 4).max(1)..s.seq {
        mask[(s.batch - 1) * s.seq + j] = 0.0;
    }
    (
        rand_vec(&mut r, len, 1.0),
        rand_vec(&mut r, len, 1.0),
        rand_vec(&mut r, len, 1.0),
        rand_vec(&mut r, len, 1.0),
        mask,
    )
}

struct AttentionTensors {
    q: GpuTensor,
    k: GpuTensor,
    v: GpuTensor,
    dctx: GpuTensor,
    mask: GpuTensor,
    probs: GpuTensor,
    ctx: GpuTensor,
    dq: GpuTensor,
    dk: GpuTensor,
    dv: GpuTensor,
    scratch: GpuTensor,
}

fn attention_tensors(
    gpu: &Gpu,
    s: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dctx: &[f32],
    mask: &[f32],
) -> Result<AttentionTensors> {
    let act = [s.batch * s.seq, s.heads * s.head_dim];
    let p = attention::probs_shape(s);
    Ok(AttentionTensors {
        q: upload(gpu, &act, q)?,
        k: upload(gpu, &act, k)?,
        v: upload(gpu, &act, v)?,
        dctx: upload(gpu, &act, dctx)?,
        mask: upload(gpu, &[s.batch, s.seq], mask)?,
        probs: poisoned(gpu, &p)?,
        ctx: poisoned(gpu, &act)?,
        dq: poisoned(gpu, &act)?,
        dk: poisoned(gpu, &act)?,
        dv: poisoned(gpu, &act)?,
        scratch: poisoned(gpu, &p)?,
    })
}

impl AttentionTensors {
    fn forward(&self, b: &mut CommandRecorder, s: AttentionShape) -> Result<()> {
        attention::attention_forward(b, s, &self.q, &self.k, &self.v, &self.mask, &self.probs, &self.ctx)
    }

    fn backward(&self, b: &mut CommandRecorder, s: AttentionShape) -> Result<()> {
        attention::attention_backward(
            b,
            s,
            &self.q,
            &self.k,
            &self.v,
            &self.mask,
            &self.probs,
            &self.dctx,
            &self.dq,
            &self.dk,
            &self.dv,
            &self.scratch,
        )
    }
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
    #[cfg(feature = "reference")]
    let err = {
        let (x, res, g, bb, ts) = run(67, 51)?;
        let mut b = gpu.batch();
        record(&mut b, &ts)?;
        b.finish()?;
        let sum: Vec<f64> = x.iter().zip(&res).map(|(a, b)| *a as f64 + *b as f64).collect();
        let want = layernorm_ref::layer_norm(&sum, 67, s.d, &to_f64(&g), &to_f64(&bb), 1e-12);
        ensure_ok("layer_norm", rel_err(&ts[5].to_vec(gpu)?, &want), F32_TOLERANCE)?
    };
    #[cfg(not(feature = "reference"))]
    let err: f64 = no_reference()?;
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
