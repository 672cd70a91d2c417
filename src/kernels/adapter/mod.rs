//! `shaders/adapter.wgsl`: the fused bottleneck adapter (Houlsby et al. 2019).
//!
//! Forward (one dispatch): `a = W_down x + b_down`, `g = act(a)`, `y = x + s (W_up g + b_up)`,
//! saving `a` for backward (the matmul path, `AdapterKernel::Matmul`, saves `g`). Backward: one
//! fused pass over tokens for `dx`, `da` and `g`, then the weight gradients as token reductions
//! with the matmul kernel (`dW_up = s dyᵀ g`, `dW_down = daᵀ x`) and column sums for the biases. Every output element is summed by one
//! thread in a fixed order, so gradients are bit-identical run to run (no float atomics).

use super::matmul::{linear, Epilogue, Matmul, View};
use super::reduce::ColSum;
use super::{elementwise, expect_shape, reduce};
use crate::gpu::{Access, CommandRecorder, GpuTensor, KernelSpec};
use crate::shaders;
use crate::types::Activation;
use anyhow::{bail, Result};

pub mod channel;
#[cfg(any(test, feature = "reference"))]
pub mod reference;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_channel;
#[cfg(test)]
mod tests_matmul;

const FORWARD: KernelSpec = KernelSpec {
    shader: &shaders::ADAPTER,
    entry: "forward",
    bindings: &[
        Access::Read,
        Access::Read,
        Access::Read,
        Access::Read,
        Access::Read,
        Access::ReadWrite,
        Access::ReadWrite,
        Access::Read,
    ],
};

/// The adapter's path ([`AdapterKernel::for_gpu`]: the GPU's policy, [`ADAPTER_KERNEL_ENV`]
/// overrides) lives in the device policy.
pub use crate::gpu::policy::{AdapterKernel, ADAPTER_KERNEL_ENV};

/// What the adapter adds its output to.
#[derive(Clone, Copy, Debug, Default)]
pub enum Residual<'a> {
    /// `y = x + s·(...)`: Houlsby placement.
    #[default]
    Input,
    /// `y = r + s·(...)`: Pfeiffer placement, where the residual is the sub-layer output before
    /// the pretrained LayerNorm that feeds the adapter.
    Tensor(&'a GpuTensor),
    /// `y = s·(...)`: the scaled up-projection that AdapterFusion mixes.
    None,
}

/// How an adapter's backward writes its input gradient `dx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DxMode {
    /// `dx = dy + (the bottleneck's gradient)`: the adapter's input was its residual (Houlsby).
    AddDy,
    /// `dx = (the bottleneck's gradient)` alone; the residual's gradient `dy` is the caller's.
    Separate,
    /// `dx` already holds `dy` (the caller wrote it there, e.g. a LayerNorm backward's second
    /// output): the matmul path adds the bottleneck's gradient onto it (no copy); the fused
    /// kernel writes `dy + ...` over it, the same value.
    OntoDy,
}

impl Residual<'_> {
    fn id(&self) -> f64 {
        match self {
            Residual::Input => 0.0,
            Residual::Tensor(_) => 1.0,
            Residual::None => 2.0,
        }
    }
}

const BACKWARD_DX: KernelSpec = KernelSpec {
    shader: &shaders::ADAPTER,
    entry: "backward_dx",
    bindings: &[
        Access::Read,
        Access::Read,
        Access::Read,
        Access::Read,
        Access::ReadWrite,
        Access::ReadWrite,
        Access::ReadWrite,
    ],
};

/// Tokens per workgroup (`TT` in the shader).
const TOKENS_PER_WORKGROUP: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32,
    d: u32,
    m: u32,
    _pad: u32,
    scale: f32,
    _pad2: [u32; 3],
}

/// Every kernel of this module with the size of its parameter block (`kernels/bindings.rs` checks
/// them against the WGSL).
#[cfg(test)]
pub(crate) fn specs() -> Vec<(KernelSpec, usize)> {
    let p = std::mem::size_of::<Params>();
    let mut v = vec![(FORWARD, p), (BACKWARD_DX, p)];
    v.extend(channel::specs());
    v
}

/// The fused kernels' override constants: activation, workgroup size, residual mode
/// ([`Residual`]'s id in the forward pass; 1 = a residual other than the input in the backward).
fn constants(act: Activation, residual: f64) -> [(&'static str, f64); 3] {
    [("ACT", act.id()), ("WG", 64.0), ("RESIDUAL", residual)]
}

/// Every set of override constants the host passes, per kernel, apart from the activation
/// (`kernels/translate.rs`): the residual modes of each pass.
#[cfg(test)]
pub(crate) fn launches() -> Vec<(KernelSpec, Vec<crate::kernels::Constants>)> {
    let sets = |modes: &[f64]| -> Vec<crate::kernels::Constants> {
        modes
            .iter()
            .map(|&r| constants(Activation::Identity, r).into_iter().filter(|c| c.0 != "ACT").collect())
            .collect()
    };
    // Residual::id: Input 0, Tensor 1, None 2; the backward: 1 for a residual other than the input.
    let mut v = vec![(FORWARD, sets(&[0.0, 1.0, 2.0])), (BACKWARD_DX, sets(&[0.0, 1.0]))];
    v.extend(channel::launches());
    v
}

/// The weights of one bottleneck adapter on the GPU, in nn.Linear layout.
#[derive(Clone, Debug)]
pub struct AdapterWeights {
    /// `[m, d]`
    pub w_down: GpuTensor,
    /// `[m]`
    pub b_down: GpuTensor,
    /// `[d, m]`
    pub w_up: GpuTensor,
    /// `[d]`
    pub b_up: GpuTensor,
}

/// Shape and options of a bottleneck adapter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdapterShape {
    pub d: usize,
    pub m: usize,
    pub act: Activation,
    /// `s` in `y = x + s·(...)` (AdapterHub's `scaling`, default 1.0).
    pub scale: f32,
}

impl AdapterShape {
    /// Number of trainable parameters: `2md + d + m`.
    pub fn parameters(&self) -> usize {
        2 * self.m * self.d + self.d + self.m
    }

    fn check(&self, w: &AdapterWeights) -> Result<()> {
        if self.m == 0 || self.d == 0 {
            bail!("adapter with hidden size {} and bottleneck {}: both must be at least 1", self.d, self.m);
        }
        expect_shape("adapter w_down", &w.w_down.shape, &[self.m, self.d])?;
        expect_shape("adapter b_down", &w.b_down.shape, &[self.m])?;
        expect_shape("adapter w_up", &w.w_up.shape, &[self.d, self.m])?;
        expect_shape("adapter b_up", &w.b_up.shape, &[self.d])?;
        Ok(())
    }

    fn params(&self, t: usize) -> Params {
        Params { t: t as u32, d: self.d as u32, m: self.m as u32, _pad: 0, scale: self.scale, _pad2: [0; 3] }
    }

    fn constants(&self, residual: f64) -> [(&'static str, f64); 3] {
        constants(self.act, residual)
    }

    fn tokens(&self, what: &str, x: &GpuTensor) -> Result<usize> {
        let d = *x.shape.last().unwrap_or(&0);
        if d != self.d {
            bail!("{what}: last dimension {d} (shape {:?}) is not the adapter's hidden size {}", x.shape, self.d);
        }
        Ok(x.numel() / d)
    }

    /// Queues the forward pass: `y` (same shape as `x`) and `a_saved` (`[T, m]`: the fused kernel
    /// saves the pre-activation `a`, the matmul path `act(a)`; [`backward`](Self::backward) reads
    /// it through the same path).
    pub fn forward(
        &self,
        batch: &mut CommandRecorder,
        w: &AdapterWeights,
        x: &GpuTensor,
        y: &GpuTensor,
        a_saved: &GpuTensor,
    ) -> Result<()> {
        self.forward_residual(batch, w, x, Residual::Input, y, a_saved)
    }

    /// [`forward`](Self::forward) with another residual (Pfeiffer placement, fusion outputs).
    pub fn forward_residual(
        &self,
        batch: &mut CommandRecorder,
        w: &AdapterWeights,
        x: &GpuTensor,
        residual: Residual,
        y: &GpuTensor,
        a_saved: &GpuTensor,
    ) -> Result<()> {
        let kernel = AdapterKernel::for_gpu(batch.gpu());
        self.forward_with(kernel, batch, w, x, residual, y, a_saved)
    }

    /// [`forward_residual`](Self::forward_residual) that also keeps the pre-activation `a` in `pre`
    /// (`[t, m]`) beside `act(a)` in `a_saved`, from the down product's epilogue, for a backward
    /// that then need not compute it again ([`backward_mode`](Self::backward_mode) with
    /// `Some(pre)`). Only on the matmul path ([`runs_matmul_path`](Self::runs_matmul_path)).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_keeping_pre(
        &self,
        batch: &mut CommandRecorder,
        w: &AdapterWeights,
        x: &GpuTensor,
        residual: Residual,
        y: &GpuTensor,
        a_saved: &GpuTensor,
        pre: &GpuTensor,
    ) -> Result<()> {
        let kernel = AdapterKernel::for_gpu(batch.gpu());
        if !self.saves_activation(kernel) {
            bail!("adapter: the pre-activation is kept only on the matmul path (scale 1)");
        }
        self.forward_kept(kernel, batch, w, x, residual, y, a_saved, Some(pre))
    }

    /// [`forward_residual`](Self::forward_residual) through `kernel` (tests pick it explicitly).
    pub(crate) fn forward_with(
        &self,
        kernel: AdapterKernel,
        batch: &mut CommandRecorder,
        w: &AdapterWeights,
        x: &GpuTensor,
        residual: Residual,
        y: &GpuTensor,
        a_saved: &GpuTensor,
    ) -> Result<()> {
        self.forward_kept(kernel, batch, w, x, residual, y, a_saved, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_kept(
        &self,
        kernel: AdapterKernel,
        batch: &mut CommandRecorder,
        w: &AdapterWeights,
        x: &GpuTensor,
        residual: Residual,
        y: &GpuTensor,
        a_saved: &GpuTensor,
        pre: Option<&GpuTensor>,
    ) -> Result<()> {
        self.check(w)?;
        let r = match residual {
            Residual::Tensor(r) => {
                expect_shape("adapter residual", &r.shape, &x.shape)?;
                Some(r)
            }
            _ => None,
        };
        let t = self.tokens("adapter input", x)?;
        expect_shape("adapter output", &y.shape, &x.shape)?;
        expect_shape("adapter saved activations", &a_saved.shape, &[t, self.m])?;
        if let Some(p) = pre {
            expect_shape("adapter kept pre-activation", &p.shape, &[t, self.m])?;
        }
        // The matmul epilogue adds the bias unscaled: s ≠ 1 stays on the fused kernel.
        if self.saves_activation(kernel) {
            let input_residual = matches!(residual, Residual::Input);
            return self.forward_matmul(batch, w, x, (r, input_residual), y, (a_saved, pre), t);
        }
        let groups = t.div_ceil(TOKENS_PER_WORKGROUP) as u32;
        // For the profiler: the two products (4·T·d·m FLOPs); x, y, the weights and `a` moved once.
        let (tf, df, mf) = (t as f64, self.d as f64, self.m as f64);
        batch.cost(4.0 * tf * df * mf, 4.0 * (3.0 * tf * df + 2.0 * df * mf + tf * mf));
        batch.dispatch(
            &FORWARD,
            &self.constants(residual.id()),
            &self.params(t),
            &[Some(x), Some(&w.w_down), Some(&w.b_down), Some(&w.w_up), Some(&w.b_up), Some(y), Some(a_saved), r],
            [groups, 1, 1],
        );
        Ok(())
    }

    /// Queues the backward pass. Writes `dx` and the four weight gradients in `grads`; `da` and
    /// `g` (`[T, m]` each) are scratch.
    pub fn backward(
        &self,
        batch: &mut CommandRecorder,
        w: &AdapterWeights,
        x: &GpuTensor,
        a_saved: &GpuTensor,
        dy: &GpuTensor,
        dx: &GpuTensor,
        grads: &AdapterWeights,
        scratch: &AdapterScratch,
    ) -> Result<()> {
        self.backward_residual(batch, w, x, false, a_saved, dy, dx, grads, scratch)
    }

    /// [`backward`](Self::backward) for an adapter whose residual was not its input
    /// (`input_is_residual == false`): `dx` is then only the gradient through the bottleneck, and
    /// the residual's gradient is `dy` itself, for the caller to route.
    pub fn backward_residual(
        &self,
        batch: &mut CommandRecorder,
        w: &AdapterWeights,
        x: &GpuTensor,
        separate_residual: bool,
        a_saved: &GpuTensor,
        dy: &GpuTensor,
        dx: &GpuTensor,
        grads: &AdapterWeights,
        scratch: &AdapterScratch,
    ) -> Result<()> {
        let kernel = AdapterKernel::for_gpu(batch.gpu());
        self.backward_with(kernel, batch, w, x, separate_residual, a_saved, dy, dx, grads, scratch)
    }

    /// [`backward_residual`](Self::backward_residual) through `kernel` (tests pick it explicitly).
    pub(crate) fn backward_with(
        &self,
        kernel: AdapterKernel,
        batch: &mut CommandRecorder,
        w: &AdapterWeights,
        x: &GpuTensor,
        separate_residual: bool,
        a_saved: &GpuTensor,
        dy: &GpuTensor,
        dx: &GpuTensor,
        grads: &AdapterWeights,
        scratch: &AdapterScratch,
    ) -> Result<()> {
        let mode = if separate_residual { DxMode::Separate } else { DxMode::AddDy };
        self.backward_mode(kernel, batch, w, x, (mode, None), a_saved, dy, dx, grads, scratch)
    }

    /// The backward through `kernel` with `dx` written as `mode` says.
    pub(crate) fn backward_mode(
        &self,
        kernel: AdapterKernel,
        batch: &mut CommandRecorder,
        w: &AdapterWeights,
        x: &GpuTensor,
        (mode, pre): (DxMode, Option<&GpuTensor>),
        a_saved: &GpuTensor,
        dy: &GpuTensor,
        dx: &GpuTensor,
        grads: &AdapterWeights,
        scratch: &AdapterScratch,
    ) -> Result<()> {
        let separate_residual = mode == DxMode::Separate;
        self.check(w)?;
        self.check(grads)?;
        let t = self.tokens("adapter input", x)?;
        expect_shape("adapter dy", &dy.shape, &x.shape)?;
        expect_shape("adapter dx", &dx.shape, &x.shape)?;
        expect_shape("adapter saved activations", &a_saved.shape, &[t, self.m])?;
        expect_shape("adapter scratch da", &scratch.da.shape, &[t, self.m])?;
        expect_shape("adapter scratch g", &scratch.g.shape, &[t, self.m])?;
        // g = act(a) for dW_up: saved by the matmul forward, else written into the scratch.
        let g = if kernel == AdapterKernel::Matmul {
            let saved_g = self.saves_activation(kernel);
            if let Some(p) = pre {
                if !saved_g {
                    bail!("adapter backward: a kept pre-activation without the matmul forward's act(a)");
                }
                expect_shape("adapter kept pre-activation", &p.shape, &[t, self.m])?;
            }
            self.backward_dx_matmul(batch, w, x, (a_saved, saved_g, pre), mode, dy, dx, scratch, t)?;
            if saved_g {
                a_saved
            } else {
                &scratch.g
            }
        } else {
            let groups = t.div_ceil(TOKENS_PER_WORKGROUP) as u32;
            // For the profiler: the two products (4·T·d·m FLOPs); dy, dx, the weights, a, da, g once.
            let (tf, df, mf) = (t as f64, self.d as f64, self.m as f64);
            batch.cost(4.0 * tf * df * mf, 4.0 * (2.0 * tf * df + 2.0 * df * mf + 3.0 * tf * mf));
            batch.dispatch(
                &BACKWARD_DX,
                &self.constants(if separate_residual { 1.0 } else { 0.0 }),
                &self.params(t),
                &[
                    Some(dy),
                    Some(a_saved),
                    Some(&w.w_down),
                    Some(&w.w_up),
                    Some(dx),
                    Some(&scratch.da),
                    Some(&scratch.g),
                ],
                [groups, 1, 1],
            );
            &scratch.g
        };
        let (d, m) = (self.d, self.m);
        // dW_up [d, m] = s · dyᵀ g
        Matmul::new(d, m, t).alpha(self.scale).run(
            batch,
            View::transposed(dy, d),
            View::rows(g, m),
            None,
            View::rows(&grads.w_up, m),
        )?;
        // dW_down [m, d] = daᵀ x
        Matmul::new(m, d, t).run(
            batch,
            View::transposed(&scratch.da, m),
            View::rows(x, d),
            None,
            View::rows(&grads.w_down, d),
        )?;
        // Both bias gradients in one dispatch.
        reduce::col_sums(
            batch,
            t,
            ColSum { x: dy, cols: d, scale: self.scale, beta: 0.0, out: &grads.b_up },
            ColSum { x: &scratch.da, cols: m, scale: 1.0, beta: 0.0, out: &grads.b_down },
        )?;
        Ok(())
    }
}

impl AdapterShape {
    /// Whether this GPU runs the adapter through the matmul path (scale 1, the policy's kernel):
    /// there the up product's residual can join in the LayerNorm after it
    /// (`layernorm::layer_norm_sum`) with the same bits, and the backward can add onto a `dx`
    /// that already holds `dy` ([`DxMode::OntoDy`]) without a copy.
    pub fn runs_matmul_path(&self, gpu: &crate::gpu::Gpu) -> bool {
        self.saves_activation(AdapterKernel::for_gpu(gpu))
    }

    /// Whether the forward through `kernel` saves `act(a)` (the matmul path, scale 1) rather than
    /// `a` (the fused kernel, which also runs the matmul path's forward when s ≠ 1).
    fn saves_activation(&self, kernel: AdapterKernel) -> bool {
        self.scale == 1.0 && kernel == AdapterKernel::Matmul
    }

    /// [`AdapterKernel::Matmul`] forward (scale 1): `h = act(x W_downᵀ + b_down)` in one product
    /// (bias and activation in its epilogue), saved in `a_saved` in place of the pre-activation
    /// (backward computes that again), `y = h W_upᵀ + b_up (+ residual)`.
    fn forward_matmul(
        &self,
        batch: &mut CommandRecorder,
        w: &AdapterWeights,
        x: &GpuTensor,
        (r, input_residual): (Option<&GpuTensor>, bool),
        y: &GpuTensor,
        (a_saved, pre): (&GpuTensor, Option<&GpuTensor>),
        t: usize,
    ) -> Result<()> {
        let (d, m) = (self.d, self.m);
        let h = a_saved;
        let down = Matmul::new(t, m, d).act(self.act);
        let (xv, wv, bias, hv) =
            (View::rows(x, d), View::transposed(&w.w_down, d), Some((&w.b_down, 0)), View::rows(h, m));
        match pre {
            Some(pre) => down.epilogue(Epilogue::KeepPre).run_aux(batch, xv, wv, bias, hv, pre)?,
            None => down.run(batch, xv, wv, bias, hv)?,
        }
        let residual = if input_residual { Some(x) } else { r };
        if let Some(res) = residual {
            elementwise::copy(batch, res, y)?;
        }
        Matmul::new(t, d, m).beta(if residual.is_some() { 1.0 } else { 0.0 }).run(
            batch,
            View::rows(h, m),
            View::transposed(&w.w_up, m),
            Some((&w.b_up, 0)),
            View::rows(y, d),
        )
    }

    /// [`AdapterKernel::Matmul`] input gradient from the forward's saved tensor, `(saved, true, _)`
    /// for `act(a)` (the matmul forward's: `a = x W_downᵀ + b_down` is the kept pre-activation or
    /// is computed again, the forward's product, the same bits) or `(saved, false)` for `a` (the fused forward's:
    /// `g = act(a)` into the scratch for dW_up), then `da = act'(a) ⊙ s·(dy W_up)` (one product),
    /// `dx = da W_down (+ dy when the adapter's input was its residual, copied there first unless
    /// `dx` holds it already)`.
    fn backward_dx_matmul(
        &self,
        batch: &mut CommandRecorder,
        w: &AdapterWeights,
        x: &GpuTensor,
        (saved, saved_g, kept_pre): (&GpuTensor, bool, Option<&GpuTensor>),
        mode: DxMode,
        dy: &GpuTensor,
        dx: &GpuTensor,
        scratch: &AdapterScratch,
        t: usize,
    ) -> Result<()> {
        let (d, m) = (self.d, self.m);
        let computed;
        let pre = if let Some(p) = kept_pre {
            p
        } else if saved_g {
            computed = GpuTensor::zeros(batch.gpu(), &[t, m])?;
            linear(batch, x, &w.w_down, Some(&w.b_down), &computed)?;
            &computed
        } else {
            elementwise::activate(batch, self.act, saved, &scratch.g)?;
            saved
        };
        // da = act'(a) ⊙ s·(dy W_up) in one product (the epilogue multiplies by act').
        Matmul::new(t, m, d).alpha(self.scale).act(self.act).epilogue(Epilogue::TimesActGrad).run_aux(
            batch,
            View::rows(dy, d),
            View::rows(&w.w_up, m),
            None,
            View::rows(&scratch.da, m),
            pre,
        )?;
        if mode == DxMode::AddDy {
            elementwise::copy(batch, dy, dx)?;
        }
        Matmul::new(t, d, m).beta(if mode == DxMode::Separate { 0.0 } else { 1.0 }).run(
            batch,
            View::rows(&scratch.da, m),
            View::rows(&w.w_down, d),
            None,
            View::rows(dx, d),
        )
    }
}

/// Per-call scratch of the backward pass.
pub struct AdapterScratch {
    pub da: GpuTensor,
    pub g: GpuTensor,
}

impl AdapterScratch {
    pub fn new(gpu: &crate::gpu::Gpu, tokens: usize, m: usize) -> Result<Self> {
        Ok(Self { da: GpuTensor::zeros(gpu, &[tokens, m])?, g: GpuTensor::zeros(gpu, &[tokens, m])? })
    }
}

impl AdapterWeights {
    /// Allocates zeroed tensors of the right shapes (for gradients).
    pub fn zeros(gpu: &crate::gpu::Gpu, d: usize, m: usize) -> Result<Self> {
        Ok(Self {
            w_down: GpuTensor::zeros(gpu, &[m, d])?,
            b_down: GpuTensor::zeros(gpu, &[m])?,
            w_up: GpuTensor::zeros(gpu, &[d, m])?,
            b_up: GpuTensor::zeros(gpu, &[d])?,
        })
    }
}
