//! [`MatmulVariant`]: which kernel computes a product, what each needs of the device, the device
//! rule that picks one ([`MatmulVariant::auto`], [`default_variant`]) and the pipeline each runs.

use super::tiles::{FragConfig, TileConfig};
use crate::gpu::{Access, Gpu, KernelSpec};
use crate::shaders::{self, Shader};
use anyhow::{anyhow, bail, Result};
use std::sync::{LazyLock, OnceLock};

pub(super) const BINDINGS: &[Access] = &[Access::Read, Access::Read, Access::Read, Access::ReadWrite];

/// `shaders/matmul.wgsl`; everything from this line on needs the SUBGROUP feature.
const SUBGROUP_MARKER: &str = "// ==== SUBGROUP KERNELS";

/// The part of `shaders/matmul.wgsl` before the subgroup kernels: a module every device accepts
/// (wgpu validates a whole module against the device's features, so the subgroup kernels live in
/// the full module, [`shaders::MATMUL`], built only where subgroups exist).
pub(super) static CORE: LazyLock<Shader> = LazyLock::new(|| {
    let src = *shaders::MATMUL.parts.last().expect("matmul shader has a source");
    let cut = src.find(SUBGROUP_MARKER).expect("shaders/matmul.wgsl lost its SUBGROUP KERNELS line");
    Shader { name: "matmul_core", parts: Box::leak(Box::new([shaders::COMMON, &src[..cut]])), trusted: true }
});

/// Environment variable forcing a variant for every product: `basic`, `register`, `tiled`,
/// `subgroup`, `smem`, `f16`, `coop`, or `auto` (the default: [`MatmulVariant::auto`]).
pub const VARIANT_ENV: &str = "PEFT_MATMUL_VARIANT";

/// Storage bindings of the workgroup-memory kernels (`matmul_vec4.wgsl`): A, A as vec4, B, B as
/// vec4, bias, C.
pub(super) const VEC4_BINDINGS: &[Access] =
    &[Access::Read, Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite];

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

    /// Whether the variant rounds A and B to f16 (see the module docs for its error bound).
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

    /// Why this GPU cannot run the variant, or `None` where it can.
    pub fn unsupported_reason(self, gpu: &Gpu) -> Option<String> {
        let info = &gpu.description.info;
        match self {
            MatmulVariant::Subgroup => {
                (!(gpu.has(wgpu::Features::SUBGROUP) && info.subgroup_min_size == 8 && info.subgroup_max_size == 8))
                    .then(|| "needs the SUBGROUP feature with subgroups of exactly 8 lanes".to_string())
            }
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

    /// The device rule: CPU drivers (no real parallel hardware behind workgroup memory; barriers
    /// are slow) get [`Subgroup`](Self::Subgroup) where subgroups are exactly 8 wide (lavapipe on
    /// AVX2) and [`Register`](Self::Register) otherwise; discrete GPUs (NVIDIA, AMD, Intel Arc)
    /// get [`Smem`](Self::Smem); other devices (integrated, virtual) [`Tiled`](Self::Tiled).
    /// The f16-input variants are never chosen automatically (they change the numerics).
    pub fn auto(gpu: &Gpu) -> Self {
        match gpu.description.info.device_type {
            wgpu::DeviceType::Cpu => {
                if MatmulVariant::Subgroup.is_supported(gpu) {
                    MatmulVariant::Subgroup
                } else {
                    MatmulVariant::Register
                }
            }
            wgpu::DeviceType::DiscreteGpu if MatmulVariant::Smem.is_supported(gpu) => MatmulVariant::Smem,
            _ => MatmulVariant::Tiled,
        }
    }

    pub(super) fn spec(self) -> KernelSpec {
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
pub(super) fn group_width(blocks: usize) -> usize {
    [8usize, 4, 2, 1].into_iter().min_by_key(|&w| (blocks.div_ceil(w) * w, usize::MAX - w)).unwrap_or(1)
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
