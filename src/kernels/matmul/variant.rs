//! [`MatmulVariant`]: which kernel computes a product, what each needs of the device, the device
//! rule that picks one ([`MatmulVariant::auto`], [`default_variant`]) and the pipeline each runs.

use super::tiles::{FragConfig, TileConfig};
use crate::gpu::{Access, Gpu, KernelSpec};
use crate::shaders::{self, Shader};
use anyhow::Result;
use std::sync::LazyLock;

/// The variant type lives in the device policy (`gpu::policy`), which chooses it.
pub use crate::gpu::policy::{MatmulVariant, VARIANT_ENV};

pub(super) const BINDINGS: &[Access] =
    &[Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite];

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

/// Storage bindings of the workgroup-memory kernels (`matmul_vec4.wgsl`): A, A as vec4, B, B as
/// vec4, bias, C, the epilogue's aux.
pub(super) const VEC4_BINDINGS: &[Access] =
    &[Access::Read, Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite];

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

/// The variant products use unless they name one: the GPU's policy
/// ([`KernelPolicy::matmul_variant`](crate::gpu::KernelPolicy::matmul_variant): [`VARIANT_ENV`] or
/// [`MatmulVariant::auto`], resolved when the GPU was opened). Running a variant this GPU cannot
/// run fails at the product.
pub fn default_variant(gpu: &Gpu) -> Result<MatmulVariant> {
    Ok(gpu.policy().matmul_variant)
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
    fn group_width_pads_least() {
        assert_eq!(group_width(1), 1);
        assert_eq!(group_width(2), 2);
        assert_eq!(group_width(3), 1);
        assert_eq!(group_width(6), 2);
        assert_eq!(group_width(12), 4); // 384 columns: 3 workgroups of 4 subgroups, none idle
        assert_eq!(group_width(48), 8);
    }
}
