//! peft-wgpu in the browser: the same engine (WGSL kernels, encoder, AdamW, AdapterHub writers)
//! built for `wasm32-unknown-unknown` on wgpu's WebGPU backend, driven from a static page
//! (`web/index.html`, `make web`). WebGPU cannot block, so every read-back is awaited: a training
//! step is recorded and submitted as natively (`submit_train_step`) and its one read-back (loss,
//! gradient norm) awaited; evaluation and export await theirs. No memory maps, threads or file
//! system: the model, tokenizer and data are bytes the page passes in.
//!
//! The crate is empty natively.
#![cfg(target_arch = "wasm32")]

mod export;
mod session;
mod trainer;

pub use session::Session;
