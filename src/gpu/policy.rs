//! The device policy: which kernels and submission pattern this GPU gets ([`KernelPolicy`]),
//! resolved once when the [`Gpu`] is created, from the device's type, features and limits, then
//! the typed overrides of [`GpuOptions`], then the environment's ([`crate::env`]). Precedence:
//! options > environment > device default. The kernels and the model read [`Gpu::policy`]; nothing
//! is re-read per call.
//!
//! The types the policy names live here (the lowest layer that needs them): [`MatmulVariant`],
//! [`TileConfig`], [`AdapterKernel`], [`SubmitPolicy`]; `kernels` re-exports them. Which limits
//! and features the device is requested with ([`LimitsMode`], [`KernelPolicy::device_request`])
//! is decided here too, before the device exists (`policy/limits.rs`).

use super::{Gpu, GpuOptions};
use crate::env::{self, EnvOverrides};
use anyhow::{anyhow, bail, Result};

mod attention_kernel;
mod limits;
pub use attention_kernel::{AttentionKernel, FUSED_MAX_HEAD_DIM, FUSED_MAX_SEQ};
pub use limits::{webgpu_limits, DeviceRequest, LimitsMode, MULTI_TENSOR_BINDINGS};

pub use crate::env::{
    parse_dims, ADAPTER_KERNEL as ADAPTER_KERNEL_ENV, ATTENTION_KERNEL as ATTENTION_KERNEL_ENV,
    MATMUL_VARIANT as VARIANT_ENV, SMEM_LARGE_TILE as LARGE_TILE_ENV,
};

/// What the policy's device rules look at: device type, enabled features, subgroup sizes, limits.
#[derive(Clone, Copy, Debug)]
pub struct DeviceFacts<'a> {
    pub device_type: wgpu::DeviceType,
    /// Features enabled on the device.
    pub features: wgpu::Features,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub limits: &'a wgpu::Limits,
}

impl DeviceFacts<'_> {
    /// A CPU driver (lavapipe, SwiftShader, WARP): no parallel hardware behind workgroup memory,
    /// and the host shares its cores.
    pub fn is_cpu(&self) -> bool {
        self.device_type == wgpu::DeviceType::Cpu
    }

    /// The SUBGROUP feature with subgroups of exactly `n` lanes.
    pub fn has_subgroups_of(&self, n: u32) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP) && self.subgroup_min_size == n && self.subgroup_max_size == n
    }
}

/// How a resident encoder pass is submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitPolicy {
    /// One submit per layer, without waiting: the GPU runs layer l while the host records l + 1
    /// (BERT-base step 409 → 237 ms on an H200), and buffers a finished layer dropped may be
    /// reused sooner, so the measured peak can be below the planner's (an upper bound then). GPUs.
    PerLayer,
    /// One submit for the whole pass: CPU drivers, where host and "GPU" share the cores (and the
    /// measured memory peak stays the planner's, deterministic).
    PerPass,
}

/// How the adapter's token-parallel parts run: the fused kernels of `shaders/adapter.wgsl` (a
/// workgroup owns 8 tokens and reads both weight matrices), or the shared matmul with bias/β
/// epilogues plus element-wise activation kernels. The matmul path is every device's default: on
/// GPUs the fused kernel re-reads the weights per 8 tokens (1.2 ms vs PyTorch's 97 µs at T=4096,
/// d=768, m=64 on an H200), and on lavapipe the fused kernels ran at 0.5 GFLOP/s against the
/// subgroup matmul's 8–17, so the adapter phases of a MiniLM step took 2–3× longer fused
/// (bench/NOTES.md, issue 15 item 6). Both compute the same sums; [`ADAPTER_KERNEL_ENV`]
/// (`fused` / `matmul`) overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterKernel {
    Fused,
    Matmul,
}

impl AdapterKernel {
    pub fn name(self) -> &'static str {
        match self {
            AdapterKernel::Fused => "fused",
            AdapterKernel::Matmul => "matmul",
        }
    }

    /// `fused` or `matmul` (case-insensitive).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fused" => Ok(AdapterKernel::Fused),
            "matmul" => Ok(AdapterKernel::Matmul),
            _ => bail!("unknown adapter kernel {s:?} (expected fused or matmul)"),
        }
    }

    /// The path this GPU's policy chose (matmul unless overridden).
    pub fn for_gpu(gpu: &Gpu) -> Self {
        gpu.policy().adapter_kernel
    }
}

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
    /// `shaders/matmul_smem.wgsl`: BM×BN tiles staged through double-buffered workgroup memory
    /// with vec4 loads where the layout allows, a TM×TN register tile per invocation, tile sizes as
    /// override constants ([`TileConfig`], chosen per shape): discrete GPUs.
    Smem,
    /// `shaders/matmul_f16.wgsl`: A and B rounded to f16 in workgroup memory, f32 accumulation, in
    /// 16×16 fragments computed by plain invocations: the [`Coop`](Self::Coop) kernel without
    /// cooperative matrices (its test bed on any device with SHADER_F16). Never chosen by `auto`.
    F16,
    /// `shaders/matmul_coop.wgsl`: [`F16`](Self::F16) with the 16×16×16 fragment products on
    /// cooperative matrices (tensor cores). Needs EXPERIMENTAL_COOPERATIVE_MATRIX with 16×16×16
    /// f16→f32, SHADER_F16, SUBGROUP and a fixed subgroup size. f16 inputs: never chosen by `auto`.
    Coop,
}

impl MatmulVariant {
    pub const ALL: [MatmulVariant; 7] = [
        MatmulVariant::Basic,
        MatmulVariant::Register,
        MatmulVariant::Tiled,
        MatmulVariant::Subgroup,
        MatmulVariant::Smem,
        MatmulVariant::F16,
        MatmulVariant::Coop,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MatmulVariant::Basic => "basic",
            MatmulVariant::Register => "register",
            MatmulVariant::Tiled => "tiled",
            MatmulVariant::Subgroup => "subgroup",
            MatmulVariant::Smem => "smem",
            MatmulVariant::F16 => "f16",
            MatmulVariant::Coop => "coop",
        }
    }

    /// Whether the variant rounds A and B to f16 (see `kernels::matmul` for its error bound).
    pub fn f16_inputs(self) -> bool {
        matches!(self, MatmulVariant::F16 | MatmulVariant::Coop)
    }

    /// A variant name as [`VARIANT_ENV`] takes it; `auto` (or empty) is `None`.
    pub fn parse(s: &str) -> Result<Option<Self>> {
        let s = s.trim().to_ascii_lowercase();
        if s.is_empty() || s == "auto" {
            return Ok(None);
        }
        Self::ALL.into_iter().find(|v| v.name() == s).map(Some).ok_or_else(|| {
            anyhow!("unknown matmul variant {s:?} (expected auto, basic, register, tiled, subgroup, smem, f16 or coop)")
        })
    }

    /// The device rule: CPU drivers (no real parallel hardware behind workgroup memory; barriers
    /// are slow) get [`Subgroup`](Self::Subgroup) where subgroups are exactly 8 wide (lavapipe on
    /// AVX2) and [`Register`](Self::Register) otherwise; discrete GPUs (NVIDIA, AMD, Intel Arc)
    /// get [`Smem`](Self::Smem); other devices (integrated, virtual) [`Tiled`](Self::Tiled).
    /// The f16-input variants are never chosen automatically (they change the numerics).
    pub fn for_device(d: &DeviceFacts) -> Self {
        match d.device_type {
            wgpu::DeviceType::Cpu if d.has_subgroups_of(8) => MatmulVariant::Subgroup,
            wgpu::DeviceType::Cpu => MatmulVariant::Register,
            wgpu::DeviceType::DiscreteGpu if TileConfig::SMALL.check_limits(d.limits).is_ok() => MatmulVariant::Smem,
            _ => MatmulVariant::Tiled,
        }
    }
}

impl std::fmt::Display for MatmulVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Tile sizes of [`MatmulVariant::Smem`]: a workgroup of (bm/tm)·(bn/tn) invocations computes a
/// bm×bn tile of C in k-steps of bk, each invocation a tm×tn register tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileConfig {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
}

impl TileConfig {
    /// 128×128 in k-steps of 8, 8×8 per invocation (256 invocations): large products. On an
    /// H200, BK = 8 (16 KiB of workgroup memory, two workgroups per SM) ran 4096³ at 36.4 TFLOP/s
    /// against 23.8 with BK = 16 (bench/NOTES.md). [`LARGE_TILE_ENV`] overrides it
    /// ([`KernelPolicy::smem_large_tile`]).
    pub const LARGE: TileConfig = TileConfig { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8 };
    /// 64×64, 4×4 per invocation (256 invocations).
    pub const MEDIUM: TileConfig = TileConfig { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 };
    /// 32×32, 4×4 per invocation (64 invocations): small or narrow products, attention.
    pub const SMALL: TileConfig = TileConfig { bm: 32, bn: 32, bk: 16, tm: 4, tn: 4 };
    /// 128×64 in k-steps of 8, 8×8 per invocation (128 invocations, 12.5 KiB of workgroup
    /// memory): the large tile where [`LARGE`](Self::LARGE) (16.5 KiB) and
    /// [`MEDIUM`](Self::MEDIUM) (17 KiB) exceed the workgroup memory, as under WebGPU's default
    /// 16 KiB ([`LimitsMode::WebGpu`]). Not measured on a discrete GPU yet.
    pub const LARGE_16K: TileConfig = TileConfig { bm: 128, bn: 64, bk: 8, tm: 8, tn: 8 };

    /// The device's default large tile: [`LARGE`](Self::LARGE) where its limits hold it, else
    /// [`LARGE_16K`](Self::LARGE_16K) where they hold that, else `LARGE` (passed over by the
    /// per-shape choice for the smaller tiles).
    pub fn default_large(limits: &wgpu::Limits) -> TileConfig {
        [TileConfig::LARGE, TileConfig::LARGE_16K]
            .into_iter()
            .find(|t| t.check_limits(limits).is_ok())
            .unwrap_or(TileConfig::LARGE)
    }

    /// Invocations per workgroup.
    pub fn invocations(&self) -> u32 {
        (self.bm / self.tm.max(1)) * (self.bn / self.tn.max(1))
    }

    /// Workgroup memory in bytes (two k-major slices of A and B, rows padded by one vec4).
    pub fn workgroup_bytes(&self) -> u64 {
        2 * self.bk as u64 * ((self.bm / 4 + 1) as u64 + (self.bn / 4 + 1) as u64) * 16
    }

    /// Checks the shader's assumptions (any device).
    pub fn validate(&self) -> Result<()> {
        let &TileConfig { bm, bn, bk, tm, tn } = self;
        if !matches!(tm, 4 | 8) || !matches!(tn, 4 | 8) {
            bail!("smem tiles {self}: tm and tn must be 4 or 8");
        }
        if bm == 0 || bn == 0 || bk == 0 || bm % tm != 0 || bn % tn != 0 || bk % 4 != 0 {
            bail!("smem tiles {self}: bm, bn must be multiples of tm, tn and bk a multiple of 4");
        }
        let wg = self.invocations();
        for (what, elems) in [("A", bm * bk), ("B", bk * bn)] {
            if elems % (4 * wg) != 0 || !(1..=4).contains(&(elems / (4 * wg))) {
                bail!("smem tiles {self}: the {what} slice must be 1 to 4 vec4s per invocation ({wg} invocations)");
            }
        }
        Ok(())
    }

    /// Checks the shader's assumptions and the device's limits.
    pub fn check_limits(&self, limits: &wgpu::Limits) -> Result<()> {
        self.validate()?;
        check_workgroup(limits, &format!("smem tiles {self}"), self.invocations(), self.workgroup_bytes())
    }

    /// Checks the shader's assumptions and this GPU's limits.
    pub fn check(&self, gpu: &Gpu) -> Result<()> {
        self.check_limits(&gpu.limits)
    }
}

impl std::fmt::Display for TileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}/{}x{}", self.bm, self.bn, self.bk, self.tm, self.tn)
    }
}

impl std::str::FromStr for TileConfig {
    type Err = anyhow::Error;
    /// `BMxBNxBK/TMxTN`, e.g. `128x128x16/8x8`.
    fn from_str(s: &str) -> Result<Self> {
        let v = parse_dims(s, 3, 2).map_err(|e| anyhow!("smem tiles {s:?}: {e} (expected BMxBNxBK/TMxTN)"))?;
        Ok(TileConfig { bm: v[0], bn: v[1], bk: v[2], tm: v[3], tn: v[4] })
    }
}

/// Fails where a workgroup of `invocations` using `bytes` of workgroup memory exceeds the limits.
pub fn check_workgroup(limits: &wgpu::Limits, what: &str, invocations: u32, bytes: u64) -> Result<()> {
    let l = limits;
    if invocations > l.max_compute_invocations_per_workgroup || invocations > l.max_compute_workgroup_size_x {
        bail!("{what}: {invocations} invocations exceed the GPU's workgroup limits");
    }
    if bytes > l.max_compute_workgroup_storage_size as u64 {
        bail!("{what}: {bytes} bytes of workgroup memory exceed the GPU's {}", l.max_compute_workgroup_storage_size);
    }
    Ok(())
}

/// The kernels and submission pattern of one GPU, resolved once ([`KernelPolicy::resolve`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPolicy {
    /// A CPU driver ([`DeviceFacts::is_cpu`]).
    pub is_cpu: bool,
    /// The variant products use unless they name one ([`MatmulVariant::for_device`]).
    pub matmul_variant: MatmulVariant,
    /// The first candidate tile of the `smem` variant (the larger products'):
    /// [`TileConfig::default_large`] of the requested limits. A tile this GPU's limits cannot
    /// hold is passed over for the smaller ones.
    pub smem_large_tile: TileConfig,
    /// The adapter through the matmul on every device unless overridden (see [`AdapterKernel`]).
    pub adapter_kernel: AdapterKernel,
    /// Masked self-attention's kernels ([`AttentionKernel::for_device`]: fused on GPUs, separate on CPU drivers).
    pub attention_kernel: AttentionKernel,
    /// Per layer on GPUs, per pass on CPU drivers.
    pub submit: SubmitPolicy,
    /// Whether trusted shaders keep wgpu's runtime bounds checks: yes in debug builds, no in
    /// release builds (each trusted shader argues its indexing; see `shaders::Shader::trusted`).
    pub shader_checks: bool,
    /// Whether EXPERIMENTAL_COOPERATIVE_MATRIX is enabled (where offered, unless turned off);
    /// only the `coop` matmul variant uses it.
    pub cooperative_matrix: bool,
    /// Which limits and features the device was requested with ([`KernelPolicy::device_request`]).
    pub limits: LimitsMode,
    /// Whether the optimizer steps many tensors a dispatch (`optim::adamw_step_multi`,
    /// `sum_of_squares_and_clip`): where the requested limits allow [`MULTI_TENSOR_BINDINGS`]
    /// storage buffers per shader stage; otherwise (WebGPU's 8) one tensor a dispatch.
    pub multi_tensor_optimizer: bool,
    /// Whether dropped buffers are kept for reuse and bind groups cached across steps
    /// (`gpu::pool`): on unless turned off (`GpuOptions::buffer_pool`, [`env::BUFFER_POOL`]).
    pub buffer_pool: bool,
    /// Training batches' padded length is rounded up to a multiple of this
    /// ([`KernelPolicy::SEQ_MULTIPLE_GPU`] on GPUs, 1 on CPU drivers) unless `--pad-to-multiple-of`
    /// says otherwise: it bounds the shapes a run's steps take, so the buffer pool and the
    /// bind-group cache serve every step after the first of each length bucket. On a CPU driver
    /// the padding's extra compute costs more than creating buffers and bind groups does.
    pub seq_multiple: usize,
    /// Where an override came from, per overridden field: a `GpuOptions` field or a variable.
    pub overridden_by: Vec<&'static str>,
}

/// The first of `option`, `env` (each with its source's name) that is set, noting the source, or
/// the device's default.
fn pick<T>(
    from: &mut Vec<&'static str>,
    option: (Option<T>, &'static str),
    env: (Option<T>, &'static str),
    default: T,
) -> T {
    for (v, source) in [option, env] {
        if let Some(v) = v {
            from.push(source);
            return v;
        }
    }
    default
}

impl KernelPolicy {
    /// [`seq_multiple`](Self::seq_multiple) on GPUs: lengths 1..=64 fall into 8 buckets.
    pub const SEQ_MULTIPLE_GPU: usize = 8;

    /// Whether to request EXPERIMENTAL_COOPERATIVE_MATRIX where the adapter offers it (decided
    /// before the device exists): the option, else [`env::COOP`], else yes.
    pub fn requests_cooperative_matrix(options: &GpuOptions, env: &EnvOverrides) -> bool {
        options.cooperative_matrix.or(env.coop).unwrap_or(true)
    }

    /// The features and limits to request of an adapter that offers `offered` and `limits`
    /// ([`DeviceRequest::new`]): the limits mode from `options`, else [`env::LIMITS`], else the
    /// adapter's; the optional features of [`super::OPTIONAL_FEATURES`] it offers (cooperative
    /// matrices as [`requests_cooperative_matrix`](Self::requests_cooperative_matrix) says) or,
    /// under WebGPU's limits, none.
    pub fn device_request(
        offered: wgpu::Features,
        limits: &wgpu::Limits,
        options: &GpuOptions,
        env: &EnvOverrides,
    ) -> Result<DeviceRequest> {
        let (mode, _) = LimitsMode::chosen(options, env)?;
        let coop = Self::requests_cooperative_matrix(options, env);
        DeviceRequest::new(mode, offered, limits, super::OPTIONAL_FEATURES, coop)
    }

    /// [`resolve`](Self::resolve) with `options` alone, the environment left out (what a device
    /// would get under these options: the kernels' tests of other limits).
    pub fn from_options(facts: &DeviceFacts, options: &GpuOptions) -> Result<Self> {
        Self::resolve(facts, options, &EnvOverrides::default())
    }

    /// The policy of a device with `facts` (its enabled features): each field from `options` if
    /// set, else from `env`, else the device's default. Fails on an override that can never work
    /// (a tile configuration the shader cannot take), naming where it came from.
    pub fn resolve(facts: &DeviceFacts, options: &GpuOptions, env: &EnvOverrides) -> Result<Self> {
        let mut from = Vec::new();
        let env_variant = env.matmul_variant.map(MatmulVariant::parse).transpose()?.flatten();
        let env_tile = match env.smem_large_tile {
            Some([bm, bn, bk, tm, tn]) => {
                let t = TileConfig { bm, bn, bk, tm, tn };
                t.validate().map_err(|e| {
                    anyhow!("{}: {e:#}", env::bad_value(LARGE_TILE_ENV, &t.to_string(), env::TILE_CHOICES))
                })?;
                Some(t)
            }
            None => None,
        };
        if let Some(t) = options.smem_large_tile {
            t.validate().map_err(|e| anyhow!("GpuOptions::smem_large_tile: {e:#}"))?;
        }
        let env_adapter = env.adapter_kernel.map(AdapterKernel::parse).transpose()?;
        let env_attention = env.attention_kernel.map(AttentionKernel::parse).transpose()?;
        let env_submit = env.submit_per_layer.map(|on| if on { SubmitPolicy::PerLayer } else { SubmitPolicy::PerPass });
        let (limits, limits_from) = LimitsMode::chosen(options, env)?;
        let cpu = facts.is_cpu();
        let policy = KernelPolicy {
            is_cpu: cpu,
            matmul_variant: pick(
                &mut from,
                (options.matmul_variant, "GpuOptions::matmul_variant"),
                (env_variant, env::MATMUL_VARIANT),
                MatmulVariant::for_device(facts),
            ),
            smem_large_tile: pick(
                &mut from,
                (options.smem_large_tile, "GpuOptions::smem_large_tile"),
                (env_tile, env::SMEM_LARGE_TILE),
                TileConfig::default_large(facts.limits),
            ),
            adapter_kernel: pick(
                &mut from,
                (options.adapter_kernel, "GpuOptions::adapter_kernel"),
                (env_adapter, env::ADAPTER_KERNEL),
                AdapterKernel::Matmul,
            ),
            attention_kernel: pick(
                &mut from,
                (options.attention_kernel, "GpuOptions::attention_kernel"),
                (env_attention, env::ATTENTION_KERNEL),
                AttentionKernel::for_device(facts),
            ),
            submit: pick(
                &mut from,
                (options.submit, "GpuOptions::submit"),
                (env_submit, env::SUBMIT_PER_LAYER),
                if cpu { SubmitPolicy::PerPass } else { SubmitPolicy::PerLayer },
            ),
            shader_checks: pick(
                &mut from,
                (options.shader_checks, "GpuOptions::shader_checks"),
                (env.shader_checks, env::SHADER_CHECKS),
                cfg!(debug_assertions),
            ),
            cooperative_matrix: facts.features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
            limits,
            multi_tensor_optimizer: facts.limits.max_storage_buffers_per_shader_stage >= MULTI_TENSOR_BINDINGS,
            buffer_pool: pick(
                &mut from,
                (options.buffer_pool, "GpuOptions::buffer_pool"),
                (env.buffer_pool, env::BUFFER_POOL),
                true,
            ),
            seq_multiple: if cpu { 1 } else { Self::SEQ_MULTIPLE_GPU },
            overridden_by: vec![],
        };
        // The feature itself was decided before the device existed; note who turned it off.
        pick(&mut from, (options.cooperative_matrix, "GpuOptions::cooperative_matrix"), (env.coop, env::COOP), false);
        from.extend(limits_from);
        Ok(KernelPolicy { overridden_by: from, ..policy })
    }

    /// Whether a resident pass is submitted once per layer.
    pub fn submit_per_layer(&self) -> bool {
        self.submit == SubmitPolicy::PerLayer
    }
}

impl std::fmt::Display for KernelPolicy {
    /// One line, e.g. `matmul smem (large tile 128x128x8/8x8), adapter matmul, submit per layer,
    /// shader checks off, cooperative matrices on, batches padded to a multiple of 8, optimizer multi-tensor, limits adapter`, then
    /// what overrode the device's defaults.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = |b: bool| if b { "on" } else { "off" };
        write!(
            f,
            "matmul {} (smem large tile {}), adapter {}, attention {}, submit per {}, shader checks {}, cooperative matrices {}, \
             batches padded to a multiple of {}, optimizer {}, limits {}",
            self.matmul_variant,
            self.smem_large_tile,
            self.adapter_kernel.name(),
            self.attention_kernel.name(),
            if self.submit_per_layer() { "layer" } else { "pass" },
            on(self.shader_checks),
            on(self.cooperative_matrix),
            self.seq_multiple,
            if self.multi_tensor_optimizer { "multi-tensor" } else { "per tensor" },
            self.limits,
        )?;
        if !self.overridden_by.is_empty() {
            write!(f, "; overridden by {}", self.overridden_by.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
