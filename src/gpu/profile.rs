//! Per-dispatch GPU profiling: while [`Gpu::start_profile`](super::Gpu::start_profile) is on,
//! every recorder writes a GPU timestamp before and after each dispatch (inside the compute pass
//! where the device has `TIMESTAMP_QUERY_INSIDE_PASSES`, else one pass per dispatch with pass
//! timestamps) and labels it with its kernel and the caller's phase
//! ([`CommandRecorder::phase`](super::CommandRecorder::phase)). Off, nothing of this runs.
//!
//! Counters of what the runtime creates ([`Counters`]) are kept always (a relaxed atomic add).

use std::sync::atomic::{AtomicU64, Ordering};

/// Objects the runtime created since the GPU was opened.
#[derive(Debug, Default)]
pub struct Counters {
    buffers: AtomicU64,
    bind_groups: AtomicU64,
    dispatches: AtomicU64,
    submits: AtomicU64,
}

/// A snapshot of [`Counters`]; subtract two for what happened in between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterSnapshot {
    /// GPU buffers created (storage tensors, parameter blocks, staging and query buffers).
    pub buffers: u64,
    pub bind_groups: u64,
    pub dispatches: u64,
    pub submits: u64,
}

impl std::ops::Sub for CounterSnapshot {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            buffers: self.buffers - o.buffers,
            bind_groups: self.bind_groups - o.bind_groups,
            dispatches: self.dispatches - o.dispatches,
            submits: self.submits - o.submits,
        }
    }
}

impl Counters {
    pub(crate) fn buffer(&self) {
        self.buffers.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn bind_groups(&self, n: usize) {
        self.bind_groups.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn dispatches(&self, n: usize) {
        self.dispatches.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn submit(&self) {
        self.submits.fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            buffers: self.buffers.load(Ordering::Relaxed),
            bind_groups: self.bind_groups.load(Ordering::Relaxed),
            dispatches: self.dispatches.load(Ordering::Relaxed),
            submits: self.submits.load(Ordering::Relaxed),
        }
    }
}

/// How the profiler takes per-dispatch timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileMode {
    /// `write_timestamp` around each dispatch inside one compute pass.
    InsidePasses,
    /// One compute pass per dispatch, with the pass's timestamp writes.
    PassPerDispatch,
}

/// One profiled dispatch.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DispatchRecord {
    /// `shader::entry`.
    pub kernel: String,
    /// The phase set by the caller when it was recorded (`""` if none).
    pub phase: String,
    /// FLOPs, when the caller declared them ([`CommandRecorder::cost`](super::CommandRecorder::cost)).
    pub flops: Option<f64>,
    /// Compulsory bytes: declared by the caller, else the sizes of the bound tensors (each read
    /// or written once).
    pub bytes: f64,
    /// GPU seconds between the timestamps before and after the dispatch.
    pub gpu_seconds: f64,
}

/// What a dispatch carries to the profiler before its timestamps are known.
#[derive(Clone, Debug)]
pub(crate) struct Label {
    pub phase: String,
    pub flops: Option<f64>,
    pub bytes: f64,
}

/// Timestamps of one submit, resolved into a host-readable buffer, waiting to be read.
pub(crate) struct Pending {
    pub read: wgpu::Buffer,
    pub kernels: Vec<String>,
    pub labels: Vec<Label>,
}

/// The profiler's state while a profile is on.
pub(crate) struct ProfileState {
    pub mode: ProfileMode,
    pub phase: String,
    pub pending: Vec<Pending>,
}

/// The most queries of one query set (wgpu's limit).
pub(crate) const QUERIES_PER_SET: u32 = 4096;

use super::Gpu;
use anyhow::{anyhow, bail, Result};

impl Gpu {
    /// Starts profiling: every dispatch recorded from now on (by recorders created from now on) is
    /// timed and labelled, until [`finish_profile`](Self::finish_profile). `mode`: how (`None`:
    /// inside passes where the device can, else a pass per dispatch). Fails without timestamp
    /// queries, or when `mode` asks for timestamps inside passes and the device has none.
    pub fn start_profile(&self, mode: Option<ProfileMode>) -> Result<ProfileMode> {
        if !self.has(wgpu::Features::TIMESTAMP_QUERY) {
            let why = match self.policy().limits {
                super::LimitsMode::WebGpu => "was opened without (--limits webgpu requests no optional feature)",
                super::LimitsMode::Adapter => "lacks",
            };
            bail!("profiling needs GPU timestamps (TIMESTAMP_QUERY), which {} {why}", self.description.summary());
        }
        let inside = self.has(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);
        let mode = match mode {
            Some(ProfileMode::InsidePasses) if !inside => {
                bail!("{} has no timestamps inside passes (TIMESTAMP_QUERY_INSIDE_PASSES)", self.description.summary())
            }
            Some(m) => m,
            None if inside => ProfileMode::InsidePasses,
            None => ProfileMode::PassPerDispatch,
        };
        *self.profile_lock() = Some(ProfileState { mode, phase: String::new(), pending: vec![] });
        self.profiling.store(true, Ordering::Relaxed);
        Ok(mode)
    }

    /// Stops profiling, waits for the GPU, and returns every profiled dispatch in submission order.
    pub fn finish_profile(&self) -> Result<Vec<DispatchRecord>> {
        self.profiling.store(false, Ordering::Relaxed);
        let state = self.profile_lock().take().ok_or_else(|| anyhow!("no profile was started"))?;
        self.sync()?;
        let period = self.queue.get_timestamp_period() as f64;
        let mut out = vec![];
        for p in state.pending {
            let view = p.read.slice(..).get_mapped_range().map_err(|e| anyhow!("reading GPU timestamps: {e:?}"))?;
            let ts: Vec<u64> = bytemuck::pod_collect_to_vec(&view);
            drop(view);
            p.read.unmap();
            for (i, (kernel, l)) in p.kernels.into_iter().zip(p.labels).enumerate() {
                let ns = ts[2 * i + 1].saturating_sub(ts[2 * i]) as f64 * period;
                out.push(DispatchRecord {
                    kernel,
                    phase: l.phase,
                    flops: l.flops,
                    bytes: l.bytes,
                    gpu_seconds: ns * 1e-9,
                });
            }
        }
        Ok(out)
    }

    /// What the runtime has created so far (subtract two snapshots for a step's counts).
    pub fn counters(&self) -> CounterSnapshot {
        self.memory.counters.snapshot()
    }

    fn profile_lock(&self) -> std::sync::MutexGuard<'_, Option<ProfileState>> {
        self.profile.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn profiling(&self) -> bool {
        self.profiling.load(Ordering::Relaxed)
    }

    pub(crate) fn profile_mode(&self) -> Option<ProfileMode> {
        self.profile_lock().as_ref().map(|s| s.mode)
    }

    pub(crate) fn set_phase(&self, phase: String) {
        if let Some(s) = self.profile_lock().as_mut() {
            s.phase = phase;
        }
    }

    pub(crate) fn current_phase(&self) -> String {
        self.profile_lock().as_ref().map(|s| s.phase.clone()).unwrap_or_default()
    }

    pub(crate) fn add_pending(&self, p: Pending) {
        if let Some(s) = self.profile_lock().as_mut() {
            s.pending.push(p);
        }
    }
}
