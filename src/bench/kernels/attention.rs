//! The attention kernels' benchmark: masked multi-head attention forward, and forward + backward.

use super::{ensure_ok, poisoned, rand_vec, rng, upload, KernelShapes, F32_TOLERANCE};
use crate::bench::{time_batches, Measurement, Peaks, Reps};
use crate::gpu::{CommandRecorder, Gpu, GpuTensor};
use crate::kernels::attention::{self, AttentionShape};
use crate::kernels::reference::{rel_err, to_f64};
use anyhow::Result;
use std::sync::Arc;

/// Masked multi-head attention forward, and forward + backward (input gradients).
pub fn attention(gpu: &Arc<Gpu>, s: KernelShapes, reps: Reps, peaks: Option<Peaks>) -> Result<Vec<Measurement>> {
    let check = {
        let sh = AttentionShape { batch: 2, seq: 37, ..s.attention };
        let (q, k, v, dctx, mask) = attention_inputs(sh, 41);
        let tg = attention_tensors(gpu, sh, &q, &k, &v, &dctx, &mask)?;
        let mut b = gpu.batch();
        tg.forward(&mut b, sh)?;
        tg.backward(&mut b, sh)?;
        b.finish()?;
        let (q, k, v, dctx, mask) = (to_f64(&q), to_f64(&k), to_f64(&v), to_f64(&dctx), to_f64(&mask));
        let (ctx, _) = crate::kernels::attention::reference::attention(&q, &k, &v, &mask, sh);
        let (dq, dk, dv) = crate::kernels::attention::reference::attention_backward(&q, &k, &v, &mask, &dctx, sh);
        let mut e = rel_err(&tg.ctx.to_vec(gpu)?, &ctx);
        for (g, w) in [(&tg.dq, &dq), (&tg.dk, &dk), (&tg.dv, &dv)] {
            e = e.max(rel_err(&g.to_vec(gpu)?, w));
        }
        ensure_ok("attention", e, F32_TOLERANCE)?
    };
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
