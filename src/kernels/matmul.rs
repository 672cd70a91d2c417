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
//! times that (measured values are in tests/matmul_variants.rs output and bench/NOTES.md). They
//! compute exactly the f32 product of the f16-rounded inputs up to f32 summation error, which the
//! tests check with the f32 tolerance against a reference built from the rounded inputs.

use crate::gpu::policy::{check_workgroup, parse_dims};
use crate::gpu::{Access, CommandRecorder, Gpu, GpuTensor, KernelSpec};
use crate::shaders::{self, Shader};
use crate::types::Activation;
use anyhow::{anyhow, bail, Result};
use std::sync::LazyLock;

/// The variant and tile types live in the device policy (`gpu::policy`), which chooses them.
pub use crate::gpu::policy::{MatmulVariant, TileConfig, LARGE_TILE_ENV, VARIANT_ENV};

const BINDINGS: &[Access] = &[Access::Read, Access::Read, Access::Read, Access::ReadWrite];

/// `shaders/matmul.wgsl`; everything from this line on needs the SUBGROUP feature.
const SUBGROUP_MARKER: &str = "// ==== SUBGROUP KERNELS";

/// The part of `shaders/matmul.wgsl` before the subgroup kernels: a module every device accepts
/// (wgpu validates a whole module against the device's features, so the subgroup kernels live in
/// the full module, [`shaders::MATMUL`], built only where subgroups exist).
static CORE: LazyLock<Shader> = LazyLock::new(|| {
    let src = *shaders::MATMUL.parts.last().expect("matmul shader has a source");
    let cut = src.find(SUBGROUP_MARKER).expect("shaders/matmul.wgsl lost its SUBGROUP KERNELS line");
    Shader { name: "matmul_core", parts: Box::leak(Box::new([shaders::COMMON, &src[..cut]])), trusted: true }
});

/// Storage bindings of the workgroup-memory kernels (`matmul_vec4.wgsl`): A, A as vec4, B, B as
/// vec4, bias, C.
const VEC4_BINDINGS: &[Access] =
    &[Access::Read, Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite];

impl MatmulVariant {
    /// Why this GPU cannot run the variant, or `None` where it can.
    pub fn unsupported_reason(self, gpu: &Gpu) -> Option<String> {
        let info = &gpu.description.info;
        match self {
            MatmulVariant::Subgroup => (!gpu.facts().has_subgroups_of(8))
                .then(|| "needs the SUBGROUP feature with subgroups of exactly 8 lanes".to_string()),
            MatmulVariant::Smem => TileConfig::SMALL.check(gpu).err().map(|e| format!("{e:#}")),
            MatmulVariant::F16 => {
                if !gpu.has(wgpu::Features::SHADER_F16) {
                    Some("needs the SHADER_F16 feature".into())
                } else {
                    FragConfig::SMALL.check(gpu, 32).err().map(|e| format!("{e:#}"))
                }
            }
            MatmulVariant::Coop => {
                let f = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
                    | wgpu::Features::SHADER_F16
                    | wgpu::Features::SUBGROUP;
                if !gpu.has(f) {
                    Some(format!("needs the features {:?} (enabled here: {:?})", f, gpu.features & f))
                } else if !gpu.description.has_coop_16x16_f16_f32() {
                    Some("the adapter has no 16×16×16 f16→f32 cooperative matrix".into())
                } else if info.subgroup_min_size != info.subgroup_max_size {
                    Some(format!(
                        "needs a fixed subgroup size (adapter: {}..{})",
                        info.subgroup_min_size, info.subgroup_max_size
                    ))
                } else {
                    FragConfig::SMALL.check(gpu, info.subgroup_max_size).err().map(|e| format!("{e:#}"))
                }
            }
            _ => None,
        }
    }

    /// Whether this GPU can run the variant.
    pub fn is_supported(self, gpu: &Gpu) -> bool {
        self.unsupported_reason(gpu).is_none()
    }

    /// The device rule ([`MatmulVariant::for_device`]): `subgroup` or `register` on CPU drivers,
    /// `smem` on discrete GPUs, `tiled` elsewhere. [`default_variant`] unless overridden.
    pub fn auto(gpu: &Gpu) -> Self {
        MatmulVariant::for_device(&gpu.facts())
    }

    fn spec(self) -> KernelSpec {
        let (shader, entry, bindings): (&'static Shader, &'static str, &'static [Access]) = match self {
            MatmulVariant::Basic => (&CORE, "matmul", BINDINGS),
            MatmulVariant::Register => (&CORE, "matmul_reg", BINDINGS),
            MatmulVariant::Tiled => (&CORE, "matmul_tiled", BINDINGS),
            MatmulVariant::Subgroup => (&shaders::MATMUL, "matmul_subgroup", BINDINGS),
            MatmulVariant::Smem => (&shaders::MATMUL_SMEM, "matmul_smem", VEC4_BINDINGS),
            MatmulVariant::F16 => (&shaders::MATMUL_F16, "matmul_f16", VEC4_BINDINGS),
            MatmulVariant::Coop => (&shaders::MATMUL_COOP, "matmul_coop", VEC4_BINDINGS),
        };
        KernelSpec { shader, entry, bindings }
    }
}

/// The variants this GPU can run, in [`MatmulVariant::ALL`] order.
pub fn available_variants(gpu: &Gpu) -> Vec<MatmulVariant> {
    MatmulVariant::ALL.into_iter().filter(|v| v.is_supported(gpu)).collect()
}

/// The element-wise error bound of the f16-input variants for one output (module docs):
/// `(2u + u² + K·u_acc) · Σ_k |a_ik|·|b_kj|` with u = 2⁻¹¹ and u_acc = 2⁻²³, times |alpha|.
pub fn f16_error_bound(k: usize, abs_dot: f64, alpha: f64) -> f64 {
    let u = 2f64.powi(-11);
    let u_acc = 2f64.powi(-23);
    (2.0 * u + u * u + k as f64 * u_acc) * abs_dot * alpha.abs()
}

impl TileConfig {
    /// The configuration for an m×n product over `batch` matrices ([`choose`]).
    pub fn auto(gpu: &Gpu, m: usize, n: usize, batch: usize) -> TileConfig {
        let c = [gpu.policy().smem_large_tile, TileConfig::MEDIUM, TileConfig::SMALL];
        choose(&c, |t| (t.bm, t.bn), |t| t.check(gpu).is_ok(), m, n, batch).unwrap_or(TileConfig::SMALL)
    }
}

/// Tile sizes of [`MatmulVariant::F16`] and [`MatmulVariant::Coop`]: a workgroup of sg_m×sg_n
/// subgroups computes a bm×bn tile in k-steps of bk (a multiple of 16); each subgroup owns
/// (bm/16/sg_m)×(bn/16/sg_n) fragments of 16×16 (1, 2 or 4 × 1 or 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragConfig {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub sg_m: u32,
    pub sg_n: u32,
}

impl FragConfig {
    /// 128×128×32, 2×4 subgroups of 64×32.
    pub const LARGE: FragConfig = FragConfig { bm: 128, bn: 128, bk: 32, sg_m: 2, sg_n: 4 };
    /// 64×64×32, 2×2 subgroups of 32×32.
    pub const MEDIUM: FragConfig = FragConfig { bm: 64, bn: 64, bk: 32, sg_m: 2, sg_n: 2 };
    /// 32×32×16, one subgroup of 32×32.
    pub const SMALL: FragConfig = FragConfig { bm: 32, bn: 32, bk: 16, sg_m: 1, sg_n: 1 };

    fn frags(&self) -> (u32, u32) {
        (self.bm / (16 * self.sg_m.max(1)), self.bn / (16 * self.sg_n.max(1)))
    }

    /// Halves in one buffer of the A and B slices (the larger of the two layouts).
    fn tiles(&self) -> (u32, u32) {
        let (bm, bn, bk) = (self.bm, self.bn, self.bk);
        ((bm * (bk + 8)).max(bk * (bm + 8)), (bn * (bk + 8)).max(bk * (bn + 8)))
    }

    /// Workgroup memory in bytes: two f16 buffers of each slice and a 16×16 f32 scratch per subgroup.
    pub fn workgroup_bytes(&self) -> u64 {
        let (ta, tb) = self.tiles();
        4 * (ta as u64 + tb as u64) + 1024 * (self.sg_m * self.sg_n) as u64
    }

    /// Checks the shader's assumptions and the device's limits for subgroups of `sgs` lanes.
    pub fn check(&self, gpu: &Gpu, sgs: u32) -> Result<()> {
        let &FragConfig { bm, bn, bk, sg_m, sg_n } = self;
        if sg_m == 0 || sg_n == 0 || bk == 0 || bk % 16 != 0 || bm % (16 * sg_m) != 0 || bn % (16 * sg_n) != 0 {
            bail!("fragment tiles {self}: bk must be a multiple of 16 and bm, bn of 16·sg_m, 16·sg_n");
        }
        let (fm, fn_) = self.frags();
        if !matches!(fm, 1 | 2 | 4) || !matches!(fn_, 1 | 2) {
            bail!("fragment tiles {self}: a subgroup must own 1, 2 or 4 × 1 or 2 fragments (has {fm}×{fn_})");
        }
        if sgs == 0 || 256 % sgs != 0 {
            bail!("fragment tiles {self}: subgroups of {sgs} lanes do not divide a 16×16 fragment");
        }
        let wg = sg_m * sg_n * sgs;
        for (what, elems) in [("A", bm * bk), ("B", bk * bn)] {
            if elems % (4 * wg) != 0 || !(1..=8).contains(&(elems / (4 * wg))) {
                bail!("fragment tiles {self}: the {what} slice must be 1 to 8 quads per invocation ({wg} invocations)");
            }
        }
        check_workgroup(&gpu.limits, &format!("fragment tiles {self}"), wg, self.workgroup_bytes())
    }

    /// The configuration for an m×n product over `batch` matrices ([`choose`]).
    pub fn auto(gpu: &Gpu, sgs: u32, m: usize, n: usize, batch: usize) -> FragConfig {
        let c = [FragConfig::LARGE, FragConfig::MEDIUM, FragConfig::SMALL];
        choose(&c, |t| (t.bm, t.bn), |t| t.check(gpu, sgs).is_ok(), m, n, batch).unwrap_or(FragConfig::SMALL)
    }
}

impl std::fmt::Display for FragConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}/{}x{}", self.bm, self.bn, self.bk, self.sg_m, self.sg_n)
    }
}

impl std::str::FromStr for FragConfig {
    type Err = anyhow::Error;
    /// `BMxBNxBK/SG_MxSG_N`, e.g. `128x128x32/2x4`.
    fn from_str(s: &str) -> Result<Self> {
        let v = parse_dims(s, 3, 2).map_err(|e| anyhow!("fragment tiles {s:?}: {e} (expected BMxBNxBK/SGMxSGN)"))?;
        Ok(FragConfig { bm: v[0], bn: v[1], bk: v[2], sg_m: v[3], sg_n: v[4] })
    }
}

/// Picks among tile configurations (largest first): the first valid one that gives at least
/// [`TARGET_WORKGROUPS`] workgroups and wastes at most a quarter of its tiles on padding, else
/// the valid one with the least padding (the smallest on ties).
fn choose<T: Copy>(
    configs: &[T],
    dims: impl Fn(&T) -> (u32, u32),
    valid: impl Fn(&T) -> bool,
    m: usize,
    n: usize,
    batch: usize,
) -> Option<T> {
    let stats = |t: &T| {
        let (bm, bn) = dims(t);
        let (tm, tn) = (m.div_ceil(bm as usize).max(1), n.div_ceil(bn as usize).max(1));
        let fill = (m * n) as f64 / (tm * bm as usize * tn * bn as usize) as f64;
        (tm * tn * batch.max(1), fill)
    };
    let ok: Vec<&T> = configs.iter().filter(|t| valid(t)).collect();
    ok.iter()
        .find(|t| {
            let (groups, fill) = stats(t);
            groups >= TARGET_WORKGROUPS && fill >= 0.75
        })
        .or_else(|| ok.iter().rev().min_by(|a, b| stats(b).1.total_cmp(&stats(a).1)))
        .map(|t| **t)
}

/// Workgroups a product should have to fill a large GPU (an H100 has 132 multiprocessors).
pub const TARGET_WORKGROUPS: usize = 128;

/// The variant products use unless they name one: the GPU's policy
/// ([`KernelPolicy::matmul_variant`](crate::gpu::KernelPolicy::matmul_variant): [`VARIANT_ENV`] or
/// [`MatmulVariant::auto`], resolved when the GPU was opened). Running a variant this GPU cannot
/// run fails at the product.
pub fn default_variant(gpu: &Gpu) -> Result<MatmulVariant> {
    Ok(gpu.policy().matmul_variant)
}

/// Power of two in 1..=8 that covers `blocks` with the least padding (the larger on ties).
fn group_width(blocks: usize) -> usize {
    [8usize, 4, 2, 1].into_iter().min_by_key(|&w| (blocks.div_ceil(w) * w, usize::MAX - w)).unwrap_or(1)
}

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
        let variant = match self.variant {
            Some(v) => v,
            None => default_variant(&gpu)?,
        };
        if let Some(why) = variant.unsupported_reason(&gpu) {
            bail!("matmul variant {variant} cannot run on {}: {why}", gpu.description.summary());
        }
        if matches!(variant, MatmulVariant::Smem | MatmulVariant::F16 | MatmulVariant::Coop) {
            return self.run_vec4(batch, variant, &params, (a, b, c), bias.map(|b| b.0), total);
        }
        let (m, n) = (self.m, self.n);
        let bias_c = if bias.is_some() { 1.0 } else { 0.0 };
        let (groups, constants): ([usize; 3], Vec<(&'static str, f64)>) = match variant {
            MatmulVariant::Basic => {
                let w = 8;
                ([n.div_ceil(4 * w), m.div_ceil(4 * w), total], vec![("WG_X", w as f64), ("WG_Y", w as f64)])
            }
            MatmulVariant::Register => {
                // 8×8 outputs per invocation; a workgroup no wider or taller than the matrix needs.
                let (wx, wy) = (n.div_ceil(8).min(8).next_power_of_two(), m.div_ceil(8).min(8).next_power_of_two());
                ([n.div_ceil(8 * wx), m.div_ceil(8 * wy), total], vec![("WG_X", wx as f64), ("WG_Y", wy as f64)])
            }
            MatmulVariant::Tiled => (
                [n.div_ceil(64), m.div_ceil(64), total],
                vec![
                    ("A_K_CONTIGUOUS", if pa[2] == 1 { 1.0 } else { 0.0 }),
                    ("B_J_CONTIGUOUS", if pb[2] == 1 { 1.0 } else { 0.0 }),
                ],
            ),
            MatmulVariant::Subgroup => {
                // 32×32 outputs per subgroup of 8, 1..8 subgroups per workgroup side by side along j.
                let blocks = n.div_ceil(32);
                let w = group_width(blocks);
                ([blocks.div_ceil(w), m.div_ceil(32), total], vec![("WG_X", (8 * w) as f64)])
            }
            MatmulVariant::Smem | MatmulVariant::F16 | MatmulVariant::Coop => unreachable!("dispatched by run_vec4"),
        };
        let max = batch.gpu().limits.max_compute_workgroups_per_dimension as usize;
        if groups.iter().any(|&g| g > max) {
            bail!(
                "matmul {m}×{n} × batch {total} needs {groups:?} workgroups, more than the GPU's {max} per dimension"
            );
        }
        let mut constants = constants;
        constants.push(("HAS_BIAS", bias_c));
        constants.push(("ACT", self.act.id()));
        if variant != MatmulVariant::Basic {
            constants.push(("USE_BETA", if self.beta != 0.0 { 1.0 } else { 0.0 }));
        }
        let groups = [groups[0] as u32, groups[1] as u32, groups[2] as u32];
        batch.dispatch(
            &variant.spec(),
            &constants,
            &params,
            &[Some(a.t), Some(b.t), bias.map(|b| b.0), Some(c.t)],
            groups,
        );
        Ok(())
    }
}

impl Matmul {
    /// The workgroup-memory variants (`matmul_vec4.wgsl`): quad directions and vec4 eligibility
    /// from the operands' strides, tile sizes, dispatch.
    fn run_vec4(
        &self,
        batch: &mut CommandRecorder,
        variant: MatmulVariant,
        params: &Params,
        (a, b, c): (View, View, View),
        bias: Option<&GpuTensor>,
        total: usize,
    ) -> Result<()> {
        let gpu = batch.gpu().clone();
        let (m, n, k) = (self.m, self.n, self.k);
        let inner = params.inner > 1;
        let outer = self.batch > 1;
        // Quads along A's k unless i is the contiguous dimension; B's along j unless k is.
        let a_kq = params.a[2] == 1 || params.a[1] != 1;
        let b_jq = params.b[2] == 1 || params.b[1] != 1;
        // vec4 loads: stride 1 along the quad, the quad dimension a multiple of 4, every other
        // stride and the offset multiples of 4 (so every quad is one aligned, whole vec4).
        let aligned = |off: u32, others: &[u32], outer_s: u32, inner_s: u32| {
            off % 4 == 0
                && others.iter().all(|s| s % 4 == 0)
                && (!outer || outer_s % 4 == 0)
                && (!inner || inner_s % 4 == 0)
        };
        let a_vec = if a_kq {
            params.a[2] == 1 && k % 4 == 0 && aligned(params.a[0], &[params.a[1]], params.a[3], params.inner_strides[0])
        } else {
            params.a[1] == 1 && m % 4 == 0 && aligned(params.a[0], &[params.a[2]], params.a[3], params.inner_strides[0])
        } && a.t.numel() >= 4;
        let b_vec = if b_jq {
            params.b[2] == 1 && n % 4 == 0 && aligned(params.b[0], &[params.b[1]], params.b[3], params.inner_strides[1])
        } else {
            params.b[1] == 1 && k % 4 == 0 && aligned(params.b[0], &[params.b[2]], params.b[3], params.inner_strides[1])
        } && b.t.numel() >= 4;
        let flag = |x: bool| if x { 1.0 } else { 0.0 };
        let mut constants: Vec<(&'static str, f64)> = vec![
            ("A_KQ", flag(a_kq)),
            ("B_JQ", flag(b_jq)),
            ("A_VEC", flag(a_vec)),
            ("B_VEC", flag(b_vec)),
            ("HAS_BIAS", flag(bias.is_some())),
            ("ACT", self.act.id()),
            ("USE_BETA", flag(self.beta != 0.0)),
        ];
        let (bm, bn) = if variant == MatmulVariant::Smem {
            let t = self.smem_tiles.unwrap_or_else(|| TileConfig::auto(&gpu, m, n, total));
            t.check(&gpu)?;
            constants.extend([
                ("BM", t.bm as f64),
                ("BN", t.bn as f64),
                ("BK", t.bk as f64),
                ("TM", t.tm as f64),
                ("TN", t.tn as f64),
                ("WG", t.invocations() as f64),
            ]);
            (t.bm, t.bn)
        } else {
            let sgs = if variant == MatmulVariant::Coop { gpu.description.info.subgroup_max_size } else { 32 };
            let t = self.frag_tiles.unwrap_or_else(|| FragConfig::auto(&gpu, sgs, m, n, total));
            t.check(&gpu, sgs)?;
            let (ta, tb) = t.tiles();
            constants.extend([
                ("BM", t.bm as f64),
                ("BN", t.bn as f64),
                ("BK", t.bk as f64),
                ("SG_M", t.sg_m as f64),
                ("SG_N", t.sg_n as f64),
                ("SGS", sgs as f64),
                ("WG", (t.sg_m * t.sg_n * sgs) as f64),
                ("A_TILE", ta as f64),
                ("B_TILE", tb as f64),
            ]);
            (t.bm, t.bn)
        };
        let groups = [n.div_ceil(bn as usize), m.div_ceil(bm as usize), total];
        let max = gpu.limits.max_compute_workgroups_per_dimension as usize;
        if groups.iter().any(|&g| g > max) {
            bail!(
                "matmul {m}×{n} × batch {total} needs {groups:?} workgroups, more than the GPU's {max} per dimension"
            );
        }
        let groups = [groups[0] as u32, groups[1] as u32, groups[2] as u32];
        batch.dispatch(
            &variant.spec(),
            &constants,
            params,
            &[Some(a.t), a_vec.then_some(a.t), Some(b.t), b_vec.then_some(b.t), bias, Some(c.t)],
            groups,
        );
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The core module (every variant but `Subgroup`) must validate without the SUBGROUP capability,
    /// so devices without subgroups can build it; the full file is validated by `shaders`' tests.
    #[test]
    fn core_module_needs_no_subgroups() {
        let src = CORE.source();
        assert!(!src.contains("subgroup_id"), "subgroup code leaked into the core module");
        let module = naga::front::wgsl::parse_str(&src).map_err(|e| e.emit_to_string(&src)).unwrap();
        let caps = naga::valid::Capabilities::all() - naga::valid::Capabilities::SUBGROUP;
        let mut v = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
        if let Err(e) = v.validate(&module) {
            panic!("matmul core module: {}", e.emit_to_string(&src));
        }
        assert!(shaders::MATMUL.source().contains("fn matmul_subgroup"));
    }

    #[test]
    fn group_width_pads_least() {
        assert_eq!(group_width(1), 1);
        assert_eq!(group_width(2), 2);
        assert_eq!(group_width(3), 1);
        assert_eq!(group_width(6), 2);
        assert_eq!(group_width(12), 4); // 384 columns: 3 workgroups of 4 subgroups, none idle
        assert_eq!(group_width(48), 8);
    }
}
