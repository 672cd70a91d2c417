//! peft-wgpu: parameter-efficient fine-tuning (bottleneck adapters, AdapterFusion) of frozen
//! transformers on any GPU through wgpu and hand-written WGSL kernels.
//!
//! Layers, lowest first; a module imports only from layers below it (checked by
//! `tests/architecture.rs`): [`types`] and [`shaders`] → [`gpu`] → [`kernels`];
//! [`formats`] (disk formats, no GPU) → [`model`] → [`train`] → [`bench`] / [`datasets`] → the CLI.

pub mod bench;
pub mod datasets;
pub mod formats;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod shaders;
pub mod train;
pub mod types;

/// The numerical helpers of the f64 references (`rel_err`, ...), at their old path for the
/// integration tests; each kernel's reference is `kernels::<op>::reference`.
#[cfg(any(test, feature = "reference"))]
pub use kernels::reference;

pub use gpu::{Gpu, GpuOptions, GpuTensor};
pub use types::Activation;
