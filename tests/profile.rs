//! `peft bench --profile` on the tiny fixture model: every phase of the step is there, the
//! aggregates add up, the times are sane, and profiling does not change what is computed.

mod common;
use common::*;
use peft_wgpu::bench::profile::{profile_step, unprofiled_loss};
use peft_wgpu::bench::Peaks;
use peft_wgpu::gpu::ProfileMode;
use peft_wgpu::WeightPrecision;
use std::sync::Mutex;

/// The profiler is the GPU's (one profile at a time): the tests of this file take turns.
static PROFILER: Mutex<()> = Mutex::new(());

#[test]
fn profile_of_a_train_step() {
    let _turn = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = gpu();
    let dir = fixtures().join("tiny-bert/base");
    let peaks = Some(Peaks { bytes_per_s: 1e10, flops_per_s: 1e10, source: "test" });
    let (batch, seq) = (3, 11);
    let p = profile_step(&gpu, "tiny", &dir, batch, seq, WeightPrecision::F32, false, peaks, None).unwrap();
    print!("{}", p.report());

    // At least one dispatch in every phase the step has (backward stops at layer 0's adapters:
    // nothing trains below them).
    let mut expected: Vec<String> =
        ["embeddings", "head fwd", "loss", "head bwd", "optimizer"].iter().map(|s| s.to_string()).collect();
    for l in 0..2 {
        for part in ["attention fwd", "adapters fwd", "FFN fwd", "adapters bwd", "FFN bwd"] {
            expected.push(format!("layer {l} / {part}"));
        }
    }
    expected.push("layer 1 / attention bwd".into());
    for e in &expected {
        let row = p.phases.iter().find(|r| &r.name == e);
        assert!(row.is_some_and(|r| r.count >= 1), "no dispatch in phase {e:?}: {:?}", p.phases);
    }
    assert!(p.phases.iter().all(|r| !r.name.is_empty()), "a dispatch without a phase");
    for g in ["attention fwd", "adapters fwd", "FFN fwd", "attention bwd", "adapters bwd", "FFN bwd"] {
        assert!(p.phase_groups.iter().any(|r| r.name == g), "no phase group {g:?}");
    }

    // Dispatches a layer: a middle layer's phases (the top one with two layers: tiny-bert's
    // layer 1), forward and backward, as the phase table counts them; no recompute in a plain step.
    let l = p.layer_dispatches.expect("layer dispatches");
    let count = |suffix: &str| {
        p.phases
            .iter()
            .filter(|r| r.name.starts_with("layer 1 / ") && r.name.ends_with(suffix))
            .map(|r| r.count)
            .sum::<usize>()
    };
    assert_eq!((l.layer, l.forward, l.backward, l.recompute), (1, count(" fwd"), count(" bwd"), 0), "{l:?}");
    assert!(l.forward >= 5 && l.backward >= 5, "{l:?}");
    assert!(p
        .report()
        .contains(&format!("dispatches a layer (layer 1): {} forward + {} backward", l.forward, l.backward)));

    // Counts add up: dispatches created = profiled = sum over kernels = sum over phases.
    let n = p.dispatches.len();
    assert!(n > 0);
    assert_eq!(p.created.dispatches as usize, n);
    for rows in [&p.kernels, &p.phases, &p.phase_groups] {
        assert_eq!(rows.iter().map(|r| r.count).sum::<usize>(), n);
        let pct: f64 = rows.iter().map(|r| r.pct).sum();
        assert!((pct - 100.0).abs() < 1e-6, "percentages sum to {pct}");
        for r in rows.iter() {
            assert!(r.gpu_us.is_finite() && r.gpu_us >= 0.0 && r.gbps.is_finite() && r.gbps >= 0.0, "{r:?}");
            assert!(r.bytes > 0.0, "{r:?}");
            assert!(r.floor_us.is_some_and(|f| f.is_finite() && f > 0.0), "{r:?}");
        }
    }
    assert!(p.dispatches.iter().all(|d| d.gpu_seconds.is_finite() && d.gpu_seconds >= 0.0));
    let busy: f64 = p.kernels.iter().map(|r| r.gpu_us).sum();
    assert!((busy - p.gpu_busy_us).abs() <= 1e-6 * busy.max(1.0));
    assert!(p.wall_us.is_finite() && p.wall_us > 0.0 && p.host_record_us > 0.0 && p.host_record_us <= p.wall_us);
    // The measured step is the second of its shape: with the buffer pool (the default) it takes
    // every buffer from the pool and every bind group from the cache; without, each dispatch gets
    // its own bind group and the step allocates its tensors afresh.
    if gpu.policy().buffer_pool {
        assert_eq!((p.created.buffers, p.created.bind_groups), (0, 0));
    } else {
        assert_eq!(p.created.bind_groups as usize, n);
        assert!(p.created.buffers > 0);
    }
    assert!(p.created.submits >= 1);
    // Matmuls declare their FLOPs (2mnk); a row of only matmuls has a FLOP rate.
    let mm = p.kernels.iter().find(|r| r.name.starts_with("matmul")).expect("a matmul kernel");
    assert!(mm.flops.is_some_and(|f| f > 0.0) && mm.gflops.is_some(), "{mm:?}");

    // Profiling changes nothing computed: the same step unprofiled has the same loss, bit for bit.
    let plain = unprofiled_loss(&gpu, &dir, batch, seq, false).unwrap();
    assert!(p.loss.is_finite());
    assert_eq!(p.loss.to_bits(), plain.to_bits(), "profiled {} vs unprofiled {plain}", p.loss);
    let json = serde_json::to_value(&p).unwrap();
    assert!(json["kernels"].as_array().is_some_and(|k| !k.is_empty()));

    // The fallback for GPUs without timestamps inside passes: a pass per dispatch, the same
    // dispatches in the same phases, the same loss.
    let q = profile_step(
        &gpu,
        "tiny",
        &dir,
        batch,
        seq,
        WeightPrecision::F32,
        false,
        peaks,
        Some(ProfileMode::PassPerDispatch),
    )
    .unwrap();
    assert_eq!(q.mode, ProfileMode::PassPerDispatch);
    assert_eq!(q.loss.to_bits(), plain.to_bits());
    let key = |p: &peft_wgpu::bench::profile::Profile| -> Vec<(String, String)> {
        p.dispatches.iter().map(|d| (d.kernel.clone(), d.phase.clone())).collect()
    };
    assert_eq!(key(&q), key(&p));
    assert!(q.dispatches.iter().all(|d| d.gpu_seconds.is_finite() && d.gpu_seconds >= 0.0));
    assert!(q.gpu_busy_us > 0.0);
}

/// `--dropout`: the step drops as `peft train` does by default (the model config's rates): the
/// dropout kernels are in the profile, the loss differs from the step without dropout, and the
/// profiled step computes what the unprofiled one with the same masks does, bit for bit.
#[test]
fn profile_of_a_train_step_with_dropout() {
    let _turn = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = gpu();
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::cli::tiny_model_with_dropout(tmp.path());
    let (batch, seq) = (3, 11);
    let p = profile_step(&gpu, "tiny", &dir, batch, seq, WeightPrecision::F32, true, None, None).unwrap();
    assert!(p.dropout && p.report().contains("dropout on"));
    let drops: usize = p.kernels.iter().filter(|r| r.name.starts_with("dropout::")).map(|r| r.count).sum();
    // The embeddings, each layer's attention and FFN output (forward and backward) and the
    // head's input at least; the probabilities' dropout runs inside the attention kernels.
    let least = 1 + 2 * 2 + 1;
    assert!(drops >= least, "dropout dispatches {drops}: {:?}", p.kernels);
    let with = unprofiled_loss(&gpu, &dir, batch, seq, true).unwrap();
    let without = unprofiled_loss(&gpu, &dir, batch, seq, false).unwrap();
    assert!(p.loss.is_finite());
    assert_eq!(p.loss.to_bits(), with.to_bits(), "profiled {} vs unprofiled {with}", p.loss);
    assert_ne!(with.to_bits(), without.to_bits(), "dropout changed nothing: {with}");
}
