//! Which limits and features the device is requested with ([`LimitsMode`], [`DeviceRequest`]):
//! everything the adapter offers, or exactly WebGPU's defaults with no optional feature (what a
//! browser grants a page that asks for nothing, and about what a laptop GPU offers). Decided once,
//! before the device exists; the [`KernelPolicy`](super::KernelPolicy) then sees the requested
//! limits and features as its [`DeviceFacts`](super::DeviceFacts), so every kernel choice made from
//! them (matmul variant, tiles, multi-tensor optimizer) fits what was requested.

use crate::env::{self, EnvOverrides};
use crate::gpu::GpuOptions;
use anyhow::{anyhow, bail, Result};

/// Storage buffers the widest kernels bind in one dispatch (`optim::adamw_multi`: 8 tensors × 4
/// buffers + the clip factor). A device with fewer per shader stage runs the per-tensor optimizer
/// kernels instead ([`KernelPolicy::multi_tensor_optimizer`](super::KernelPolicy)).
pub const MULTI_TENSOR_BINDINGS: u32 = 33;

/// Which limits and features the device is requested with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LimitsMode {
    /// The adapter's own limits and every optional feature we use that it offers.
    #[default]
    Adapter,
    /// Exactly WebGPU's default limits ([`webgpu_limits`]: 8 storage buffers per shader stage,
    /// 128 MiB per storage binding, 256 MiB per buffer, 16 KiB of workgroup memory, 256
    /// invocations per workgroup) and no optional feature (no subgroups, f16, cooperative
    /// matrices or timestamp queries): proves a step runs where a browser or a small GPU runs it.
    WebGpu,
}

impl LimitsMode {
    pub const ALL: [LimitsMode; 2] = [LimitsMode::Adapter, LimitsMode::WebGpu];

    pub fn name(self) -> &'static str {
        match self {
            LimitsMode::Adapter => "adapter",
            LimitsMode::WebGpu => "webgpu",
        }
    }

    /// `adapter` or `webgpu` (case-insensitive; `auto` is `adapter`).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        if s == "auto" {
            return Ok(LimitsMode::Adapter);
        }
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| anyhow!("unknown limits mode {s:?} (expected adapter or webgpu)"))
    }

    /// The option, else [`env::LIMITS`], else [`LimitsMode::Adapter`], with where it came from
    /// (`None` for the default).
    pub fn chosen(options: &GpuOptions, env: &EnvOverrides) -> Result<(Self, Option<&'static str>)> {
        if let Some(m) = options.limits {
            return Ok((m, Some("GpuOptions::limits")));
        }
        match env.limits {
            Some(v) => Ok((Self::parse(v)?, Some(env::LIMITS))),
            None => Ok((LimitsMode::Adapter, None)),
        }
    }
}

impl std::fmt::Display for LimitsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for LimitsMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// WebGPU's default limits: `wgpu::Limits::default()` is the WebGPU specification's table.
pub fn webgpu_limits() -> wgpu::Limits {
    wgpu::Limits::default()
}

/// What to ask the adapter for: the features to enable and the limits to enforce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRequest {
    pub mode: LimitsMode,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
}

impl DeviceRequest {
    /// The request for an adapter that offers `offered` features and `limits`: in
    /// [`LimitsMode::Adapter`] its limits and the features of `optional` it offers (less
    /// EXPERIMENTAL_COOPERATIVE_MATRIX where `cooperative_matrix` is false); in
    /// [`LimitsMode::WebGpu`] WebGPU's defaults and no feature. Fails where the adapter cannot
    /// give WebGPU's defaults, naming the limits it lacks.
    pub fn new(
        mode: LimitsMode,
        offered: wgpu::Features,
        limits: &wgpu::Limits,
        optional: wgpu::Features,
        cooperative_matrix: bool,
    ) -> Result<Self> {
        match mode {
            LimitsMode::Adapter => {
                let mut features = offered & optional;
                if !cooperative_matrix {
                    features.remove(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
                }
                Ok(Self { mode, features, limits: limits.clone() })
            }
            LimitsMode::WebGpu => {
                let want = webgpu_limits();
                let mut short = vec![];
                want.check_limits_with_fail_fn(limits, false, |name, wanted, offered| {
                    short.push(format!("{name} (WebGPU: {wanted}, this GPU: {offered})"))
                });
                if !short.is_empty() {
                    bail!("--limits webgpu: this GPU does not offer WebGPU's default limits: {}", short.join(", "));
                }
                Ok(Self { mode, features: wgpu::Features::empty(), limits: want })
            }
        }
    }
}
