//! `shaders/fusion.wgsl`: AdapterFusion (Pfeiffer et al. 2021) as AdapterHub's `BertFusion`
//! defines it, computed with an exact rewrite that costs three d×d products a token instead of
//! 2N+1.
//!
//! Per token, with the query input `h`, the N adapter outputs `z_n` and the residual `r`:
//! `q = W_Q h + b_Q`, `k_n = W_K z_n + b_K`, `v_n = W_V z_n`, `s_n = q·k_n / T`, `p = softmax(s)`,
//! `o = Σ p_n v_n + r`. Since `q·k_n = (W_Kᵀ q)·z_n + q·b_K` and `q·b_K` is the same for every n,
//! the kernels score `q̃·z_n` with `q̃ = W_Kᵀ q` computed once, and mix before projecting:
//! `o = W_V (Σ p_n z_n) + r`. The key bias therefore has no effect and its gradient is zero
//! (returned explicitly).
//!
//! Options (AdapterHub's `AdapterFusionConfig`): `value` (dynamic: W_V; static: `v_n = z_n`),
//! `residual_before` (AdapterHub adds `r` to the tensor that is both key and value: the keys'
//! `q̃·r` term cancels in the softmax, the output becomes `W_V (z̄ + r)` with no residual after),
//! and the temperature `T` ([`Temperature`] anneals it as AdapterHub does). Attention dropout is not
//! implemented (AdapterHub's default `dropout_prob` is None / the model's, inactive in eval).
//!
//! Layouts: `h`, `r`, `o` and their gradients `[T, d]`; **`z` and `dz` are one tensor `[N, T, d]`**
//! (adapter-major: adapter n's outputs for all tokens are the contiguous block n); weights are
//! nn.Linear `[out, in]`. Saved for backward: `q` and `q̃` `[T, d]`, `p` `[T, N]`, and the mixed
//! `u = Σ p_n z_n (+ r if residual_before)` `[T, d]`.
//!
//! Forward: `q` and `q̃` by the matmul kernel, then one fused dispatch (scores, softmax and mix;
//! each z_n read once), then `o += u W_Vᵀ` by the matmul kernel. Backward: `dū = do W_V` (matmul),
//! one fused dispatch (dz for all n, dq̃ and dr; each z_n read once), then matmuls and column sums
//! for dq, dh and the weight gradients. Every output element is summed by one thread in a fixed
//! order: bit-identical results run to run.

use super::matmul::{linear, Matmul, View};
use super::{expect_shape, reduce};
use crate::gpu::{Access, CommandRecorder, GpuTensor, KernelSpec};
use crate::shaders;
use anyhow::{bail, Result};

#[cfg(any(test, feature = "reference"))]
pub mod reference;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_accuracy;

mod buffers;
pub use buffers::Temperature;

const FORWARD: KernelSpec = KernelSpec {
    shader: &shaders::FUSION,
    entry: "forward",
    bindings: &[Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite, Access::ReadWrite],
};

const BACKWARD: KernelSpec = KernelSpec {
    shader: &shaders::FUSION,
    entry: "backward",
    bindings: &[
        Access::Read,
        Access::Read,
        Access::Read,
        Access::Read,
        Access::Read,
        Access::ReadWrite,
        Access::ReadWrite,
        Access::ReadWrite,
    ],
};

const REG_GRAD: KernelSpec =
    KernelSpec { shader: &shaders::FUSION, entry: "reg_grad", bindings: &[Access::Read, Access::ReadWrite] };
const REG_LOSS: KernelSpec =
    KernelSpec { shader: &shaders::FUSION, entry: "reg_loss", bindings: &[Access::Read, Access::ReadWrite] };
const ZERO_FILL: KernelSpec =
    KernelSpec { shader: &shaders::FUSION, entry: "zero_fill", bindings: &[Access::ReadWrite] };

/// Columns a thread may own (`MAX_COLS` in the shader).
const MAX_COLS: usize = 16;
/// Most adapters one fusion layer can fuse (`MAX_N` in the shader).
pub const MAX_ADAPTERS: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32,
    d: u32,
    n: u32,
    z_sn: u32,
    z_st: u32,
    len: u32,
    temp: f32,
    coef: f32,
    beta: f32,
    flags: u32,
    _p: [u32; 2],
}

/// Every kernel of this module with the size of its parameter block (`kernels/bindings.rs` checks
/// them against the WGSL).
#[cfg(test)]
pub(crate) fn specs() -> Vec<(KernelSpec, usize)> {
    let p = std::mem::size_of::<Params>();
    vec![(FORWARD, p), (BACKWARD, p), (REG_GRAD, p), (REG_LOSS, p), (ZERO_FILL, p)]
}

/// Every set of override constants the host passes, per kernel (`kernels/translate.rs`): the
/// fused kernels' (WG, COLS) over every hidden size they take; the others none.
#[cfg(test)]
pub(crate) fn launches() -> Vec<(KernelSpec, Vec<crate::kernels::Constants>)> {
    let mut sets: Vec<crate::kernels::Constants> = vec![];
    for d in 1..=256 * MAX_COLS {
        let c = constants(d).expect("a hidden size within the limit").to_vec();
        if !sets.contains(&c) {
            sets.push(c);
        }
    }
    let none = vec![vec![]];
    vec![
        (FORWARD, sets.clone()),
        (BACKWARD, sets),
        (REG_GRAD, none.clone()),
        (REG_LOSS, none.clone()),
        (ZERO_FILL, none),
    ]
}

/// Workgroup size and columns per thread of the fused kernels for hidden size `d`: 64 threads up
/// to d = 256, else 256 threads (up to 16 columns each). Each (WG, COLS) pair is one pipeline; the
/// options are uniforms so that they share it.
fn launch(d: usize) -> Result<(usize, usize)> {
    let wg = if d <= 256 { 64 } else { 256 };
    let cols = d.div_ceil(wg);
    if cols > MAX_COLS {
        bail!("fusion: hidden size {d} exceeds the kernels' limit of {}", 256 * MAX_COLS);
    }
    Ok((wg, cols))
}

/// The fused kernels' override constants for hidden size `d`.
fn constants(d: usize) -> Result<[(&'static str, f64); 2]> {
    let (wg, cols) = launch(d)?;
    Ok([("WG", wg as f64), ("COLS", cols as f64)])
}

impl Params {
    fn zeroed() -> Self {
        bytemuck::Zeroable::zeroed()
    }
}

/// AdapterHub's fusion regularization coefficient (`0.01 · ‖I − W_V‖²_F` per fusion layer).
pub const REGULARIZATION_COEF: f32 = 0.01;

/// Shape and options of one AdapterFusion layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FusionShape {
    /// Hidden size.
    pub d: usize,
    /// Number of fused adapters (≥ 1).
    pub n: usize,
    /// A value matrix W_V (AdapterHub "dynamic"); false: `v_n = z_n` ("static").
    pub value: bool,
    /// AdapterHub's `residual_before`.
    pub residual_before: bool,
}

/// The weights of one fusion layer on the GPU (nn.Linear layout, all `[d, d]` / `[d]`).
#[derive(Clone, Debug)]
pub struct FusionWeights {
    pub w_q: GpuTensor,
    pub b_q: GpuTensor,
    pub w_k: GpuTensor,
    pub b_k: GpuTensor,
    /// `None` without a value matrix.
    pub w_v: Option<GpuTensor>,
}

/// Host copies of the weights (initialization, checkpoints).
#[derive(Clone, Debug, PartialEq)]
pub struct FusionHostWeights {
    pub w_q: Vec<f32>,
    pub b_q: Vec<f32>,
    pub w_k: Vec<f32>,
    pub b_k: Vec<f32>,
    pub w_v: Option<Vec<f32>>,
}

/// What the forward pass saves for backward.
#[derive(Clone, Debug)]
pub struct FusionSaved {
    /// `q = W_Q h + b_Q`, `[T, d]`.
    pub q: GpuTensor,
    /// `q̃ = W_Kᵀ q`, `[T, d]`.
    pub qt: GpuTensor,
    /// Attention probabilities, `[T, N]`.
    pub p: GpuTensor,
    /// `u = Σ p_n z_n (+ r if residual_before)`, `[T, d]`.
    pub mix: GpuTensor,
}

/// Scratch of the backward pass, `[T, d]` each.
#[derive(Clone, Debug)]
pub struct FusionScratch {
    /// `dū = do W_V` (unused without a value matrix).
    pub du: GpuTensor,
    /// `dq̃`.
    pub dqt: GpuTensor,
    /// `dq = dq̃ W_Kᵀ`.
    pub dq: GpuTensor,
}

/// Floating-point operations per token (a multiply-add counts 2; softmax, biases and residual
/// are O(N + d) and left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FusionFlops {
    /// AdapterHub / PyTorch: `q`, N keys, N values (2N+1 products), scores and mix.
    pub naive_forward: u64,
    /// This module: `q`, `q̃`, `W_V z̄` (3 products), scores and mix.
    pub rewrite_forward: u64,
    /// The naive backward: through `q`, N keys and N values, and their weight gradients.
    pub naive_backward: u64,
    /// This module's backward: `dū`, `dq`, `dh`, `dW_V`, `dW_K`, `dW_Q` (6 products) and the per-n terms.
    pub rewrite_backward: u64,
}

impl FusionShape {
    /// AdapterHub's "dynamic" configuration (the library's default).
    pub fn dynamic(d: usize, n: usize) -> Self {
        Self { d, n, value: true, residual_before: false }
    }

    /// AdapterHub's "static" configuration (no value matrix).
    pub fn static_config(d: usize, n: usize) -> Self {
        Self { d, n, value: false, residual_before: false }
    }

    /// Trainable parameters: `2d² + 2d` (+ `d²` with a value matrix).
    pub fn parameters(&self) -> usize {
        2 * self.d * self.d + 2 * self.d + if self.value { self.d * self.d } else { 0 }
    }

    /// FLOPs per token of the naive formula and of the rewrite (see [`FusionFlops`]).
    pub fn flops_per_token(&self) -> FusionFlops {
        let (d, n) = (self.d as u64, self.n as u64);
        let mm = 2 * d * d;
        let v = if self.value { 1 } else { 0 };
        let per_n = 2 * n * d; // one d-long dot or axpy per adapter
        FusionFlops {
            naive_forward: (1 + n + v * n) * mm + 2 * per_n,
            rewrite_forward: (2 + v) * mm + 2 * per_n,
            // dh, dW_Q; per adapter: dk→dx, dW_K, and with a value dv→dx, dW_V; plus dp, dq, dk, dv.
            naive_backward: (2 + 2 * n + 2 * v * n) * mm + 4 * per_n,
            // dh, dW_Q, dq, dW_K, (dū, dW_V); per adapter: g_n, dz_n (2), dq̃.
            rewrite_backward: (4 + 2 * v) * mm + 4 * per_n,
        }
    }

    fn constants(&self) -> Result<[(&'static str, f64); 2]> {
        constants(self.d)
    }

    fn params(&self, t: usize, temperature: f32) -> Result<Params> {
        if !(temperature.is_finite() && temperature > 0.0) {
            bail!("fusion temperature must be positive and finite, got {temperature}");
        }
        let u = |v: usize| u32::try_from(v).map_err(|_| anyhow::anyhow!("fusion: size {v} exceeds u32"));
        Ok(Params {
            t: u(t)?,
            d: u(self.d)?,
            n: u(self.n)?,
            z_sn: u(t * self.d)?,
            z_st: u(self.d)?,
            temp: temperature,
            flags: self.value as u32 | (self.residual_before as u32) << 1,
            ..Params::zeroed()
        })
    }

    fn check(&self, w: &FusionWeights) -> Result<()> {
        if self.d == 0 || self.n == 0 {
            bail!("fusion with hidden size {} over {} adapters: both must be at least 1", self.d, self.n);
        }
        if self.n > MAX_ADAPTERS {
            bail!("fusion over {} adapters: at most {MAX_ADAPTERS} are supported", self.n);
        }
        let d = self.d;
        expect_shape("fusion w_q", &w.w_q.shape, &[d, d])?;
        expect_shape("fusion b_q", &w.b_q.shape, &[d])?;
        expect_shape("fusion w_k", &w.w_k.shape, &[d, d])?;
        expect_shape("fusion b_k", &w.b_k.shape, &[d])?;
        match (&w.w_v, self.value) {
            (Some(v), true) => expect_shape("fusion w_v", &v.shape, &[d, d])?,
            (None, false) => {}
            (Some(_), false) => bail!("fusion without a value matrix got a w_v"),
            (None, true) => bail!("fusion with a value matrix needs w_v"),
        }
        Ok(())
    }

    /// Tokens of a `[.., d]` input.
    fn tokens(&self, what: &str, x: &GpuTensor) -> Result<usize> {
        let d = *x.shape.last().unwrap_or(&0);
        if d != self.d {
            bail!("{what}: last dimension {d} (shape {:?}) is not the fusion's hidden size {}", x.shape, self.d);
        }
        Ok(x.numel() / d)
    }

    fn check_saved(&self, t: usize, s: &FusionSaved) -> Result<()> {
        let d = self.d;
        expect_shape("fusion saved q", &s.q.shape, &[t, d])?;
        expect_shape("fusion saved q̃", &s.qt.shape, &[t, d])?;
        expect_shape("fusion saved p", &s.p.shape, &[t, self.n])?;
        expect_shape("fusion saved mix", &s.mix.shape, &[t, d])
    }

    /// Queues the forward pass. `h`, `r`, `o`: `[T, d]` (`o` distinct from the inputs);
    /// `z`: `[N, T, d]`; fills `saved`. `temperature` is T for this pass (see [`Temperature`]).
    pub fn forward(
        &self,
        batch: &mut CommandRecorder,
        w: &FusionWeights,
        h: &GpuTensor,
        z: &GpuTensor,
        r: &GpuTensor,
        temperature: f32,
        o: &GpuTensor,
        saved: &FusionSaved,
    ) -> Result<()> {
        self.check(w)?;
        let t = self.tokens("fusion query input h", h)?;
        let d = self.d;
        expect_shape("fusion adapter outputs z", &z.shape, &[self.n, t, d])?;
        expect_shape("fusion residual", &r.shape, &h.shape)?;
        expect_shape("fusion output", &o.shape, &h.shape)?;
        self.check_saved(t, saved)?;
        let params = self.params(t, temperature)?;
        let constants = self.constants()?;
        // q = h W_Qᵀ + b_Q;  q̃ = q W_K  (q̃_j = Σ_i W_K[i, j] q_i)
        linear(batch, h, &w.w_q, Some(&w.b_q), &saved.q)?;
        Matmul::new(t, d, d).run(
            batch,
            View::rows(&saved.q, d),
            View::rows(&w.w_k, d),
            None,
            View::rows(&saved.qt, d),
        )?;
        batch.dispatch(
            &FORWARD,
            &constants,
            &params,
            &[Some(&saved.qt), Some(z), Some(r), Some(&saved.p), Some(&saved.mix), Some(o)],
            [t as u32, 1, 1],
        );
        if let Some(w_v) = &w.w_v {
            // o = u W_Vᵀ + o, where the fused kernel left o = r (or nothing to add: residual_before).
            let beta = if self.residual_before { 0.0 } else { 1.0 };
            Matmul::new(t, d, d).beta(beta).run(
                batch,
                View::rows(&saved.mix, d),
                View::transposed(w_v, d),
                None,
                View::rows(o, d),
            )?;
        }
        Ok(())
    }

    /// Queues the backward pass given the upstream gradient `d_o` (`[T, d]`), with the inputs and
    /// the `saved` tensors of the forward pass and the same `temperature`. Writes `dh`, `dr`
    /// (`[T, d]`), `dz` (`[N, T, d]`) and every weight gradient in `grads` (overwritten; `b_k`
    /// is set to zero, its exact value).
    pub fn backward(
        &self,
        batch: &mut CommandRecorder,
        w: &FusionWeights,
        h: &GpuTensor,
        z: &GpuTensor,
        saved: &FusionSaved,
        temperature: f32,
        d_o: &GpuTensor,
        dh: &GpuTensor,
        dz: &GpuTensor,
        dr: &GpuTensor,
        grads: &FusionWeights,
        scratch: &FusionScratch,
    ) -> Result<()> {
        self.check(w)?;
        self.check(grads)?;
        let t = self.tokens("fusion query input h", h)?;
        let d = self.d;
        expect_shape("fusion adapter outputs z", &z.shape, &[self.n, t, d])?;
        expect_shape("fusion dz", &dz.shape, &[self.n, t, d])?;
        for (what, x) in [("fusion d_o", d_o), ("fusion dh", dh), ("fusion dr", dr)] {
            expect_shape(what, &x.shape, &h.shape)?;
        }
        self.check_saved(t, saved)?;
        for (what, x) in [("du", &scratch.du), ("dqt", &scratch.dqt), ("dq", &scratch.dq)] {
            expect_shape(&format!("fusion scratch {what}"), &x.shape, &[t, d])?;
        }
        let params = self.params(t, temperature)?;
        let constants = self.constants()?;
        // dū = do W_V (the gradient of u = Σ p_n z_n (+ r)); static: do itself.
        let du = match &w.w_v {
            Some(w_v) => {
                Matmul::new(t, d, d).run(
                    batch,
                    View::rows(d_o, d),
                    View::rows(w_v, d),
                    None,
                    View::rows(&scratch.du, d),
                )?;
                &scratch.du
            }
            None => d_o,
        };
        batch.dispatch(
            &BACKWARD,
            &constants,
            &params,
            &[Some(&saved.p), Some(&saved.qt), Some(z), Some(du), Some(d_o), Some(dz), Some(&scratch.dqt), Some(dr)],
            [t as u32, 1, 1],
        );
        // dW_V = doᵀ u
        if let (Some(gv), Some(_)) = (&grads.w_v, &w.w_v) {
            Matmul::new(d, d, t).run(
                batch,
                View::transposed(d_o, d),
                View::rows(&saved.mix, d),
                None,
                View::rows(gv, d),
            )?;
        }
        // dq = dq̃ W_Kᵀ;  dW_K = qᵀ dq̃
        Matmul::new(t, d, d).run(
            batch,
            View::rows(&scratch.dqt, d),
            View::transposed(&w.w_k, d),
            None,
            View::rows(&scratch.dq, d),
        )?;
        Matmul::new(d, d, t).run(
            batch,
            View::transposed(&saved.q, d),
            View::rows(&scratch.dqt, d),
            None,
            View::rows(&grads.w_k, d),
        )?;
        // dh = dq W_Q;  dW_Q = dqᵀ h;  db_Q = Σ_t dq
        Matmul::new(t, d, d).run(batch, View::rows(&scratch.dq, d), View::rows(&w.w_q, d), None, View::rows(dh, d))?;
        Matmul::new(d, d, t).run(
            batch,
            View::transposed(&scratch.dq, d),
            View::rows(h, d),
            None,
            View::rows(&grads.w_q, d),
        )?;
        reduce::col_sum(batch, &scratch.dq, t, d, 1.0, 0.0, &grads.b_q)?;
        zero_fill(batch, &grads.b_k)?;
        Ok(())
    }
}

/// Writes zeros into every element of `out`.
fn zero_fill(batch: &mut CommandRecorder, out: &GpuTensor) -> Result<()> {
    let len = u32::try_from(out.numel()).map_err(|_| anyhow::anyhow!("zero_fill: tensor too large"))?;
    let params = Params { len, ..Params::zeroed() };
    batch.dispatch(&ZERO_FILL, &[], &params, &[Some(out)], [len.div_ceil(64), 1, 1]);
    Ok(())
}

/// AdapterHub's fusion regularization `coef·‖I − W_V‖²_F` ([`REGULARIZATION_COEF`] = 0.01) on the
/// GPU: writes its gradient `2·coef·(W_V − I)` into `grad_w_v` and, when given, the loss into
/// `loss[0]`; with `accumulate` both are added to what the tensors hold (after
/// [`FusionShape::backward`] wrote `dW_V`, and to sum the loss over layers).
pub fn regularization(
    batch: &mut CommandRecorder,
    w_v: &GpuTensor,
    coef: f32,
    grad_w_v: &GpuTensor,
    loss: Option<&GpuTensor>,
    accumulate: bool,
) -> Result<()> {
    let d = w_v.shape.first().copied().unwrap_or(0);
    expect_shape("fusion regularization w_v", &w_v.shape, &[d, d])?;
    expect_shape("fusion regularization gradient", &grad_w_v.shape, &[d, d])?;
    let len = u32::try_from(d * d).map_err(|_| anyhow::anyhow!("fusion regularization: W_V too large"))?;
    let params = Params { d: d as u32, len, coef, beta: if accumulate { 1.0 } else { 0.0 }, ..Params::zeroed() };
    batch.dispatch(&REG_GRAD, &[], &params, &[Some(w_v), Some(grad_w_v)], [len.div_ceil(64), 1, 1]);
    if let Some(loss) = loss {
        if loss.numel() < 1 {
            bail!("fusion regularization loss: empty tensor");
        }
        batch.dispatch(&REG_LOSS, &[], &params, &[Some(w_v), Some(loss)], [1, 1, 1]);
    }
    Ok(())
}
