//! The host's declaration of every kernel checked against its WGSL, without a GPU: each entry point
//! is reflected with naga from the composed source (`shaders::Shader::source`, common snippets
//! included) and must bind exactly what its [`KernelSpec`] says — a uniform parameter block at
//! `@binding(0)` of the size of the host's `#[repr(C)]` struct, and storage buffers at
//! `@binding(1..=n)` with the access (read-only or read_write) of [`KernelSpec::bindings`].

use crate::gpu::{Access, KernelSpec};
use naga::{AddressSpace, StorageAccess, TypeInner};
use std::collections::HashMap;

/// Every kernel entry point of the crate with the size of the parameter block its host passes.
pub(super) fn all_specs() -> Vec<(KernelSpec, usize)> {
    let mut v = vec![];
    v.extend(super::adapter::specs());
    v.extend(super::attention::specs());
    v.extend(super::dropout::specs());
    v.extend(super::elementwise::specs());
    v.extend(super::fusion::specs());
    v.extend(super::layernorm::specs());
    v.extend(super::loss::specs());
    v.extend(super::matmul::specs());
    v.extend(super::optim::specs());
    v.extend(super::reduce::specs());
    v
}

/// The size constants (override sets) the hosts can dispatch each entry point with, by (shader,
/// entry point): each kernel module's `launches()` (the translation and limits checks use them).
pub(super) fn all_launches() -> HashMap<(&'static str, &'static str), Vec<super::Constants>> {
    [
        super::adapter::launches(),
        super::attention::launches(),
        super::dropout::launches(),
        super::elementwise::launches(),
        super::fusion::launches(),
        super::layernorm::launches(),
        super::loss::launches(),
        super::matmul::launches(),
        super::reduce::launches(),
    ]
    .into_iter()
    .flatten()
    .map(|(spec, sets)| ((spec.shader.name, spec.entry), sets))
    .collect()
}

/// How one entry point uses one `@group(0) @binding(i)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// A uniform block of this many bytes.
    Uniform(u32),
    Storage(Access),
    Other,
}

/// The module of `spec` parsed and validated (every capability: the f16 and cooperative-matrix
/// modules need theirs), with the slots its entry point uses, by binding number.
fn reflect(spec: &KernelSpec) -> Result<Vec<(u32, Slot)>, String> {
    let what = format!("{}::{}", spec.shader.name, spec.entry);
    let src = spec.shader.source();
    let module = naga::front::wgsl::parse_str(&src).map_err(|e| format!("{what}: {}", e.emit_to_string(&src)))?;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
        .validate(&module)
        .map_err(|e| format!("{what}: {}", e.emit_to_string(&src)))?;
    let index = module
        .entry_points
        .iter()
        .position(|e| e.name == spec.entry && e.stage == naga::ShaderStage::Compute)
        .ok_or_else(|| format!("{what}: no compute entry point of that name"))?;
    let uses = info.get_entry_point(index);
    let mut slots = vec![];
    for (handle, global) in module.global_variables.iter() {
        let Some(binding) = &global.binding else { continue };
        if uses[handle].is_empty() {
            continue;
        }
        if binding.group != 0 {
            return Err(format!(
                "{what}: {:?} is in group {}, the host binds group 0 only",
                global.name, binding.group
            ));
        }
        let slot = match global.space {
            AddressSpace::Uniform => match &module.types[global.ty].inner {
                TypeInner::Struct { span, .. } => Slot::Uniform(*span),
                other => Slot::Uniform(other.size(module.to_ctx())),
            },
            AddressSpace::Storage { access } if access.contains(StorageAccess::STORE) => {
                Slot::Storage(Access::ReadWrite)
            }
            AddressSpace::Storage { .. } => Slot::Storage(Access::Read),
            _ => Slot::Other,
        };
        slots.push((binding.binding, slot));
    }
    slots.sort_by_key(|s| s.0);
    Ok(slots)
}

/// Compares one host declaration with its entry point's bindings.
fn check(spec: &KernelSpec, param_bytes: usize) -> Result<(), String> {
    let what = format!("{}::{}", spec.shader.name, spec.entry);
    let slots = reflect(spec)?;
    let n = spec.bindings.len() as u32;
    let mut want = vec![(0, Slot::Uniform(param_bytes as u32))];
    want.extend(spec.bindings.iter().enumerate().map(|(i, a)| (i as u32 + 1, Slot::Storage(*a))));
    if slots.iter().any(|s| s.0 > n) || slots.len() != want.len() {
        return Err(format!(
            "{what}: the host declares a uniform block and {n} storage bindings, the WGSL entry point uses {:?}",
            slots
        ));
    }
    for (got, want) in slots.iter().zip(&want) {
        if got != want {
            return Err(format!("{what}: @binding({}) is {:?} in the WGSL, {:?} on the host", got.0, got.1, want.1));
        }
    }
    Ok(())
}

#[test]
fn every_kernel_binds_what_its_wgsl_declares() {
    let specs = all_specs();
    let errors: Vec<String> = specs.iter().filter_map(|(s, p)| check(s, *p).err()).collect();
    assert!(errors.is_empty(), "{} host declarations disagree with their WGSL:\n{}", errors.len(), errors.join("\n"));
    println!("{} kernel entry points checked against their WGSL", specs.len());
}

/// Every compute entry point of every shader has a host declaration (so none escapes the check).
#[test]
fn every_entry_point_is_declared() {
    let specs = all_specs();
    for shader in crate::shaders::ALL {
        let module = naga::front::wgsl::parse_str(&shader.source()).unwrap();
        for e in &module.entry_points {
            assert!(
                specs.iter().any(|(s, _)| s.entry == e.name),
                "{}::{} has no KernelSpec in kernels (add it to its module's specs())",
                shader.name,
                e.name
            );
        }
    }
}

/// A declaration that disagrees with the WGSL fails: an access flipped, a binding missing or added,
/// a parameter block of another size.
#[test]
fn mismatches_are_caught() {
    let (spec, params) = super::layernorm::specs()[0];
    check(&spec, params).unwrap();
    let mut flipped = spec.bindings.to_vec();
    flipped[0] = Access::ReadWrite;
    let flipped = KernelSpec { bindings: Box::leak(flipped.into_boxed_slice()), ..spec };
    assert!(check(&flipped, params).unwrap_err().contains("@binding(1)"));
    let short = KernelSpec { bindings: &spec.bindings[1..], ..spec };
    assert!(check(&short, params).is_err());
    let mut long = spec.bindings.to_vec();
    long.push(Access::Read);
    let long = KernelSpec { bindings: Box::leak(long.into_boxed_slice()), ..spec };
    assert!(check(&long, params).is_err());
    assert!(check(&spec, params + 16).unwrap_err().contains("@binding(0)"));
    let missing = KernelSpec { entry: "no_such_entry", ..spec };
    assert!(check(&missing, params).is_err());
}
