//! The policy's resolution without a GPU: device defaults, each override, and their precedence
//! (options > environment > device), through `EnvOverrides::from_lookup` (no process environment).

use super::*;
use std::collections::HashMap;

fn env(vars: &[(&str, &str)]) -> EnvOverrides {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    EnvOverrides::from_lookup(|n| map.get(n).cloned()).unwrap()
}

/// lavapipe on AVX2: a CPU driver with subgroups of exactly 8.
fn lavapipe(limits: &wgpu::Limits) -> DeviceFacts<'_> {
    DeviceFacts {
        device_type: wgpu::DeviceType::Cpu,
        features: wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16,
        subgroup_min_size: 8,
        subgroup_max_size: 8,
        limits,
    }
}

/// A discrete GPU with tensor cores (an H100 as wgpu sees it).
fn discrete(limits: &wgpu::Limits) -> DeviceFacts<'_> {
    DeviceFacts {
        device_type: wgpu::DeviceType::DiscreteGpu,
        features: wgpu::Features::SUBGROUP
            | wgpu::Features::SHADER_F16
            | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
        subgroup_min_size: 32,
        subgroup_max_size: 32,
        limits,
    }
}

/// Limits of an adapter beyond WebGPU's defaults (lavapipe's workgroup memory and storage buffers).
fn adapter_limits() -> wgpu::Limits {
    wgpu::Limits {
        max_storage_buffers_per_shader_stage: 1 << 20,
        max_compute_workgroup_storage_size: 64 << 10,
        max_compute_invocations_per_workgroup: 1024,
        max_compute_workgroup_size_x: 1024,
        max_storage_buffer_binding_size: 1 << 31,
        max_buffer_size: 1 << 32,
        ..Default::default()
    }
}

fn resolve(facts: &DeviceFacts, options: &GpuOptions, vars: &[(&str, &str)]) -> KernelPolicy {
    KernelPolicy::resolve(facts, options, &env(vars)).unwrap()
}

#[test]
fn device_defaults() {
    let limits = adapter_limits();
    let cpu = resolve(&lavapipe(&limits), &GpuOptions::default(), &[]);
    assert_eq!(
        cpu,
        KernelPolicy {
            is_cpu: true,
            matmul_variant: MatmulVariant::Subgroup,
            smem_large_tile: TileConfig::LARGE,
            adapter_kernel: AdapterKernel::Matmul,
            attention_kernel: AttentionKernel::Separate,
            submit: SubmitPolicy::PerPass,
            shader_checks: cfg!(debug_assertions),
            cooperative_matrix: false,
            limits: LimitsMode::Adapter,
            multi_tensor_optimizer: true,
            buffer_pool: true,
            seq_multiple: 1,
            overridden_by: vec![],
        }
    );
    let gpu = resolve(&discrete(&limits), &GpuOptions::default(), &[]);
    assert_eq!(
        (gpu.is_cpu, gpu.matmul_variant, gpu.adapter_kernel, gpu.submit, gpu.cooperative_matrix, gpu.seq_multiple),
        (false, MatmulVariant::Smem, AdapterKernel::Matmul, SubmitPolicy::PerLayer, true, 8)
    );
}

/// The matmul device rule (what kernels/matmul/tests_variants.rs checks on the real device).
#[test]
fn matmul_device_rule() {
    let limits = wgpu::Limits::default();
    let rule = |device_type, features, sgs: (u32, u32)| {
        MatmulVariant::for_device(&DeviceFacts {
            device_type,
            features,
            subgroup_min_size: sgs.0,
            subgroup_max_size: sgs.1,
            limits: &limits,
        })
    };
    use wgpu::{DeviceType as D, Features as F};
    assert_eq!(rule(D::Cpu, F::SUBGROUP, (8, 8)), MatmulVariant::Subgroup);
    assert_eq!(rule(D::Cpu, F::SUBGROUP, (4, 8)), MatmulVariant::Register);
    assert_eq!(rule(D::Cpu, F::empty(), (8, 8)), MatmulVariant::Register);
    assert_eq!(rule(D::DiscreteGpu, F::empty(), (32, 32)), MatmulVariant::Smem);
    assert_eq!(rule(D::IntegratedGpu, F::SUBGROUP, (8, 8)), MatmulVariant::Tiled);
    assert_eq!(rule(D::VirtualGpu, F::empty(), (0, 0)), MatmulVariant::Tiled);
    assert_eq!(rule(D::Other, F::empty(), (0, 0)), MatmulVariant::Tiled);
    // A discrete GPU too small for the smallest smem tile gets the tiled kernel.
    let tiny = wgpu::Limits { max_compute_workgroup_storage_size: 4096, ..Default::default() };
    let d = DeviceFacts { limits: &tiny, ..discrete(&limits) };
    assert_eq!(MatmulVariant::for_device(&d), MatmulVariant::Tiled);
}

#[test]
fn environment_overrides_the_device() {
    let limits = wgpu::Limits::default();
    let p = resolve(
        &lavapipe(&limits),
        &GpuOptions::default(),
        &[
            (env::MATMUL_VARIANT, "tiled"),
            (env::SMEM_LARGE_TILE, "128x128x16/8x8"),
            (env::ADAPTER_KERNEL, "matmul"),
            (env::SUBMIT_PER_LAYER, "1"),
            (env::SHADER_CHECKS, if cfg!(debug_assertions) { "off" } else { "on" }),
        ],
    );
    assert_eq!(p.matmul_variant, MatmulVariant::Tiled);
    assert_eq!(p.smem_large_tile, TileConfig { bm: 128, bn: 128, bk: 16, tm: 8, tn: 8 });
    assert_eq!(p.adapter_kernel, AdapterKernel::Matmul);
    assert_eq!(p.submit, SubmitPolicy::PerLayer);
    assert_eq!(p.shader_checks, !cfg!(debug_assertions));
    assert_eq!(p.overridden_by.len(), 5);
    let g = resolve(
        &discrete(&limits),
        &GpuOptions::default(),
        &[(env::ADAPTER_KERNEL, "fused"), (env::SUBMIT_PER_LAYER, "off")],
    );
    assert_eq!((g.adapter_kernel, g.submit), (AdapterKernel::Fused, SubmitPolicy::PerPass));
}

#[test]
fn options_override_the_environment() {
    let limits = wgpu::Limits::default();
    let options = GpuOptions {
        matmul_variant: Some(MatmulVariant::Basic),
        smem_large_tile: Some(TileConfig::MEDIUM),
        adapter_kernel: Some(AdapterKernel::Fused),
        submit: Some(SubmitPolicy::PerPass),
        shader_checks: Some(true),
        ..GpuOptions::default()
    };
    let vars = [
        (env::MATMUL_VARIANT, "smem"),
        (env::SMEM_LARGE_TILE, "64x64x16/4x4"),
        (env::ADAPTER_KERNEL, "matmul"),
        (env::SUBMIT_PER_LAYER, "on"),
        (env::SHADER_CHECKS, "off"),
    ];
    let p = resolve(&discrete(&limits), &options, &vars);
    assert_eq!(
        (p.matmul_variant, p.smem_large_tile, p.adapter_kernel, p.submit, p.shader_checks),
        (MatmulVariant::Basic, TileConfig::MEDIUM, AdapterKernel::Fused, SubmitPolicy::PerPass, true)
    );
    assert!(p.overridden_by.iter().all(|s| s.starts_with("GpuOptions::")), "{:?}", p.overridden_by);
    assert!(p.to_string().contains("overridden by GpuOptions::matmul_variant"), "{p}");
}

#[test]
fn cooperative_matrix_request() {
    let none = EnvOverrides::default();
    let off = env(&[(env::COOP, "off")]);
    let on = GpuOptions { cooperative_matrix: Some(true), ..Default::default() };
    assert!(KernelPolicy::requests_cooperative_matrix(&GpuOptions::default(), &none));
    assert!(!KernelPolicy::requests_cooperative_matrix(&GpuOptions::default(), &off));
    assert!(KernelPolicy::requests_cooperative_matrix(&on, &off));
    let no = GpuOptions { cooperative_matrix: Some(false), ..Default::default() };
    assert!(!KernelPolicy::requests_cooperative_matrix(&no, &none));
}

/// A tile the shader cannot take is an error naming its source, on any device.
#[test]
fn bad_tiles_are_errors() {
    let limits = wgpu::Limits::default();
    let e = KernelPolicy::resolve(
        &lavapipe(&limits),
        &GpuOptions::default(),
        &env(&[(env::SMEM_LARGE_TILE, "128x128x8/5x8")]),
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains(env::SMEM_LARGE_TILE) && msg.contains("128x128x8/5x8") && msg.contains("BMxBNxBK/TMxTN"),
        "{msg}"
    );
    let options = GpuOptions {
        smem_large_tile: Some(TileConfig { bm: 128, bn: 128, bk: 6, tm: 8, tn: 8 }),
        ..Default::default()
    };
    let e = KernelPolicy::resolve(&lavapipe(&limits), &options, &EnvOverrides::default()).unwrap_err();
    assert!(format!("{e:#}").contains("GpuOptions::smem_large_tile"), "{e:#}");
    // A valid tile beyond this device's limits is kept: the smem variant passes over it.
    let huge = "256x256x16/8x8";
    let p = resolve(&lavapipe(&limits), &GpuOptions::default(), &[(env::SMEM_LARGE_TILE, huge)]);
    assert_eq!(p.smem_large_tile.to_string(), huge);
}

/// Every name the environment accepts is a variant or adapter path, and the other way round.
#[test]
fn environment_choices_match_the_types() {
    for &c in env::MATMUL_VARIANT_CHOICES {
        let v = MatmulVariant::parse(c).unwrap();
        assert_eq!(v.map(|v| v.name()).unwrap_or("auto"), c);
    }
    for v in MatmulVariant::ALL {
        assert!(env::MATMUL_VARIANT_CHOICES.contains(&v.name()));
    }
    for &c in &env::ADAPTER_KERNEL_CHOICES[1..] {
        assert_eq!(AdapterKernel::parse(c).unwrap().name(), c);
    }
    assert!(AdapterKernel::parse("both").is_err());
    for &c in &env::ATTENTION_KERNEL_CHOICES[1..] {
        assert_eq!(AttentionKernel::parse(c).unwrap().name(), c);
    }
    assert!(AttentionKernel::parse("flash").is_err());
}

/// The attention kernels: fused on GPUs, separate on CPU drivers by default; the variable, then
/// the option, override.
#[test]
fn attention_kernel_default_and_overrides() {
    let limits = adapter_limits();
    for (facts, default, other) in [
        (lavapipe(&limits), AttentionKernel::Separate, AttentionKernel::Fused),
        (discrete(&limits), AttentionKernel::Fused, AttentionKernel::Separate),
    ] {
        assert_eq!(resolve(&facts, &GpuOptions::default(), &[]).attention_kernel, default);
        let p = resolve(&facts, &GpuOptions::default(), &[(env::ATTENTION_KERNEL, other.name())]);
        assert_eq!((p.attention_kernel, p.overridden_by.clone()), (other, vec![env::ATTENTION_KERNEL]));
        let options = GpuOptions { attention_kernel: Some(default), ..Default::default() };
        let p = resolve(&facts, &options, &[(env::ATTENTION_KERNEL, other.name())]);
        assert_eq!(p.attention_kernel, default);
        assert_eq!(p.overridden_by, ["GpuOptions::attention_kernel"]);
        assert!(p.to_string().contains(&format!("attention {}", default.name())), "{p}");
    }
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
fn tile_configs_parse_and_print() {
    assert_eq!("128x128x8/8x8".parse::<TileConfig>().unwrap(), TileConfig::LARGE);
    assert_eq!(TileConfig::LARGE.to_string(), "128x128x8/8x8");
    let gpu = wgpu::Limits { max_compute_workgroup_storage_size: 48 << 10, ..Default::default() };
    for t in [TileConfig::LARGE, TileConfig::MEDIUM, TileConfig::SMALL] {
        t.check_limits(&gpu).unwrap();
    }
    // WebGPU's default 16 KiB of workgroup memory holds only the small tile.
    assert!(TileConfig::LARGE.check_limits(&wgpu::Limits::default()).is_err());
    assert!(TileConfig::MEDIUM.check_limits(&wgpu::Limits::default()).is_err());
    TileConfig::SMALL.check_limits(&wgpu::Limits::default()).unwrap();
}

#[test]
fn display_is_one_line() {
    let limits = adapter_limits();
    let p = resolve(&lavapipe(&limits), &GpuOptions::default(), &[(env::COOP, "0")]);
    let s = p.to_string();
    assert!(!s.contains('\n'));
    assert!(
        s.starts_with(
            "matmul subgroup (smem large tile 128x128x8/8x8), adapter matmul, attention separate, submit per pass, \
             shader checks "
        ),
        "{s}"
    );
    assert!(
        s.ends_with(
            "cooperative matrices off, batches padded to a multiple of 1, optimizer multi-tensor, limits adapter; \
             overridden by PEFT_COOP"
        ),
        "{s}"
    );
}

/// `--limits webgpu` (or `PEFT_LIMITS=webgpu`): exactly WebGPU's default limits and no optional
/// feature are requested, and the policy resolved from them picks kernels that fit them.
#[test]
fn webgpu_limits_request_and_policy() {
    let adapter = adapter_limits();
    let offered = wgpu::Features::all_webgpu_mask() | super::super::OPTIONAL_FEATURES;
    let webgpu = GpuOptions { limits: Some(LimitsMode::WebGpu), ..Default::default() };
    for (options, vars) in [(&webgpu, &[][..]), (&GpuOptions::default(), &[(env::LIMITS, "webgpu")][..])] {
        let r = KernelPolicy::device_request(offered, &adapter, options, &env(vars)).unwrap();
        assert_eq!(r.mode, LimitsMode::WebGpu);
        assert_eq!(r.features, wgpu::Features::empty());
        assert_eq!(r.limits, wgpu::Limits::default());
        let l = &r.limits;
        assert_eq!(
            (
                l.max_storage_buffers_per_shader_stage,
                l.max_storage_buffer_binding_size,
                l.max_buffer_size,
                l.max_compute_workgroup_storage_size,
                l.max_compute_invocations_per_workgroup
            ),
            (8, 128 << 20, 256 << 20, 16 << 10, 256)
        );
        // lavapipe and a discrete GPU, as the device is opened: the requested features and limits.
        for device_type in [wgpu::DeviceType::Cpu, wgpu::DeviceType::DiscreteGpu] {
            let facts = DeviceFacts { features: r.features, ..DeviceFacts { device_type, ..lavapipe(&r.limits) } };
            let p = KernelPolicy::resolve(&facts, options, &env(vars)).unwrap();
            assert_eq!(p.limits, LimitsMode::WebGpu);
            assert!(!p.multi_tensor_optimizer && !p.cooperative_matrix);
            let want = if device_type == wgpu::DeviceType::Cpu { MatmulVariant::Register } else { MatmulVariant::Smem };
            assert_eq!(p.matmul_variant, want, "{device_type:?}");
            assert_eq!(p.smem_large_tile, TileConfig::LARGE_16K);
            p.smem_large_tile.check_limits(&r.limits).unwrap();
            assert!(p.to_string().contains("optimizer per tensor, limits webgpu"), "{p}");
            assert!(p.overridden_by.contains(&if vars.is_empty() { "GpuOptions::limits" } else { env::LIMITS }));
        }
    }
    // The default: the adapter's limits and the optional features it offers.
    let r = KernelPolicy::device_request(offered, &adapter, &GpuOptions::default(), &env(&[])).unwrap();
    assert_eq!((r.mode, r.features, &r.limits), (LimitsMode::Adapter, super::super::OPTIONAL_FEATURES, &adapter));
    // The option wins over the environment.
    let adapter_opt = GpuOptions { limits: Some(LimitsMode::Adapter), ..Default::default() };
    let r = KernelPolicy::device_request(offered, &adapter, &adapter_opt, &env(&[(env::LIMITS, "webgpu")])).unwrap();
    assert_eq!(r.mode, LimitsMode::Adapter);
}

/// An adapter below WebGPU's defaults cannot be opened in webgpu mode: an error naming the limit.
#[test]
fn webgpu_limits_beyond_the_adapter_are_an_error() {
    let small = wgpu::Limits { max_storage_buffers_per_shader_stage: 4, ..Default::default() };
    let webgpu = GpuOptions { limits: Some(LimitsMode::WebGpu), ..Default::default() };
    let e = KernelPolicy::device_request(wgpu::Features::empty(), &small, &webgpu, &env(&[])).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("max_storage_buffers_per_shader_stage") && msg.contains("WebGPU: 8"), "{msg}");
    for m in LimitsMode::ALL {
        assert_eq!(LimitsMode::parse(m.name()).unwrap(), m);
        assert!(env::LIMITS_CHOICES.contains(&m.name()));
    }
    assert!(LimitsMode::parse("browser").is_err());
}
