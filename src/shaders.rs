//! Every WGSL shader of the project, embedded at build time. A shader may start with shared
//! snippets (`shaders/common.wgsl`): WGSL has no `#include`, so the host concatenates them.
//! `cargo test` parses and validates each one with naga, so a shader error fails the build's tests
//! without a GPU.

/// One WGSL source as compiled: `parts` joined in order.
#[derive(Debug)]
pub struct Shader {
    pub name: &'static str,
    pub parts: &'static [&'static str],
}

impl Shader {
    pub fn source(&self) -> String {
        self.parts.join("\n")
    }

    pub(crate) fn module(&self, device: &wgpu::Device) -> wgpu::ShaderModule {
        device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(self.name),
            source: wgpu::ShaderSource::Wgsl(self.source().into()),
        })
    }
}

/// Activations (GELU with an erf accurate to ~1e-7, ReLU, SiLU) and workgroup indexing helpers.
pub const COMMON: &str = include_str!("../shaders/common.wgsl");

pub static ADAPTER: Shader = Shader { name: "adapter", parts: &[COMMON, include_str!("../shaders/adapter.wgsl")] };
pub static MATMUL: Shader = Shader { name: "matmul", parts: &[COMMON, include_str!("../shaders/matmul.wgsl")] };
pub static REDUCE: Shader = Shader { name: "reduce", parts: &[COMMON, include_str!("../shaders/reduce.wgsl")] };
pub static LAYERNORM: Shader =
    Shader { name: "layernorm", parts: &[COMMON, include_str!("../shaders/layernorm.wgsl")] };
pub static ATTENTION: Shader =
    Shader { name: "attention", parts: &[COMMON, include_str!("../shaders/attention.wgsl")] };
pub static ELEMENTWISE: Shader =
    Shader { name: "elementwise", parts: &[COMMON, include_str!("../shaders/elementwise.wgsl")] };
pub static LOSS: Shader = Shader { name: "loss", parts: &[COMMON, include_str!("../shaders/loss.wgsl")] };
pub static FUSION: Shader = Shader { name: "fusion", parts: &[COMMON, include_str!("../shaders/fusion.wgsl")] };
pub static OPTIM: Shader = Shader { name: "optim", parts: &[COMMON, include_str!("../shaders/optim.wgsl")] };

/// All shaders, for validation.
pub static ALL: &[&Shader] =
    &[&ADAPTER, &MATMUL, &REDUCE, &FUSION, &LAYERNORM, &ATTENTION, &ELEMENTWISE, &LOSS, &OPTIM];

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
            let name = entry.unwrap().path().file_stem().unwrap().to_string_lossy().to_string();
            if name == "common" {
                continue;
            }
            assert!(ALL.iter().any(|s| s.name == name), "shaders/{name}.wgsl is not in shaders::ALL");
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
