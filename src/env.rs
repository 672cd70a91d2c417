//! Every `PEFT_*` environment variable the library honours, read and parsed here and nowhere else
//! (the lowest layer: it imports nothing of the crate). A set variable that does not parse is an
//! error naming the variable, its value and its choices; an empty one counts as unset.
//!
//! | variable | choices | default | overrides |
//! |---|---|---|---|
//! | `PEFT_GPU` | an index from `peft info`, or part of a GPU's name | the best GPU: discrete > integrated > virtual > CPU | `GpuOptions::select` (`--gpu`) |
//! | `PEFT_MATMUL_VARIANT` | `auto`, `basic`, `register`, `tiled`, `subgroup`, `smem`, `f16`, `coop` | `auto`: `subgroup` or `register` on CPU drivers, `smem` on discrete GPUs, `tiled` elsewhere | `KernelPolicy::matmul_variant` |
//! | `PEFT_SMEM_LARGE_TILE` | `auto`, `BMxBNxBK/TMxTN` (TM, TN 4 or 8) | `128x128x8/8x8`; `128x64x8/8x8` where workgroup memory is under 16.5 KiB (WebGPU's 16) | `KernelPolicy::smem_large_tile` |
//! | `PEFT_ADAPTER_KERNEL` | `auto`, `fused`, `matmul` | `matmul` | `KernelPolicy::adapter_kernel` |
//! | `PEFT_ATTENTION_KERNEL` | `auto`, `fused`, `separate` | `fused` on GPUs, `separate` on CPU drivers | `KernelPolicy::attention_kernel` |
//! | `PEFT_SUBMIT_PER_LAYER` | `auto`, `1`/`on`/`true`/`yes`, `0`/`off`/`false`/`no` | per layer on GPUs, one per pass on CPU drivers | `KernelPolicy::submit` |
//! | `PEFT_SHADER_CHECKS` | `auto`, `1`/`on`/…, `0`/`off`/… | on in debug builds, off (trusted shaders) in release builds | `KernelPolicy::shader_checks` |
//! | `PEFT_COOP` | `auto`, `1`/`on`/…, `0`/`off`/… | on where the GPU offers cooperative matrices | `KernelPolicy::cooperative_matrix` |
//! | `PEFT_LIMITS` | `auto`, `adapter`, `webgpu` | `adapter`: the adapter's limits and the optional features we use | `GpuOptions::limits` (`--limits`) |
//! | `PEFT_CACHE` | a directory | `<repo>/.cache` | `train::cache::cache_dir` |
//!
//! Precedence, for the device policy: typed `GpuOptions` fields > these variables > the device's
//! default. Values are case-insensitive and trimmed.

use anyhow::{anyhow, bail, Result};
use std::path::PathBuf;

/// GPU selection: an index from `peft info` or a case-insensitive substring of the adapter's name.
pub const GPU: &str = "PEFT_GPU";
/// The matmul kernel every product uses unless it names one.
pub const MATMUL_VARIANT: &str = "PEFT_MATMUL_VARIANT";
/// The `smem` matmul variant's large tile, `BMxBNxBK/TMxTN`.
pub const SMEM_LARGE_TILE: &str = "PEFT_SMEM_LARGE_TILE";
/// The adapter's token-parallel path: the fused kernels or the shared matmul.
pub const ADAPTER_KERNEL: &str = "PEFT_ADAPTER_KERNEL";
/// Masked self-attention: the fused kernels or the matmul and row kernels.
pub const ATTENTION_KERNEL: &str = "PEFT_ATTENTION_KERNEL";
/// One submit per encoder layer (on) or one per pass (off), for a resident pass.
pub const SUBMIT_PER_LAYER: &str = "PEFT_SUBMIT_PER_LAYER";
/// Whether trusted shaders keep wgpu's runtime bounds checks.
pub const SHADER_CHECKS: &str = "PEFT_SHADER_CHECKS";
/// Whether EXPERIMENTAL_COOPERATIVE_MATRIX is requested where the GPU offers it.
pub const COOP: &str = "PEFT_COOP";
/// Which limits and features the device is requested with: the adapter's, or WebGPU's defaults.
pub const LIMITS: &str = "PEFT_LIMITS";
/// Whether the GPU keeps dropped buffers for reuse and caches bind groups (`0`/`off`: not).
pub const BUFFER_POOL: &str = "PEFT_BUFFER_POOL";
/// The cache of downloaded models and data sets.
pub const CACHE: &str = "PEFT_CACHE";

/// Names accepted by [`MATMUL_VARIANT`] (`auto` is the device rule).
pub const MATMUL_VARIANT_CHOICES: &[&str] = &["auto", "basic", "register", "tiled", "subgroup", "smem", "f16", "coop"];
/// Names accepted by [`ADAPTER_KERNEL`].
pub const ADAPTER_KERNEL_CHOICES: &[&str] = &["auto", "fused", "matmul"];
/// Names accepted by [`ATTENTION_KERNEL`].
pub const ATTENTION_KERNEL_CHOICES: &[&str] = &["auto", "fused", "separate"];
/// Names accepted by [`LIMITS`] (`auto` is `adapter`).
pub const LIMITS_CHOICES: &[&str] = &["auto", "adapter", "webgpu"];
/// The format of [`SMEM_LARGE_TILE`].
pub const TILE_CHOICES: &str = "auto or BMxBNxBK/TMxTN, e.g. 128x128x8/8x8 (TM and TN 4 or 8)";
const BOOL_CHOICES: &str = "auto, 1, on, true, yes, 0, off, false or no";

/// Every variable of the table above, for listings.
pub const ALL: &[&str] = &[
    GPU,
    MATMUL_VARIANT,
    SMEM_LARGE_TILE,
    ADAPTER_KERNEL,
    ATTENTION_KERNEL,
    SUBMIT_PER_LAYER,
    SHADER_CHECKS,
    COOP,
    LIMITS,
    BUFFER_POOL,
    CACHE,
];

/// The overrides the environment sets for the device policy, parsed; `None` where a variable is
/// unset, empty or `auto`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvOverrides {
    /// [`GPU`], as given (trimmed).
    pub gpu: Option<String>,
    /// [`MATMUL_VARIANT`]: one of [`MATMUL_VARIANT_CHOICES`] other than `auto`.
    pub matmul_variant: Option<&'static str>,
    /// [`SMEM_LARGE_TILE`]: `[BM, BN, BK, TM, TN]`.
    pub smem_large_tile: Option<[u32; 5]>,
    /// [`ADAPTER_KERNEL`]: `fused` or `matmul`.
    pub adapter_kernel: Option<&'static str>,
    /// [`ATTENTION_KERNEL`]: `fused` or `separate`.
    pub attention_kernel: Option<&'static str>,
    /// [`SUBMIT_PER_LAYER`].
    pub submit_per_layer: Option<bool>,
    /// [`SHADER_CHECKS`].
    pub shader_checks: Option<bool>,
    /// [`COOP`].
    pub coop: Option<bool>,
    /// [`LIMITS`]: `adapter` or `webgpu`.
    pub limits: Option<&'static str>,
    /// [`BUFFER_POOL`].
    pub buffer_pool: Option<bool>,
}

impl EnvOverrides {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(process_var)
    }

    /// Reads the variables through `lookup` (a name → value function: the process environment, or
    /// a map in tests). Fails on the first variable whose value does not parse.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| {
            lookup(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("auto"))
        };
        Ok(Self {
            gpu: lookup(GPU).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()),
            matmul_variant: get(MATMUL_VARIANT)
                .map(|v| choice(MATMUL_VARIANT, &v, MATMUL_VARIANT_CHOICES))
                .transpose()?,
            smem_large_tile: get(SMEM_LARGE_TILE).map(|v| tile(SMEM_LARGE_TILE, &v)).transpose()?,
            adapter_kernel: get(ADAPTER_KERNEL)
                .map(|v| choice(ADAPTER_KERNEL, &v, ADAPTER_KERNEL_CHOICES))
                .transpose()?,
            attention_kernel: get(ATTENTION_KERNEL)
                .map(|v| choice(ATTENTION_KERNEL, &v, ATTENTION_KERNEL_CHOICES))
                .transpose()?,
            submit_per_layer: get(SUBMIT_PER_LAYER).map(|v| boolean(SUBMIT_PER_LAYER, &v)).transpose()?,
            shader_checks: get(SHADER_CHECKS).map(|v| boolean(SHADER_CHECKS, &v)).transpose()?,
            coop: get(COOP).map(|v| boolean(COOP, &v)).transpose()?,
            limits: get(LIMITS).map(|v| choice(LIMITS, &v, LIMITS_CHOICES)).transpose()?,
            buffer_pool: get(BUFFER_POOL).map(|v| boolean(BUFFER_POOL, &v)).transpose()?,
        })
    }

    /// The variables that are set (for a report of where the policy came from).
    pub fn set_names(&self) -> Vec<&'static str> {
        let s = self;
        [
            (GPU, s.gpu.is_some()),
            (MATMUL_VARIANT, s.matmul_variant.is_some()),
            (SMEM_LARGE_TILE, s.smem_large_tile.is_some()),
            (ADAPTER_KERNEL, s.adapter_kernel.is_some()),
            (ATTENTION_KERNEL, s.attention_kernel.is_some()),
            (SUBMIT_PER_LAYER, s.submit_per_layer.is_some()),
            (SHADER_CHECKS, s.shader_checks.is_some()),
            (COOP, s.coop.is_some()),
            (LIMITS, s.limits.is_some()),
            (BUFFER_POOL, s.buffer_pool.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect()
    }
}

/// [`CACHE`] from the process environment, when set and not empty (a path: not parsed).
pub fn cache_dir() -> Option<PathBuf> {
    std::env::var_os(CACHE).filter(|p| !p.is_empty()).map(PathBuf::from)
}

/// One variable of the process environment (a value that is not UTF-8 is kept lossily, so it
/// fails to parse with its name in the error instead of counting as unset).
fn process_var(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// The error for a value that does not parse.
pub fn bad_value(name: &str, value: &str, choices: &str) -> anyhow::Error {
    anyhow!("{name}={value:?} is not valid: expected {choices}")
}

fn choice(name: &str, value: &str, choices: &[&'static str]) -> Result<&'static str> {
    let v = value.to_ascii_lowercase();
    choices.iter().copied().find(|c| *c == v).ok_or_else(|| bad_value(name, value, &choices.join(", ")))
}

fn boolean(name: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "on" | "true" | "yes" => Ok(true),
        "0" | "off" | "false" | "no" => Ok(false),
        _ => Err(bad_value(name, value, BOOL_CHOICES)),
    }
}

fn tile(name: &str, value: &str) -> Result<[u32; 5]> {
    let v = parse_dims(value, 3, 2).map_err(|e| anyhow!("{}: {e}", bad_value(name, value, TILE_CHOICES)))?;
    Ok([v[0], v[1], v[2], v[3], v[4]])
}

/// `AxBxC/DxE` → [A, B, C, D, E] (`first` numbers before the slash, `second` after; `x`, `X` or
/// `×` between them): the format of tile configurations.
pub fn parse_dims(s: &str, first: usize, second: usize) -> Result<Vec<u32>> {
    let (l, r) = s.trim().split_once('/').ok_or_else(|| anyhow!("no '/'"))?;
    let nums = |part: &str, count: usize| -> Result<Vec<u32>> {
        let v: Vec<u32> = part
            .split(['x', 'X', '×'])
            .map(|t| t.trim().parse::<u32>().map_err(|_| anyhow!("{t:?} is not a number")))
            .collect::<Result<_>>()?;
        if v.len() != count {
            bail!("{} numbers where {count} are expected", v.len());
        }
        Ok(v)
    };
    let mut v = nums(l, first)?;
    v.extend(nums(r, second)?);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<EnvOverrides> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        EnvOverrides::from_lookup(|n| map.get(n).cloned())
    }

    /// The error of a bad value names the variable, the value and every choice.
    fn assert_bad(name: &str, value: &str, choices: &[&str]) {
        let e = format!("{:#}", read(&[(name, value)]).expect_err(&format!("{name}={value} accepted")));
        assert!(e.contains(name) && e.contains(value), "{e}");
        for c in choices {
            assert!(e.contains(c), "{e} does not list {c}");
        }
    }

    #[test]
    fn unset_empty_and_auto_are_defaults() {
        assert_eq!(read(&[]).unwrap(), EnvOverrides::default());
        let blank: Vec<(&str, &str)> = ALL.iter().map(|&n| (n, "  ")).collect();
        assert_eq!(read(&blank).unwrap(), EnvOverrides::default());
        let auto: Vec<(&str, &str)> = ALL.iter().filter(|&&n| n != GPU).map(|&n| (n, "Auto")).collect();
        assert_eq!(read(&auto).unwrap(), EnvOverrides::default());
    }

    #[test]
    fn gpu_is_kept_as_given() {
        assert_eq!(read(&[(GPU, " nvidia ")]).unwrap().gpu.as_deref(), Some("nvidia"));
        assert_eq!(read(&[(GPU, "1")]).unwrap().gpu.as_deref(), Some("1"));
    }

    #[test]
    fn matmul_variant_values() {
        for &c in &MATMUL_VARIANT_CHOICES[1..] {
            assert_eq!(read(&[(MATMUL_VARIANT, c)]).unwrap().matmul_variant, Some(c));
            assert_eq!(read(&[(MATMUL_VARIANT, &c.to_uppercase())]).unwrap().matmul_variant, Some(c));
        }
        assert_bad(MATMUL_VARIANT, "fast", MATMUL_VARIANT_CHOICES);
    }

    #[test]
    fn adapter_kernel_values() {
        assert_eq!(read(&[(ADAPTER_KERNEL, "fused")]).unwrap().adapter_kernel, Some("fused"));
        assert_eq!(read(&[(ADAPTER_KERNEL, " Matmul ")]).unwrap().adapter_kernel, Some("matmul"));
        assert_bad(ADAPTER_KERNEL, "both", ADAPTER_KERNEL_CHOICES);
    }

    #[test]
    fn attention_kernel_values() {
        assert_eq!(read(&[(ATTENTION_KERNEL, "fused")]).unwrap().attention_kernel, Some("fused"));
        assert_eq!(read(&[(ATTENTION_KERNEL, " Separate ")]).unwrap().attention_kernel, Some("separate"));
        assert_bad(ATTENTION_KERNEL, "flash", ATTENTION_KERNEL_CHOICES);
    }

    #[test]
    fn boolean_values() {
        for name in [SUBMIT_PER_LAYER, SHADER_CHECKS, COOP] {
            for (v, want) in [("1", true), ("on", true), ("TRUE", true), ("yes", true)] {
                let e = read(&[(name, v)]).unwrap();
                assert_eq!([e.submit_per_layer, e.shader_checks, e.coop].iter().flatten().collect::<Vec<_>>(), [&want]);
            }
            for v in ["0", "off", "False", "no"] {
                let e = read(&[(name, v)]).unwrap();
                assert_eq!(
                    [e.submit_per_layer, e.shader_checks, e.coop].iter().flatten().collect::<Vec<_>>(),
                    [&false]
                );
            }
            assert_bad(name, "2", &["1", "on", "0", "off"]);
            assert_bad(name, "enabled", &["true", "false"]);
        }
    }

    #[test]
    fn limits_values() {
        assert_eq!(read(&[(LIMITS, "webgpu")]).unwrap().limits, Some("webgpu"));
        assert_eq!(read(&[(LIMITS, " WebGPU ")]).unwrap().limits, Some("webgpu"));
        assert_eq!(read(&[(LIMITS, "adapter")]).unwrap().limits, Some("adapter"));
        assert_bad(LIMITS, "browser", LIMITS_CHOICES);
    }

    #[test]
    fn tile_values() {
        assert_eq!(read(&[(SMEM_LARGE_TILE, "128x128x16/8x8")]).unwrap().smem_large_tile, Some([128, 128, 16, 8, 8]));
        assert_eq!(read(&[(SMEM_LARGE_TILE, "64×64×8 / 4×4")]).unwrap().smem_large_tile, Some([64, 64, 8, 4, 4]));
        for bad in ["128x128x8", "128x128/8x8", "128x128xq/8x8", "big"] {
            assert_bad(SMEM_LARGE_TILE, bad, &["BMxBNxBK/TMxTN"]);
        }
    }

    #[test]
    fn set_names_lists_what_is_set() {
        let e = read(&[(COOP, "0"), (MATMUL_VARIANT, "smem"), (SHADER_CHECKS, "auto"), (LIMITS, "webgpu")]).unwrap();
        assert_eq!(e.set_names(), [MATMUL_VARIANT, COOP, LIMITS]);
    }
}
