//! Accounting of every storage buffer the project allocates on the GPU: bytes in use now and the
//! peak since the last reset. [`TrackedBuffer`] counts itself in on creation and out when its
//! memory is really free: a buffer dropped while submitted work may still use it (wgpu keeps such a
//! buffer alive until that work is done) stays counted until a submission issued after the drop has
//! completed, or until [`Gpu::sync`](super::Gpu::sync) has waited for all work.

use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct State {
    /// Bytes counted in use (live buffers + dropped ones the GPU may still use).
    current: u64,
    peak: u64,
    /// Bytes of buffers dropped since the last submit while work was in flight.
    deferred: u64,
    /// Submissions not yet known to be complete.
    in_flight: u64,
}

#[derive(Debug, Default)]
pub struct MemoryTracker {
    state: Mutex<State>,
    /// Buffers, bind groups, dispatches and submits created so far (the profiler's counts).
    pub counters: super::profile::Counters,
}

impl MemoryTracker {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Accounting never panics while holding the lock; recover the data if a holder did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, bytes: u64) {
        let mut s = self.lock();
        s.current += bytes;
        s.peak = s.peak.max(s.current);
    }

    /// A buffer was dropped: free now when no submitted work can use it, else at the next completion.
    fn release(&self, bytes: u64) {
        let mut s = self.lock();
        if s.in_flight == 0 {
            s.current -= bytes;
        } else {
            s.deferred += bytes;
        }
    }

    /// Called before recording a command buffer that will be submitted: from now on dropped
    /// buffers may be in use by it.
    pub(crate) fn begin_submit(&self) {
        self.lock().in_flight += 1;
    }

    /// Called right after the submit that [`begin_submit`](Self::begin_submit) announced: the bytes
    /// dropped so far are freed when that submission completes ([`completed`](Self::completed)).
    pub(crate) fn take_deferred(&self) -> u64 {
        std::mem::take(&mut self.lock().deferred)
    }

    /// A submission finished (wgpu's `on_submitted_work_done`): `bytes` from
    /// [`take_deferred`](Self::take_deferred) are free.
    pub(crate) fn completed(&self, bytes: u64) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.current -= bytes;
    }

    /// A pooled buffer was dropped: free now, in flight or not. The pool hands it only to work
    /// submitted later, which the queue orders after every submission that used it, so its memory
    /// serves the next tensor at once (no host wait needed, unlike a destroyed buffer's).
    fn release_to_pool(&self, bytes: u64) {
        self.lock().current -= bytes;
    }

    /// After waiting for all submitted work: whatever was dropped since is free.
    pub(crate) fn idle(&self) {
        let mut s = self.lock();
        if s.in_flight == 0 {
            s.current -= std::mem::take(&mut s.deferred);
        }
    }

    /// Bytes held by live buffers (and dropped ones the GPU may still be using).
    pub fn in_use(&self) -> u64 {
        self.lock().current
    }

    /// Largest [`in_use`](Self::in_use) since creation or the last [`reset_peak`](Self::reset_peak).
    pub fn peak(&self) -> u64 {
        self.lock().peak
    }

    /// Starts a new peak measurement from what is in use now.
    pub fn reset_peak(&self) {
        let mut s = self.lock();
        s.peak = s.current;
    }
}

/// A wgpu buffer that is counted in its GPU's [`MemoryTracker`] while it lives. A pooled one
/// returns its wgpu buffer to the GPU's buffer pool when dropped (see [`super::pool`]).
#[derive(Debug)]
pub struct TrackedBuffer {
    /// `None` only while being dropped.
    buffer: Option<wgpu::Buffer>,
    /// Unique per wgpu buffer (kept across owners of a pooled one): the bind group cache's key.
    id: u64,
    bytes: u64,
    tracker: Arc<MemoryTracker>,
    pool: Option<Arc<super::pool::BufferPool>>,
}

impl TrackedBuffer {
    /// Counts a newly created `buffer`, which is destroyed when this is dropped.
    pub fn new(buffer: wgpu::Buffer, tracker: &Arc<MemoryTracker>) -> Self {
        tracker.counters.buffer();
        let bytes = buffer.size();
        Self::counted(super::pool::next_id(), buffer, bytes, tracker, None)
    }

    /// A buffer from `pool` for a tensor of `bytes` (counted as created unless `reused`), returned
    /// to it when dropped. The tracker counts the tensor's `bytes`, not the buffer's size (the
    /// pool may hand out a larger free buffer: what it reserves beyond the tensors is
    /// [`PoolStats`](super::PoolStats)' business, as PyTorch's allocated vs reserved memory).
    pub(crate) fn pooled(
        (id, buffer, reused): (u64, wgpu::Buffer, bool),
        bytes: u64,
        tracker: &Arc<MemoryTracker>,
        pool: &Arc<super::pool::BufferPool>,
    ) -> Self {
        if !reused {
            tracker.counters.buffer();
        }
        Self::counted(id, buffer, bytes, tracker, Some(pool.clone()))
    }

    fn counted(
        id: u64,
        buffer: wgpu::Buffer,
        bytes: u64,
        tracker: &Arc<MemoryTracker>,
        pool: Option<Arc<super::pool::BufferPool>>,
    ) -> Self {
        tracker.add(bytes);
        Self { buffer: Some(buffer), id, bytes, tracker: tracker.clone(), pool }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The buffer's unique id (a pooled buffer keeps it across owners).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl std::ops::Deref for TrackedBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("a TrackedBuffer has its buffer until dropped")
    }
}

impl Drop for TrackedBuffer {
    fn drop(&mut self) {
        match &self.pool {
            Some(pool) if pool.enabled() => self.tracker.release_to_pool(self.bytes),
            _ => self.tracker.release(self.bytes),
        }
        if let (Some(pool), Some(buffer)) = (&self.pool, self.buffer.take()) {
            pool.give(self.id, buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frees_wait_for_submissions_in_flight() {
        let m = MemoryTracker::default();
        m.add(100);
        m.add(50);
        m.release(50); // nothing in flight: free at once
        assert_eq!((m.in_use(), m.peak()), (100, 150));
        m.begin_submit();
        m.release(100); // dropped while recording / in flight: still counted
        assert_eq!(m.in_use(), 100);
        let bytes = m.take_deferred();
        m.add(10);
        m.release(10); // dropped after the submit: waits for a later completion or idle
        assert_eq!(m.in_use(), 110);
        m.completed(bytes);
        assert_eq!(m.in_use(), 10);
        m.idle();
        assert_eq!(m.in_use(), 0);
        m.reset_peak();
        assert_eq!(m.peak(), 0);
    }
}
