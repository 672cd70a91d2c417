//! One folder per WGSL kernel family: `kernels/<op>/mod.rs` (host side) beside `shaders/<op>.wgsl`,
//! with its f64 reference in `kernels/<op>/reference.rs` (tests and the `reference` feature) and its
//! GPU tests in `kernels/<op>/tests.rs`. Matmul's variants are files of `kernels/matmul/`.

pub mod adapter;
pub mod attention;
#[cfg(test)]
mod bindings;
pub mod dropout;
pub mod elementwise;
pub mod fusion;
pub mod layernorm;
#[cfg(test)]
mod limits;
pub mod loss;
pub mod matmul;
pub mod optim;
pub mod reduce;
#[cfg(any(test, feature = "reference"))]
pub mod reference;
/// Helpers of the GPU tests (the kernels' unit tests and the integration tests in `tests/`).
#[cfg(any(test, feature = "reference"))]
pub mod test_support;
#[cfg(test)]
mod translate;

use anyhow::{bail, Result};

/// One pipeline's override constants, as the hosts pass them to `CommandRecorder::dispatch`.
#[cfg(test)]
pub(crate) type Constants = Vec<(&'static str, f64)>;

/// Fails with a readable message when a tensor's shape is not the one a kernel needs.
pub(crate) fn expect_shape(what: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        bail!("{what}: expected shape {want:?}, got {got:?}");
    }
    Ok(())
}

/// Where `divmod` (`shaders/common.wgsl`) may split indices without an integer division: every
/// dividend and divisor below this (its f32 quotient is then within one of the exact one).
pub const FAST_DIVMOD_LIMIT: usize = 1 << 22;

#[cfg(test)]
thread_local! {
    /// Tests: the exact integer division even where the fast one applies.
    pub(crate) static FORCE_EXACT_DIVMOD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Tests' launch enumeration (`kernels/translate.rs`): `set` with either `FAST_DIVMOD` a host
/// may pass beside it ([`divmod_override`]).
#[cfg(test)]
pub(crate) fn with_either_divmod(set: &[(&'static str, f64)]) -> Vec<Constants> {
    [0.0, 1.0].into_iter().map(|fast| set.iter().copied().chain([("FAST_DIVMOD", fast)]).collect()).collect()
}

/// The `FAST_DIVMOD` override of a kernel whose `divmod` dividends and divisors are all at most
/// `largest`: on below [`FAST_DIVMOD_LIMIT`].
pub(crate) fn divmod_override(largest: usize) -> (&'static str, f64) {
    #[cfg(test)]
    let forced = FORCE_EXACT_DIVMOD.with(|f| f.get());
    #[cfg(not(test))]
    let forced = false;
    ("FAST_DIVMOD", if largest < FAST_DIVMOD_LIMIT && !forced { 1.0 } else { 0.0 })
}
