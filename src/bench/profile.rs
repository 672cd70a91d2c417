//! `peft bench --profile CONFIG`: one train step (after a warm-up step) with a GPU timestamp
//! around every dispatch, aggregated per kernel and per phase (the encoder's and the optimizer's
//! [`CommandRecorder::phase`](crate::gpu::CommandRecorder::phase) scopes): count, GPU µs, % of the
//! step's GPU busy time, achieved GFLOP/s and GB/s and % of the roofline floor where FLOPs / bytes
//! are known; plus host time to record the step, GPU busy vs wall time, dispatches, buffers and
//! bind groups created in the step.

use super::step::{random_inputs, Trainer};
use super::Peaks;
use crate::gpu::{CounterSnapshot, DispatchRecord, Gpu, ProfileMode};
use crate::model::encoder::DropoutRates;
use crate::types::WeightPrecision;
use anyhow::{Context, Result};
use rand::SeedableRng;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// One aggregated line (a kernel or a phase).
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub count: usize,
    pub gpu_us: f64,
    /// Of the step's GPU busy time (the sum over its dispatches).
    pub pct: f64,
    /// FLOPs of the row's dispatches that declare them (matmuls: 2mnk); `None` when none does.
    pub flops: Option<f64>,
    pub bytes: f64,
    pub gflops: Option<f64>,
    pub gbps: f64,
    /// Sum over the dispatches of max(bytes / peak bandwidth, flops / peak FLOP rate).
    pub floor_us: Option<f64>,
    /// floor / GPU time, in percent.
    pub pct_of_floor: Option<f64>,
}

/// The profile of one train step.
#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    pub device: String,
    pub config: String,
    pub batch: usize,
    pub seq: usize,
    /// How the frozen layers' matrices were held (`--precision`).
    pub precision: WeightPrecision,
    /// Dropout on in the step (`--dropout`: the model config's rates).
    pub dropout: bool,
    pub mode: ProfileMode,
    pub peaks: Option<Peaks>,
    /// The step's loss (bit-identical to an unprofiled step's).
    pub loss: f32,
    /// Host time to record the step (forward, backward, optimizer) up to its submit.
    pub host_record_us: f64,
    /// Host wall time from the start of recording to the step's results read back.
    pub wall_us: f64,
    /// Sum of the dispatches' GPU times.
    pub gpu_busy_us: f64,
    /// What the runtime created in the step (the profiler's own timestamp buffers not counted).
    pub created: CounterSnapshot,
    pub kernels: Vec<Row>,
    /// Phases with the layer number dropped (`attention fwd` over all layers).
    pub phase_groups: Vec<Row>,
    /// Every phase (`layer 3 / attention fwd`).
    pub phases: Vec<Row>,
    /// Every dispatch in submission order.
    pub dispatches: Vec<DispatchRecord>,
    /// Dispatches of the top layer (the one every part of the backward runs through), the issue's
    /// "dispatches per layer forward + backward"; `None` for a step without layer phases.
    pub layer_dispatches: Option<LayerDispatches>,
}

/// One layer's dispatches by pass (phases `layer L / … fwd`, `… bwd`, `… recompute`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LayerDispatches {
    pub layer: usize,
    pub forward: usize,
    pub backward: usize,
    /// Forward again in backward (`--recompute`, layer chunks): not part of the sum above.
    pub recompute: usize,
}

impl LayerDispatches {
    /// A middle layer's counts in `records`: the one below the top when there are three or more
    /// (the top layer runs only the head's rows after its attention, plus their gathers and
    /// scatters; the lowest stops its backward early), else the top one.
    pub fn of(records: &[DispatchRecord]) -> Option<Self> {
        fn layer_of(phase: &str) -> Option<(usize, &str)> {
            let (l, rest) = phase.strip_prefix("layer ")?.split_once(" / ")?;
            Some((l.parse().ok()?, rest))
        }
        let top = records.iter().filter_map(|r| layer_of(&r.phase)).map(|(l, _)| l).max()?;
        let layer = if top >= 2 { top - 1 } else { top };
        let mut c = LayerDispatches { layer, forward: 0, backward: 0, recompute: 0 };
        for (_, part) in records.iter().filter_map(|r| layer_of(&r.phase)).filter(|(l, _)| *l == layer) {
            if part.ends_with(" fwd") {
                c.forward += 1;
            } else if part.ends_with(" bwd") {
                c.backward += 1;
            } else {
                c.recompute += 1;
            }
        }
        Some(c)
    }
}

/// `layer 3 / attention fwd` → `attention fwd`.
pub fn phase_group(phase: &str) -> &str {
    match phase.strip_prefix("layer ").and_then(|r| r.split_once(" / ")) {
        Some((_, rest)) => rest,
        None => phase,
    }
}

/// Aggregates `records` by `key`, largest GPU time first.
pub fn aggregate(records: &[DispatchRecord], peaks: Option<Peaks>, key: impl Fn(&DispatchRecord) -> &str) -> Vec<Row> {
    let busy: f64 = records.iter().map(|r| r.gpu_seconds).sum();
    let mut rows: Vec<Row> = vec![];
    let mut index: HashMap<String, usize> = HashMap::new();
    for r in records {
        let name = key(r);
        let i = *index.entry(name.to_string()).or_insert_with(|| {
            rows.push(Row {
                name: name.to_string(),
                count: 0,
                gpu_us: 0.0,
                pct: 0.0,
                flops: None,
                bytes: 0.0,
                gflops: None,
                gbps: 0.0,
                floor_us: peaks.map(|_| 0.0),
                pct_of_floor: None,
            });
            rows.len() - 1
        });
        let row = &mut rows[i];
        row.count += 1;
        row.gpu_us += r.gpu_seconds * 1e6;
        row.bytes += r.bytes;
        if let Some(f) = r.flops {
            row.flops = Some(row.flops.unwrap_or(0.0) + f);
        }
        if let (Some(p), Some(fl)) = (peaks, row.floor_us.as_mut()) {
            *fl += (r.bytes / p.bytes_per_s).max(r.flops.unwrap_or(0.0) / p.flops_per_s) * 1e6;
        }
    }
    for row in &mut rows {
        let s = row.gpu_us * 1e-6;
        row.pct = if busy > 0.0 { 100.0 * s / busy } else { 0.0 };
        let rate = |x: f64| if s > 0.0 { x / s * 1e-9 } else { 0.0 };
        row.gflops = row.flops.map(rate);
        row.gbps = rate(row.bytes);
        row.pct_of_floor = row.floor_us.filter(|_| row.gpu_us > 0.0).map(|f| 100.0 * f / row.gpu_us);
    }
    rows.sort_by(|a, b| b.gpu_us.total_cmp(&a.gpu_us));
    rows
}

/// What one run of two steps (a warm-up, then the measured one) gives.
struct StepRun {
    loss: f32,
    host_record: f64,
    wall: f64,
    created: CounterSnapshot,
    records: Option<(ProfileMode, Vec<DispatchRecord>)>,
}

/// Two steps; the second profiled in `profile`'s mode (`Some(None)`: the device's best).
fn run_step(
    gpu: &Arc<Gpu>,
    model_dir: &Path,
    batch: usize,
    seq: usize,
    precision: WeightPrecision,
    dropout: bool,
    profile: Option<Option<ProfileMode>>,
) -> Result<StepRun> {
    let mut tr = Trainer::with_precision(gpu, model_dir, None, 2, precision)?;
    if dropout {
        tr.dropout = Some(DropoutRates::from_config(&tr.cfg, None)?);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let inp = random_inputs(&mut rng, &vec![seq; batch], tr.cfg.vocab_size);
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 2).collect();
    tr.step(gpu, &inp, &labels)?;
    tr.flush()?;
    let mode = match profile {
        Some(m) => Some(gpu.start_profile(m)?),
        None => None,
    };
    let before = gpu.counters();
    let t0 = Instant::now();
    tr.step(gpu, &inp, &labels)?;
    let host_record = tr.last_record_seconds;
    let (loss, _) = tr.flush()?.context("the measured step returned no loss")?;
    let wall = t0.elapsed().as_secs_f64();
    let created = gpu.counters() - before;
    let records = match mode {
        Some(m) => Some((m, gpu.finish_profile()?)),
        None => None,
    };
    Ok(StepRun { loss, host_record, wall, created, records })
}

/// The loss of the same step unprofiled (for the bit-identity check).
pub fn unprofiled_loss(gpu: &Arc<Gpu>, model_dir: &Path, batch: usize, seq: usize, dropout: bool) -> Result<f32> {
    Ok(run_step(gpu, model_dir, batch, seq, WeightPrecision::F32, dropout, None)?.loss)
}

/// Profiles one Houlsby + AdamW train step of the model in `model_dir` at `batch × seq`, with
/// timestamps taken as `mode` says (`None`: inside passes where the device can); with `dropout`,
/// the model config's dropout rates on, as `peft train` trains by default.
#[allow(clippy::too_many_arguments)]
pub fn profile_step(
    gpu: &Arc<Gpu>,
    config: &str,
    model_dir: &Path,
    batch: usize,
    seq: usize,
    precision: WeightPrecision,
    dropout: bool,
    peaks: Option<Peaks>,
    mode: Option<ProfileMode>,
) -> Result<Profile> {
    let run = run_step(gpu, model_dir, batch, seq, precision, dropout, Some(mode))?;
    let (mode, records) = run.records.expect("profiled");
    let gpu_busy: f64 = records.iter().map(|r| r.gpu_seconds).sum();
    Ok(Profile {
        device: gpu.description.summary(),
        config: config.to_string(),
        batch,
        seq,
        precision,
        dropout,
        mode,
        peaks,
        loss: run.loss,
        host_record_us: run.host_record * 1e6,
        wall_us: run.wall * 1e6,
        gpu_busy_us: gpu_busy * 1e6,
        created: run.created,
        kernels: aggregate(&records, peaks, |r| &r.kernel),
        phase_groups: aggregate(&records, peaks, |r| phase_group(&r.phase)),
        phases: aggregate(&records, peaks, |r| &r.phase),
        layer_dispatches: LayerDispatches::of(&records),
        dispatches: records,
    })
}

fn table(title: &str, rows: &[Row], top: usize) -> String {
    let opt = |v: Option<f64>, prec: usize| v.map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "-".into());
    let mut s = format!(
        "{:<40} {:>6} {:>11} {:>6} {:>9} {:>8} {:>7}\n",
        title, "count", "GPU µs", "%", "GFLOP/s", "GB/s", "%floor"
    );
    for r in rows.iter().take(top) {
        s += &format!(
            "{:<40} {:>6} {:>11.1} {:>6.1} {:>9} {:>8.2} {:>7}\n",
            r.name,
            r.count,
            r.gpu_us,
            r.pct,
            opt(r.gflops, 2),
            r.gbps,
            opt(r.pct_of_floor, 1)
        );
    }
    if rows.len() > top {
        let rest: f64 = rows[top..].iter().map(|r| r.gpu_us).sum();
        s += &format!("{:<40} {:>6} {:>11.1}\n", format!("({} more)", rows.len() - top), "", rest);
    }
    s
}

impl Profile {
    /// The report: totals, then the kernels, phase groups and top phases.
    pub fn report(&self) -> String {
        let c = &self.created;
        let mut s = format!("device: {}\n", self.device);
        s += &format!(
            "profile: {} B={} S={}{}{} ({:?} timestamps), loss {}\n",
            self.config,
            self.batch,
            self.seq,
            if self.precision == WeightPrecision::F16 { ", matrices in f16" } else { "" },
            if self.dropout { ", dropout on" } else { "" },
            self.mode,
            self.loss
        );
        if let Some(p) = self.peaks {
            s += &format!(
                "roofline peaks: {:.0} GB/s, {:.3} TFLOP/s ({})\n",
                p.bytes_per_s * 1e-9,
                p.flops_per_s * 1e-12,
                p.source
            );
        }
        s += &format!(
            "wall {:.1} ms, GPU busy {:.1} ms ({:.0}% of wall), host recording {:.1} ms\n",
            self.wall_us * 1e-3,
            self.gpu_busy_us * 1e-3,
            100.0 * self.gpu_busy_us / self.wall_us,
            self.host_record_us * 1e-3
        );
        s += &format!(
            "created in the step: {} dispatches, {} bind groups, {} buffers, {} submits; {:.1} µs host recording per dispatch\n\n",
            c.dispatches,
            c.bind_groups,
            c.buffers,
            c.submits,
            self.host_record_us / c.dispatches.max(1) as f64
        );
        if let Some(l) = self.layer_dispatches {
            s += &format!(
                "dispatches a layer (layer {}): {} forward + {} backward = {}{}\n\n",
                l.layer,
                l.forward,
                l.backward,
                l.forward + l.backward,
                if l.recompute > 0 { format!(" (+ {} recomputing)", l.recompute) } else { String::new() }
            );
        }
        s += &table("kernel", &self.kernels, 20);
        s.push('\n');
        s += &table("phase (all layers)", &self.phase_groups, 20);
        s.push('\n');
        s += &table("phase", &self.phases, 15);
        s
    }
}

/// `peft bench --profile`: the model (preset or directory), the report, and `--json`.
pub fn run(
    gpu: &Arc<Gpu>,
    spec: &str,
    batch: usize,
    seq: usize,
    precision: WeightPrecision,
    dropout: bool,
    peaks: Option<Peaks>,
    scratch: &Path,
    json: Option<&Path>,
) -> Result<Profile> {
    let (_, dir) = super::model::model_dir_for(spec, scratch, 0)?;
    let p = profile_step(gpu, spec, &dir, batch, seq, precision, dropout, peaks, None)?;
    print!("{}", p.report());
    if let Some(path) = json {
        crate::formats::write_atomic(path, serde_json::to_string_pretty(&p)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote the profile to {}", path.display());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kernel: &str, phase: &str, us: f64, flops: Option<f64>) -> DispatchRecord {
        DispatchRecord { kernel: kernel.into(), phase: phase.into(), flops, bytes: 1e6, gpu_seconds: us * 1e-6 }
    }

    #[test]
    fn groups_and_aggregates() {
        assert_eq!(phase_group("layer 11 / attention recompute"), "attention recompute");
        assert_eq!(phase_group("optimizer"), "optimizer");
        assert_eq!(phase_group("layer x"), "layer x");
        let r = [
            rec("matmul::m", "layer 0 / FFN fwd", 30.0, Some(3e6)),
            rec("ln::f", "layer 0 / FFN fwd", 10.0, None),
            rec("matmul::m", "layer 1 / FFN fwd", 60.0, Some(3e6)),
        ];
        let peaks = Some(Peaks { bytes_per_s: 1e12, flops_per_s: 1e12, source: "test" });
        let k = aggregate(&r, peaks, |r| &r.kernel);
        assert_eq!((k[0].name.as_str(), k[0].count, k[0].gpu_us.round()), ("matmul::m", 2, 90.0));
        assert!((k[0].pct - 90.0).abs() < 1e-9 && (k[1].pct - 10.0).abs() < 1e-9);
        // 6e6 FLOPs in 90 µs; the LayerNorm row has none.
        assert!((k[0].gflops.unwrap() - 6e6 / 90e-6 * 1e-9).abs() < 1e-9 && k[1].gflops.is_none());
        // floor: per dispatch max(1e6 B / 1e12, 3e6 / 1e12) = 3 µs, twice.
        assert!((k[0].floor_us.unwrap() - 6.0).abs() < 1e-9);
        let g = aggregate(&r, peaks, |r| phase_group(&r.phase));
        assert_eq!((g.len(), g[0].count), (1, 3));
    }

    /// The counted layer: below the top one from three layers on, the top one with one or two.
    #[test]
    fn layer_dispatches_count_a_middle_layer() {
        let layers = |n: usize| -> Vec<DispatchRecord> {
            (0..n)
                .flat_map(|l| {
                    // Layer l: l + 1 forward dispatches, 2 backward, one recompute.
                    let fwd = (0..=l).map(move |_| rec("k", &format!("layer {l} / FFN fwd"), 1.0, None));
                    let rest = ["adapters bwd", "FFN bwd", "attention recompute"]
                        .map(|p| rec("k", &format!("layer {l} / {p}"), 1.0, None));
                    fwd.chain(rest)
                })
                .chain([rec("k", "optimizer", 1.0, None)])
                .collect()
        };
        let c = |n| LayerDispatches::of(&layers(n)).map(|l| (l.layer, l.forward, l.backward, l.recompute));
        assert_eq!(c(1), Some((0, 1, 2, 1)));
        assert_eq!(c(2), Some((1, 2, 2, 1)));
        assert_eq!(c(3), Some((1, 2, 2, 1)));
        assert_eq!(c(6), Some((4, 5, 2, 1)));
        assert_eq!(LayerDispatches::of(&[rec("k", "optimizer", 1.0, None)]), None);
    }
}
