//! Every WGSL shader of the project, embedded at build time. A shader may start with shared
//! snippets (`shaders/common.wgsl`): WGSL has no `#include`, so the host concatenates them.
//! `cargo test` parses and validates each one with naga, so a shader error fails the build's tests
//! without a GPU.

/// One WGSL source as compiled: `parts` joined in order.
#[derive(Debug)]
pub struct Shader {
    pub name: &'static str,
    pub parts: &'static [&'static str],
    /// Every index the shader computes is in bounds by construction (argued in the shader, checked
    /// by its host, exercised by tests on ragged shapes with guard regions around the outputs): it
    /// is created without wgpu's runtime bounds checks unless the GPU's policy keeps them
    /// (`gpu::KernelPolicy::shader_checks`: on in debug builds, off in release builds,
    /// `PEFT_SHADER_CHECKS` overrides).
    pub trusted: bool,
}

impl Shader {
    pub fn source(&self) -> String {
        self.parts.join("\n")
    }

    /// The shader module; `runtime_checks: false` drops wgpu's runtime checks if it is trusted.
    pub(crate) fn module(&self, device: &wgpu::Device, runtime_checks: bool) -> wgpu::ShaderModule {
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(self.name),
            source: wgpu::ShaderSource::Wgsl(self.source().into()),
        };
        if self.trusted && !runtime_checks {
            // SAFETY: `trusted` shaders index only inside their bindings and workgroup arrays (each one
            // argues it next to its loads and stores; the hosts validate views, tile configurations
            // and dispatch sizes before dispatching), divide only by non-zero values, and every loop
            // is bounded by a uniform count.
            unsafe { device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
        } else {
            device.create_shader_module(desc)
        }
    }
}

/// Activations (GELU with an erf accurate to ~1e-7, ReLU, SiLU) and workgroup indexing helpers.
pub const COMMON: &str = include_str!("../shaders/common.wgsl");

/// Bindings, quad loads and epilogue of the workgroup-memory matmul kernels (a snippet).
pub const MATMUL_VEC4: &str = include_str!("../shaders/matmul_vec4.wgsl");
/// Staging and fragment code of the f16 matmul kernels, and the `matmul_f16` entry (a snippet).
pub const MATMUL_F16_BODY: &str = include_str!("../shaders/matmul_f16.wgsl");

pub static ADAPTER: Shader =
    Shader { name: "adapter", parts: &[COMMON, include_str!("../shaders/adapter.wgsl")], trusted: false };
pub static MATMUL: Shader =
    Shader { name: "matmul", parts: &[COMMON, include_str!("../shaders/matmul.wgsl")], trusted: true };
/// f32 matmul through workgroup memory with register tiles and vec4 loads (`MatmulVariant::Smem`).
pub static MATMUL_SMEM: Shader = Shader {
    name: "matmul_smem",
    parts: &[COMMON, MATMUL_VEC4, include_str!("../shaders/matmul_smem.wgsl")],
    trusted: true,
};
/// The Philox4x32-10 generator of the dropout masks (a snippet: dropout.wgsl, attention.wgsl,
/// attention_fused.wgsl).
pub const PHILOX: &str = include_str!("../shaders/philox.wgsl");
/// f16-input matmul, fragment products by plain invocations (`MatmulVariant::F16`; SHADER_F16).
pub static MATMUL_F16: Shader =
    Shader { name: "matmul_f16", parts: &["enable f16;", COMMON, MATMUL_VEC4, MATMUL_F16_BODY], trusted: true };
/// f16-input matmul on cooperative matrices (`MatmulVariant::Coop`; SHADER_F16, SUBGROUP and
/// EXPERIMENTAL_COOPERATIVE_MATRIX).
pub static MATMUL_COOP: Shader = Shader {
    name: "matmul_coop",
    parts: &[
        "enable f16;\nenable wgpu_cooperative_matrix;",
        COMMON,
        MATMUL_VEC4,
        MATMUL_F16_BODY,
        include_str!("../shaders/matmul_coop.wgsl"),
    ],
    trusted: true,
};
pub static REDUCE: Shader =
    Shader { name: "reduce", parts: &[COMMON, include_str!("../shaders/reduce.wgsl")], trusted: false };
pub static LAYERNORM: Shader =
    Shader { name: "layernorm", parts: &[COMMON, include_str!("../shaders/layernorm.wgsl")], trusted: false };
pub static ATTENTION: Shader =
    Shader { name: "attention", parts: &[COMMON, PHILOX, include_str!("../shaders/attention.wgsl")], trusted: false };
/// Masked self-attention forward in one dispatch, backward in two (`AttentionKernel::Fused`).
pub static ATTENTION_FUSED: Shader = Shader {
    name: "attention_fused",
    parts: &[COMMON, PHILOX, include_str!("../shaders/attention_fused.wgsl")],
    trusted: false,
};
pub static DROPOUT: Shader =
    Shader { name: "dropout", parts: &[COMMON, PHILOX, include_str!("../shaders/dropout.wgsl")], trusted: false };
pub static ELEMENTWISE: Shader =
    Shader { name: "elementwise", parts: &[COMMON, include_str!("../shaders/elementwise.wgsl")], trusted: false };
pub static LOSS: Shader =
    Shader { name: "loss", parts: &[COMMON, include_str!("../shaders/loss.wgsl")], trusted: false };
pub static FUSION: Shader =
    Shader { name: "fusion", parts: &[COMMON, include_str!("../shaders/fusion.wgsl")], trusted: false };
pub static OPTIM: Shader =
    Shader { name: "optim", parts: &[COMMON, include_str!("../shaders/optim.wgsl")], trusted: false };

/// All shaders, for validation.
pub static ALL: &[&Shader] = &[
    &ADAPTER,
    &MATMUL,
    &MATMUL_SMEM,
    &MATMUL_F16,
    &MATMUL_COOP,
    &REDUCE,
    &FUSION,
    &LAYERNORM,
    &ATTENTION,
    &ATTENTION_FUSED,
    &DROPOUT,
    &ELEMENTWISE,
    &LOSS,
    &OPTIM,
];

/// Parses and validates a WGSL source with naga (what wgpu does when it builds a pipeline).
pub fn validate(src: &str) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
    let mut v = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
    v.validate(&module).map_err(|e| e.emit_to_string(src))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shader_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            // A file is a shader of its own, or a snippet joined into one (common.wgsl, matmul_vec4.wgsl).
            assert!(
                ALL.iter().any(|s| s.name == name || s.parts.contains(&text.as_str())),
                "shaders/{name}.wgsl is not part of any shader in shaders::ALL"
            );
        }
    }

    fn validate_with(s: &Shader, caps: naga::valid::Capabilities) -> Result<naga::valid::ModuleInfo, String> {
        let src = s.source();
        let module = naga::front::wgsl::parse_str(&src).map_err(|e| e.emit_to_string(&src))?;
        let mut v = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
        v.validate(&module).map_err(|e| e.emit_to_string(&src))
    }

    /// wgpu validates a module against the device's features: each matmul module needs only the
    /// features its variant requires (checked where a device offers them).
    #[test]
    fn matmul_modules_need_only_their_features() {
        use naga::valid::Capabilities as C;
        let none = C::all() - C::SUBGROUP - C::SHADER_FLOAT16 - C::COOPERATIVE_MATRIX;
        validate_with(&MATMUL_SMEM, none).unwrap();
        assert!(validate_with(&MATMUL_F16, none).is_err(), "matmul_f16 should need SHADER_FLOAT16");
        validate_with(&MATMUL_F16, none | C::SHADER_FLOAT16).unwrap();
        assert!(validate_with(&MATMUL_COOP, none | C::SHADER_FLOAT16 | C::SUBGROUP).is_err());
        validate_with(&MATMUL_COOP, none | C::SHADER_FLOAT16 | C::SUBGROUP | C::COOPERATIVE_MATRIX).unwrap();
    }

    /// The cooperative-matrix module goes through naga's SPIR-V backend (what wgpu's Vulkan backend
    /// runs) for the tile configurations the host uses, so a machine without tensor cores still
    /// catches shaders naga cannot translate.
    #[test]
    fn coop_module_translates_to_spirv() {
        let src = MATMUL_COOP.source();
        let module = naga::front::wgsl::parse_str(&src).unwrap();
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .unwrap();
        // (bm, bn, bk, sg_m, sg_n, a_kq, b_jq)
        for (bm, bn, bk, sg_m, sg_n, a_kq, b_jq) in [
            (128u32, 128u32, 32u32, 2u32, 4u32, true, false),
            (64, 64, 32, 2, 2, false, true),
            (32, 32, 16, 1, 1, true, true),
        ] {
            let a_tile = (bm * (bk + 8)).max(bk * (bm + 8));
            let b_tile = (bn * (bk + 8)).max(bk * (bn + 8));
            let mut consts = naga::back::PipelineConstants::default();
            for (k, v) in [
                ("BM", bm as f64),
                ("BN", bn as f64),
                ("BK", bk as f64),
                ("SG_M", sg_m as f64),
                ("SG_N", sg_n as f64),
                ("SGS", 32.0),
                ("WG", (sg_m * sg_n * 32) as f64),
                ("A_TILE", a_tile as f64),
                ("B_TILE", b_tile as f64),
                ("A_KQ", a_kq as u8 as f64),
                ("B_JQ", b_jq as u8 as f64),
            ] {
                consts.insert(k.to_string(), v);
            }
            let (m, i) = naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((naga::ShaderStage::Compute, "matmul_coop")),
                &consts,
            )
            .unwrap();
            let opts = naga::back::spv::Options { lang_version: (1, 3), ..Default::default() };
            let pipeline = naga::back::spv::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: "matmul_coop".into(),
            };
            let words = naga::back::spv::write_vec(&m, &i, &opts, Some(&pipeline)).unwrap();
            assert!(words.len() > 100);
        }
    }

    #[test]
    fn all_shaders_validate_with_naga() {
        for s in ALL {
            if let Err(e) = validate(&s.source()) {
                panic!("shader {} failed validation:\n{e}", s.name);
            }
        }
    }

    #[test]
    fn validation_catches_errors() {
        assert!(validate("fn f() -> f32 { return 1u; }").is_err());
    }
}
