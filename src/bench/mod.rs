//! `peft bench`: kernel and training-step benchmarks on the selected GPU.
//!
//! Every kernel result is checked against the f64 reference before it is timed ([`kernels`]);
//! times are GPU timestamps around the compute pass where the device has them (median of the
//! timed repetitions after warm-up), else the wall clock around a submit + full sync. Results
//! carry FLOPs and compulsory bytes, so GFLOP/s, GB/s and the roofline floor follow; the floor
//! needs the device's peak bandwidth and FLOP rate ([`Peaks`]: known cards or `--peak-*`).

pub mod cli;
pub mod kernels;
pub mod matmul;
pub mod memory;
pub mod model;
pub mod profile;
pub mod step;

use crate::gpu::{CommandRecorder, Gpu};
use anyhow::Result;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// How a time was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Clock {
    /// GPU timestamps at the start and end of the compute pass.
    GpuTimestamps,
    /// Host wall clock around submit + wait.
    Wall,
}

/// Peak rates of the device, for the roofline floor.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Peaks {
    /// Memory bandwidth, bytes/s.
    pub bytes_per_s: f64,
    /// Non-tensor-core f32 FLOP/s.
    pub flops_per_s: f64,
    /// Where the numbers come from.
    pub source: &'static str,
}

impl Peaks {
    /// Datasheet numbers for cards we have run on, matched by adapter name.
    pub fn known(name: &str) -> Option<Self> {
        let n = name.to_ascii_lowercase();
        if n.contains("h200") {
            Some(Self {
                bytes_per_s: 4.8e12,
                flops_per_s: 67e12,
                source: "H200 SXM datasheet (4.8 TB/s, 67 TFLOP/s f32)",
            })
        } else if n.contains("h100") {
            Some(Self {
                bytes_per_s: 3.35e12,
                flops_per_s: 67e12,
                source: "H100 SXM datasheet (3.35 TB/s, 67 TFLOP/s f32)",
            })
        } else {
            None
        }
    }
}

/// One benchmark result (one JSON object per line in `--json`).
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    /// Workload name, e.g. `adapter_forward`.
    pub name: String,
    /// Shape, e.g. `T=4096 d=768 m=64`.
    pub shape: String,
    /// Kernel variant or configuration, where there are several.
    pub variant: String,
    pub median_us: f64,
    pub min_us: f64,
    pub samples: usize,
    pub clock: Clock,
    /// FLOPs of one repetition (multiply-add = 2).
    pub flops: f64,
    /// Bytes that must move to or from memory in one repetition (inputs read once, outputs written once).
    pub bytes: f64,
    pub gflops: f64,
    pub gbps: f64,
    /// max(bytes / peak bandwidth, flops / peak FLOP rate), when peaks are known.
    pub floor_us: Option<f64>,
    /// floor / median, in percent.
    pub pct_of_floor: Option<f64>,
    /// Largest relative error against the f64 reference (‖·‖∞ / ‖ref‖∞), where checked.
    pub max_rel_err: Option<f64>,
    /// Extra facts (tokens/s, peak memory, ...).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Measurement {
    /// Builds a result from raw sample times (seconds).
    pub fn new(name: &str, shape: String, variant: &str, times: &[f64], clock: Clock, flops: f64, bytes: f64) -> Self {
        let mut s = times.to_vec();
        s.sort_by(f64::total_cmp);
        let median = if s.is_empty() { f64::NAN } else { s[s.len() / 2] };
        let min = s.first().copied().unwrap_or(f64::NAN);
        Self {
            name: name.into(),
            shape,
            variant: variant.into(),
            median_us: median * 1e6,
            min_us: min * 1e6,
            samples: s.len(),
            clock,
            flops,
            bytes,
            gflops: flops / median * 1e-9,
            gbps: bytes / median * 1e-9,
            floor_us: None,
            pct_of_floor: None,
            max_rel_err: None,
            extra: Default::default(),
        }
    }

    /// Fills the roofline floor from the device's peaks.
    pub fn with_peaks(mut self, peaks: Option<Peaks>) -> Self {
        if let Some(p) = peaks {
            let floor = (self.bytes / p.bytes_per_s).max(self.flops / p.flops_per_s);
            if floor > 0.0 {
                self.floor_us = Some(floor * 1e6);
                self.pct_of_floor = Some(100.0 * floor * 1e6 / self.median_us);
            }
        }
        self
    }

    pub fn with_error(mut self, err: f64) -> Self {
        self.max_rel_err = Some(err);
        self
    }

    pub fn with_extra(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// One table row (see [`table_header`]).
    pub fn row(&self) -> String {
        let opt = |v: Option<f64>, prec: usize| v.map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "-".into());
        format!(
            "{:<24} {:<28} {:<10} {:>11.1} {:>9.1} {:>9.1} {:>9} {:>7} {:>9}",
            self.name,
            self.shape,
            self.variant,
            self.median_us,
            self.gflops,
            self.gbps,
            opt(self.floor_us, 1),
            opt(self.pct_of_floor, 0),
            self.max_rel_err.map(|e| format!("{e:.1e}")).unwrap_or_else(|| "-".into())
        )
    }
}

pub fn table_header() -> String {
    format!(
        "{:<24} {:<28} {:<10} {:>11} {:>9} {:>9} {:>9} {:>7} {:>9}",
        "workload", "shape", "variant", "median µs", "GFLOP/s", "GB/s", "floor µs", "%floor", "rel.err"
    )
}

/// Repetition counts.
#[derive(Clone, Copy, Debug)]
pub struct Reps {
    pub warmup: usize,
    pub timed: usize,
}

impl Default for Reps {
    fn default() -> Self {
        Self { warmup: 3, timed: 20 }
    }
}

/// Times `record` (which queues one repetition into the batch): `reps.timed` submissions after
/// `reps.warmup`, each measured with GPU timestamps when the device has them, else with the wall
/// clock around submit + full sync.
pub fn time_batches(
    gpu: &Arc<Gpu>,
    reps: Reps,
    mut record: impl FnMut(&mut CommandRecorder) -> Result<()>,
) -> Result<(Vec<f64>, Clock)> {
    let mut times = Vec::with_capacity(reps.timed);
    let mut clock = Clock::GpuTimestamps;
    for i in 0..reps.warmup + reps.timed {
        let mut b = gpu.batch();
        record(&mut b)?;
        let t0 = Instant::now();
        let timing = b.submit_timed()?;
        let wall = t0.elapsed().as_secs_f64();
        if i >= reps.warmup {
            match timing {
                Some(t) => times.push(t.gpu_seconds),
                None => {
                    clock = Clock::Wall;
                    times.push(wall);
                }
            }
        }
    }
    Ok((times, clock))
}

/// Times a host-driven operation (several submits, host reads) by the wall clock; `run` must
/// wait for its GPU work before returning.
pub fn time_wall(reps: Reps, mut run: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(reps.timed);
    for i in 0..reps.warmup + reps.timed {
        let t0 = Instant::now();
        run()?;
        if i >= reps.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurement_rates_and_floor() {
        let m = Measurement::new("x", "s".into(), "v", &[3e-6, 1e-6, 2e-6], Clock::Wall, 2e6, 4e6)
            .with_peaks(Some(Peaks { bytes_per_s: 4e12, flops_per_s: 1e12, source: "test" }));
        assert_eq!((m.median_us, m.min_us, m.samples), (2.0, 1.0, 3));
        assert!((m.gflops - 1000.0).abs() < 1e-9 && (m.gbps - 2000.0).abs() < 1e-9);
        // floor = max(4e6 / 4e12, 2e6 / 1e12) = 2 µs
        assert!((m.floor_us.unwrap() - 2.0).abs() < 1e-12 && (m.pct_of_floor.unwrap() - 100.0).abs() < 1e-9);
        assert!(Peaks::known("NVIDIA H100 80GB HBM3").is_some() && Peaks::known("llvmpipe").is_none());
    }
}

/// What `peft bench` runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Workload groups: adapter, fusion, matmul, attention, layernorm, step, demo.
    pub only: Vec<String>,
    pub shapes: kernels::KernelShapes,
    /// Model shapes for the train step (presets, model directories or config.json paths).
    pub configs: Vec<String>,
    pub batch: usize,
    pub seq: usize,
    /// Also time the train step with this many resident layers (weight streaming).
    pub stream_layers: Option<usize>,
    /// Token lengths of the demo workload (one per line) and its model.
    pub lengths: std::path::PathBuf,
    pub demo_model: String,
    pub demo_batch: usize,
    pub demo_sentences: Option<usize>,
    /// Each demo batch padded to a multiple of this many tokens (1: to its longest).
    pub demo_pad_multiple: usize,
    pub reps: Reps,
    pub peaks: Option<Peaks>,
    /// How the frozen layers' matrices are held (`--precision`) in the step and demo workloads.
    pub precision: crate::types::WeightPrecision,
    /// Where random-weight models are written (reused across runs).
    pub scratch: std::path::PathBuf,
}

pub const GROUPS: &[&str] = &["adapter", "fusion", "matmul", "attention", "layernorm", "step", "demo"];

/// Runs the selected workloads, printing a table row as each finishes.
pub fn run(gpu: &Arc<Gpu>, o: &BenchOptions) -> Result<Vec<Measurement>> {
    for g in &o.only {
        if !GROUPS.contains(&g.as_str()) {
            anyhow::bail!("unknown benchmark group {g:?} (expected one of {})", GROUPS.join(", "));
        }
    }
    let want = |g: &str| o.only.is_empty() || o.only.iter().any(|x| x == g);
    println!("device: {}", gpu.description.summary());
    if let Some(p) = o.peaks {
        println!(
            "roofline peaks: {:.0} GB/s, {:.1} TFLOP/s ({})",
            p.bytes_per_s * 1e-9,
            p.flops_per_s * 1e-12,
            p.source
        );
    }
    println!("{}", table_header());
    let mut out: Vec<Measurement> = vec![];
    let emit = |ms: Vec<Measurement>, out: &mut Vec<Measurement>| {
        for m in ms {
            println!("{}", m.row());
            out.push(m);
        }
    };
    type Group = fn(&Arc<Gpu>, kernels::KernelShapes, Reps, Option<Peaks>) -> Result<Vec<Measurement>>;
    let groups: [(&str, Group); 5] = [
        ("adapter", kernels::adapter),
        ("fusion", kernels::fusion),
        ("matmul", kernels::matmul),
        ("attention", kernels::attention),
        ("layernorm", kernels::layer_norm),
    ];
    for (name, f) in groups {
        if want(name) {
            emit(f(gpu, o.shapes, o.reps, o.peaks)?, &mut out);
        }
    }
    if want("step") {
        for spec in &o.configs {
            let (_, dir) = model::model_dir_for(spec, &o.scratch, 0)?;
            emit(vec![step::train_step(gpu, &dir, o.batch, o.seq, None, o.precision, o.reps, o.peaks)?], &mut out);
            if let Some(k) = o.stream_layers {
                emit(
                    vec![step::train_step(gpu, &dir, o.batch, o.seq, Some(k), o.precision, o.reps, o.peaks)?],
                    &mut out,
                );
            }
        }
    }
    if want("demo") {
        let mut lengths = step::read_lengths(&o.lengths)?;
        if let Some(n) = o.demo_sentences {
            lengths.truncate(n.max(1));
        }
        let (_, dir) = model::model_dir_for(&o.demo_model, &o.scratch, 0)?;
        emit(
            vec![step::demo_epoch(gpu, &dir, &lengths, (o.demo_batch, o.demo_pad_multiple), o.precision, o.peaks)?],
            &mut out,
        );
    }
    Ok(out)
}
