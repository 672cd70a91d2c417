//! The adapter kernels' benchmark: forward, and forward + backward.

use super::{ensure_ok, poisoned, rand_vec, rng, upload, KernelShapes, F32_TOLERANCE};
use crate::bench::{time_batches, Measurement, Peaks, Reps};
use crate::gpu::{CommandRecorder, Gpu, GpuTensor};
use crate::kernels::adapter::{AdapterScratch, AdapterShape, AdapterWeights};
use crate::kernels::reference::{rel_err, to_f64};
use crate::types::Activation;
use anyhow::Result;
use std::sync::Arc;

struct AdapterCase {
    shape: AdapterShape,
    t: usize,
    w: AdapterWeights,
    grads: AdapterWeights,
    x: GpuTensor,
    y: GpuTensor,
    a: GpuTensor,
    dy: GpuTensor,
    dx: GpuTensor,
    scratch: AdapterScratch,
    host: (crate::kernels::adapter::reference::Adapter, Vec<f32>, Vec<f32>),
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
        let host = crate::kernels::adapter::reference::Adapter {
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
