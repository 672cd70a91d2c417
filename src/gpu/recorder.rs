//! [`CommandRecorder`]: many dispatches recorded into one compute pass and submitted together, with their
//! parameter blocks packed into one uniform buffer, and GPU timestamps where supported.

use super::pipelines::{KernelSpec, Pipeline};
use super::profile::{Label, Pending, ProfileMode, QUERIES_PER_SET};
use super::tensor::Mapping;
use super::{Gpu, GpuTensor};
use anyhow::{anyhow, Result};
use std::sync::Arc;

struct Dispatch {
    pipeline: Arc<Pipeline>,
    params: std::ops::Range<usize>,
    buffers: Vec<Arc<super::TrackedBuffer>>,
    groups: [u32; 3],
    /// What the profiler records of it (only while profiling).
    label: Option<Label>,
}

/// Values copied out of a submitted batch ([`CommandRecorder::submit_with_readback`]).
pub struct Readback {
    gpu: Arc<Gpu>,
    staging: super::pool::PoolBuffer,
    lens: Vec<usize>,
    mapping: Mapping,
    /// Waited for natively; the browser needs no polling.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    index: wgpu::SubmissionIndex,
}

impl Readback {
    /// Waits for the submission (not for later ones) and returns each tensor's values. The
    /// browser cannot block: there it is an error (the browser build awaits [`wait_async`](Self::wait_async)).
    pub fn wait(self) -> Result<Vec<Vec<f32>>> {
        #[cfg(not(target_arch = "wasm32"))]
        return pollster::block_on(self.wait_async());
        #[cfg(target_arch = "wasm32")]
        anyhow::bail!("internal: a blocking GPU read-back in the browser build (await Readback::wait_async)")
    }

    /// [`wait`](Self::wait) without blocking: natively the same wait; in the browser the map's
    /// promise is awaited.
    pub async fn wait_async(mut self) -> Result<Vec<Vec<f32>>> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let poll = wgpu::PollType::Wait { submission_index: Some(self.index), timeout: None };
            if let Err(e) = self.gpu.device.poll(poll) {
                // A lost device or an error reported by wgpu explains a failed wait better: a full
                // poll runs the device-lost callback, then reports it (or the first error).
                self.gpu.sync()?;
                return Err(anyhow!("GPU poll failed: {e}"));
            }
        }
        self.gpu.check()?;
        self.mapping.done().await?;
        self.gpu.check()?;
        let slice = self.staging.slice(..);
        let view = slice.get_mapped_range().map_err(|e| anyhow!("reading a GPU buffer: {e:?}"))?;
        let all: &[f32] = bytemuck::cast_slice(&view);
        let mut out = Vec::with_capacity(self.lens.len());
        let mut off = 0;
        for &n in &self.lens {
            out.push(all[off..off + n].to_vec());
            off += n;
        }
        drop(view);
        self.staging.unmap();
        Ok(out)
    }
}

/// GPU time of one submitted batch.
#[derive(Clone, Copy, Debug)]
pub struct SubmitTiming {
    /// Seconds between the start and the end of the compute pass, from GPU timestamps.
    pub gpu_seconds: f64,
}

/// Records dispatches; [`CommandRecorder::submit`] sends them all in one command buffer.
pub struct CommandRecorder {
    gpu: Arc<Gpu>,
    dispatches: Vec<Dispatch>,
    params: Vec<u8>,
    align: usize,
    /// Whether the GPU was profiling when this recorder started ([`Gpu::start_profile`]).
    profiling: bool,
    /// FLOPs and bytes the caller declared for the next dispatch (profiling only).
    next_cost: Option<(f64, f64)>,
    /// The timestamps of the command buffer being recorded, read after its submit.
    pending: Option<Pending>,
    /// The parameter blocks' buffer of the command buffer being recorded, returned to the pool
    /// after its submit.
    params_buffer: Option<super::pool::PoolBuffer>,
}

impl CommandRecorder {
    pub(crate) fn new(gpu: Arc<Gpu>) -> Self {
        let align = gpu.limits.min_uniform_buffer_offset_alignment.max(16) as usize;
        let profiling = gpu.profiling();
        Self {
            gpu,
            dispatches: vec![],
            params: vec![],
            align,
            profiling,
            next_cost: None,
            pending: None,
            params_buffer: None,
        }
    }

    /// Names the phase of the dispatches recorded from now on (`layer 3 / attention fwd`), for the
    /// profiler; it lasts until the next call, across recorders. Costs nothing unless profiling
    /// (pass `format_args!` to format only then).
    pub fn phase(&mut self, name: impl std::fmt::Display) {
        if self.profiling {
            self.gpu.set_phase(name.to_string());
        }
    }

    /// Declares the FLOPs and compulsory bytes of the next dispatch, for the profiler's rates
    /// (without it: no FLOPs, and the bytes of the bound tensors). Nothing unless profiling.
    pub fn cost(&mut self, flops: f64, bytes: f64) {
        if self.profiling {
            self.next_cost = Some((flops, bytes));
        }
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    pub fn len(&self) -> usize {
        self.dispatches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dispatches.is_empty()
    }

    /// Queues one dispatch of `spec` with override `constants`, parameter block `params`,
    /// storage buffers `tensors` (in binding order; `None` binds a dummy buffer the kernel does not
    /// touch) and `groups` workgroups (a count > the per-dimension limit is folded into y: kernels
    /// use [`linear_workgroup`](crate::shaders) indexing).
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        spec: &KernelSpec,
        constants: &[(&'static str, f64)],
        params: &P,
        tensors: &[Option<&GpuTensor>],
        groups: [u32; 3],
    ) {
        assert_eq!(
            tensors.len(),
            spec.bindings.len(),
            "{}::{}: wrong number of bindings",
            spec.shader.name,
            spec.entry
        );
        // WebGPU (Dawn, in the browser) rejects a buffer bound writable twice, or writable and
        // read-only, in one dispatch; native wgpu accepts the first, so check it here, where
        // every test runs.
        debug_assert!(
            writable_aliasing(spec, tensors).is_none(),
            "{}::{}: bindings {:?} share a buffer and one is writable (WebGPU rejects it)",
            spec.shader.name,
            spec.entry,
            writable_aliasing(spec, tensors)
        );
        let cost = self.next_cost.take();
        if groups.contains(&0) {
            return;
        }
        let pipeline = self.gpu.pipelines.get(&self.gpu.device, spec, constants);
        let start = self.params.len().div_ceil(self.align) * self.align;
        self.params.resize(start, 0);
        self.params.extend_from_slice(bytemuck::bytes_of(params));
        let end = start + std::mem::size_of::<P>().div_ceil(16) * 16;
        self.params.resize(end, 0);
        let buffers = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| t.map(|t| t.buffer.clone()).unwrap_or_else(|| self.gpu.dummies[i].clone()))
            .collect();
        let groups = fold_groups(groups, self.gpu.limits.max_compute_workgroups_per_dimension);
        let label = self.profiling.then(|| {
            let bound: u64 = tensors.iter().flatten().map(|t| t.bytes()).sum();
            Label {
                phase: self.gpu.current_phase(),
                flops: cost.map(|c| c.0).filter(|&f| f > 0.0),
                bytes: cost.map(|c| c.1).unwrap_or(bound as f64),
            }
        });
        self.dispatches.push(Dispatch { pipeline, params: start..end, buffers, groups, label });
    }

    fn record(&mut self, timestamps: Option<&wgpu::QuerySet>) -> wgpu::CommandEncoder {
        let gpu = &self.gpu;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        if self.dispatches.is_empty() {
            return enc;
        }
        // Not `create_buffer_init`, which panics once the device is lost (see `Gpu::check`).
        let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
        let ubuf = super::pool::PoolBuffer::take(gpu, self.params.len() as u64, usage, "params");
        gpu.memory.counters.dispatches(self.dispatches.len());
        gpu.queue.write_buffer(&ubuf, 0, &self.params);
        let groups: Vec<wgpu::BindGroup> = self.dispatches.iter().map(|d| bind_group(gpu, d, &ubuf)).collect();
        self.params_buffer = Some(ubuf);
        let mode = if self.profiling { self.gpu.profile_mode() } else { None };
        let sets = mode.map(|_| self.query_sets());
        match (mode, &sets) {
            (Some(ProfileMode::PassPerDispatch), Some(sets)) => {
                // One pass per dispatch, its timestamps those of the pass.
                for (i, (d, bg)) in self.dispatches.iter().zip(&groups).enumerate() {
                    let q = 2 * i as u32;
                    let tw = wgpu::ComputePassTimestampWrites {
                        query_set: &sets[(q / QUERIES_PER_SET) as usize],
                        beginning_of_pass_write_index: Some(q % QUERIES_PER_SET),
                        end_of_pass_write_index: Some(q % QUERIES_PER_SET + 1),
                    };
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("profiled"),
                        timestamp_writes: Some(tw),
                    });
                    pass.set_pipeline(&d.pipeline.pipeline);
                    pass.set_bind_group(0, bg, &[]);
                    pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                }
            }
            _ => {
                let tw = timestamps.map(|q| wgpu::ComputePassTimestampWrites {
                    query_set: q,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                });
                let mut pass =
                    enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("batch"), timestamp_writes: tw });
                for (i, (d, bg)) in self.dispatches.iter().zip(&groups).enumerate() {
                    let q = 2 * i as u32;
                    let set = sets.as_ref().map(|s| &s[(q / QUERIES_PER_SET) as usize]);
                    if let Some(set) = set {
                        pass.write_timestamp(set, q % QUERIES_PER_SET);
                    }
                    pass.set_pipeline(&d.pipeline.pipeline);
                    pass.set_bind_group(0, bg, &[]);
                    pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                    if let Some(set) = set {
                        pass.write_timestamp(set, q % QUERIES_PER_SET + 1);
                    }
                }
            }
        }
        if let Some(sets) = &sets {
            self.resolve_profile(&mut enc, sets);
        }
        enc
    }

    /// Submits a command buffer from [`record`](Self::record), then lets go of its dispatches'
    /// buffers and its parameter block (only now may the pool hand them out again).
    fn submit_recorded(&mut self, commands: wgpu::CommandBuffer) -> wgpu::SubmissionIndex {
        let index = self.gpu.submit_commands(commands);
        self.dispatches.clear();
        self.params.clear();
        self.params_buffer = None;
        index
    }

    /// Query sets for two timestamps per queued dispatch (profiling).
    fn query_sets(&self) -> Vec<wgpu::QuerySet> {
        let n = 2 * self.dispatches.len() as u32;
        (0..n.div_ceil(QUERIES_PER_SET))
            .map(|i| {
                self.gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: (n - i * QUERIES_PER_SET).min(QUERIES_PER_SET),
                })
            })
            .collect()
    }

    /// Copies the profiling timestamps into a host-readable buffer, read after the submit.
    fn resolve_profile(&mut self, enc: &mut wgpu::CommandEncoder, sets: &[wgpu::QuerySet]) {
        let gpu = &self.gpu;
        let n = 2 * self.dispatches.len() as u64;
        // Not counted: the step's counts are those of an unprofiled step.
        let buffer = |usage, label| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: n * 8,
                usage,
                mapped_at_creation: false,
            })
        };
        let resolve = buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC, "profile-resolve");
        let read = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, "profile-read");
        for (i, set) in sets.iter().enumerate() {
            let first = i as u64 * QUERIES_PER_SET as u64;
            let count = (n - first).min(QUERIES_PER_SET as u64) as u32;
            enc.resolve_query_set(set, 0..count, &resolve, first * 8);
        }
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, n * 8);
        let kernels = self.dispatches.iter().map(|d| d.pipeline.label.clone()).collect();
        let labels =
            self.dispatches.iter_mut().map(|d| d.label.take().expect("profiled dispatch has a label")).collect();
        self.pending = Some(Pending { read, kernels, labels });
    }

    /// After a submit: counted, and a profiled submit's timestamps handed to the GPU's profile.
    fn after_submit(&mut self) {
        self.gpu.memory.counters.submit();
        if let Some(p) = self.pending.take() {
            p.read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
            self.gpu.add_pending(p);
        }
    }

    /// Submits everything queued so far (does not wait).
    pub fn submit(&mut self) {
        if self.dispatches.is_empty() {
            return;
        }
        self.gpu.memory.begin_submit();
        let enc = self.record(None);
        self.submit_recorded(enc.finish());
        self.after_submit();
        self.track_completion();
    }

    /// After a submit announced with `begin_submit` (before [`record`](Self::record) dropped its
    /// references): buffers dropped until now are counted free once this submission completes.
    fn track_completion(&self) {
        let memory = self.gpu.memory.clone();
        let bytes = memory.take_deferred();
        self.gpu.queue.on_submitted_work_done(move || memory.completed(bytes));
    }

    /// Submits, waits, and returns the GPU time of the batch (`None` when the GPU has no
    /// timestamp queries: callers then time with the wall clock around a full sync).
    pub fn submit_timed(&mut self) -> Result<Option<SubmitTiming>> {
        if !self.gpu.has(wgpu::Features::TIMESTAMP_QUERY)
            || (self.profiling && self.gpu.profile_mode() == Some(ProfileMode::PassPerDispatch))
        {
            self.submit();
            self.gpu.sync()?;
            return Ok(None);
        }
        let gpu = self.gpu.clone();
        let qs = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps-read"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.memory.begin_submit();
        let mut enc = self.record(Some(&qs));
        enc.resolve_query_set(&qs, 0..2, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, 16);
        self.submit_recorded(enc.finish());
        self.after_submit();
        self.track_completion();
        let (tx, rx) = std::sync::mpsc::channel();
        read.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        gpu.sync()?;
        rx.recv().map_err(|_| anyhow!("timestamp map never completed"))?.map_err(|e| anyhow!("{e}"))?;
        let view = read.slice(..).get_mapped_range().map_err(|e| anyhow!("reading GPU timestamps: {e:?}"))?;
        let ts: [u64; 2] = bytemuck::pod_read_unaligned(&view[..16]);
        drop(view);
        let period = gpu.queue.get_timestamp_period() as f64;
        Ok(Some(SubmitTiming { gpu_seconds: ts[1].saturating_sub(ts[0]) as f64 * period * 1e-9 }))
    }

    /// Submits everything queued so far followed by a copy of `tensors` into one host-readable
    /// buffer, without waiting: [`Readback::wait`] later returns their values. Lets the host
    /// record the next batch while the GPU runs this one (one sync per step, a step behind).
    pub fn submit_with_readback(&mut self, tensors: &[&GpuTensor]) -> Result<Readback> {
        let gpu = self.gpu.clone();
        let lens: Vec<usize> = tensors.iter().map(|t| t.numel()).collect();
        let total = (lens.iter().sum::<usize>() * 4).max(4) as u64;
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let mut staging = super::pool::PoolBuffer::take(&gpu, total, usage, "readback");
        gpu.memory.begin_submit();
        let mut enc = self.record(None);
        let mut off = 0u64;
        for t in tensors {
            let size = (t.numel() * 4) as u64;
            if size > 0 {
                enc.copy_buffer_to_buffer(&t.buffer, 0, &staging, off, size);
            }
            off += size;
        }
        let index = self.submit_recorded(enc.finish());
        self.after_submit();
        self.track_completion();
        let mapping = Mapping::read(staging.mapping());
        Ok(Readback { gpu, staging, lens, mapping, index })
    }

    /// Submits and waits for completion.
    pub fn finish(&mut self) -> Result<()> {
        self.submit();
        self.gpu.sync()
    }

    /// Submits everything queued so far and polls the device without waiting, so that wgpu
    /// reclaims what finished work dropped (the GPU runs this work while the host records more).
    pub fn submit_and_poll(&mut self) -> Result<()> {
        self.submit();
        self.gpu.device.poll(wgpu::PollType::Poll).map_err(|e| anyhow!("GPU poll failed: {e}"))?;
        Ok(())
    }
}

impl Drop for CommandRecorder {
    fn drop(&mut self) {
        // Work queued but never submitted is a bug in the caller; submit it so nothing is lost.
        if !self.dispatches.is_empty() {
            self.submit();
        }
    }
}

/// The bind group of dispatch `d` with its parameter block in `ubuf`: cached across steps while
/// the buffer pool is on (pooled buffers keep their ids), created afresh otherwise. Counted when
/// created.
fn bind_group(gpu: &Gpu, d: &Dispatch, ubuf: &super::pool::PoolBuffer) -> wgpu::BindGroup {
    let create = || {
        gpu.memory.counters.bind_groups(1);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: ubuf,
                offset: d.params.start as u64,
                size: std::num::NonZeroU64::new((d.params.end - d.params.start) as u64),
            }),
        }];
        for (i, b) in d.buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() });
        }
        gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&d.pipeline.label),
            layout: &d.pipeline.layout,
            entries: &entries,
        })
    };
    if !gpu.pool.enabled() {
        return create();
    }
    // Pipelines live as long as the GPU's cache: the address identifies the layout.
    let mut key =
        vec![Arc::as_ptr(&d.pipeline) as u64, ubuf.id, d.params.start as u64, (d.params.end - d.params.start) as u64];
    key.extend(d.buffers.iter().map(|b| b.id()));
    gpu.pool.bind_groups.get_or_create(key, create)
}

/// Folds a workgroup count whose x exceeds the per-dimension limit into x × y.
fn fold_groups(g: [u32; 3], max: u32) -> [u32; 3] {
    if g[0] <= max || g[1] != 1 {
        return g;
    }
    let y = g[0].div_ceil(max);
    [g[0].div_ceil(y), y, g[2]]
}

/// Two bindings of `tensors` on one buffer where one of them is writable (what WebGPU rejects in a
/// dispatch), as binding indices.
fn writable_aliasing(spec: &KernelSpec, tensors: &[Option<&GpuTensor>]) -> Option<(usize, usize)> {
    for (i, a) in tensors.iter().enumerate() {
        for (j, b) in tensors.iter().enumerate().skip(i + 1) {
            let (Some(a), Some(b)) = (a, b) else { continue };
            let writable = |k: usize| spec.bindings.get(k) == Some(&super::Access::ReadWrite);
            if Arc::ptr_eq(&a.buffer, &b.buffer) && (writable(i) || writable(j)) {
                return Some((i, j));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn fold_groups_covers_all() {
        for n in [1u32, 7, 65535, 65536, 200_000, 10_000_000] {
            let g = super::fold_groups([n, 1, 1], 65535);
            assert!(g[0] <= 65535 && g[1] <= 65535);
            assert!(g[0] as u64 * g[1] as u64 >= n as u64);
        }
    }
}
