//! The AdapterFusion kernels' benchmark: forward, and forward + backward.

use super::{ensure_ok, poisoned, rand_vec, rng, upload, KernelShapes, F32_TOLERANCE};
use crate::bench::{time_batches, Measurement, Peaks, Reps};
use crate::gpu::{CommandRecorder, Gpu, GpuTensor};
use crate::kernels::fusion::{FusionHostWeights, FusionSaved, FusionScratch, FusionShape, FusionWeights};
use crate::kernels::reference::{rel_err, to_f64};
use anyhow::Result;
use std::sync::Arc;

struct FusionCase {
    shape: FusionShape,
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

    fn check(&self, gpu: &Arc<Gpu>, backward: bool) -> Result<f64> {
        let mut b = gpu.batch();
        self.forward(&mut b)?;
        if backward {
            self.backward(&mut b)?;
        }
        b.finish()?;
        let (hw, [h, z, r, d_o]) = &self.host;
        let f = crate::kernels::fusion::reference::Fusion {
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
