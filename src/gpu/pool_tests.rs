//! The pool on the device: reused buffers read zeros from `zeros`, writes over a pending clear
//! survive it, the budget and the high-water cap bound the free bytes.

use crate::gpu::{Gpu, GpuOptions, GpuTensor};
use std::sync::Arc;

fn pooled_gpu() -> Arc<Gpu> {
    Gpu::new(&GpuOptions { buffer_pool: Some(true), ..Default::default() }).expect("a GPU")
}

/// Drops a tensor of `values` (so its buffer goes back to the pool) and returns its buffer id.
fn dropped_after_use(gpu: &Arc<Gpu>, values: &[f32]) -> u64 {
    let t = GpuTensor::from_slice(gpu, &[values.len()], values).unwrap();
    assert_eq!(t.to_vec(gpu).unwrap(), values);
    t.buffer.id()
}

#[test]
fn zeros_from_a_reused_buffer_read_zeros() {
    let gpu = pooled_gpu();
    let dirty: Vec<f32> = (0..37).map(|i| i as f32 + 0.5).collect();
    let id = dropped_after_use(&gpu, &dirty);
    let before = gpu.counters();
    let z = GpuTensor::zeros(&gpu, &[37]).unwrap();
    assert_eq!(z.buffer.id(), id, "the freed buffer is handed out again");
    assert_eq!((gpu.counters() - before).buffers, 0);
    assert_eq!(z.to_vec(&gpu).unwrap(), vec![0.0; 37]);
    // Twice (a second owner of a buffer whose clear already ran).
    drop(z);
    let z = GpuTensor::zeros(&gpu, &[37]).unwrap();
    assert_eq!((z.buffer.id(), z.to_vec(&gpu).unwrap()), (id, vec![0.0; 37]));
}

#[test]
fn writes_after_a_pending_clear_keep_their_data() {
    let gpu = pooled_gpu();
    let dirty = vec![7.0f32; 16];
    // A whole-tensor write over a pending clear.
    let id = dropped_after_use(&gpu, &dirty);
    let z = GpuTensor::zeros(&gpu, &[16]).unwrap();
    assert_eq!(z.buffer.id(), id);
    let data: Vec<f32> = (0..16).map(|i| -(i as f32)).collect();
    z.write(&gpu, &data).unwrap();
    assert_eq!(z.to_vec(&gpu).unwrap(), data);
    // A partial write (streamed layer weights): the rest reads zeros, the written part its data.
    drop(z);
    let z = GpuTensor::zeros(&gpu, &[16]).unwrap();
    assert_eq!(z.buffer.id(), id);
    gpu.write_buffer(&z.buffer, 8, bytemuck::cast_slice(&[3.0f32, 4.0]));
    let mut want = vec![0.0; 16];
    want[2..4].copy_from_slice(&[3.0, 4.0]);
    assert_eq!(z.to_vec(&gpu).unwrap(), want);
    // from_slice over a buffer dropped with its clear still pending: the clear must not wipe it.
    drop(z);
    let z = GpuTensor::zeros(&gpu, &[16]).unwrap();
    drop(z);
    let t = GpuTensor::from_slice(&gpu, &[16], &data).unwrap();
    assert_eq!(t.buffer.id(), id);
    assert_eq!(t.to_vec(&gpu).unwrap(), data);
}

#[test]
fn off_every_request_creates_a_buffer() {
    let gpu = Gpu::new(&GpuOptions { buffer_pool: Some(false), ..Default::default() }).unwrap();
    assert!(!gpu.policy().buffer_pool);
    let id = dropped_after_use(&gpu, &[1.0; 8]);
    let z = GpuTensor::zeros(&gpu, &[8]).unwrap();
    assert_ne!(z.buffer.id(), id);
    assert_eq!(z.to_vec(&gpu).unwrap(), vec![0.0; 8]);
    assert_eq!(gpu.pool_stats().free_bytes, 0);
}

#[test]
fn budget_and_high_water_bound_the_free_bytes() {
    let gpu = pooled_gpu();
    let base = gpu.pool_stats().live_bytes;
    let a: Vec<GpuTensor> = (0..4).map(|i| GpuTensor::zeros(&gpu, &[256 * (i + 1)]).unwrap()).collect();
    let live: u64 = a.iter().map(|t| t.bytes()).sum();
    drop(a);
    let s = gpu.pool_stats();
    assert_eq!(s.free_bytes, live, "all four kept (within the high water {})", s.live_high_water);
    assert!(s.free_bytes <= s.live_high_water);
    // A budget trims the least recently returned first: the first tensor's 1 KiB goes.
    gpu.set_memory_budget(Some(base + live - 1024));
    let s = gpu.pool_stats();
    assert_eq!(s.free_bytes, live - 1024);
    assert!(s.live_bytes + s.free_bytes <= base + live - 1024);
    // A new size makes room under the budget before it is created.
    let big = GpuTensor::zeros(&gpu, &[2048]).unwrap();
    let s = gpu.pool_stats();
    assert!(s.live_bytes + s.free_bytes <= base + live - 1024, "{s:?}");
    assert_eq!(big.to_vec(&gpu).unwrap(), vec![0.0; 2048]);
    gpu.trim_pool();
    assert_eq!(gpu.pool_stats().free_bytes, 0);
}

#[test]
fn a_larger_free_buffer_serves_a_smaller_request_without_a_budget() {
    let gpu = pooled_gpu();
    let long: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    let id = dropped_after_use(&gpu, &long);
    // 600 values: the free 4000-byte buffer (within REUSE_RATIO) is handed out, no new buffer.
    let before = gpu.counters();
    let short: Vec<f32> = (0..600).map(|i| -(i as f32)).collect();
    let t = GpuTensor::from_slice(&gpu, &[600], &short).unwrap();
    assert_eq!((t.buffer.id(), (gpu.counters() - before).buffers), (id, 0));
    // It reads back its own 600 values, and the tracker counts 2400 bytes, not 4000.
    assert_eq!(t.to_vec(&gpu).unwrap(), short);
    assert_eq!(t.buffer.bytes(), 2400);
    // zeros in a larger reused buffer read zeros.
    drop(t);
    let z = GpuTensor::zeros(&gpu, &[300]).unwrap();
    assert_eq!(z.buffer.id(), id);
    assert_eq!(z.to_vec(&gpu).unwrap(), vec![0.0; 300]);
    drop(z);
    // Not a buffer more than REUSE_RATIO times the request: a new one.
    let small = GpuTensor::from_slice(&gpu, &[100], &[1.0; 100]).unwrap();
    assert_ne!(small.buffer.id(), id);
}

/// Tensors under MIN_TENSOR_BUFFER bytes are all of that size: a free one serves any of them.
#[test]
fn tiny_tensors_share_one_size() {
    let gpu = pooled_gpu();
    let id = dropped_after_use(&gpu, &[1.0, 2.0]);
    let before = gpu.counters();
    let t = GpuTensor::from_slice(&gpu, &[50], &[5.0; 50]).unwrap();
    assert_eq!((t.buffer.id(), (gpu.counters() - before).buffers), (id, 0));
    assert_eq!(t.to_vec(&gpu).unwrap(), vec![5.0; 50]);
    assert_eq!(t.buffer.bytes(), 200, "the tracker counts the tensor's bytes");
    drop(t);
    let z = GpuTensor::zeros(&gpu, &[1]).unwrap();
    assert_eq!(z.buffer.id(), id);
    assert_eq!(z.to_vec(&gpu).unwrap(), vec![0.0]);
}

#[test]
fn with_a_budget_only_the_exact_size_is_reused() {
    let gpu = pooled_gpu();
    gpu.set_memory_budget(Some(1 << 30));
    let id = dropped_after_use(&gpu, &[1.0; 100]);
    let t = GpuTensor::from_slice(&gpu, &[60], &[2.0; 60]).unwrap();
    assert_ne!(t.buffer.id(), id, "a budgeted pool reused a larger buffer");
    drop(t);
    let t = GpuTensor::from_slice(&gpu, &[100], &[3.0; 100]).unwrap();
    assert_eq!(t.buffer.id(), id);
}
