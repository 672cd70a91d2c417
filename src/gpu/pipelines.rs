//! Compute pipelines, built once per (shader, entry point, override constants) and cached.
//!
//! Binding convention for every kernel: `@group(0) @binding(0)` is a uniform parameter block,
//! `@binding(1..=n)` are storage buffers in the order of [`KernelSpec::bindings`].

use crate::shaders::Shader;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How a kernel uses one storage buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
}

/// One entry point of one shader and the storage buffers it binds.
#[derive(Clone, Copy, Debug)]
pub struct KernelSpec {
    pub shader: &'static Shader,
    pub entry: &'static str,
    pub bindings: &'static [Access],
}

/// A pipeline ready to dispatch.
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub label: String,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    shader: &'static str,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
}

pub struct PipelineCache {
    map: Mutex<HashMap<Key, Arc<Pipeline>>>,
    /// Whether trusted shaders keep wgpu's runtime checks (the GPU's `KernelPolicy::shader_checks`).
    runtime_checks: bool,
}

impl PipelineCache {
    pub fn new(runtime_checks: bool) -> Self {
        Self { map: Mutex::default(), runtime_checks }
    }

    /// Number of pipelines built so far.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, device: &wgpu::Device, spec: &KernelSpec, constants: &[(&'static str, f64)]) -> Arc<Pipeline> {
        let key = Key {
            shader: spec.shader.name,
            entry: spec.entry,
            constants: constants.iter().map(|&(k, v)| (k, v.to_bits())).collect(),
        };
        if let Some(p) = self.map.lock().unwrap().get(&key) {
            return p.clone();
        }
        let p = Arc::new(build(device, spec, constants, self.runtime_checks));
        self.map.lock().unwrap().insert(key, p.clone());
        p
    }
}

fn build(device: &wgpu::Device, spec: &KernelSpec, constants: &[(&str, f64)], runtime_checks: bool) -> Pipeline {
    let label = format!("{}::{}", spec.shader.name, spec.entry);
    let module = spec.shader.module(device, runtime_checks);
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }];
    for (i, a) in spec.bindings.iter().enumerate() {
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: i as u32 + 1,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: *a == Access::Read },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    }
    let layout =
        device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&label), entries: &entries });
    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&label),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&label),
        layout: Some(&pl),
        module: &module,
        entry_point: Some(spec.entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants,
            // Our kernels write their workgroup memory before reading it.
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    Pipeline { pipeline, layout, label }
}
