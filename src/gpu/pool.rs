//! The buffer pool of a [`Gpu`](super::Gpu): a dropped tensor's wgpu buffer is kept, keyed by
//! (usage, size), and handed out again by the next request of that usage: the smallest free size
//! that holds the request — the exact size, or without a memory budget one up to
//! [`REUSE_RATIO`] times larger (a training run's batches come in many lengths; a step shorter
//! than the longest seen so far then runs in the longest step's buffers instead of new ones),
//! never one larger than a storage binding may be when the request fits in one — and of that
//! size the free one with the lowest id, so a step that starts with the same free buffers and
//! allocates in the same order as the one before gets the same buffers back, and the bind group
//! cache of [`super::bind_cache`] hits. Kernels read their tensors' shapes from their parameters,
//! never a buffer's length, so a larger buffer computes the same. Parameter blocks and read-back
//! staging buffers come from it too.
//!
//! Ordering: a buffer returns to the pool when its last [`TrackedBuffer`](super::TrackedBuffer)
//! is dropped; recorders keep the buffers of their dispatches until after `queue.submit`, so a
//! buffer is only handed out again once every command buffer that uses it has been submitted, and
//! the new owner's queue writes and dispatches are ordered after that work.
//!
//! Zeros: a reused buffer handed out by [`GpuTensor::zeros`](super::GpuTensor::zeros) is marked
//! for clearing; every submit of the gpu module ([`BufferPool::submit`]) first submits the
//! pending `clear_buffer`s, in the same `queue.submit` and under one lock (so a clear taken by one
//! thread is submitted before any other thread's work). A queue write over a buffer with a
//! pending clear ([`BufferPool::write`]) drops the clear (a whole-buffer write) or replaces it with
//! a queued write of zeros before the data (a partial write), so the later clear cannot wipe it.
//!
//! Bounds (the memory the pool keeps reserved besides the live tensors): the free bytes never
//! exceed the largest number of live pooled bytes seen (so at most twice the peak in all; a
//! length-bucketed run keeps at most about one more step's worth), and with a budget
//! ([`BufferPool::set_budget`], `--max-gpu-memory`) live + free bytes stay within it: the
//! least recently returned buffers are dropped first. Off ([`KernelPolicy::buffer_pool`](
//! super::KernelPolicy::buffer_pool)): every request creates a buffer and every drop destroys it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A unique id per wgpu buffer the project creates (bind group cache keys).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// (usage bits, size): a usage's sizes in order, for the smallest one that holds a request.
type Key = (u32, u64);

/// How much larger than a request a reused buffer may be (without a memory budget; with one,
/// only the exact size is reused, so the measured peak stays the planned one).
pub(crate) const REUSE_RATIO: u64 = 8;

/// The smallest tensor buffer, in bytes. Every tiny tensor (a loss, a batch's labels, the
/// `[CLS]` rows of a narrow layer for a batch of one) is then of one size, so any free one
/// serves any of them: with sizes of their own, a step's tiny requests took the smallest free
/// buffer that held them in an order that could leave a later one without (new buffers in a
/// step whose shape had run before, seen on the toy runs of `tests/step_plan.rs`).
pub(crate) const MIN_TENSOR_BUFFER: u64 = 256;

struct Free {
    id: u64,
    buffer: wgpu::Buffer,
    /// When it was returned (the least recent are trimmed first).
    returned: u64,
}

#[derive(Default)]
struct State {
    free: BTreeMap<Key, Vec<Free>>,
    free_bytes: u64,
    /// Bytes of buffers handed out by the pool and not yet returned.
    live_bytes: u64,
    /// The largest `live_bytes` seen.
    live_high_water: u64,
    budget: Option<u64>,
    returns: u64,
}

/// What the pool holds now ([`Gpu::pool_stats`](super::Gpu::pool_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Bytes of buffers kept for reuse (reserved, not in use: not in `MemoryTracker::in_use`).
    pub free_bytes: u64,
    /// Bytes of buffers handed out and not returned (tensors, parameter blocks, staging).
    pub live_bytes: u64,
    /// The largest `live_bytes` seen: the cap of `free_bytes` without a budget.
    pub live_high_water: u64,
    /// The budget that live + free bytes stay within, when one is set.
    pub budget: Option<u64>,
}

pub(crate) struct BufferPool {
    enabled: bool,
    /// The largest storage binding: a request that fits in one never gets a buffer that does not.
    max_binding: u64,
    state: Mutex<State>,
    /// Buffers to clear before the next submitted work, by id.
    clears: Mutex<HashMap<u64, wgpu::Buffer>>,
    /// Bind groups of pooled buffers (used only while the pool is on).
    pub(crate) bind_groups: super::bind_cache::BindGroupCache,
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BufferPool({:?})", self.stats())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BufferPool {
    pub(crate) fn new(enabled: bool, max_binding: u64) -> Self {
        Self {
            enabled,
            max_binding,
            state: Mutex::default(),
            clears: Mutex::default(),
            bind_groups: super::bind_cache::BindGroupCache::default(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// A buffer of `size` bytes and `usage`: a returned one when the pool has one (`true`), else a
    /// new one (`false`, to be counted by the caller).
    pub(crate) fn take(
        &self,
        device: &wgpu::Device,
        size: u64,
        usage: wgpu::BufferUsages,
        label: &'static str,
    ) -> (u64, wgpu::Buffer, bool) {
        let mut trimmed = vec![];
        {
            let mut s = lock(&self.state);
            let reused = if self.enabled { self.take_free(&mut s, size, usage) } else { None };
            s.live_bytes += reused.as_ref().map_or(size, |f| f.buffer.size());
            s.live_high_water = s.live_high_water.max(s.live_bytes);
            if let Some(f) = reused {
                return (f.id, f.buffer, true);
            }
            if self.enabled {
                // A new buffer: make room under the budget first.
                Self::trim(&mut s, None, &mut trimmed);
            }
        }
        self.forget(&trimmed);
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        });
        (next_id(), buffer, false)
    }

    /// The free buffer that serves a request of `size` and `usage`, taken off the free lists: the
    /// smallest size that holds it, then its lowest id — what a step takes depends only on which
    /// buffers are free, not on the order earlier steps returned them, so a step that starts with
    /// the same free buffers as the one before takes the same ones in the same roles.
    fn take_free(&self, s: &mut State, size: u64, usage: wgpu::BufferUsages) -> Option<Free> {
        let mut largest = if s.budget.is_some() { size } else { size.saturating_mul(REUSE_RATIO) };
        if size <= self.max_binding {
            largest = largest.min(self.max_binding);
        }
        let u = usage.bits();
        let key = *s.free.range((u, size)..=(u, largest.max(size))).find(|(_, v)| !v.is_empty())?.0;
        let list = s.free.get_mut(&key).expect("key just found");
        let f = list.pop().expect("non-empty");
        if list.is_empty() {
            s.free.remove(&key);
        }
        s.free_bytes -= f.buffer.size();
        Some(f)
    }

    /// `buffer` (from [`take`](Self::take)) is no longer used by its owner: kept for reuse, or
    /// dropped when the pool is off.
    pub(crate) fn give(&self, id: u64, buffer: wgpu::Buffer) {
        let size = buffer.size();
        let mut trimmed = vec![];
        {
            let mut s = lock(&self.state);
            s.live_bytes = s.live_bytes.saturating_sub(size);
            if !self.enabled {
                return;
            }
            s.returns += 1;
            let returned = s.returns;
            // Sorted by descending id: the lowest at the end, popped first.
            let list = s.free.entry((buffer.usage().bits(), size)).or_default();
            let at = list.partition_point(|f| f.id > id);
            list.insert(at, Free { id, buffer, returned });
            s.free_bytes += size;
            let cap = s.live_high_water;
            Self::trim(&mut s, Some(cap), &mut trimmed);
        }
        self.forget(&trimmed);
    }

    /// A buffer from [`take`](Self::take) that cannot be reused (dropped while mapped): uncounted.
    pub(crate) fn discard(&self, size: u64) {
        let mut s = lock(&self.state);
        s.live_bytes = s.live_bytes.saturating_sub(size);
    }

    /// Drops the least recently returned free buffers until the free bytes are within `free_cap` and,
    /// with a budget, live + free bytes within it; their ids go to `trimmed`.
    fn trim(s: &mut State, free_cap: Option<u64>, trimmed: &mut Vec<u64>) {
        let under_budget = s.budget.map(|b| b.saturating_sub(s.live_bytes));
        let cap = match (free_cap, under_budget) {
            (Some(a), Some(b)) => a.min(b),
            (Some(c), None) | (None, Some(c)) => c,
            (None, None) => return,
        };
        while s.free_bytes > cap {
            let oldest = (s.free.iter())
                .flat_map(|(k, v)| v.iter().enumerate().map(move |(i, f)| (f.returned, *k, i)))
                .min_by_key(|o| o.0);
            let Some((_, key, i)) = oldest else { break };
            let list = s.free.get_mut(&key).expect("key just seen");
            let f = list.remove(i);
            if list.is_empty() {
                s.free.remove(&key);
            }
            s.free_bytes -= f.buffer.size();
            trimmed.push(f.id);
        }
    }

    /// Forgets everything that refers to dropped buffers: bind groups and pending clears.
    fn forget(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        self.bind_groups.evict(ids);
        let mut c = lock(&self.clears);
        for id in ids {
            c.remove(id);
        }
    }

    /// Sets the budget that live + free bytes stay within (`None`: only the high-water cap) and
    /// trims to it.
    pub(crate) fn set_budget(&self, budget: Option<u64>) {
        let mut trimmed = vec![];
        {
            let mut s = lock(&self.state);
            s.budget = budget;
            let cap = s.live_high_water;
            Self::trim(&mut s, Some(cap), &mut trimmed);
        }
        self.forget(&trimmed);
    }

    /// Drops every free buffer.
    pub(crate) fn clear(&self) {
        let mut trimmed = vec![];
        {
            let mut s = lock(&self.state);
            for (_, list) in std::mem::take(&mut s.free) {
                trimmed.extend(list.iter().map(|f| f.id));
            }
            s.free_bytes = 0;
        }
        self.forget(&trimmed);
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let s = lock(&self.state);
        PoolStats {
            free_bytes: s.free_bytes,
            live_bytes: s.live_bytes,
            live_high_water: s.live_high_water,
            budget: s.budget,
        }
    }

    /// `buffer` must read zeros before the next submitted work uses it.
    pub(crate) fn clear_before_next_submit(&self, id: u64, buffer: &wgpu::Buffer) {
        lock(&self.clears).insert(id, buffer.clone());
    }

    /// Queues a write of `data` at `offset` into `buffer` (id `id`), keeping it from being wiped by
    /// a pending clear: a whole-buffer write drops the clear, a partial one queues zeros first.
    pub(crate) fn write(&self, queue: &wgpu::Queue, id: u64, buffer: &wgpu::Buffer, offset: u64, data: &[u8]) {
        let mut clears = lock(&self.clears);
        if clears.remove(&id).is_some() && (offset != 0 || data.len() as u64 != buffer.size()) {
            queue.write_buffer(buffer, 0, &vec![0u8; buffer.size() as usize]);
        }
        if !data.is_empty() {
            queue.write_buffer(buffer, offset, data);
        }
    }

    /// Submits `commands` after the pending clears (in the same submit, under the clears' lock).
    pub(crate) fn submit(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        commands: wgpu::CommandBuffer,
    ) -> wgpu::SubmissionIndex {
        let mut clears = lock(&self.clears);
        if clears.is_empty() {
            return queue.submit([commands]);
        }
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("clears") });
        let mut pending: Vec<_> = clears.drain().collect();
        pending.sort_by_key(|(id, _)| *id);
        for (_, b) in &pending {
            enc.clear_buffer(b, 0, None);
        }
        queue.submit([enc.finish(), commands])
    }
}

/// A buffer taken from the pool that is not a tensor (a parameter block, a staging buffer):
/// returned when dropped unless a map of it was started and not unmapped.
pub(crate) struct PoolBuffer {
    pub id: u64,
    pub buffer: wgpu::Buffer,
    pool: Arc<BufferPool>,
    mapped: bool,
}

impl PoolBuffer {
    /// From `gpu`'s pool, counted when new.
    pub(crate) fn take(gpu: &super::Gpu, size: u64, usage: wgpu::BufferUsages, label: &'static str) -> Self {
        let (id, buffer, reused) = gpu.pool.take(&gpu.device, size, usage, label);
        if !reused {
            gpu.memory.counters.buffer();
        }
        Self { id, buffer, pool: gpu.pool.clone(), mapped: false }
    }

    /// A map of it is being started: until [`unmap`](Self::unmap) it does not go back to the pool.
    pub(crate) fn mapping(&mut self) -> &wgpu::Buffer {
        self.mapped = true;
        &self.buffer
    }

    /// Unmaps it after reading: it may go back to the pool.
    pub(crate) fn unmap(&mut self) {
        self.buffer.unmap();
        self.mapped = false;
    }
}

impl std::ops::Deref for PoolBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for PoolBuffer {
    fn drop(&mut self) {
        if !self.mapped {
            self.pool.give(self.id, self.buffer.clone());
        } else {
            self.pool.discard(self.buffer.size());
        }
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
