//! Helpers shared by the GPU tests (`kernels/<op>/tests.rs` and, through `tests/common`, the
//! integration tests): one GPU per test binary, seeded random data, NaN-poisoned outputs, and the
//! relative-error assertion.

use crate::gpu::{Gpu, GpuTensor};
use rand::{Rng, SeedableRng};
use std::sync::{Arc, OnceLock};

pub fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(Gpu::for_tests).clone()
}

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Uniform in [-scale, scale), rounded to f32 so the f64 reference sees the same numbers.
pub fn rand_f32(rng: &mut rand::rngs::StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

pub fn upload(shape: &[usize], data: &[f32]) -> GpuTensor {
    GpuTensor::from_slice(&gpu(), shape, data).unwrap()
}

pub fn upload_u32(shape: &[usize], data: &[u32]) -> GpuTensor {
    GpuTensor::from_u32(&gpu(), shape, data).unwrap()
}

/// An output tensor filled with NaN: any element the kernel fails to write fails the comparison.
pub fn poisoned(shape: &[usize]) -> GpuTensor {
    GpuTensor::filled(&gpu(), shape, f32::NAN).unwrap()
}

pub fn download(t: &GpuTensor) -> Vec<f32> {
    t.to_vec(&gpu()).unwrap()
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Asserts `‖ours − ref‖∞ / ‖ref‖∞ ≤ tol` and returns the error.
#[track_caller]
pub fn assert_close(what: &str, ours: &[f32], reference: &[f64], tol: f64) -> f64 {
    let e = super::reference::rel_err(ours, reference);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.1e}");
    e
}
