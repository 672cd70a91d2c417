//! Accounting of every storage buffer the project allocates on the GPU: bytes in use now and the
//! peak since the last reset. [`TrackedBuffer`] counts itself in on creation and out on drop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct MemoryTracker {
    current: AtomicU64,
    peak: AtomicU64,
}

impl MemoryTracker {
    fn add(&self, bytes: u64) {
        let now = self.current.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn sub(&self, bytes: u64) {
        self.current.fetch_sub(bytes, Ordering::SeqCst);
    }

    /// Bytes held by live buffers.
    pub fn in_use(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    /// Largest [`in_use`](Self::in_use) since creation or the last [`reset_peak`](Self::reset_peak).
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// Starts a new peak measurement from what is in use now.
    pub fn reset_peak(&self) {
        self.peak.store(self.in_use(), Ordering::SeqCst);
    }
}

/// A wgpu buffer that is counted in its GPU's [`MemoryTracker`] while it lives.
#[derive(Debug)]
pub struct TrackedBuffer {
    buffer: wgpu::Buffer,
    bytes: u64,
    tracker: Arc<MemoryTracker>,
}

impl TrackedBuffer {
    pub fn new(buffer: wgpu::Buffer, tracker: &Arc<MemoryTracker>) -> Self {
        let bytes = buffer.size();
        tracker.add(bytes);
        Self { buffer, bytes, tracker: tracker.clone() }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl std::ops::Deref for TrackedBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for TrackedBuffer {
    fn drop(&mut self) {
        self.tracker.sub(self.bytes);
    }
}
