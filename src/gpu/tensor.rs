//! [`GpuTensor`]: a shape and an f32 storage buffer on the GPU.

use super::Gpu;
use anyhow::{anyhow, bail, Result};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

/// A buffer being mapped for reading: the callback wgpu runs when the map is done, and the
/// future that waits for it. Natively the callback runs inside a device poll (callers poll,
/// then [`done`](Self::done) finds it ran); in the browser the page's event loop runs it, and
/// `done` awaits it.
pub(super) struct Mapping {
    state: Arc<(Mutex<MapState>, Condvar)>,
}

#[derive(Default)]
struct MapState {
    result: Option<Result<(), wgpu::BufferAsyncError>>,
    waker: Option<Waker>,
}

impl Mapping {
    /// Starts mapping all of `buffer` for reading.
    pub(super) fn read(buffer: &wgpu::Buffer) -> Self {
        let state: Arc<(Mutex<MapState>, Condvar)> = Arc::default();
        let slot = state.clone();
        buffer.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let mut s = slot.0.lock().unwrap_or_else(|p| p.into_inner());
            s.result = Some(r);
            if let Some(w) = s.waker.take() {
                w.wake();
            }
            slot.1.notify_all();
        });
        Self { state }
    }

    /// The map's outcome. Natively the device was polled to completion first; the callback may
    /// still be running in another thread's poll of the same device (tests share one), so this
    /// waits for it, unless wgpu dropped it without running it (an error, not a hang). In the
    /// browser it is awaited.
    pub(super) async fn done(self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        let result = {
            let (lock, ran) = &*self.state;
            let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
            // The callback holds the other reference to the state until it has run or is dropped.
            while s.result.is_none() && Arc::strong_count(&self.state) > 1 {
                s = ran.wait_timeout(s, std::time::Duration::from_millis(10)).unwrap_or_else(|p| p.into_inner()).0;
            }
            s.result.take()
        };
        #[cfg(target_arch = "wasm32")]
        let result = Some(self.await);
        result
            .ok_or_else(|| anyhow!("GPU buffer map callback never ran"))?
            .map_err(|e| anyhow!("mapping a GPU buffer for reading failed: {e}"))
    }
}

impl Future for Mapping {
    type Output = Result<(), wgpu::BufferAsyncError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.state.0.lock().unwrap_or_else(|p| p.into_inner());
        match s.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Waits for all submitted work natively (running the map callbacks); in the browser the device
/// needs no polling, and only the errors reported so far are checked.
pub(super) fn settle(gpu: &Gpu) -> Result<()> {
    #[cfg(not(target_arch = "wasm32"))]
    return gpu.sync();
    #[cfg(target_arch = "wasm32")]
    return gpu.check();
}

/// A dense row-major f32 tensor in a GPU storage buffer.
#[derive(Clone)]
pub struct GpuTensor {
    pub buffer: Arc<super::TrackedBuffer>,
    pub shape: Vec<usize>,
}

pub(super) const USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl GpuTensor {
    fn check_size(gpu: &Gpu, shape: &[usize]) -> Result<u64> {
        let bytes = (numel(shape).max(1) * 4) as u64;
        if bytes > gpu.max_binding_bytes() {
            bail!(
                "tensor of shape {shape:?} needs {} MiB, more than this GPU's largest storage binding ({} MiB); \
                 use a smaller --batch-size or --max-length",
                bytes >> 20,
                gpu.max_binding_bytes() >> 20
            );
        }
        Ok(bytes)
    }

    /// Uploads `data` (row-major, `shape.product()` values).
    pub fn from_slice(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Result<Self> {
        if data.len() != numel(shape) {
            bail!("tensor data has {} values, shape {shape:?} needs {}", data.len(), numel(shape));
        }
        Self::check_size(gpu, shape)?;
        let contents: &[u8] = if data.is_empty() { &[0u8; 4] } else { bytemuck::cast_slice(data) };
        // A pooled or new buffer (not `create_buffer_init`, whose mapped-at-creation path panics
        // once the device is lost, where this gives an error that `Gpu::check` reports).
        let (buffer, _) = gpu.storage_buffer(contents.len() as u64);
        gpu.write_buffer(&buffer, 0, contents);
        Ok(Self { buffer, shape: shape.to_vec() })
    }

    /// Uploads u32 data (token ids, labels); kernels read it as `array<u32>`.
    pub fn from_u32(gpu: &Gpu, shape: &[usize], data: &[u32]) -> Result<Self> {
        Self::from_slice(gpu, shape, bytemuck::cast_slice(data))
    }

    /// A tensor whose contents are zero (a reused buffer is cleared at the start of the next
    /// submitted work, before anything recorded after this call).
    pub fn zeros(gpu: &Gpu, shape: &[usize]) -> Result<Self> {
        let bytes = Self::check_size(gpu, shape)?;
        let (buffer, reused) = gpu.storage_buffer(bytes);
        if reused {
            gpu.pool.clear_before_next_submit(buffer.id(), &buffer);
        }
        Ok(Self { buffer, shape: shape.to_vec() })
    }

    /// A tensor filled with `value` (tests poison outputs with NaN this way).
    pub fn filled(gpu: &Gpu, shape: &[usize], value: f32) -> Result<Self> {
        Self::from_slice(gpu, shape, &vec![value; numel(shape)])
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    pub fn bytes(&self) -> u64 {
        (self.numel() * 4) as u64
    }

    /// Overwrites the contents with `data` (queued before the next submit).
    pub fn write(&self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        if data.len() != self.numel() {
            bail!("writing {} values into a tensor of shape {:?}", data.len(), self.shape);
        }
        if !data.is_empty() {
            gpu.write_buffer(&self.buffer, 0, bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// Copies the contents back to the host (waits for all submitted work). The browser cannot
    /// block: there it is an error, and the browser build awaits [`to_vec_async`](Self::to_vec_async).
    pub fn to_vec(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        #[cfg(not(target_arch = "wasm32"))]
        return pollster::block_on(self.to_vec_async(gpu));
        #[cfg(target_arch = "wasm32")]
        {
            let _ = gpu;
            bail!("internal: a blocking GPU read-back in the browser build (await to_vec_async)")
        }
    }

    /// [`to_vec`](Self::to_vec) without blocking (the browser's WebGPU cannot block).
    pub async fn to_vec_async(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let n = self.numel();
        if n == 0 {
            return Ok(vec![]);
        }
        let size = (n * 4) as u64;
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let mut staging = super::pool::PoolBuffer::take(gpu, size, usage, "download");
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&self.buffer, 0, &staging, 0, size);
        gpu.submit_commands(enc.finish());
        let mapping = Mapping::read(staging.mapping());
        settle(gpu)?;
        mapping.done().await?;
        gpu.check()?;
        let slice = staging.slice(..size);
        let view = slice.get_mapped_range().map_err(|e| anyhow!("reading a GPU buffer: {e:?}"))?;
        let out = bytemuck::cast_slice::<u8, f32>(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Same buffer, another shape with the same number of elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        if numel(shape) != self.numel() {
            bail!("cannot reshape {:?} to {shape:?}", self.shape);
        }
        Ok(Self { buffer: self.buffer.clone(), shape: shape.to_vec() })
    }
}

impl std::fmt::Debug for GpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuTensor{:?}", self.shape)
    }
}
