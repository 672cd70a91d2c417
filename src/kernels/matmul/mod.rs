//! `shaders/matmul*.wgsl`: one batched, strided matmul for every product in the project
//! (`C = act(alpha·A·B + bias + beta·C)`; transposes are strides), in several kernel variants that
//! the host picks per device ([`MatmulVariant`]): one API; the f32 variants sum in the same order.
//!
//! Precision of the f16-input variants ([`MatmulVariant::F16`], [`MatmulVariant::Coop`]): A and B
//! are rounded to f16 (round to nearest even, unit roundoff u = 2⁻¹¹ ≈ 4.9e-4), each product of two
//! f16 values is exact in f32, and the products are summed in f32 (u_acc = 2⁻²⁴; tensor cores may
//! truncate, so 2⁻²³ is used). Rounding error analysis (Higham, ch. 3) gives, for every output,
//! `|C − C_exact| ≤ (2u + u² + K·u_acc) · Σ_k |a_ik|·|b_kj|`, the bound the tests assert element by
//! element ([`f16_error_bound`]). For inputs of random sign the errors of the K terms are
//! independent, so the typical relative error of an output is about `u·√(2/3) ≈ 4e-4` of
//! `√(Σ_k (a_ik b_kj)²)` (≈ |C| for random data), and the largest over a 4096² output is a few
//! times that (measured values are in the output of `kernels/matmul/tests_tiles.rs` and in
//! bench/NOTES.md). They compute exactly the f32 product of the f16-rounded inputs up to f32
//! summation error, which the tests check with the f32 tolerance against a reference built from the
//! rounded inputs.

mod tiles;
mod variant;
mod vec4;

#[cfg(any(test, feature = "reference"))]
pub mod reference;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_epilogue;
#[cfg(test)]
mod tests_tiles;
#[cfg(test)]
mod tests_variants;

pub use tiles::{FragConfig, TileConfig, LARGE_TILE_ENV, TARGET_WORKGROUPS};
pub use variant::{available_variants, default_variant, f16_error_bound, MatmulVariant, VARIANT_ENV};

use crate::gpu::{CommandRecorder, GpuTensor};
use crate::types::Activation;
use anyhow::{bail, Result};
use variant::group_width;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a: [u32; 4],
    b: [u32; 4],
    c: [u32; 4],
    bias_off: u32,
    /// Inner batch count (1 without [`InnerBatch`]); matrix `z` is `(z / inner, z % inner)`.
    inner: u32,
    alpha: f32,
    beta: f32,
    /// Inner batch strides of A, B, C.
    inner_strides: [u32; 4],
}

/// Every variant's kernel with the size of its parameter block (`kernels/bindings.rs` checks them
/// against the WGSL).
#[cfg(test)]
pub(crate) fn specs() -> Vec<(crate::gpu::KernelSpec, usize)> {
    MatmulVariant::ALL.into_iter().map(|v| (v.spec(), std::mem::size_of::<Params>())).collect()
}

/// Every set of size override constants the host passes, per variant (`kernels/translate.rs`
/// translates each with every value of the flags and activations): the register-tile variants'
/// workgroup sizes over the shapes that reach each one, the smem tile candidates (and the large tile
/// of 16 KiB devices, `TileConfig::default_large`), and the fragment
/// candidates for the subgroup sizes the shader can take (`coop` runs with the device's).
#[cfg(test)]
pub(crate) fn launches() -> Vec<(crate::gpu::KernelSpec, Vec<crate::kernels::Constants>)> {
    let mut out = vec![];
    for v in MatmulVariant::ALL {
        let mut sets: Vec<crate::kernels::Constants> = vec![];
        let mut add = |c: crate::kernels::Constants| {
            if !sets.contains(&c) {
                sets.push(c);
            }
        };
        match v {
            MatmulVariant::Smem => {
                TileConfig::CANDIDATES.iter().chain([&TileConfig::LARGE_16K]).for_each(|t| add(t.constants().to_vec()))
            }
            MatmulVariant::F16 | MatmulVariant::Coop => {
                let sizes: &[u32] = if v == MatmulVariant::F16 { &[vec4::F16_SUBGROUP] } else { &[8, 16, 32, 64] };
                for t in FragConfig::CANDIDATES {
                    for &sgs in sizes.iter().filter(|&&s| t.validate(s).is_ok()) {
                        add(t.constants(sgs).to_vec());
                    }
                }
            }
            _ => {
                for m in 1..=300 {
                    for n in 1..=300 {
                        add(launch(v, m, n).1);
                    }
                }
            }
        }
        out.push((v.spec(), sets));
    }
    out
}

/// A second batch dimension for [`Matmul::run_inner`]: matrix `z` of the `batch · count` matrices
/// is `(outer, inner) = (z / count, z % count)`, and each operand's element (outer, inner, r, c) is
/// at `off + outer·s_batch + inner·stride + r·s_row + c·s_col` (e.g. attention's (batch, head)
/// pairs over `[batch·seq, heads·head_dim]` activations).
#[derive(Clone, Copy, Debug)]
pub struct InnerBatch {
    pub count: usize,
    /// Inner batch stride of A.
    pub a: usize,
    /// Inner batch stride of B.
    pub b: usize,
    /// Inner batch stride of C.
    pub c: usize,
}

impl InnerBatch {
    /// No inner batch dimension.
    pub const NONE: InnerBatch = InnerBatch { count: 1, a: 0, b: 0, c: 0 };
}

/// A strided view of a tensor as a (batch of) matrices: element (b, r, c) is at
/// `off + b·s_batch + r·s_row + c·s_col`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub t: &'a GpuTensor,
    pub off: usize,
    pub s_row: usize,
    pub s_col: usize,
    pub s_batch: usize,
}

impl<'a> View<'a> {
    /// Row-major `[rows, cols]` starting at element 0 (cols = row stride).
    pub fn rows(t: &'a GpuTensor, cols: usize) -> Self {
        Self { t, off: 0, s_row: cols, s_col: 1, s_batch: 0 }
    }

    /// The transpose of a row-major `[rows, cols]` matrix (so viewed as `[cols, rows]`).
    pub fn transposed(t: &'a GpuTensor, cols: usize) -> Self {
        Self { t, off: 0, s_row: 1, s_col: cols, s_batch: 0 }
    }

    pub fn offset(mut self, off: usize) -> Self {
        self.off = off;
        self
    }

    pub fn batch_stride(mut self, s: usize) -> Self {
        self.s_batch = s;
        self
    }

    /// Checks that `batch × inner.0` matrices of `rows × cols` (inner matrices `inner.1` apart) fit
    /// the tensor and returns the kernel's (offset, row, column, batch) strides.
    fn check_inner(
        &self,
        what: &str,
        batch: usize,
        inner: (usize, usize),
        rows: usize,
        cols: usize,
    ) -> Result<[u32; 4]> {
        if batch > 0 && inner.0 > 0 && rows > 0 && cols > 0 {
            let last = self.off
                + (batch - 1) * self.s_batch
                + (inner.0 - 1) * inner.1
                + (rows - 1) * self.s_row
                + (cols - 1) * self.s_col;
            if last >= self.t.numel() {
                bail!(
                    "matmul operand {what}: a {batch}×{rows}×{cols} view (offset {}, strides {}/{}/{}) reaches element {last} \
                     of a tensor of shape {:?}",
                    self.off,
                    self.s_batch,
                    self.s_row,
                    self.s_col,
                    self.t.shape
                );
            }
        }
        let u = |v: usize| -> Result<u32> {
            u32::try_from(v).map_err(|_| anyhow::anyhow!("matmul operand {what}: index {v} exceeds u32"))
        };
        Ok([u(self.off)?, u(self.s_row)?, u(self.s_col)?, u(self.s_batch)?])
    }
}

/// What a product's epilogue writes besides `C = act(v)`, `v = alpha·A·B + bias + beta·C`
/// (`PRE_OUT` / `GRAD_MUL` in the shaders; override constants, so a plain product compiles as
/// before). The aux tensor ([`Matmul::run_aux`]) is indexed as C is: the same offset and strides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Epilogue {
    /// `C = act(v)`.
    #[default]
    Plain,
    /// `C = act(v)` and `aux = v`: a layer's pre-activation kept beside its activation.
    KeepPre,
    /// `C = v · act'(aux)`: a gradient through the activation whose pre-activation `aux` holds.
    TimesActGrad,
}

/// Shape and scalars of one product: `C[b] (m×n) = act(alpha · A[b] (m×k) · B[b] (k×n) + bias + beta · C[b])`.
#[derive(Clone, Copy, Debug)]
pub struct Matmul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub alpha: f32,
    pub beta: f32,
    pub act: Activation,
    /// What the epilogue writes besides `act(v)` ([`Matmul::run_aux`]).
    pub epilogue: Epilogue,
    /// The kernel to use; `None`: [`default_variant`].
    pub variant: Option<MatmulVariant>,
    /// Tile sizes for [`MatmulVariant::Smem`]; `None`: [`TileConfig::auto`].
    pub smem_tiles: Option<TileConfig>,
    /// Tile sizes for [`MatmulVariant::F16`] / [`MatmulVariant::Coop`]; `None`: [`FragConfig::auto`].
    pub frag_tiles: Option<FragConfig>,
}

impl Matmul {
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Self {
            m,
            n,
            k,
            batch: 1,
            alpha: 1.0,
            beta: 0.0,
            act: Activation::Identity,
            epilogue: Epilogue::Plain,
            variant: None,
            smem_tiles: None,
            frag_tiles: None,
        }
    }
    /// Tile sizes for the `smem` variant (benchmarks, tests).
    pub fn smem_tiles(mut self, t: TileConfig) -> Self {
        self.smem_tiles = Some(t);
        self
    }
    /// Tile sizes for the `f16` and `coop` variants (benchmarks, tests).
    pub fn frag_tiles(mut self, t: FragConfig) -> Self {
        self.frag_tiles = Some(t);
        self
    }
    pub fn batch(mut self, b: usize) -> Self {
        self.batch = b;
        self
    }
    pub fn alpha(mut self, a: f32) -> Self {
        self.alpha = a;
        self
    }
    pub fn beta(mut self, b: f32) -> Self {
        self.beta = b;
        self
    }
    pub fn act(mut self, act: Activation) -> Self {
        self.act = act;
        self
    }
    pub fn epilogue(mut self, e: Epilogue) -> Self {
        self.epilogue = e;
        self
    }
    /// Forces a kernel variant (tests, benchmarks); running it fails where the GPU cannot.
    pub fn variant(mut self, v: MatmulVariant) -> Self {
        self.variant = Some(v);
        self
    }

    /// Queues the product. `bias` is a tensor and an element offset; it is added per column.
    pub fn run(
        &self,
        batch: &mut CommandRecorder,
        a: View,
        b: View,
        bias: Option<(&GpuTensor, usize)>,
        c: View,
    ) -> Result<()> {
        self.run_inner(batch, InnerBatch::NONE, a, b, bias, c)
    }

    /// [`run`](Self::run) with the [`Epilogue`]'s aux tensor, indexed as `c` is (its view's offset
    /// and strides); it must not share a buffer with an operand.
    pub fn run_aux(
        &self,
        batch: &mut CommandRecorder,
        a: View,
        b: View,
        bias: Option<(&GpuTensor, usize)>,
        c: View,
        aux: &GpuTensor,
    ) -> Result<()> {
        if self.epilogue == Epilogue::Plain {
            bail!("matmul: an aux tensor without an epilogue that uses it");
        }
        View { t: aux, ..c }.check_inner("aux", self.batch, (1, 0), self.m, self.n)?;
        let operands = [Some(a.t), Some(b.t), bias.map(|b| b.0), Some(c.t)];
        crate::kernels::elementwise::check_no_alias("matmul aux", &[aux], &operands)?;
        self.run_full(batch, InnerBatch::NONE, a, b, bias, c, Some(aux))
    }

    /// [`run`](Self::run) over `self.batch × inner.count` matrices (see [`InnerBatch`]).
    pub fn run_inner(
        &self,
        batch: &mut CommandRecorder,
        inner: InnerBatch,
        a: View,
        b: View,
        bias: Option<(&GpuTensor, usize)>,
        c: View,
    ) -> Result<()> {
        if self.epilogue != Epilogue::Plain {
            bail!("matmul: the {:?} epilogue needs an aux tensor (Matmul::run_aux)", self.epilogue);
        }
        self.run_full(batch, inner, a, b, bias, c, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_full(
        &self,
        batch: &mut CommandRecorder,
        inner: InnerBatch,
        a: View,
        b: View,
        bias: Option<(&GpuTensor, usize)>,
        c: View,
        aux: Option<&GpuTensor>,
    ) -> Result<()> {
        let pa = a.check_inner("A", self.batch, (inner.count, inner.a), self.m, self.k)?;
        let pb = b.check_inner("B", self.batch, (inner.count, inner.b), self.k, self.n)?;
        // B's "rows" are k and its "cols" are n: View's s_row/s_col map to b_sk/b_sj.
        let pc = c.check_inner("C", self.batch, (inner.count, inner.c), self.m, self.n)?;
        let u = |v: usize| -> Result<u32> {
            u32::try_from(v).map_err(|_| anyhow::anyhow!("matmul inner batch: {v} exceeds u32"))
        };
        let total = self.batch * inner.count;
        let mut bias_off = 0u32;
        if let Some((t, off)) = bias {
            if off + self.n > t.numel() {
                bail!("matmul bias: {} values from offset {off} exceed a tensor of shape {:?}", self.n, t.shape);
            }
            bias_off = off as u32;
        }
        let params = Params {
            m: self.m as u32,
            n: self.n as u32,
            k: self.k as u32,
            batch: u(total)?,
            a: pa,
            b: pb,
            c: pc,
            bias_off,
            inner: u(inner.count.max(1))?,
            alpha: self.alpha,
            beta: self.beta,
            inner_strides: [u(inner.a)?, u(inner.b)?, u(inner.c)?, 0],
        };
        let gpu = batch.gpu().clone();
        // For the profiler: 2mnk FLOPs and the bytes of A, B and C per product.
        let (mf, nf, kf, tf) = (self.m as f64, self.n as f64, self.k as f64, total as f64);
        batch.cost(2.0 * mf * nf * kf * tf, 4.0 * (mf * kf + kf * nf + mf * nf) * tf);
        let variant = match self.variant {
            Some(v) => v,
            None => default_variant(&gpu)?,
        };
        if let Some(why) = variant.unsupported_reason(&gpu) {
            bail!("matmul variant {variant} cannot run on {}: {why}", gpu.description.summary());
        }
        if matches!(variant, MatmulVariant::Smem | MatmulVariant::F16 | MatmulVariant::Coop) {
            return self.run_vec4(batch, variant, &params, (a, b, c), (bias.map(|b| b.0), aux), total);
        }
        let (m, n) = (self.m, self.n);
        let bias_c = if bias.is_some() { 1.0 } else { 0.0 };
        let (grid, mut constants) = launch(variant, m, n);
        let groups = [grid[0], grid[1], total];
        if variant == MatmulVariant::Tiled {
            constants.extend([
                ("A_K_CONTIGUOUS", if pa[2] == 1 { 1.0 } else { 0.0 }),
                ("B_J_CONTIGUOUS", if pb[2] == 1 { 1.0 } else { 0.0 }),
            ]);
        }
        let max = batch.gpu().limits.max_compute_workgroups_per_dimension as usize;
        if groups.iter().any(|&g| g > max) {
            bail!(
                "matmul {m}×{n} × batch {total} needs {groups:?} workgroups, more than the GPU's {max} per dimension"
            );
        }
        constants.push(("HAS_BIAS", bias_c));
        constants.push(("ACT", self.act.id()));
        constants.extend(self.epilogue.constants());
        if variant != MatmulVariant::Basic {
            constants.push(("USE_BETA", if self.beta != 0.0 { 1.0 } else { 0.0 }));
        }
        let groups = [groups[0] as u32, groups[1] as u32, groups[2] as u32];
        batch.dispatch(
            &variant.spec(),
            &constants,
            &params,
            // Without an epilogue aux binds its slot's dummy (never touched): not C again, as
            // WebGPU forbids two writable bindings of one buffer in a dispatch.
            &[Some(a.t), Some(b.t), bias.map(|b| b.0), Some(c.t), aux],
            groups,
        );
        Ok(())
    }
}

impl Epilogue {
    /// The shaders' `PRE_OUT` and `GRAD_MUL` override constants.
    pub(super) fn constants(self) -> [(&'static str, f64); 2] {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        [("PRE_OUT", flag(self == Epilogue::KeepPre)), ("GRAD_MUL", flag(self == Epilogue::TimesActGrad))]
    }
}

/// Workgroups along j and i and the workgroup-size override constants of the register-tile
/// variants ([`MatmulVariant::Basic`], [`Register`](MatmulVariant::Register),
/// [`Tiled`](MatmulVariant::Tiled), [`Subgroup`](MatmulVariant::Subgroup)) for an m×n product.
fn launch(variant: MatmulVariant, m: usize, n: usize) -> ([usize; 2], Vec<(&'static str, f64)>) {
    match variant {
        MatmulVariant::Basic => {
            let w = 8;
            ([n.div_ceil(4 * w), m.div_ceil(4 * w)], vec![("WG_X", w as f64), ("WG_Y", w as f64)])
        }
        MatmulVariant::Register => {
            // 8×8 outputs per invocation; a workgroup no wider or taller than the matrix needs.
            let (wx, wy) = (n.div_ceil(8).min(8).next_power_of_two(), m.div_ceil(8).min(8).next_power_of_two());
            ([n.div_ceil(8 * wx), m.div_ceil(8 * wy)], vec![("WG_X", wx as f64), ("WG_Y", wy as f64)])
        }
        MatmulVariant::Tiled => ([n.div_ceil(64), m.div_ceil(64)], vec![]),
        MatmulVariant::Subgroup => {
            // 32×32 outputs per subgroup of 8, 1..8 subgroups per workgroup side by side along j.
            let blocks = n.div_ceil(32);
            let w = group_width(blocks);
            ([blocks.div_ceil(w), m.div_ceil(32)], vec![("WG_X", (8 * w) as f64)])
        }
        MatmulVariant::Smem | MatmulVariant::F16 | MatmulVariant::Coop => unreachable!("dispatched by run_vec4"),
    }
}

/// `y[T, out] = x[T, in] · w[out, in]ᵀ + bias` (nn.Linear).
pub fn linear(
    batch: &mut CommandRecorder,
    x: &GpuTensor,
    w: &GpuTensor,
    bias: Option<&GpuTensor>,
    y: &GpuTensor,
) -> Result<()> {
    let (out, inp) = (w.shape[0], w.shape[1]);
    let t = x.numel() / inp.max(1);
    Matmul::new(t, out, inp).run(
        batch,
        View::rows(x, inp),
        View::transposed(w, inp),
        bias.map(|b| (b, 0)),
        View::rows(y, out),
    )
}

/// [`linear`] as `parts` products, each over an equal block of `w`'s rows (and of `bias`, and of
/// `y`'s columns): the same outputs bit for bit (each output sums the same terms in the same
/// order), in more, narrower dispatches. For weights stacked from several Linears (Q, K, V) on CPU
/// drivers, where one product over the whole weight runs slower than its parts (bench/NOTES.md).
pub fn linear_parts(
    batch: &mut CommandRecorder,
    x: &GpuTensor,
    w: &GpuTensor,
    bias: Option<&GpuTensor>,
    y: &GpuTensor,
    parts: usize,
) -> Result<()> {
    let (out, inp) = (w.shape[0], w.shape[1]);
    if parts == 0 || out % parts != 0 {
        bail!("linear_parts: {out} output rows do not split into {parts} equal parts");
    }
    let (n, t) = (out / parts, x.numel() / inp.max(1));
    for i in 0..parts {
        Matmul::new(t, n, inp).run(
            batch,
            View::rows(x, inp),
            View::transposed(w, inp).offset(i * n * inp),
            bias.map(|b| (b, i * n)),
            View::rows(y, out).offset(i * n),
        )?;
    }
    Ok(())
}
