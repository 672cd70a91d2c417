//! Step plans (issue 15, item 2): with the buffer pool on, a training step of a shape seen
//! before creates no GPU buffer and no bind group; and pooling changes nothing computed (losses
//! and trained weights bit for bit against the pool turned off, across a change of length).

mod common;
use common::*;
use peft_wgpu::bench::memory::{bench_adapter, plan_step};
use peft_wgpu::gpu::{CounterSnapshot, Gpu, GpuOptions};
use peft_wgpu::kernels::optim::{AdamW, LinearSchedule};
use peft_wgpu::model::config::BertConfig;
use peft_wgpu::model::encoder::Encoder;
use peft_wgpu::model::load;
use peft_wgpu::model::plan::Choice;
use peft_wgpu::train::{new_adapter, train_step, AdapterTrainee, Optimizer, Trainee};
use peft_wgpu::WeightPrecision;
use rand::SeedableRng;
use std::sync::Arc;

/// A Houlsby adapter + head + AdamW on the tiny fixture, set up as `choice` plans it at
/// `batch × plan_seq`.
fn setup(gpu: &Arc<Gpu>, batch: usize, plan_seq: usize, choice: Choice) -> (Encoder, AdapterTrainee, Optimizer) {
    let dir = fixtures().join("tiny-bert/base");
    let cfg = BertConfig::from_model_dir(&dir).unwrap();
    let plan = plan_step(gpu, &cfg, batch, plan_seq, choice, None, None, 1, WeightPrecision::F32).unwrap();
    let (cfg, mut enc) = load::load_encoder(gpu, &dir, Some(plan.resident_layers())).unwrap();
    enc.follow(&plan);
    let (set, head) = new_adapter(gpu, &cfg, &bench_adapter(), "t", 2, 0).unwrap();
    let trainee = AdapterTrainee::new(set, head, bench_adapter(), &cfg, "tiny-bert");
    let schedule = LinearSchedule { base_lr: 1e-3, warmup_steps: 0, total_steps: 20 };
    let opt = Optimizer::new(gpu, &trainee.params(), AdamW::default(), schedule, 1.0).unwrap();
    (enc, trainee, opt)
}

/// What a run of steps gave: each step's loss bits and created objects, then the trained weights' bits.
struct Run {
    losses: Vec<u32>,
    created: Vec<CounterSnapshot>,
    weights: Vec<(String, Vec<u32>)>,
}

/// One training step per entry of `seqs` (sequence lengths; the same seeded tokens per length).
fn run(gpu: &Arc<Gpu>, batch: usize, seqs: &[usize], choice: Choice) -> Run {
    let (mut enc, mut trainee, mut opt) = setup(gpu, batch, *seqs.iter().max().unwrap(), choice);
    let vocab = BertConfig::from_model_dir(fixtures().join("tiny-bert/base")).unwrap().vocab_size;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 2).collect();
    let (mut losses, mut created) = (vec![], vec![]);
    for &seq in seqs {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seq as u64);
        let lengths: Vec<usize> = (0..batch).map(|b| seq - b % 3).collect();
        let inputs = peft_wgpu::bench::step::random_inputs(&mut rng, &lengths, vocab);
        let before = gpu.counters();
        let out = train_step(gpu, &mut enc, &mut trainee, &mut opt, &inputs, &labels, None).unwrap();
        created.push(gpu.counters() - before);
        assert!(out.loss.is_finite());
        losses.push(out.loss.to_bits());
    }
    let weights = trainee
        .params()
        .iter()
        .map(|(name, w, _)| (name.clone(), w.to_vec(gpu).unwrap().iter().map(|x| x.to_bits()).collect()))
        .collect();
    Run { losses, created, weights }
}

fn gpu_with_pool(on: bool) -> Arc<Gpu> {
    Gpu::new(&GpuOptions { buffer_pool: Some(on), ..Default::default() }).unwrap()
}

fn resident() -> Choice {
    Choice { resident_layers: None, recompute: Some(false), layer_chunk: None, keep_ffn_output: Some(false) }
}

fn recompute() -> Choice {
    Choice { recompute: Some(true), ..resident() }
}

fn layer_chunks() -> Choice {
    Choice { recompute: Some(true), layer_chunk: Some(2), ..resident() }
}

fn streamed() -> Choice {
    Choice { resident_layers: Some(1), ..resident() }
}

/// Steps 3..5 of a fixed shape create nothing: every tensor comes from the pool, every bind group
/// from the cache.
fn assert_zero_after_warm_up(what: &str, choice: Choice) {
    let gpu = gpu_with_pool(true);
    let r = run(&gpu, 4, &[16; 5], choice);
    for (i, c) in r.created.iter().enumerate() {
        println!("{what}: step {}: {c:?}", i + 1);
    }
    assert!(r.created[0].buffers > 0 && r.created[0].bind_groups > 0);
    for (i, c) in r.created.iter().enumerate().skip(2) {
        assert_eq!((c.buffers, c.bind_groups), (0, 0), "{what}: step {} created {c:?}", i + 1);
        assert!(c.dispatches > 0);
    }
}

#[test]
fn resident_steps_create_no_buffers_or_bind_groups_after_warm_up() {
    assert_zero_after_warm_up("resident", resident());
}

#[test]
fn recompute_and_layer_chunks_create_none_after_warm_up() {
    assert_zero_after_warm_up("recompute", recompute());
    assert_zero_after_warm_up("layer chunks", layer_chunks());
}

#[test]
fn streamed_layers_create_none_after_warm_up() {
    assert_zero_after_warm_up("streamed", streamed());
}

/// Pooled and unpooled runs compute the same bits: losses of every step and the trained
/// weights, over a change of sequence length between steps (16 → 9 → 16 → 12 → 9).
#[test]
fn pooling_changes_nothing_computed() {
    let seqs = [16, 9, 16, 12, 9];
    for (what, choice) in [("resident", resident()), ("layer chunks", layer_chunks()), ("streamed", streamed())] {
        let on = run(&gpu_with_pool(true), 4, &seqs, choice);
        let off = run(&gpu_with_pool(false), 4, &seqs, choice);
        assert_eq!(on.losses, off.losses, "{what}: losses differ");
        assert_eq!(on.weights.len(), off.weights.len());
        for ((name, a), (_, b)) in on.weights.iter().zip(&off.weights) {
            assert!(a == b, "{what}: trained {name} differs");
        }
        // The unpooled path creates a bind group per dispatch, as before.
        for c in &off.created {
            assert_eq!(c.bind_groups, c.dispatches, "{what}");
        }
        // Pooled: the first length seen again (the third step) reuses part of what the first
        // step created; how much depends on the free-bytes cap (the pool keeps at most the
        // high water of live bytes free, and tiny-bert's activations are most of its bytes).
        println!("{what}: pooled, lengths {seqs:?}: {:?}", on.created);
        assert!(on.created[2].buffers < on.created[0].buffers, "{what}: {:?}", on.created);
    }
}

/// A training run's batches come in many lengths (length-bucketed, padded to their longest): once
/// the longest has run, a shorter step takes the longest step's free buffers (the pool hands out a
/// larger free buffer without a budget) and creates none, down to the length whose `[B, H, S, S]`
/// scores are `REUSE_RATIO` (8) times smaller than the longest's (here 16 → 6); the tracker still
/// counts the tensors' own bytes, so a shorter step's measured peak stays below the longest's.
#[test]
fn shorter_steps_run_in_the_longest_steps_buffers() {
    let gpu = gpu_with_pool(true);
    let seqs = [16, 16, 11, 7, 13, 9, 15, 6];
    let r = run(&gpu, 4, &seqs, resident());
    println!("lengths {seqs:?}: {:?}", r.created);
    assert!(r.created[0].buffers > 0);
    for (i, c) in r.created.iter().enumerate().skip(2) {
        assert_eq!(c.buffers, 0, "step {} (length {}) created {c:?}", i + 1, seqs[i]);
    }
    // And the same lengths unpooled compute the same, bit for bit.
    let off = run(&gpu_with_pool(false), 4, &seqs, resident());
    assert_eq!(r.losses, off.losses);
    assert!(r.weights == off.weights, "trained weights differ");
    // Tensors' bytes, not buffers': a short step alone measures less than a long one.
    let peak_of = |seq: usize| {
        let gpu = gpu_with_pool(true);
        let (mut enc, mut trainee, mut opt) = setup(&gpu, 4, 16, resident());
        let vocab = BertConfig::from_model_dir(fixtures().join("tiny-bert/base")).unwrap().vocab_size;
        let labels: Vec<u32> = vec![0, 1, 0, 1];
        let mut step = |seq: usize| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seq as u64);
            let inputs = peft_wgpu::bench::step::random_inputs(&mut rng, &[seq; 4], vocab);
            train_step(&gpu, &mut enc, &mut trainee, &mut opt, &inputs, &labels, None).unwrap();
        };
        step(16);
        gpu.sync().unwrap();
        gpu.memory.reset_peak();
        step(seq);
        gpu.sync().unwrap();
        gpu.memory.peak()
    };
    let (long, short) = (peak_of(16), peak_of(6));
    assert!(short < long, "measured peak of a length-6 step {short} B, of a length-16 step {long} B");
}

/// The pool respects a budget: live + free bytes within it after training steps, and the
/// results do not change.
#[test]
fn pool_stays_within_a_budget() {
    let gpu = gpu_with_pool(true);
    let free = run(&gpu, 4, &[16; 3], resident());
    let s = gpu.pool_stats();
    // Everything of the run is dropped: its buffers are free, within the high-water cap.
    assert!(s.free_bytes > 0 && s.free_bytes <= s.live_high_water, "{s:?}");
    let tight = gpu_with_pool(true);
    let budget = s.live_high_water * 3 / 4;
    tight.set_memory_budget(Some(budget));
    let limited = run(&tight, 4, &[16; 3], resident());
    let t = tight.pool_stats();
    assert!(t.live_bytes + t.free_bytes <= budget.max(t.live_bytes), "{t:?} over {budget}");
    assert_eq!(free.losses, limited.losses);
    assert!(free.weights == limited.weights);
}

/// `peft train` on the toy data with `env` set; returns each step's (loss, grad norm) bits from
/// metrics.jsonl and the trained adapter's bytes.
fn train_cli(dir: &std::path::Path, name: &str, env: &[(&str, &str)], extra: &[&str]) -> (Vec<(u32, u32)>, Vec<u8>) {
    let (steps, adapter, _) = train_cli_logged(dir, name, env, extra);
    (steps, adapter)
}

/// [`train_cli`], also returning stderr (with `RUST_LOG` from `env`, if set there).
fn train_cli_logged(
    dir: &std::path::Path,
    name: &str,
    env: &[(&str, &str)],
    extra: &[&str],
) -> (Vec<(u32, u32)>, Vec<u8>, String) {
    use common::cli::{s, text, tiny_model_with_dropout, toy_data, train_args};
    let model = tiny_model_with_dropout(&dir.join(format!("{name}-model")));
    let data = dir.join(format!("{name}-data"));
    std::fs::create_dir_all(&data).unwrap();
    let (train, dev) = toy_data(&data);
    let out = dir.join(name);
    let (m, t, d, o) = (s(&model), s(&train), s(&dev), s(&out));
    let mut args = train_args(&m, &t, &d, &o);
    args.extend(extra);
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_peft"))
        .args(&args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(run.status.success(), "{name}: {}", text(&run.stderr));
    let steps: Vec<(u32, u32)> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("step").is_some())
        .map(|v| ((v["loss"].as_f64().unwrap() as f32).to_bits(), (v["grad_norm"].as_f64().unwrap() as f32).to_bits()))
        .collect();
    (steps, std::fs::read(out.join("adapter.safetensors")).unwrap(), text(&run.stderr))
}

/// The epoch loop records step i+1 while the GPU runs step i (pool on, no budget); reading each
/// step back before the next (`PEFT_BUFFER_POOL=0` turns pipelining off with the pool) trains the
/// same: every step's loss and gradient norm and the saved adapter bit for bit, dropout on, with
/// and without gradient accumulation.
#[test]
fn pipelined_epoch_loop_trains_as_the_synchronous_one() {
    let tmp = tempfile::tempdir().unwrap();
    for (tag, extra) in [("plain", &[][..]), ("accumulated", &["--gradient-accumulation", "2"][..])] {
        let (piped, piped_adapter) = train_cli(tmp.path(), &format!("{tag}-piped"), &[], extra);
        let (sync, sync_adapter) = train_cli(tmp.path(), &format!("{tag}-sync"), &[("PEFT_BUFFER_POOL", "0")], extra);
        assert!(piped.len() >= 6, "{tag}: {} steps", piped.len());
        assert_eq!(piped, sync, "{tag}: step losses / gradient norms differ");
        assert!(piped_adapter == sync_adapter, "{tag}: the saved adapters differ");
    }
}

/// Each step's (batch, padded length, buffers created, bind groups created) from the trainer's
/// `RUST_LOG=peft_wgpu=debug` line "step N (B x S): X buffers and Y bind groups created".
fn step_creations(log: &str) -> Vec<(usize, usize, u64, u64)> {
    log.lines()
        .filter_map(|l| {
            let l = &l[l.find("step ")?..];
            let (shape, rest) = l.split_once("): ")?;
            let (b, s) = shape.split_once(" (")?.1.split_once(" x ")?;
            let words: Vec<&str> = rest.split_whitespace().collect();
            (words.get(1) == Some(&"buffers") && words.get(5) == Some(&"groups")).then_some(())?;
            Some((b.parse().ok()?, s.parse().ok()?, words[0].parse().ok()?, words[3].parse().ok()?))
        })
        .collect()
}

/// `--pad-to-multiple-of 8`: every training batch is padded to a multiple of 8 tokens (masked),
/// so a run's steps take fewer shapes and every step after the first epoch runs in buffers made
/// before it, and in bind groups made before it except the first step after an evaluation (it is
/// recorded with no step in flight, while its shape was first recorded beside a step in flight
/// whose buffers were taken: the pool then serves some of its requests from other free buffers,
/// bound once more; seen on the toy run, a batch of 1 whose tensors fit in the batch-of-5
/// buffers); without dropout it trains as padding to each batch's longest
/// does, up to f32 rounding (sums over the batch's tokens, e.g. bias gradients, group their
/// terms by the padded length; the extra terms are exact zeros).
#[test]
fn padding_to_a_multiple_bounds_the_shapes_and_trains_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let debug = [("RUST_LOG", "peft_wgpu=debug")];
    let run = |name: &str, multiple: &str| {
        let (steps, adapter, log) =
            train_cli_logged(tmp.path(), name, &debug, &["--no-dropout", "--pad-to-multiple-of", multiple]);
        let made = step_creations(&log);
        assert_eq!(made.len(), steps.len(), "{name}: one debug line a step:\n{log}");
        (steps, adapter, made)
    };
    let (longest, _, made1) = run("longest", "1");
    let (eight, _, made8) = run("eight", "8");
    let shapes =
        |m: &[(usize, usize, u64, u64)]| m.iter().map(|r| (r.0, r.1)).collect::<std::collections::BTreeSet<_>>();
    assert!(made8.iter().all(|r| r.1 % 8 == 0), "{made8:?}");
    assert!(
        made1.iter().any(|r| r.1 % 8 != 0),
        "the toy data should have lengths that are not multiples of 8: {made1:?}"
    );
    assert!(shapes(&made8).len() < shapes(&made1).len(), "{made8:?} vs {made1:?}");
    // Epochs 2 and 3 (the toy run: 3 epochs of 4 steps) create no buffers, and no bind groups
    // but in their first step (after the evaluation, nothing in flight: see above).
    let per_epoch = made8.len() / 3;
    assert!(per_epoch >= 3, "{made8:?}");
    for (i, r) in made8.iter().enumerate().skip(per_epoch) {
        assert_eq!(r.2, 0, "step {} created buffers: {made8:?}", i + 1);
        if i % per_epoch != 0 {
            assert_eq!(r.3, 0, "step {} created bind groups: {made8:?}", i + 1);
        }
    }
    assert!(made8[0].2 > 0 && made8[0].3 > 0, "the first step creates its buffers: {made8:?}");
    // The same training up to f32 rounding.
    assert_eq!(longest.len(), eight.len());
    for (i, (a, b)) in longest.iter().zip(&eight).enumerate() {
        for (x, y) in [(a.0, b.0), (a.1, b.1)] {
            let (x, y) = (f32::from_bits(x), f32::from_bits(y));
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "step {}: {x} vs {y}", i + 1);
        }
    }
}
