//! Host side of each WGSL kernel family: `shaders/<family>.wgsl` ↔ `kernels/<family>.rs`.

pub mod adapter;
pub mod attention;
pub mod elementwise;
pub mod fusion;
pub mod layernorm;
pub mod loss;
pub mod matmul;
pub mod matmul_bench;
pub mod optim;
pub mod reduce;

use anyhow::{bail, Result};

/// Fails with a readable message when a tensor's shape is not the one a kernel needs.
pub(crate) fn expect_shape(what: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        bail!("{what}: expected shape {want:?}, got {got:?}");
    }
    Ok(())
}
