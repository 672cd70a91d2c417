//! peft-wgpu: parameter-efficient fine-tuning (bottleneck adapters, AdapterFusion) of frozen
//! transformers on any GPU through wgpu and hand-written WGSL kernels.
//!
//! Layers, lowest first; a module imports only from layers below it (checked by
//! `tests/architecture.rs`): [`types`], [`shaders`] and [`env`](mod@env) → [`gpu`] → [`kernels`];
//! [`formats`] (disk formats, no GPU) → [`model`] → [`train`] → [`bench`] / [`datasets`] → the CLI.

/// Benchmarks check each kernel against the f64 reference before timing it: they need it.
#[cfg(feature = "reference")]
pub mod bench;
/// The command line (native only: progress bars, logging, Ctrl-C).
#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
pub mod datasets;
pub mod env;
pub mod formats;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod shaders;
pub mod train;
pub mod types;

pub use gpu::{Gpu, GpuOptions, GpuTensor};
pub use types::{Activation, WeightPrecision};
