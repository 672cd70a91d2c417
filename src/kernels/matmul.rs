//! `shaders/matmul.wgsl`: one batched, strided matmul for every product in the project
//! (`C = act(alpha·A·B + bias + beta·C)`; transposes are strides).

use super::Activation;
use crate::gpu::{Access, Batch, GpuTensor, KernelSpec};
use crate::shaders;
use anyhow::{bail, Result};

const SPEC: KernelSpec = KernelSpec {
    shader: &shaders::MATMUL,
    entry: "matmul",
    bindings: &[Access::Read, Access::Read, Access::Read, Access::ReadWrite],
};

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
}

impl Matmul {
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Self { m, n, k, batch: 1, alpha: 1.0, beta: 0.0, act: Activation::Identity }
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

    /// Queues the product. `bias` is a tensor and an element offset; it is added per column.
    pub fn run(&self, batch: &mut Batch, a: View, b: View, bias: Option<(&GpuTensor, usize)>, c: View) -> Result<()> {
        self.run_inner(batch, InnerBatch::NONE, a, b, bias, c)
    }

    /// [`run`](Self::run) over `self.batch × inner.count` matrices (see [`InnerBatch`]).
    pub fn run_inner(
        &self,
        batch: &mut Batch,
        inner: InnerBatch,
        a: View,
        b: View,
        bias: Option<(&GpuTensor, usize)>,
        c: View,
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
        let (wx, wy) = (8u32, 8u32);
        let groups = [(self.n as u32).div_ceil(4 * wx), (self.m as u32).div_ceil(4 * wy), u(total)?];
        if groups[2] > batch.gpu().limits.max_compute_workgroups_per_dimension {
            bail!("matmul batch {total} exceeds the GPU's workgroup limit");
        }
        let constants = [
            ("WG_X", wx as f64),
            ("WG_Y", wy as f64),
            ("HAS_BIAS", if bias.is_some() { 1.0 } else { 0.0 }),
            ("ACT", self.act.id()),
        ];
        batch.dispatch(&SPEC, &constants, &params, &[Some(a.t), Some(b.t), bias.map(|b| b.0), Some(c.t)], groups);
        Ok(())
    }
}

/// `y[T, out] = x[T, in] · w[out, in]ᵀ + bias` (nn.Linear).
pub fn linear(batch: &mut Batch, x: &GpuTensor, w: &GpuTensor, bias: Option<&GpuTensor>, y: &GpuTensor) -> Result<()> {
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
