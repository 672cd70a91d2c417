//! Every kernel translated for every backend wgpu targets, without a GPU: each entry point of
//! each shader ([`bindings::all_specs`](super::bindings), the list the binding check uses) with
//! every set of override constants its host can pass is parsed and validated by naga, its overrides
//! are applied (`naga::back::pipeline_constants::process_overrides`, what wgpu does when it builds
//! a pipeline) and it is written out as MSL (Metal), HLSL (DX12) and SPIR-V (Vulkan); the SPIR-V
//! also passes `spirv-val` where `spirv-tools` is installed (skipped with a note otherwise).
//!
//! The override sets: each kernel module's `launches()` lists the size constants its host computes
//! (workgroup sizes, threads per row, columns per thread, residual modes, the matmul variants'
//! workgroup shapes, [`TileConfig`](super::matmul::TileConfig) and
//! [`FragConfig`](super::matmul::FragConfig) candidates), each from the same function the host
//! dispatches with; every boolean override (bias, β, vec4 loads, quad directions, residual/sum
//! flags) takes both values and `ACT` every activation, all combinations. An entry point that uses
//! an integer override its module does not list fails, so a new override cannot escape.
//!
//! Features per backend, with the targets each is written for (what wgpu's backends request for a
//! device that offers the feature; a module's needs are found by validating it without each
//! capability):
//!
//! | module needs | SPIR-V (Vulkan)              | MSL (Metal)     | HLSL (DX12)       |
//! |--------------|------------------------------|-----------------|-------------------|
//! | nothing      | SPIR-V 1.3, `vulkan1.1`      | MSL 2.4         | SM 5.1 (FXC)      |
//! | subgroups    | SPIR-V 1.3, `vulkan1.1`      | MSL 2.4         | SM 6.0            |
//! | f16          | SPIR-V 1.3, `vulkan1.1`      | MSL 2.4         | SM 6.2            |
//! | coop. matrix | SPIR-V 1.3, `vulkan1.1`      | not tested (1)  | not tested (2)    |
//!
//! (1) wgpu's Metal backend offers 8×8 `simdgroup_matrix` only, and `matmul_coop` needs 16×16×16
//! f16→f32 (`MatmulVariant::unsupported_reason` refuses it). (2) wgpu's DX12 backend offers no
//! cooperative matrices (and naga's HLSL writer has no cooperative-matrix support). Where `coop`
//! cannot run the policy's fallback is tested in its place: `f16` (the same kernel with the
//! fragment products by plain invocations, for the same f16 numerics) and `smem` (what `auto`
//! picks on discrete GPUs); the test asserts both were translated for MSL and HLSL.
//!
//! Bounds checks are naga's defaults for each writer and workgroup memory is not zero-initialised
//! (as `gpu::pipelines` builds them).

use super::Constants;
use crate::gpu::KernelSpec;
use naga::valid::{Capabilities as Caps, ModuleInfo, ValidationFlags, Validator};
use naga::{Module, ShaderStage};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Backend {
    Spirv,
    Msl,
    Hlsl,
}

const BACKENDS: [Backend; 3] = [Backend::Spirv, Backend::Msl, Backend::Hlsl];

/// The features an entry point's module (its overrides applied, compacted to it) needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Needs {
    subgroups: bool,
    f16: bool,
    coop: bool,
}

impl Needs {
    fn of(module: &Module) -> Needs {
        let without = |c: Caps| Validator::new(ValidationFlags::all(), Caps::all() - c).validate(module).is_err();
        Needs {
            subgroups: without(Caps::SUBGROUP | Caps::SUBGROUP_BARRIER),
            f16: without(Caps::SHADER_FLOAT16),
            coop: without(Caps::COOPERATIVE_MATRIX),
        }
    }

    /// Whether wgpu's backend can offer every feature (see the module docs).
    fn offered_by(self, backend: Backend) -> bool {
        !(self.coop && backend != Backend::Spirv)
    }
}

/// One pipeline to translate: a kernel and the override constants its host passes.
struct Job {
    spec: KernelSpec,
    constants: Constants,
}

/// The override sets of one entry point: the host's size sets (or none), times both values of each
/// boolean override the entry uses, times every activation where it uses `ACT` and the size set
/// does not fix it. Fails on an integer override (other than `ACT`) of an entry point that no
/// module's `launches()` lists.
fn override_sets(spec: &KernelSpec, module: &Module, sizes: Option<&Vec<Constants>>) -> Result<Vec<Constants>, String> {
    let what = format!("{}::{}", spec.shader.name, spec.entry);
    // The overrides the entry point reaches: those left after compacting to it alone.
    let mut used = module.clone();
    used.entry_points.retain(|e| e.name == spec.entry);
    naga::compact::compact(&mut used, naga::compact::KeepUnused::No);
    let mut flags = vec![];
    let mut ints = vec![];
    for (_, o) in used.overrides.iter() {
        // naga names no override it makes for an override-sized array (those are derived).
        let Some(name) = o.name.clone() else { continue };
        let scalar = used.types[o.ty].inner.scalar_kind();
        if scalar == Some(naga::ScalarKind::Bool) {
            flags.push(name);
        } else {
            ints.push(name);
        }
    }
    let sizes = match sizes {
        Some(s) => s.clone(),
        None => {
            if let Some(n) = ints.iter().find(|n| *n != "ACT") {
                return Err(format!("{what}: override {n} has no values (list the host's in its module's launches())"));
            }
            vec![vec![]]
        }
    };
    let acts: Vec<f64> = crate::types::Activation::ALL.iter().map(|a| a.id()).collect();
    let flags: Vec<&'static str> = flags.into_iter().map(|f| &*Box::leak(f.into_boxed_str())).collect();
    let mut sets = vec![];
    for base in sizes {
        let fixed = |n: &str| base.iter().any(|(k, _)| *k == n);
        let free_flags: Vec<&'static str> = flags.iter().copied().filter(|f| !fixed(f)).collect();
        let act_values: Vec<Option<f64>> = if ints.iter().any(|n| n == "ACT") && !fixed("ACT") {
            acts.iter().map(|&a| Some(a)).collect()
        } else {
            vec![None]
        };
        for bits in 0u32..(1 << free_flags.len()) {
            for act in &act_values {
                let mut c = base.clone();
                c.extend(free_flags.iter().enumerate().map(|(i, f)| (*f, ((bits >> i) & 1) as f64)));
                if let Some(a) = act {
                    c.push(("ACT", *a));
                }
                sets.push(c);
            }
        }
    }
    Ok(sets)
}

/// The module of one job: its overrides applied for its entry point.
fn specialise(module: &Module, info: &ModuleInfo, job: &Job) -> Result<(Module, ModuleInfo), String> {
    let consts: naga::back::PipelineConstants = job.constants.iter().map(|&(k, v)| (k.to_string(), v)).collect();
    let (m, i) = naga::back::pipeline_constants::process_overrides(
        module,
        info,
        Some((ShaderStage::Compute, job.spec.entry)),
        &consts,
    )
    .map_err(|e| format!("overrides: {e}"))?;
    Ok((m.into_owned(), i.into_owned()))
}

/// Writes one specialised module for `backend`; SPIR-V comes back as words for `spirv-val`.
fn write(backend: Backend, module: &Module, info: &ModuleInfo, entry: &str, needs: Needs) -> Result<Vec<u32>, String> {
    match backend {
        Backend::Spirv => {
            let opts = naga::back::spv::Options {
                lang_version: (1, 3),
                zero_initialize_workgroup_memory: naga::back::spv::ZeroInitializeWorkgroupMemoryMode::None,
                ..Default::default()
            };
            let pipeline =
                naga::back::spv::PipelineOptions { shader_stage: ShaderStage::Compute, entry_point: entry.into() };
            naga::back::spv::write_vec(module, info, &opts, Some(&pipeline)).map_err(|e| format!("{e}"))
        }
        Backend::Msl => {
            let opts = naga::back::msl::Options {
                lang_version: (2, 4),
                zero_initialize_workgroup_memory: false,
                ..Default::default()
            };
            let pipeline = naga::back::msl::PipelineOptions {
                entry_point: Some((ShaderStage::Compute, entry.into())),
                ..Default::default()
            };
            let (text, _) =
                naga::back::msl::write_string(module, info, &opts, &pipeline).map_err(|e| format!("{e}"))?;
            nonempty(&text, "kernel void")?;
            Ok(vec![])
        }
        Backend::Hlsl => {
            use naga::back::hlsl::ShaderModel;
            let shader_model = if needs.f16 {
                ShaderModel::V6_2
            } else if needs.subgroups {
                ShaderModel::V6_0
            } else {
                ShaderModel::V5_1
            };
            let opts = naga::back::hlsl::Options {
                shader_model,
                zero_initialize_workgroup_memory: false,
                ..Default::default()
            };
            let pipeline =
                naga::back::hlsl::PipelineOptions { entry_point: Some((ShaderStage::Compute, entry.into())) };
            let mut text = String::new();
            naga::back::hlsl::Writer::new(&mut text, &opts, &pipeline)
                .write(module, info, None)
                .map_err(|e| format!("{e}"))?;
            nonempty(&text, "[numthreads(")?;
            Ok(vec![])
        }
    }
}

fn nonempty(text: &str, marker: &str) -> Result<(), String> {
    if text.contains(marker) {
        Ok(())
    } else {
        Err(format!("the output has no {marker:?}"))
    }
}

/// `spirv-val` on one module: `Ok(None)` where it is not installed.
fn spirv_val(words: &[u32]) -> Result<Option<()>, String> {
    use std::io::Write;
    let child = std::process::Command::new("spirv-val")
        .args(["--target-env", "vulkan1.1", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("spirv-val: {e}")),
    };
    child.stdin.take().expect("piped stdin").write_all(bytemuck::cast_slice(words)).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(Some(()))
    } else {
        Err(format!("spirv-val: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// What one run translated.
#[derive(Default)]
struct Report {
    translated: HashMap<Backend, usize>,
    skipped: Vec<String>,
    /// (shader, entry, backend) triples translated at least once.
    covered: std::collections::HashSet<(&'static str, &'static str, Backend)>,
    spirv_validated: usize,
    spirv_val_missing: bool,
    /// Modules this `spirv-val` cannot read (cooperative matrices, newer than it).
    spirv_val_too_old: usize,
    errors: Vec<String>,
}

/// Parses and validates each shader once, then translates every job on every backend that offers
/// what it needs, on all cores.
fn translate(jobs: &[Job], with_spirv_val: bool) -> Report {
    let mut modules: HashMap<&str, (Module, ModuleInfo)> = HashMap::new();
    let mut report = Report::default();
    for job in jobs {
        let shader = job.spec.shader;
        if modules.contains_key(shader.name) {
            continue;
        }
        let src = shader.source();
        let parsed = naga::front::wgsl::parse_str(&src).map_err(|e| e.emit_to_string(&src)).and_then(|m| {
            Validator::new(ValidationFlags::all(), Caps::all())
                .validate(&m)
                .map(|i| (m, i))
                .map_err(|e| e.emit_to_string(&src))
        });
        match parsed {
            Ok(p) => {
                modules.insert(shader.name, p);
            }
            Err(e) => report.errors.push(format!("{}: {e}", shader.name)),
        }
    }
    // What each entry point needs (with its default overrides: no override changes the features).
    let mut needs: HashMap<(&str, &str), Needs> = HashMap::new();
    for job in jobs {
        let key = (job.spec.shader.name, job.spec.entry);
        if let (false, Some((module, info))) = (needs.contains_key(&key), modules.get(job.spec.shader.name)) {
            let defaults = Job { spec: job.spec, constants: vec![] };
            if let Ok((m, _)) = specialise(module, info, &defaults) {
                needs.insert(key, Needs::of(&m));
            }
        }
    }
    let next = AtomicUsize::new(0);
    let coop_too_old = AtomicBool::new(false);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let results: Vec<Report> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut r = Report::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        let what = format!("{}::{} {:?}", job.spec.shader.name, job.spec.entry, job.constants);
                        let Some((module, info)) = modules.get(job.spec.shader.name) else { continue };
                        let needs = needs.get(&(job.spec.shader.name, job.spec.entry)).copied().unwrap_or_default();
                        let (m, info) = match specialise(module, info, job) {
                            Ok(x) => x,
                            Err(e) => {
                                r.errors.push(format!("{what}: {e}"));
                                continue;
                            }
                        };
                        for backend in BACKENDS {
                            if !needs.offered_by(backend) {
                                r.skipped.push(format!("{what} on {backend:?}"));
                                continue;
                            }
                            match write(backend, &m, &info, job.spec.entry, needs) {
                                Ok(words) => {
                                    *r.translated.entry(backend).or_default() += 1;
                                    r.covered.insert((job.spec.shader.name, job.spec.entry, backend));
                                    if backend == Backend::Spirv && with_spirv_val && !r.spirv_val_missing {
                                        if needs.coop && coop_too_old.load(Ordering::Relaxed) {
                                            r.spirv_val_too_old += 1;
                                            continue;
                                        }
                                        match spirv_val(&words) {
                                            Ok(Some(())) => r.spirv_validated += 1,
                                            Ok(None) => r.spirv_val_missing = true,
                                            // Debian bookworm's spirv-tools (2023.1) predates
                                            // SPV_KHR_cooperative_matrix (capability 6022).
                                            Err(e) if needs.coop && e.contains("Invalid capability operand: 6022") => {
                                                coop_too_old.store(true, Ordering::Relaxed);
                                                r.spirv_val_too_old += 1
                                            }
                                            Err(e) => r.errors.push(format!("{what} (needs {needs:?}): {e}")),
                                        }
                                    }
                                }
                                Err(e) => r.errors.push(format!("{what} on {backend:?} (needs {needs:?}): {e}")),
                            }
                        }
                    }
                    r
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a translation thread panicked")).collect()
    });
    for r in results {
        for (b, n) in r.translated {
            *report.translated.entry(b).or_default() += n;
        }
        report.skipped.extend(r.skipped);
        report.covered.extend(r.covered);
        report.spirv_validated += r.spirv_validated;
        report.spirv_val_missing |= r.spirv_val_missing;
        report.spirv_val_too_old += r.spirv_val_too_old;
        report.errors.extend(r.errors);
    }
    report
}

/// Every (kernel, override set) the hosts can dispatch.
fn all_jobs() -> Result<Vec<Job>, Vec<String>> {
    let launches = super::bindings::all_launches();
    let mut modules: HashMap<&str, Module> = HashMap::new();
    let mut jobs = vec![];
    let mut errors = vec![];
    for (spec, _) in super::bindings::all_specs() {
        let shader = spec.shader;
        let module = modules.entry(shader.name).or_insert_with(|| {
            naga::front::wgsl::parse_str(&shader.source()).expect("every shader parses (shaders' tests)")
        });
        match override_sets(&spec, module, launches.get(&(shader.name, spec.entry))) {
            Ok(sets) => jobs.extend(sets.into_iter().map(|constants| Job { spec, constants })),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(jobs)
    } else {
        Err(errors)
    }
}

#[test]
fn every_kernel_translates_to_msl_hlsl_and_spirv() {
    let start = Instant::now();
    let jobs = all_jobs().unwrap_or_else(|e| panic!("override sets:\n{}", e.join("\n")));
    let report = translate(&jobs, true);
    let shown: Vec<&String> = report.errors.iter().take(20).collect();
    assert!(
        report.errors.is_empty(),
        "{} of {} pipelines failed to translate (first 20):\n{}",
        report.errors.len(),
        jobs.len(),
        shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
    // Where `coop` cannot go, its fallbacks went.
    for backend in [Backend::Msl, Backend::Hlsl] {
        for entry in ["matmul_f16", "matmul_smem"] {
            assert!(
                report.covered.iter().any(|&(_, e, b)| e == entry && b == backend),
                "{entry}, a fallback of matmul_coop, was not translated for {backend:?}"
            );
        }
    }
    let entries: std::collections::HashSet<_> = jobs.iter().map(|j| (j.spec.shader.name, j.spec.entry)).collect();
    let total: usize = report.translated.values().sum();
    println!(
        "{} entry points, {} override sets: {total} translations (SPIR-V {}, MSL {}, HLSL {}), {} skipped \
         (cooperative matrices outside Vulkan), in {:.1} s",
        entries.len(),
        jobs.len(),
        report.translated.get(&Backend::Spirv).copied().unwrap_or(0),
        report.translated.get(&Backend::Msl).copied().unwrap_or(0),
        report.translated.get(&Backend::Hlsl).copied().unwrap_or(0),
        report.skipped.len(),
        start.elapsed().as_secs_f64()
    );
    if report.spirv_val_missing {
        println!("spirv-val is not installed (Debian: spirv-tools): skipped validating the SPIR-V");
    } else {
        println!("spirv-val --target-env vulkan1.1 accepted all {} SPIR-V modules", report.spirv_validated);
    }
    if report.spirv_val_too_old > 0 {
        println!(
            "spirv-val skipped {} cooperative-matrix modules: this spirv-tools predates SPV_KHR_cooperative_matrix",
            report.spirv_val_too_old
        );
    }
}

/// A bad override set, a bad value and a missing override list all fail.
#[test]
fn translation_failures_are_caught() {
    let smem = super::matmul::launches().into_iter().find(|(s, _)| s.entry == "matmul_smem").unwrap().0;
    let bad = |constants: Constants| {
        let report = translate(&[Job { spec: smem, constants }], false);
        assert!(!report.errors.is_empty(), "expected a failure");
        report.errors.join("\n")
    };
    // A zero workgroup size (the shader divides by it).
    assert!(bad(vec![("WG", 0.0)]).contains("overrides: Division by zero"));
    // An override the shader does not declare.
    assert!(bad(vec![("NO_SUCH", 1.0)]).contains("NO_SUCH"));
    // An array of zero elements (BM = 0: the A slice is empty).
    assert!(!bad(vec![("BM", 0.0), ("BK", 0.0)]).is_empty());
    // An entry point whose integer override no module lists.
    let src = crate::shaders::LOSS.source();
    let module = naga::front::wgsl::parse_str(&src).unwrap();
    let softmax = super::loss::launches()[1].0;
    assert!(override_sets(&softmax, &module, None).unwrap_err().contains("override WG has no values"));
}
