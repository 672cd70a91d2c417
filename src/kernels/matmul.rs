//! `shaders/matmul.wgsl`: one batched, strided matmul for every product in the project
//! (`C = act(alpha·A·B + bias + beta·C)`; transposes are strides), in several kernel variants that
//! the host picks per device ([`MatmulVariant`]): one API, the same sums in the same order.

use super::Activation;
use crate::gpu::{Access, Batch, Gpu, GpuTensor, KernelSpec};
use crate::shaders::{self, Shader};
use anyhow::{anyhow, bail, Result};
use std::sync::{LazyLock, OnceLock};

const BINDINGS: &[Access] = &[Access::Read, Access::Read, Access::Read, Access::ReadWrite];

/// `shaders/matmul.wgsl`; everything from this line on needs the SUBGROUP feature.
const SUBGROUP_MARKER: &str = "// ==== SUBGROUP KERNELS";

/// The part of `shaders/matmul.wgsl` before the subgroup kernels: a module every device accepts
/// (wgpu validates a whole module against the device's features, so the subgroup kernels live in
/// the full module, [`shaders::MATMUL`], built only where subgroups exist).
static CORE: LazyLock<Shader> = LazyLock::new(|| {
    let src = *shaders::MATMUL.parts.last().expect("matmul shader has a source");
    let cut = src.find(SUBGROUP_MARKER).expect("shaders/matmul.wgsl lost its SUBGROUP KERNELS line");
    Shader { name: "matmul_core", parts: Box::leak(Box::new([shaders::COMMON, &src[..cut]])) }
});

/// Environment variable forcing a variant for every product: `basic`, `register`, `tiled`,
/// `subgroup`, or `auto` (the default: [`MatmulVariant::auto`]).
pub const VARIANT_ENV: &str = "PEFT_MATMUL_VARIANT";

/// Which kernel computes a product. Every variant sums each output in k order 0..K in one
/// invocation (deterministic); all but [`Basic`](Self::Basic) use the same fma chain and epilogue,
/// so they agree bit for bit wherever the driver evaluates `fma` the same way in each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// The original kernel: a 4×4 register tile per invocation (8 loads per 16 multiply-adds).
    Basic,
    /// An 8×8 register tile per invocation, no workgroup memory (16 loads per 64 multiply-adds):
    /// CPU drivers without subgroups of 8.
    Register,
    /// 64×64 tiles staged through workgroup memory (barriers in the k loop): GPUs.
    Tiled,
    /// A subgroup of 8 owns 32×32 outputs and shares A through `subgroupBroadcast` (8 loads per 128
    /// multiply-adds, no barriers): lavapipe. Needs the SUBGROUP feature and subgroups of exactly 8.
    Subgroup,
}

impl MatmulVariant {
    pub const ALL: [MatmulVariant; 4] =
        [MatmulVariant::Basic, MatmulVariant::Register, MatmulVariant::Tiled, MatmulVariant::Subgroup];

    pub fn name(self) -> &'static str {
        match self {
            MatmulVariant::Basic => "basic",
            MatmulVariant::Register => "register",
            MatmulVariant::Tiled => "tiled",
            MatmulVariant::Subgroup => "subgroup",
        }
    }

    /// A variant name as [`VARIANT_ENV`] takes it; `auto` (or empty) is `None`.
    pub fn parse(s: &str) -> Result<Option<Self>> {
        let s = s.trim().to_ascii_lowercase();
        if s.is_empty() || s == "auto" {
            return Ok(None);
        }
        Self::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .map(Some)
            .ok_or_else(|| anyhow!("unknown matmul variant {s:?} (expected auto, basic, register, tiled or subgroup)"))
    }

    /// Whether this GPU can run the variant (only [`Subgroup`](Self::Subgroup) has requirements).
    pub fn is_supported(self, gpu: &Gpu) -> bool {
        match self {
            MatmulVariant::Subgroup => {
                let info = &gpu.description.info;
                gpu.has(wgpu::Features::SUBGROUP) && info.subgroup_min_size == 8 && info.subgroup_max_size == 8
            }
            _ => true,
        }
    }

    /// The device rule: CPU drivers (no real parallel hardware behind workgroup memory; barriers
    /// are slow) get [`Subgroup`](Self::Subgroup) where subgroups are exactly 8 wide (lavapipe on
    /// AVX2) and [`Register`](Self::Register) otherwise; every other device gets
    /// [`Tiled`](Self::Tiled).
    pub fn auto(gpu: &Gpu) -> Self {
        if gpu.description.info.device_type == wgpu::DeviceType::Cpu {
            if MatmulVariant::Subgroup.is_supported(gpu) {
                MatmulVariant::Subgroup
            } else {
                MatmulVariant::Register
            }
        } else {
            MatmulVariant::Tiled
        }
    }

    fn spec(self) -> KernelSpec {
        let (shader, entry): (&'static Shader, &'static str) = match self {
            MatmulVariant::Basic => (&CORE, "matmul"),
            MatmulVariant::Register => (&CORE, "matmul_reg"),
            MatmulVariant::Tiled => (&CORE, "matmul_tiled"),
            MatmulVariant::Subgroup => (&shaders::MATMUL, "matmul_subgroup"),
        };
        KernelSpec { shader, entry, bindings: BINDINGS }
    }
}

impl std::fmt::Display for MatmulVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The variant products use unless they name one: [`VARIANT_ENV`] if set (read once per process),
/// else [`MatmulVariant::auto`]. Fails if the variable names an unknown variant or one this GPU
/// cannot run.
pub fn default_variant(gpu: &Gpu) -> Result<MatmulVariant> {
    static FROM_ENV: OnceLock<std::result::Result<Option<MatmulVariant>, String>> = OnceLock::new();
    let from_env = FROM_ENV.get_or_init(|| {
        MatmulVariant::parse(&std::env::var(VARIANT_ENV).unwrap_or_default())
            .map_err(|e| format!("{VARIANT_ENV}: {e:#}"))
    });
    match from_env {
        Err(e) => bail!("{e}"),
        Ok(Some(v)) => Ok(*v),
        Ok(None) => Ok(MatmulVariant::auto(gpu)),
    }
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
}

impl Matmul {
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Self { m, n, k, batch: 1, alpha: 1.0, beta: 0.0, act: Activation::Identity, variant: None }
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
        let gpu = batch.gpu().clone();
        let variant = match self.variant {
            Some(v) => v,
            None => default_variant(&gpu)?,
        };
        if !variant.is_supported(&gpu) {
            bail!("matmul variant {variant} needs subgroups of exactly 8 lanes, which this GPU does not offer");
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
    fn variant_names_round_trip() {
        for v in MatmulVariant::ALL {
            assert_eq!(MatmulVariant::parse(v.name()).unwrap(), Some(v));
            assert_eq!(MatmulVariant::parse(&v.name().to_uppercase()).unwrap(), Some(v));
        }
        assert_eq!(MatmulVariant::parse("auto").unwrap(), None);
        assert_eq!(MatmulVariant::parse("").unwrap(), None);
        assert!(MatmulVariant::parse("fast").is_err());
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
