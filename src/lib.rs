//! peft-wgpu: parameter-efficient fine-tuning (bottleneck adapters, AdapterFusion) of frozen
//! transformers on any GPU through wgpu and hand-written WGSL kernels.
//!
//! Modules: [`gpu`] (device, tensors, pipeline cache, batching), [`shaders`] (the WGSL sources),
//! [`kernels`] (one host module per shader family), [`reference`] (f64 CPU reference, tests only).

pub mod bench;
pub mod data;
pub mod datasets;
pub mod gpu;
pub mod io;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod reference;
pub mod shaders;
pub mod tokenizer;

pub use gpu::{Gpu, GpuOptions, GpuTensor};
pub use kernels::Activation;
pub mod grads;
pub mod train;
