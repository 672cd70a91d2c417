//! The GPU runtime: device selection ([`Gpu`]), tensors ([`GpuTensor`]), the pipeline cache
//! ([`pipelines`]), command batching with optional GPU timestamps ([`CommandRecorder`]) and the
//! device policy resolved once per GPU ([`policy::KernelPolicy`], [`Gpu::policy`]).

mod bind_cache;
pub mod memory;
pub mod pipelines;
pub mod policy;
mod pool;
pub mod profile;
mod recorder;
mod tensor;

pub use memory::{MemoryTracker, TrackedBuffer};
pub use pipelines::{Access, KernelSpec};
pub use policy::{
    AdapterKernel, AttentionKernel, DeviceFacts, KernelPolicy, LimitsMode, MatmulVariant, SubmitPolicy, TileConfig,
};
pub use pool::PoolStats;
pub use profile::{CounterSnapshot, DispatchRecord, ProfileMode};
pub use recorder::{CommandRecorder, Readback, SubmitTiming};
pub use tensor::GpuTensor;

/// Storage bindings a dispatch may leave empty (`None`): one 16-byte dummy buffer each, bound in
/// their place. The widest kernel (`optim::adamw_multi`) has 33.
pub const DUMMY_BINDINGS: usize = 33;

use crate::env::EnvOverrides;
use anyhow::{anyhow, bail, Context, Result};
use std::sync::{Arc, Mutex};

/// Environment variable naming the GPU to use: an index from `peft info`, or a case-insensitive
/// substring of the adapter's name (e.g. `llvmpipe`, `nvidia`).
pub use crate::env::GPU as GPU_ENV;

/// Optional features we use when the GPU offers them; none is required. TIMESTAMP_QUERY_INSIDE_PASSES
/// is requested wherever offered (harmless: only the profiler writes timestamps inside passes; on
/// Vulkan wgpu offers it exactly where it offers TIMESTAMP_QUERY).
/// EXPERIMENTAL_COOPERATIVE_MATRIX (tensor cores) is requested only where the adapter offers it
/// and [`COOP_ENV`] does not turn it off; only the `coop` matmul variant uses it.
pub const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
    .union(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);

/// Environment variable: `0` / `off` leaves EXPERIMENTAL_COOPERATIVE_MATRIX off even where offered.
pub use crate::env::COOP as COOP_ENV;

/// How to choose a GPU, and typed overrides of its [`KernelPolicy`] (each `None`: the environment
/// variable of [`crate::env`], else the device's default).
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Index (as `peft info` prints) or name substring; `None` reads [`GPU_ENV`], then picks the
    /// best device (discrete > integrated > virtual > CPU).
    pub select: Option<String>,
    /// The matmul variant of products that name none ([`KernelPolicy::matmul_variant`]).
    pub matmul_variant: Option<MatmulVariant>,
    /// The `smem` variant's large tile ([`KernelPolicy::smem_large_tile`]).
    pub smem_large_tile: Option<TileConfig>,
    /// The adapter's path ([`KernelPolicy::adapter_kernel`]).
    pub adapter_kernel: Option<AdapterKernel>,
    /// Masked self-attention's kernels ([`KernelPolicy::attention_kernel`]).
    pub attention_kernel: Option<AttentionKernel>,
    /// How a resident pass is submitted ([`KernelPolicy::submit`]).
    pub submit: Option<SubmitPolicy>,
    /// Runtime checks in trusted shaders ([`KernelPolicy::shader_checks`]).
    pub shader_checks: Option<bool>,
    /// `Some(false)` leaves EXPERIMENTAL_COOPERATIVE_MATRIX off where offered.
    pub cooperative_matrix: Option<bool>,
    /// The limits and features requested of the device ([`KernelPolicy::device_request`]):
    /// the adapter's, or WebGPU's defaults and no optional feature (`--limits webgpu`).
    pub limits: Option<LimitsMode>,
    /// Whether dropped buffers are kept for reuse and bind groups cached ([`KernelPolicy::buffer_pool`]).
    pub buffer_pool: Option<bool>,
}

/// Facts about one GPU as wgpu sees it.
#[derive(Clone, Debug)]
pub struct GpuDescription {
    pub index: usize,
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    /// Cooperative matrix shapes and types the adapter supports (empty without the feature).
    pub coop_matrix: Vec<wgpu::CooperativeMatrixProperties>,
}

impl GpuDescription {
    fn new(index: usize, adapter: &wgpu::Adapter) -> Self {
        let features = adapter.features();
        let coop_matrix = if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            adapter.cooperative_matrix_properties()
        } else {
            vec![]
        };
        Self { index, info: adapter.get_info(), features, limits: adapter.limits(), coop_matrix }
    }

    /// Whether the adapter offers `shader-f16` (a GPU with half-precision arithmetic).
    pub fn has_shader_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    /// Whether the adapter multiplies 16×16×16 f16 cooperative matrices into f32 accumulators.
    pub fn has_coop_16x16_f16_f32(&self) -> bool {
        self.coop_matrix.iter().any(|p| {
            p.m_size == 16
                && p.n_size == 16
                && p.k_size == 16
                && p.ab_type == wgpu::CooperativeScalarType::F16
                && p.cr_type == wgpu::CooperativeScalarType::F32
        })
    }

    /// One line: name, backend, driver.
    pub fn summary(&self) -> String {
        let i = &self.info;
        format!(
            "[{}] {} ({:?}, {:?}, driver: {} {})",
            self.index, i.name, i.backend, i.device_type, i.driver, i.driver_info
        )
    }

    /// The limits and features our kernels care about, one per line.
    pub fn details(&self) -> Vec<String> {
        let l = &self.limits;
        let f = |feat: wgpu::Features, name: &str| {
            format!("{name}: {}", if self.features.contains(feat) { "yes" } else { "no" })
        };
        vec![
            format!("max storage binding: {} MiB", l.max_storage_buffer_binding_size / (1 << 20)),
            format!("max buffer size: {} MiB", l.max_buffer_size / (1 << 20)),
            format!("max workgroup memory: {} KiB", l.max_compute_workgroup_storage_size / 1024),
            format!("max invocations per workgroup: {}", l.max_compute_invocations_per_workgroup),
            format!("max workgroups per dimension: {}", l.max_compute_workgroups_per_dimension),
            format!("storage buffers per stage: {}", l.max_storage_buffers_per_shader_stage),
            format!("subgroup size: {}..{}", self.info.subgroup_min_size, self.info.subgroup_max_size),
            f(wgpu::Features::SHADER_F16, "shader-f16"),
            f(wgpu::Features::SUBGROUP, "subgroup"),
            f(wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
            f(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES, "timestamp-query-inside-passes"),
            f(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX, "cooperative-matrix"),
            format!(
                "cooperative matrix shapes (M×N×K A/B→C): {}",
                if self.coop_matrix.is_empty() {
                    "none".to_string()
                } else {
                    self.coop_matrix
                        .iter()
                        .map(|p| format!("{}×{}×{} {:?}→{:?}", p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        ]
    }
}

impl<'a> DeviceFacts<'a> {
    /// The facts of `description`'s adapter with `features` enabled and `limits`.
    pub fn new(description: &GpuDescription, features: wgpu::Features, limits: &'a wgpu::Limits) -> Self {
        let i = &description.info;
        DeviceFacts {
            device_type: i.device_type,
            features,
            subgroup_min_size: i.subgroup_min_size,
            subgroup_max_size: i.subgroup_max_size,
            limits,
        }
    }
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
    wgpu::Instance::new(desc)
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// Every GPU wgpu can see, in a stable order.
pub fn list_gpus() -> Vec<GpuDescription> {
    let inst = instance();
    let adapters = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
    adapters.iter().enumerate().map(|(i, a)| GpuDescription::new(i, a)).collect()
}

const NO_GPU_HELP: &str = "no GPU found by wgpu (Vulkan, Metal or DX12). On a machine without a GPU \
install a CPU Vulkan driver: on Debian/Ubuntu `sudo scripts/install-vulkan.sh` (Mesa lavapipe)";

/// The GPU: wgpu device and queue, what they offer, and the pipeline cache.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub description: GpuDescription,
    /// Features enabled on the device (subset of [`OPTIONAL_FEATURES`]; none under WebGPU's limits).
    pub features: wgpu::Features,
    /// The limits requested of the device, which wgpu enforces: the adapter's, or WebGPU's defaults.
    pub limits: wgpu::Limits,
    pub(crate) pipelines: pipelines::PipelineCache,
    /// One small unused buffer per binding slot, bound where a kernel's optional input is absent
    /// (distinct per slot, so a read-only and a read-write slot never share a buffer).
    pub(crate) dummies: Vec<Arc<TrackedBuffer>>,
    /// Every storage buffer of the project on this GPU, counted.
    pub memory: Arc<MemoryTracker>,
    /// Dropped buffers kept for reuse, pending clears and cached bind groups ([`pool`]).
    pub(crate) pool: Arc<pool::BufferPool>,
    /// Errors wgpu reported outside a call's result (out of memory, device lost, ...).
    fault: Arc<Mutex<Faults>>,
    /// Which kernels and submission pattern this GPU gets, resolved once at creation.
    policy: KernelPolicy,
    /// Whether a profile is on ([`Gpu::start_profile`]), and its state.
    profiling: std::sync::atomic::AtomicBool,
    profile: Mutex<Option<profile::ProfileState>>,
}

/// The first asynchronous error, and whether the device was lost (which explains any error after).
#[derive(Default)]
struct Faults {
    lost: Option<String>,
    error: Option<String>,
}

/// Routes wgpu's uncaptured errors (whose default handler panics) and the device-lost callback
/// into a slot that [`Gpu::check`] turns into an error.
fn watch_faults(device: &wgpu::Device) -> Arc<Mutex<Faults>> {
    let fault: Arc<Mutex<Faults>> = Arc::default();
    let slot = fault.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        let msg = match &e {
            wgpu::Error::OutOfMemory { .. } => format!(
                "the GPU ran out of memory ({e}): use a smaller --batch-size or --max-length, or keep fewer \
                 layers on the GPU with --resident-layers"
            ),
            _ => format!("GPU error: {e}"),
        };
        log::debug!("{msg}");
        let mut f = slot.lock().unwrap_or_else(|p| p.into_inner());
        f.error.get_or_insert(msg);
    }));
    let slot = fault.clone();
    device.set_device_lost_callback(move |reason, msg| {
        // Called when the device is lost or destroyed, not when it is dropped.
        let msg = format!(
            "the GPU device was lost ({reason:?}{}{msg}): a driver reset, a removed GPU or a hang",
            if msg.is_empty() { "" } else { ": " }
        );
        log::debug!("{msg}");
        let mut f = slot.lock().unwrap_or_else(|p| p.into_inner());
        f.lost.get_or_insert(msg);
    });
    fault
}

impl Gpu {
    /// Opens the GPU chosen by `options` (or [`GPU_ENV`], or the best one), its policy resolved
    /// from the device, `options` and the environment ([`KernelPolicy::resolve`]). Fails on an
    /// environment variable of [`crate::env`] whose value does not parse. Blocks: [`open`](Self::open)
    /// through pollster (the browser build, which cannot block, awaits `open` itself).
    pub fn new(options: &GpuOptions) -> Result<Arc<Self>> {
        pollster::block_on(Self::open(options))
    }

    /// [`new`](Self::new) without blocking: in the browser (WebGPU) the adapter and the device
    /// come from promises; the browser offers one adapter and grants the limits it grants.
    pub async fn open(options: &GpuOptions) -> Result<Arc<Self>> {
        let env = EnvOverrides::from_env()?;
        let inst = instance();
        let adapters = inst.enumerate_adapters(wgpu::Backends::all()).await;
        if adapters.is_empty() {
            bail!(NO_GPU_HELP);
        }
        let select = options.select.clone().or_else(|| env.gpu.clone()).filter(|s| !s.is_empty());
        let index = match select {
            Some(sel) => {
                if let Ok(i) = sel.parse::<usize>() {
                    if i >= adapters.len() {
                        bail!("GPU index {i} out of range: {} GPU(s) found (see `peft info`)", adapters.len());
                    }
                    i
                } else {
                    let s = sel.to_lowercase();
                    adapters
                        .iter()
                        .position(|a| a.get_info().name.to_lowercase().contains(&s))
                        .ok_or_else(|| anyhow!("no GPU whose name contains {sel:?} (see `peft info`)"))?
                }
            }
            None => {
                (0..adapters.len()).min_by_key(|&i| (rank(adapters[i].get_info().device_type), i)).expect("non-empty")
            }
        };
        let adapter = &adapters[index];
        let description = GpuDescription::new(index, adapter);
        let policy::DeviceRequest { features, limits, .. } =
            KernelPolicy::device_request(adapter.features(), &adapter.limits(), options, &env)?;
        let experimental = if features.intersects(wgpu::Features::all_experimental_mask()) {
            // SAFETY: the only experimental feature we request is EXPERIMENTAL_COOPERATIVE_MATRIX, used
            // by one shader (matmul_coop) that the tests and the benchmark check against a reference.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let policy = KernelPolicy::resolve(&DeviceFacts::new(&description, features, &limits), options, &env)?;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("peft-wgpu"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: experimental,
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .with_context(|| format!("opening GPU {}", description.summary()))?;
        let fault = watch_faults(&device);
        let max_binding = limits.max_storage_buffer_binding_size;
        let memory = Arc::new(MemoryTracker::default());
        let dummies = (0..DUMMY_BINDINGS)
            .map(|_| {
                let b = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("dummy"),
                    size: 16,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                });
                Arc::new(TrackedBuffer::new(b, &memory))
            })
            .collect();
        Ok(Arc::new(Self {
            device,
            queue,
            description,
            features,
            limits,
            pipelines: pipelines::PipelineCache::new(policy.shader_checks),
            dummies,
            memory,
            pool: Arc::new(pool::BufferPool::new(policy.buffer_pool, max_binding)),
            fault,
            policy,
            profiling: Default::default(),
            profile: Mutex::default(),
        }))
    }

    /// A GPU for tests: the one named by [`GPU_ENV`] or the best one. Panics with the help text
    /// when there is none (tests need a Vulkan driver; see README).
    pub fn for_tests() -> Arc<Self> {
        match Self::new(&GpuOptions::default()) {
            Ok(g) => g,
            Err(e) => panic!("{e:#}"),
        }
    }

    pub fn has(&self, f: wgpu::Features) -> bool {
        self.features.contains(f)
    }

    /// Which kernels and submission pattern this GPU gets (resolved once, at creation).
    pub fn policy(&self) -> &KernelPolicy {
        &self.policy
    }

    /// Whether this is a CPU driver (lavapipe, SwiftShader, WARP).
    pub fn is_cpu(&self) -> bool {
        self.policy.is_cpu
    }

    /// What the policy's device rules look at: type, enabled features, subgroup sizes, limits.
    pub fn facts(&self) -> DeviceFacts<'_> {
        DeviceFacts::new(&self.description, self.features, &self.limits)
    }

    /// Starts a batch of dispatches that are submitted together.
    pub fn batch(self: &Arc<Self>) -> CommandRecorder {
        CommandRecorder::new(self.clone())
    }

    /// Fails with the first error wgpu reported asynchronously (out of memory, validation, device
    /// lost), if any; every later call fails the same way.
    pub fn check(&self) -> Result<()> {
        let f = self.fault.lock().unwrap_or_else(|p| p.into_inner());
        match f.lost.as_ref().or(f.error.as_ref()) {
            Some(msg) => bail!("{msg}"),
            None => Ok(()),
        }
    }

    /// Blocks until the GPU has finished all submitted work.
    pub fn sync(&self) -> Result<()> {
        // Poll first: a lost device's callback runs in the poll, and explains earlier errors.
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        self.check()?;
        polled.map_err(|e| anyhow!("GPU poll failed: {e}"))?;
        // Every submission is done (their callbacks ran): buffers dropped since are free.
        self.memory.idle();
        Ok(())
    }

    /// A storage tensor's buffer of `bytes`: from the pool when it has one (`true`), else new.
    pub(crate) fn storage_buffer(&self, bytes: u64) -> (Arc<TrackedBuffer>, bool) {
        let size = bytes.max(pool::MIN_TENSOR_BUFFER);
        let taken = self.pool.take(&self.device, size, tensor::USAGE, "tensor");
        let reused = taken.2;
        (Arc::new(TrackedBuffer::pooled(taken, bytes, &self.memory, &self.pool)), reused)
    }

    /// Queues a write of `data` at byte `offset` of `buffer` (executed before the next submit),
    /// never wiped by a clear pending from [`GpuTensor::zeros`]. Every queue write into a tensor
    /// goes through here.
    pub fn write_buffer(&self, buffer: &TrackedBuffer, offset: u64, data: &[u8]) {
        self.pool.write(&self.queue, buffer.id(), buffer, offset, data);
    }

    /// Submits `commands` after the clears pending from [`GpuTensor::zeros`] (every submit of the
    /// gpu module goes through here).
    pub(crate) fn submit_commands(&self, commands: wgpu::CommandBuffer) -> wgpu::SubmissionIndex {
        self.pool.submit(&self.device, &self.queue, commands)
    }

    /// What the buffer pool holds now (free bytes are reserved, not in [`MemoryTracker::in_use`]).
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// The memory budget (`--max-gpu-memory`) that live plus pooled free bytes stay within; the
    /// pool is trimmed to it now.
    pub fn set_memory_budget(&self, budget: Option<u64>) {
        self.pool.set_budget(budget);
    }

    /// Drops every buffer the pool keeps for reuse (and the bind groups that bind them).
    pub fn trim_pool(&self) {
        self.pool.clear();
    }

    /// Bind groups cached now (while the pool is on).
    pub fn cached_bind_groups(&self) -> usize {
        self.pool.bind_groups.len()
    }

    /// The largest storage buffer binding, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size
    }
}
