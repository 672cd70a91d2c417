//! Helpers shared by the integration tests: the GPU test helpers of `kernels::test_support`, the
//! fixtures, and running the `peft` binary.
#![allow(dead_code)]

/// One GPU per test binary, seeded random data, poisoning, `assert_close`: the kernels' helpers.
#[allow(unused_imports)]
pub use peft_wgpu::kernels::test_support::*;

pub mod cli;
pub mod fixtures;
pub mod grads;
#[allow(unused_imports)]
pub use fixtures::*;
