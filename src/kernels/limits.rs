//! Every kernel against WebGPU's default limits (`--limits webgpu`), without a GPU: the storage
//! buffers each entry point binds, the size of its parameter block, and — for every set of
//! override constants its host can pass (each module's `launches()`, the lists the translation
//! test uses) — its workgroup size and workgroup memory, measured by naga on the specialised
//! module (what wgpu builds). wgpu checks the binding count when a pipeline is made but not the
//! workgroup memory, so a kernel over 16 KiB would pass on lavapipe and fail in a browser: this
//! test is where that is caught.
//!
//! A kernel may exceed the limits only where the host never runs it under them, and the test
//! checks the host's own rule says so: the multi-tensor optimizer kernels (33 and 17 bindings;
//! `KernelPolicy::multi_tensor_optimizer` is off), smem tiles that `TileConfig::check_limits`
//! refuses (the per-shape choice passes over them), and kernels that need a feature the mode does
//! not request (subgroups, f16, cooperative matrices).

use super::Constants;
use crate::gpu::policy::{webgpu_limits, DeviceFacts, KernelPolicy, LimitsMode, MatmulVariant, TileConfig};
use crate::gpu::{GpuOptions, KernelSpec};
use naga::valid::{Capabilities as Caps, ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, Module, ShaderStage};
use std::collections::HashMap;

/// The policy of a device opened with WebGPU's limits: lavapipe's type, no features.
fn webgpu_policy(device_type: wgpu::DeviceType, limits: &wgpu::Limits) -> KernelPolicy {
    let facts = DeviceFacts {
        device_type,
        features: wgpu::Features::empty(),
        subgroup_min_size: 8,
        subgroup_max_size: 8,
        limits,
    };
    let options = GpuOptions { limits: Some(LimitsMode::WebGpu), ..Default::default() };
    KernelPolicy::from_options(&facts, &options).expect("the webgpu policy resolves")
}

fn same(a: &KernelSpec, b: &KernelSpec) -> bool {
    a.shader.name == b.shader.name && a.entry == b.entry
}

#[test]
fn every_kernel_binds_at_most_webgpus_storage_buffers() {
    let limits = webgpu_limits();
    let max = limits.max_storage_buffers_per_shader_stage as usize;
    assert_eq!(max, 8);
    let wide = super::optim::multi_tensor_specs();
    let specs = super::bindings::all_specs();
    for (spec, param_bytes) in &specs {
        let what = format!("{}::{}", spec.shader.name, spec.entry);
        let is_wide = wide.iter().any(|w| same(w, spec));
        assert_eq!(
            spec.bindings.len() > max,
            is_wide,
            "{what} binds {} storage buffers (WebGPU allows {max}); only the multi-tensor optimizer kernels, which \
             the policy turns off under those limits, may bind more: pack its tensors or split its dispatch",
            spec.bindings.len()
        );
        assert!(*param_bytes as u64 <= limits.max_uniform_buffer_binding_size, "{what}: parameter block");
    }
    for device_type in [wgpu::DeviceType::Cpu, wgpu::DeviceType::DiscreteGpu, wgpu::DeviceType::IntegratedGpu] {
        assert!(!webgpu_policy(device_type, &limits).multi_tensor_optimizer, "{device_type:?}");
    }
    let narrow = specs.iter().filter(|(s, _)| s.bindings.len() <= max).count();
    println!(
        "{narrow} of {} kernels bind at most {max} storage buffers; the other {} are off",
        specs.len(),
        wide.len()
    );
}

/// What one specialised entry point asks of a workgroup.
#[derive(Debug)]
struct Usage {
    size: [u32; 3],
    workgroup_bytes: u64,
}

/// The entry point of `spec` with `constants` applied: its workgroup size and the bytes of the
/// workgroup variables it uses.
fn usage(module: &Module, info: &ModuleInfo, spec: &KernelSpec, constants: &Constants) -> Result<Usage, String> {
    let consts: naga::back::PipelineConstants = constants.iter().map(|&(k, v)| (k.to_string(), v)).collect();
    let (m, i) = naga::back::pipeline_constants::process_overrides(
        module,
        info,
        Some((ShaderStage::Compute, spec.entry)),
        &consts,
    )
    .map_err(|e| format!("overrides: {e}"))?;
    let index = m.entry_points.iter().position(|e| e.name == spec.entry).ok_or("no such entry point")?;
    let uses = i.get_entry_point(index);
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(m.to_ctx()).map_err(|e| format!("layout: {e}"))?;
    let workgroup_bytes = m
        .global_variables
        .iter()
        .filter(|(h, g)| g.space == AddressSpace::WorkGroup && !uses[*h].is_empty())
        .map(|(_, g)| layouter[g.ty].size as u64)
        .sum();
    Ok(Usage { size: m.entry_points[index].workgroup_size, workgroup_bytes })
}

/// The features (as naga capabilities) an entry point's module needs beyond WebGPU's core.
fn needs_a_feature(module: &Module) -> Option<&'static str> {
    let without = |c: Caps| Validator::new(ValidationFlags::all(), Caps::all() - c).validate(module).is_err();
    [
        (Caps::SUBGROUP | Caps::SUBGROUP_BARRIER, "subgroups"),
        (Caps::SHADER_FLOAT16, "shader-f16"),
        (Caps::COOPERATIVE_MATRIX, "cooperative matrices"),
    ]
    .into_iter()
    .find(|(c, _)| without(*c))
    .map(|(_, name)| name)
}

fn constant(c: &Constants, name: &str) -> u32 {
    c.iter().find(|(k, _)| *k == name).map(|(_, v)| *v as u32).unwrap_or_else(|| panic!("no {name} in {c:?}"))
}

/// The smem tile of a launch of `matmul_smem`, from its constants.
fn smem_tile(c: &Constants) -> TileConfig {
    TileConfig {
        bm: constant(c, "BM"),
        bn: constant(c, "BN"),
        bk: constant(c, "BK"),
        tm: constant(c, "TM"),
        tn: constant(c, "TN"),
    }
}

#[test]
fn every_launch_fits_webgpus_workgroup_limits() {
    let limits = webgpu_limits();
    let smem_index = MatmulVariant::ALL.iter().position(|v| *v == MatmulVariant::Smem).expect("smem is a variant");
    let smem = super::matmul::specs()[smem_index].0;
    let sizes = super::bindings::all_launches();
    let mut modules: HashMap<&str, (Module, ModuleInfo)> = HashMap::new();
    let (mut checked, mut refused, mut errors) = (0, vec![], vec![]);
    for (spec, _) in super::bindings::all_specs() {
        let (module, info) = modules.entry(spec.shader.name).or_insert_with(|| {
            let m = naga::front::wgsl::parse_str(&spec.shader.source()).expect("every shader parses");
            let i = Validator::new(ValidationFlags::all(), Caps::all()).validate(&m).expect("every shader validates");
            (m, i)
        });
        let feature = {
            let mut only = module.clone();
            only.entry_points.retain(|e| e.name == spec.entry);
            naga::compact::compact(&mut only, naga::compact::KeepUnused::No);
            needs_a_feature(&only)
        };
        let sets = sizes.get(&(spec.shader.name, spec.entry)).cloned().unwrap_or_else(|| vec![vec![]]);
        for c in sets {
            let what = format!("{}::{} {c:?}", spec.shader.name, spec.entry);
            let u = match usage(module, info, &spec, &c) {
                Ok(u) => u,
                Err(e) => {
                    errors.push(format!("{what}: {e}"));
                    continue;
                }
            };
            if same(&spec, &smem) {
                // The host's formula, which the tile choice checks against the limits, is the shader's.
                let t = smem_tile(&c);
                assert_eq!(u.workgroup_bytes, t.workgroup_bytes(), "{what}: TileConfig::workgroup_bytes");
                assert_eq!(u.size.iter().product::<u32>(), t.invocations(), "{what}: TileConfig::invocations");
            }
            let invocations: u32 = u.size.iter().product();
            let over = invocations > limits.max_compute_invocations_per_workgroup
                || u.size[0] > limits.max_compute_workgroup_size_x
                || u.size[1] > limits.max_compute_workgroup_size_y
                || u.size[2] > limits.max_compute_workgroup_size_z
                || u.workgroup_bytes > limits.max_compute_workgroup_storage_size as u64;
            checked += 1;
            if !over {
                continue;
            }
            let host_refuses = if let Some(f) = feature {
                Some(format!("needs {f}, which --limits webgpu does not request"))
            } else if same(&spec, &smem) {
                smem_tile(&c).check_limits(&limits).err().map(|e| format!("{e:#}"))
            } else {
                None
            };
            match host_refuses {
                Some(why) => refused.push(format!("{what}: {why}")),
                None => {
                    errors.push(format!(
                    "{what}: workgroup {:?} ({invocations} invocations), {} bytes of workgroup memory exceed WebGPU's \
                     {} invocations / {} bytes, and the host would run it",
                    u.size, u.workgroup_bytes, limits.max_compute_invocations_per_workgroup,
                    limits.max_compute_workgroup_storage_size
                ))
                }
            }
        }
    }
    assert!(errors.is_empty(), "{} launches do not fit WebGPU's limits:\n{}", errors.len(), errors.join("\n"));
    println!("{checked} launches checked; {} over WebGPU's limits that the host never runs under them:", refused.len());
    for r in &refused {
        println!("  {r}");
    }
    // The smem variant keeps a large tile under these limits.
    let p = webgpu_policy(wgpu::DeviceType::DiscreteGpu, &limits);
    assert_eq!(p.matmul_variant, MatmulVariant::Smem);
    p.smem_large_tile.check_limits(&limits).unwrap();
    assert!(p.smem_large_tile.bm * p.smem_large_tile.bn > TileConfig::SMALL.bm * TileConfig::SMALL.bn);
}
