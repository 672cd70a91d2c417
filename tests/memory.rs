//! Memory: `--recompute` is bit-identical to keeping activations (tiny fixture model with Houlsby,
//! Pfeiffer and fusion, streamed or resident; the real MiniLM), layer chunks give the same values
//! and (up to f32 summation order) the same gradients, the planner's peak is within 10% of the
//! measured one, and a too-small `--max-gpu-memory` fails with a clear error. With dropout on (a
//! training pass's masks, drawn again in recompute and keyed by the global token row) every one of
//! those identities holds too, and the planner counts dropout's buffers.

mod common;
use common::*;
use peft_wgpu::model::adapters::ClassificationHead;
use peft_wgpu::model::encoder::{DropoutRates, Inputs, PassDropout, Setup};
use peft_wgpu::model::load;
use peft_wgpu::WeightPrecision;
use std::path::{Path, PathBuf};

/// How activations are kept: all, or recomputed (in layer chunks, keeping FFN outputs); and
/// whether the pass is a training pass with dropout.
#[derive(Clone, Copy, Debug)]
struct Mode {
    recompute: bool,
    chunk: usize,
    keep_ffn_output: bool,
    dropout: bool,
}

const KEEP: Mode = Mode { recompute: false, chunk: 0, keep_ffn_output: false, dropout: false };
const RECOMPUTE: Mode = Mode { recompute: true, chunk: 0, keep_ffn_output: false, dropout: false };
const RECOMPUTE_KEEP_FFN: Mode = Mode { recompute: true, chunk: 0, keep_ffn_output: true, dropout: false };

impl Mode {
    fn with_dropout(self, dropout: bool) -> Self {
        Self { dropout, ..self }
    }
}

/// A training pass's dropout: BERT's 0.1 everywhere (the fixture's config.json has 0).
fn pass_dropout() -> PassDropout {
    PassDropout { rates: DropoutRates::uniform(0.1).unwrap(), seed: 1234, step: 7 }
}

/// Logits, loss and every trainable gradient of one forward + backward, as raw bits.
fn pass_bits(
    model: &Path,
    setup: &Setup,
    named: &[(String, &peft_wgpu::GpuTensor, &peft_wgpu::GpuTensor)],
    head: &ClassificationHead,
    inputs: &Inputs,
    labels: &[u32],
    resident: Option<usize>,
    mode: Mode,
) -> (Vec<(String, Vec<u32>)>, u64) {
    let g = gpu();
    let (_, mut enc) = load::load_encoder(&g, model, resident).unwrap();
    enc.recompute = mode.recompute;
    enc.layer_chunk = mode.chunk;
    enc.keep_ffn_output = mode.keep_ffn_output;
    // Poison the gradients: every one must be written by this pass.
    for (_, _, grad) in named {
        grad.write(&g, &vec![f32::NAN; grad.numel()]).unwrap();
    }
    let dropout = mode.dropout.then(pass_dropout);
    let out = enc.pass_with_dropout(setup, head, inputs, Some(labels), true, true, dropout).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let mut r = vec![
        ("logits".to_string(), bits(&out.logits)),
        ("loss".to_string(), bits(&[out.loss.unwrap()])),
        ("last_hidden_state".to_string(), bits(out.last_hidden_state.as_ref().unwrap())),
    ];
    for (name, _, grad) in named {
        let v = download(grad);
        assert!(v.iter().all(|x| x.is_finite()), "{name}: not written");
        r.push((format!("grad.{name}"), bits(&v)));
    }
    (r, out.peak_bytes)
}

fn assert_same_bits(what: &str, a: &[(String, Vec<u32>)], b: &[(String, Vec<u32>)]) {
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        assert!(va == vb, "{what}: {na} differs with --recompute");
    }
}

fn adapter_case(case: &str, dropout: bool) {
    let dir = fixtures().join("tiny-bert").join(case);
    let model = fixtures().join("tiny-bert/base");
    let g = gpu();
    let cfg = peft_wgpu::model::config::BertConfig::from_model_dir(&model).unwrap();
    let (adapter, head) = load::load_adapter(&g, &dir.join("adapter"), &cfg).unwrap();
    let head = head.unwrap();
    let (inputs, labels) = peft_wgpu::train::data::read_inputs_json(&dir.join("inputs.json")).unwrap();
    let named: Vec<_> = adapter.named().into_iter().chain(head.named()).collect();
    let setup = Setup::Adapter(&adapter);
    let (keep, _) = pass_bits(&model, &setup, &named, &head, &inputs, &labels, None, KEEP.with_dropout(dropout));
    for resident in [None, Some(1)] {
        for mode in [RECOMPUTE, RECOMPUTE_KEEP_FFN] {
            let mode = mode.with_dropout(dropout);
            let (rc, _) = pass_bits(&model, &setup, &named, &head, &inputs, &labels, resident, mode);
            assert_same_bits(&format!("tiny-bert {case} resident {resident:?} {mode:?}"), &keep, &rc);
        }
    }
    // Layer chunks (ragged: 2 + 1 sequences, and one at a time), resident and streamed: the same
    // forward bits; gradients summed chunk by chunk agree to f32 rounding.
    assert_eq!(inputs.batch, 3, "the fixture's batch");
    for (chunk, resident, keep_ffn_output) in [(2, None, false), (1, Some(1), false), (2, Some(2), true)] {
        let mode = Mode { recompute: true, chunk, keep_ffn_output, dropout };
        let (ch, _) = pass_bits(&model, &setup, &named, &head, &inputs, &labels, resident, mode);
        let what = format!("tiny-bert {case} {mode:?} resident {resident:?}");
        for ((na, va), (nb, vb)) in keep.iter().zip(&ch) {
            assert_eq!(na, nb);
            if na.starts_with("grad.") {
                let f = |v: &[u32]| v.iter().map(|&b| f32::from_bits(b)).collect::<Vec<f32>>();
                assert_close(&format!("{what}: {na}"), &f(vb), &f64s(&f(va)), 1e-5);
            } else {
                assert!(va == vb, "{what}: {na} differs from the unchunked pass");
            }
        }
    }
}

#[test]
fn recompute_bit_identical_houlsby() {
    adapter_case("houlsby", false);
}

#[test]
fn recompute_bit_identical_pfeiffer() {
    adapter_case("pfeiffer", false);
}

#[test]
fn recompute_bit_identical_houlsby_with_dropout() {
    adapter_case("houlsby", true);
}

#[test]
fn recompute_bit_identical_pfeiffer_with_dropout() {
    adapter_case("pfeiffer", true);
}

#[test]
fn recompute_bit_identical_fusion() {
    recompute_bit_identical_fusion_in(&fixtures().join("tiny-bert/fusion"));
}

/// Over Houlsby adapters: fusion layers at the attention output too.
#[test]
fn recompute_bit_identical_fusion_over_houlsby_adapters() {
    recompute_bit_identical_fusion_in(&fixtures().join("options-fusion-houlsby"));
}

/// A fusion fixture folder (`fusion/`, `adapters/<name>/`, `head/`, `inputs.json`): recompute,
/// streaming one layer, with and without dropout, gives the bits of keeping every activation.
fn recompute_bit_identical_fusion_in(dir: &Path) {
    let model = fixtures().join("tiny-bert/base");
    let g = gpu();
    let cfg = peft_wgpu::model::config::BertConfig::from_model_dir(&model).unwrap();
    let f = peft_wgpu::formats::adapterhub::Fusion::load(dir.join("fusion"), &cfg).unwrap();
    let fusion = peft_wgpu::model::fusion::FusionModel::from_fusion(&g, &f, cfg.hidden_size).unwrap();
    let sets: Vec<_> = fusion
        .adapter_names
        .iter()
        .map(|n| load::load_adapter(&g, &dir.join("adapters").join(n), &cfg).unwrap().0)
        .collect();
    let head = load::load_head(&g, &dir.join("head"), cfg.hidden_size).unwrap();
    let (inputs, labels) = peft_wgpu::train::data::read_inputs_json(&dir.join("inputs.json")).unwrap();
    let named: Vec<_> = fusion.named().into_iter().chain(head.named()).collect();
    let setup = Setup::Fusion { adapters: sets.iter().collect(), fusion: &fusion };
    for dropout in [false, true] {
        let (keep, _) = pass_bits(&model, &setup, &named, &head, &inputs, &labels, None, KEEP.with_dropout(dropout));
        for mode in [RECOMPUTE, RECOMPUTE_KEEP_FFN] {
            let mode = mode.with_dropout(dropout);
            let (rc, _) = pass_bits(&model, &setup, &named, &head, &inputs, &labels, Some(1), mode);
            assert_same_bits(&format!("tiny-bert fusion {mode:?}"), &keep, &rc);
        }
    }
}

/// The real all-MiniLM-L6-v2 with the fixture's Pfeiffer adapter.
#[test]
fn recompute_bit_identical_minilm() {
    let model = peft_wgpu::train::cache::ensure_default_model().expect("fetching the default model");
    let dir = fixtures().join("minilm");
    let g = gpu();
    let cfg = peft_wgpu::model::config::BertConfig::from_model_dir(&model).unwrap();
    let (adapter, head) = load::load_adapter(&g, &dir.join("adapter"), &cfg).unwrap();
    let head = head.unwrap();
    let (inputs, labels) = peft_wgpu::train::data::read_inputs_json(&dir.join("inputs.json")).unwrap();
    let named: Vec<_> = adapter.named().into_iter().chain(head.named()).collect();
    let setup = Setup::Adapter(&adapter);
    let (keep, _) = pass_bits(&model, &setup, &named, &head, &inputs, &labels, None, KEEP);
    for mode in [RECOMPUTE, RECOMPUTE_KEEP_FFN] {
        let (rc, _) = pass_bits(&model, &setup, &named, &head, &inputs, &labels, None, mode);
        assert_same_bits(&format!("minilm {mode:?}"), &keep, &rc);
    }
}

/// A small random-weight model (sizes not multiples of any tile) written to a temp dir.
fn small_model(tmp: &Path) -> PathBuf {
    let mut cfg = peft_wgpu::bench::model::preset("minilm").unwrap();
    (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) = (72, 4, 4, 136);
    (cfg.vocab_size, cfg.max_position_embeddings) = (1200, 40);
    let dir = tmp.join("small");
    peft_wgpu::bench::model::write_random_model(&cfg, &dir, 3).unwrap();
    dir
}

/// A memory case: name, model directory, batch, sequence length, the setup, and the training
/// pass's dropout.
type MemoryCase<'a> = (&'a str, &'a Path, usize, usize, peft_wgpu::model::plan::Choice, Option<DropoutRates>);

/// Plans and measures each case on a device of its own, each step over `gradient_accumulation`
/// micro-batches; asserts the plan is within 10% of the measured peak. The measured peaks.
fn planned_vs_measured(cases: &[MemoryCase], gradient_accumulation: usize) -> Vec<u64> {
    planned_vs_measured_in(cases, gradient_accumulation, WeightPrecision::F32)
}

/// [`planned_vs_measured`] with the layers' matrices stored in `precision`.
fn planned_vs_measured_in(cases: &[MemoryCase], gradient_accumulation: usize, precision: WeightPrecision) -> Vec<u64> {
    let mut measured = vec![];
    for &(what, dir, batch, seq, choice, dropout) in cases {
        // A device of its own: nothing else allocates on it.
        let g = peft_wgpu::Gpu::for_tests();
        let (plan, run) = peft_wgpu::bench::memory::measure(
            &g,
            what,
            dir,
            batch,
            seq,
            choice,
            None,
            1,
            dropout,
            gradient_accumulation,
            precision,
        )
        .unwrap();
        assert_eq!(plan.precision, precision);
        println!(
            "{what}, {precision} weights, gradient accumulation {gradient_accumulation}: planned {} B, measured {} B ({:+.2}%)",
            run.planned_bytes,
            run.measured_bytes,
            100.0 * run.plan_error()
        );
        assert_eq!(plan.recompute, choice.recompute.unwrap());
        assert_eq!(plan.keep_ffn_output, choice.keep_ffn_output.unwrap());
        assert!(run.plan_error().abs() <= 0.10, "{what}: plan off by {:.1}%", 100.0 * run.plan_error());
        measured.push(run.measured_bytes);
    }
    measured
}

/// A planner choice with every field given: resident layer slots (None = all), recompute, layer
/// chunk, keep the FFN outputs.
fn choice(
    slots: Option<usize>,
    recompute: bool,
    layer_chunk: Option<usize>,
    keep_ffn: bool,
) -> peft_wgpu::model::plan::Choice {
    peft_wgpu::model::plan::Choice {
        resident_layers: slots,
        recompute: Some(recompute),
        layer_chunk,
        keep_ffn_output: Some(keep_ffn),
    }
}

/// The planner's peak is within 10% of the measured peak (our accounting of every GPU buffer over
/// a Houlsby + AdamW training step) for three configs; recompute lowers the measured peak.
#[test]
fn planned_peak_within_10_percent_of_measured() {
    let tmp = tempfile::tempdir().unwrap();
    let small = small_model(tmp.path());
    let minilm = peft_wgpu::train::cache::ensure_default_model().expect("fetching the default model");
    let tiny = fixtures().join("tiny-bert/base");
    let keep = |slots| choice(slots, false, None, false);
    let rc = |slots| choice(slots, true, None, false);
    let chunks = |slots, c| choice(slots, true, Some(c), false);
    let cases = [
        ("tiny-bert resident", tiny.as_path(), 3, 11, keep(None), None),
        ("small resident", small.as_path(), 5, 13, keep(None), None),
        ("small 1 slot + recompute", small.as_path(), 5, 13, rc(Some(1)), None),
        ("minilm resident + recompute", minilm.as_path(), 4, 21, rc(None), None),
        ("small 1 slot + recompute + chunks of 2", small.as_path(), 5, 13, chunks(Some(1), 2), None),
        ("minilm 2 slots + recompute + chunks of 3", minilm.as_path(), 8, 21, chunks(Some(2), 3), None),
        (
            "small resident + recompute keeping FFN outputs",
            small.as_path(),
            5,
            13,
            choice(None, true, None, true),
            None,
        ),
        (
            "small 1 slot + recompute keeping FFN outputs + chunks of 2",
            small.as_path(),
            5,
            13,
            { choice(Some(1), true, Some(2), true) },
            None,
        ),
    ];
    let measured = planned_vs_measured(&cases, 1);
    assert!(measured[2] < measured[1], "streaming + recompute must lower the measured peak");
    assert!(measured[4] < measured[2], "layer chunks must lower the measured peak");
}

/// With the layers' matrices in f16 (`--precision f16`): the planner counts the packed slots and
/// the one layer of f32 matrices they widen into, within 10% of the measured peak, resident,
/// streamed and recomputed; f16 lowers the measured resident peak, most where weights dominate.
#[test]
fn planned_peak_with_f16_weights_within_10_percent_of_measured() {
    let tmp = tempfile::tempdir().unwrap();
    let small = small_model(tmp.path());
    let minilm = peft_wgpu::train::cache::ensure_default_model().expect("fetching the default model");
    let cases = [
        ("small resident", small.as_path(), 5, 13, choice(None, false, None, false), None),
        ("small 1 slot + recompute", small.as_path(), 5, 13, choice(Some(1), true, None, false), None),
        ("minilm resident", minilm.as_path(), 2, 9, choice(None, false, None, false), None),
    ];
    let f16 = planned_vs_measured_in(&cases, 1, WeightPrecision::F16);
    let f32 = planned_vs_measured_in(&cases, 1, WeightPrecision::F32);
    for ((case, a), b) in cases.iter().zip(&f16).zip(&f32) {
        println!("{}: measured peak f16 {a} B, f32 {b} B ({:.2}x)", case.0, *a as f64 / *b as f64);
    }
    // Resident, f16 lowers the peak. With one streamed slot it raises it: the one layer of f32
    // matrices widened into outweighs the half slot saved (the planner counts both, above; what
    // f16 saves there is half the bytes streamed per step).
    assert!(f16[0] < f32[0], "small resident: f16 weights must lower the peak");
    assert!(f16[1] > f32[1], "small 1 slot: the widened layer is counted");
    // MiniLM at a small batch is mostly weights: the layers' matrices are 10.6 M of its 22.7 M
    // values (the word table 11.7 M stays f32); halved, less one layer's f32 copy: ≈ 0.86x.
    assert!((f16[2] as f64) < 0.9 * f32[2] as f64, "minilm: f16 saves too little ({} vs {} B)", f16[2], f32[2]);
}

/// With dropout on (a training pass's masks): the planner counts each site's dropped output and
/// the attention probabilities' work tensor, within 10% of the measured peak, whether activations
/// are kept, recomputed, streamed or chunked; and a site whose rate is 0 allocates nothing.
#[test]
fn planned_peak_with_dropout_within_10_percent_of_measured() {
    use peft_wgpu::kernels::dropout::Rate;
    let tmp = tempfile::tempdir().unwrap();
    let small = small_model(tmp.path());
    let minilm = peft_wgpu::train::cache::ensure_default_model().expect("fetching the default model");
    let tiny = fixtures().join("tiny-bert/base");
    let on = Some(DropoutRates::uniform(0.1).unwrap());
    // DistilBERT's sites: no attention-output dropout, none in the head.
    let (p0, p1) = (Rate::new(0.0).unwrap(), Rate::new(0.1).unwrap());
    let distil = Some(DropoutRates { hidden: p1, attention_output: p0, attention: p1, head: p0 });
    let cases = [
        ("tiny-bert resident, dropout", tiny.as_path(), 3, 11, choice(None, false, None, false), on),
        ("small resident, dropout", small.as_path(), 5, 13, choice(None, false, None, false), on),
        (
            "small resident, DistilBERT's dropout sites",
            small.as_path(),
            5,
            13,
            choice(None, false, None, false),
            distil,
        ),
        ("minilm resident, dropout", minilm.as_path(), 4, 21, choice(None, false, None, false), on),
        ("small 1 slot + recompute, dropout", small.as_path(), 5, 13, choice(Some(1), true, None, false), on),
        ("minilm resident + recompute, dropout", minilm.as_path(), 4, 21, choice(None, true, None, false), on),
        (
            "small 1 slot + recompute + chunks of 2, dropout",
            small.as_path(),
            5,
            13,
            choice(Some(1), true, Some(2), false),
            on,
        ),
        (
            "small resident + recompute keeping FFN outputs, dropout",
            small.as_path(),
            5,
            13,
            { choice(None, true, None, true) },
            on,
        ),
        (
            "small 1 slot + recompute keeping FFN outputs + chunks of 2, dropout",
            small.as_path(),
            5,
            13,
            { choice(Some(1), true, Some(2), true) },
            on,
        ),
    ];
    planned_vs_measured(&cases, 1);
}

/// With `--gradient-accumulation 2` (the training loop's accumulated step: the first micro-batch's
/// gradient sums live through the second's pass, and its gradients go into a second set): the plan
/// is within 10% of the measured peak, kept, streamed, recomputed or chunked, and both the plan
/// and the measurement are above the same step's without accumulation.
#[test]
fn planned_peak_with_gradient_accumulation_within_10_percent_of_measured() {
    use peft_wgpu::model::plan::Choice;
    let tmp = tempfile::tempdir().unwrap();
    let small = small_model(tmp.path());
    let minilm = peft_wgpu::train::cache::ensure_default_model().expect("fetching the default model");
    let tiny = fixtures().join("tiny-bert/base");
    let choice = |slots, recompute, layer_chunk| Choice {
        resident_layers: slots,
        recompute: Some(recompute),
        layer_chunk,
        keep_ffn_output: Some(false),
    };
    let on = Some(DropoutRates::uniform(0.1).unwrap());
    let cases = [
        ("tiny-bert resident", tiny.as_path(), 3, 11, choice(None, false, None), None),
        ("small resident", small.as_path(), 5, 13, choice(None, false, None), None),
        ("small 1 slot + recompute", small.as_path(), 5, 13, choice(Some(1), true, None), None),
        ("small 1 slot + recompute + chunks of 2, dropout", small.as_path(), 5, 13, choice(Some(1), true, Some(2)), on),
        ("minilm resident", minilm.as_path(), 4, 21, choice(None, false, None), None),
    ];
    let accumulated = planned_vs_measured(&cases, 2);
    let single = planned_vs_measured(&cases, 1);
    for ((case, a), s) in cases.iter().zip(&accumulated).zip(&single) {
        assert!(a > s, "{}: measured {a} B with accumulation, {s} B without", case.0);
    }
}

/// The plan with accumulation counts one set of gradient sums through a later micro-batch's pass
/// and a second made at its end: between one and two sets (adapters + head, 4 bytes a parameter)
/// above the plan without; and `--max-gpu-memory` chooses a leaner setup for it.
#[test]
fn planner_counts_gradient_accumulation_sums() {
    use peft_wgpu::model::plan::{choose, plan, AdapterSpec, Choice, PlanInput};
    let cfg = peft_wgpu::bench::model::preset("bert-base").unwrap();
    let spec = AdapterSpec::from_bottleneck(&cfg, &peft_wgpu::bench::memory::bench_adapter()).unwrap();
    let d = cfg.hidden_size as u64;
    let labels = 2;
    let head = d * d + d + labels * d + labels;
    let sums = 4 * (spec.parameters(cfg.hidden_size) + head);
    let base = PlanInput::resident(&cfg, &spec, 32, 128, labels as usize);
    let with = |n: usize, slots: usize, recompute: bool, layer_chunk: usize| {
        plan(&PlanInput { gradient_accumulation: n, resident_layers: slots, recompute, layer_chunk, ..base.clone() })
            .unwrap()
            .peak_bytes()
    };
    for (slots, recompute, chunk) in [(12, false, 0), (12, true, 0), (1, true, 0), (1, true, 8)] {
        let (one, two, four) =
            (with(1, slots, recompute, chunk), with(2, slots, recompute, chunk), with(4, slots, recompute, chunk));
        assert_eq!(with(0, slots, recompute, chunk), one, "0 is no accumulation");
        assert!(
            one + sums <= two && two <= one + 2 * sums,
            "{slots} slots, recompute {recompute}: {one} + {sums} ≤ {two} ≤ {one} + 2·{sums}"
        );
        assert_eq!(four, two, "more micro-batches keep the same two sets at most");
    }
    // A budget the fastest setup fits without accumulation only: a leaner one is chosen with it.
    let free = Choice::default();
    let fast = choose(&base, free, None, None).unwrap();
    let accumulated = PlanInput { gradient_accumulation: 2, ..base.clone() };
    let p = choose(&accumulated, free, Some(fast.peak_bytes()), None).unwrap();
    assert!(p.recompute || !p.resident(), "{p}");
    assert!(p.peak_bytes() <= fast.peak_bytes());
    let err = choose(
        &accumulated,
        Choice { recompute: Some(false), resident_layers: Some(12), ..free },
        Some(fast.peak_bytes()),
        None,
    );
    assert!(err.is_err(), "the fastest setup does not fit its own budget with accumulation");
}

/// The plan with dropout: more than without for every setup, the same when every rate is 0, and
/// in between with only some sites on. (Sequences of 128: at 64 the leanest setup's peak is the
/// streamed word table's upload, before any dropout, since the top layer runs only the head's rows.)
#[test]
fn planner_counts_dropout_sites() {
    use peft_wgpu::kernels::dropout::Rate;
    use peft_wgpu::model::plan::{plan, AdapterSpec, PlanInput};
    let cfg = peft_wgpu::bench::model::preset("minilm").unwrap();
    let spec = AdapterSpec::from_bottleneck(&cfg, &peft_wgpu::bench::memory::bench_adapter()).unwrap();
    let (p0, p1) = (Rate::new(0.0).unwrap(), Rate::new(0.1).unwrap());
    let only_probs = DropoutRates { hidden: p0, attention_output: p0, attention: p1, head: p0 };
    for (slots, recompute, layer_chunk, keep_ffn_output) in
        [(6, false, 0, false), (6, true, 0, false), (1, true, 0, false), (1, true, 8, false), (6, true, 8, true)]
    {
        let peak = |dropout: Option<DropoutRates>| {
            let p = PlanInput {
                resident_layers: slots,
                recompute,
                layer_chunk,
                keep_ffn_output,
                dropout: dropout.map(|r| r.sites()).unwrap_or_default(),
                ..PlanInput::resident(&cfg, &spec, 32, 128, 2)
            };
            plan(&p).unwrap().peak_bytes()
        };
        let what = format!("{slots} slots, recompute {recompute}, chunk {layer_chunk}, keep FFN {keep_ffn_output}");
        let off = peak(None);
        assert_eq!(peak(Some(DropoutRates::uniform(0.0).unwrap())), off, "{what}: rates of 0 allocate nothing");
        let probs = peak(Some(only_probs));
        let all = peak(Some(DropoutRates::uniform(0.1).unwrap()));
        assert!(off < probs && probs < all, "{what}: {off} < {probs} < {all}");
    }
}

/// A budget chooses the fastest setup that fits; one too small fails naming what to change.
#[test]
fn max_gpu_memory_chooses_or_fails_clearly() {
    use peft_wgpu::model::plan::{choose, parse_size, AdapterSpec, Choice, PlanInput};
    let cfg = peft_wgpu::bench::model::preset("bert-base").unwrap();
    let spec = AdapterSpec::from_bottleneck(&cfg, &peft_wgpu::bench::memory::bench_adapter()).unwrap();
    let base = PlanInput::resident(&cfg, &spec, 32, 128, 2);
    let free = Choice::default();
    let fast = choose(&base, free, None, None).unwrap();
    assert!(fast.resident() && !fast.recompute);
    let lean = peft_wgpu::model::plan::plan(&PlanInput {
        resident_layers: 1,
        recompute: true,
        layer_chunk: 1,
        ..base.clone()
    })
    .unwrap();
    assert!(lean.peak_bytes() < fast.peak_bytes());
    // Just below the fastest: something leaner that fits.
    let p = choose(&base, free, Some(fast.peak_bytes() - 1), None).unwrap();
    assert!(p.recompute || !p.resident());
    assert!(p.peak_bytes() < fast.peak_bytes());
    // Exactly the leanest: found.
    let p = choose(&base, free, Some(lean.peak_bytes()), None).unwrap();
    assert_eq!(p.peak_bytes(), lean.peak_bytes());
    // Below it: a clear error.
    let err = format!("{:#}", choose(&base, free, Some(lean.peak_bytes() - 1), None).unwrap_err());
    for want in [
        "--max-gpu-memory",
        "--batch-size (32)",
        "--max-length (128)",
        "recompute on",
        "1 of 12 layers",
        "layer chunks of 1 sequence",
    ] {
        assert!(err.contains(want), "error {err:?} lacks {want:?}");
    }
    // Fixed options that cannot fit are named.
    let err = format!(
        "{:#}",
        choose(&base, Choice { recompute: Some(false), ..free }, Some(lean.peak_bytes()), None).unwrap_err()
    );
    assert!(err.contains("recompute off as given"), "{err}");
    // A tensor larger than a storage binding.
    let err = format!("{:#}", choose(&base, free, None, Some(16 << 20)).unwrap_err());
    assert!(err.contains("largest storage binding"), "{err}");
    assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
    assert_eq!(parse_size("512 MiB").unwrap(), 512 << 20);
    assert!(format!("{:#}", parse_size("lots").unwrap_err()).contains("--max-gpu-memory"));
    assert!(parse_size("0").is_err());
}
