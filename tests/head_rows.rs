//! The top layer on the rows a sequence head reads (`Encoder::head_rows_only`): after its
//! attention, the top layer computes only each sequence's first token. Against the same pass over
//! every row: logits and loss the same bits; every gradient the same but for the grouping of
//! column sums over rows (bias gradients), within 1e-6 relative — with dropout (the masks keyed
//! by the rows' global index), `--recompute`, layer chunks, streamed layers, f16 weights; classification, regression and
//! multi-label heads, a plain and an optioned adapter; against float64 no worse than
//! max(4 × PyTorch fp32's error, 2e-6), as `parity_f64.rs` bounds every case. Tagging heads keep
//! every row (the same bits and peak either way); the path lowers the measured peak.

mod common;
use common::*;
use peft_wgpu::formats::adapterhub::HeadKind;
use peft_wgpu::formats::weights::WeightFile;
use peft_wgpu::model::config::BertConfig;
use peft_wgpu::model::encoder::{DropoutRates, PassDropout, Setup};
use peft_wgpu::model::load;
use peft_wgpu::train::data::read_targets_json;
use peft_wgpu::{Gpu, WeightPrecision};
use std::path::PathBuf;
use std::sync::Arc;

/// (case folder, its base model, head kind)
fn cases() -> Vec<(PathBuf, PathBuf, HeadKind)> {
    let f = fixtures();
    let bert = f.join("tiny-bert/base");
    vec![
        (f.join("tiny-bert/houlsby"), bert.clone(), HeadKind::Classification),
        (f.join("tiny-bert/pfeiffer"), bert.clone(), HeadKind::Classification),
        (f.join("heads-bert/regression"), bert.clone(), HeadKind::Regression),
        (f.join("heads-bert/multilabel"), bert.clone(), HeadKind::MultilabelClassification),
        (f.join("options-ln"), bert, HeadKind::Classification),
    ]
}

struct Out {
    logits: Vec<f32>,
    loss: f32,
    grads: Vec<(String, Vec<f32>)>,
    peak: u64,
}

#[derive(Clone, Copy, Debug)]
struct Mode {
    head_rows: bool,
    recompute: bool,
    /// Layer chunks (sequences; 0: none), with `recompute`.
    chunk: usize,
    resident: Option<usize>,
    dropout: bool,
    precision: WeightPrecision,
}

/// One training pass (forward, backward) of the case on `g`, gradients poisoned first.
fn run(g: &Arc<Gpu>, (dir, model, kind): &(PathBuf, PathBuf, HeadKind), m: Mode) -> Out {
    let cfg = BertConfig::from_model_dir(model).unwrap();
    let (adapter, head) = load::load_adapter(g, &dir.join("adapter"), &cfg).unwrap();
    let head = head.expect("the case saves its head");
    assert_eq!(head.kind(), *kind, "{}", dir.display());
    let (inputs, targets) = read_targets_json(&dir.join("inputs.json"), *kind).unwrap();
    let (_, mut enc) = load::load_encoder_with(g, model, m.resident, m.precision).unwrap();
    enc.recompute = m.recompute;
    enc.layer_chunk = m.chunk;
    enc.head_rows_only = m.head_rows;
    let named: Vec<_> = adapter.named().into_iter().chain(head.named()).collect();
    for (_, _, grad) in &named {
        grad.write(g, &vec![f32::NAN; grad.numel()]).unwrap();
    }
    let drop = m.dropout.then(|| PassDropout { rates: DropoutRates::uniform(0.15).unwrap(), seed: 41, step: 6 });
    let setup = Setup::Adapter(&adapter);
    let out = enc.pass_targets(&setup, &head, &inputs, Some(targets.as_targets()), true, false, drop).unwrap();
    Out {
        logits: out.logits,
        loss: out.loss.unwrap(),
        grads: named.iter().map(|(n, _, grad)| (n.clone(), grad.to_vec(g).unwrap())).collect(),
        peak: out.peak_bytes,
    }
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()))
}

/// `‖a − b‖∞ / ‖b‖∞` (or the absolute difference where b is all zero).
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d = a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    let s = max_abs(b);
    if s > 0.0 {
        d / s
    } else {
        d
    }
}

#[test]
fn same_results_as_every_row() {
    let g = gpu();
    for case in cases() {
        let name = case.0.strip_prefix(fixtures()).unwrap().display().to_string();
        for dropout in [false, true] {
            let f16 = WeightPrecision::F16;
            for (recompute, chunk, resident, precision) in [
                (false, 0, None, WeightPrecision::F32),
                (true, 0, None, WeightPrecision::F32),
                (true, 0, Some(1), WeightPrecision::F32),
                (true, 2, None, WeightPrecision::F32),
                (true, 1, Some(1), WeightPrecision::F32),
                (false, 0, None, f16),
            ] {
                let mode = |head_rows| Mode { head_rows, recompute, chunk, resident, dropout, precision };
                let (all, top) = (run(&g, &case, mode(false)), run(&g, &case, mode(true)));
                let what = format!(
                    "{name} dropout {dropout} recompute {recompute} chunk {chunk} resident {resident:?} {precision} weights"
                );
                assert_eq!(bits(&top.logits), bits(&all.logits), "{what}: logits");
                assert_eq!(top.loss.to_bits(), all.loss.to_bits(), "{what}: loss {} vs {}", top.loss, all.loss);
                let mut same = 0;
                for ((n, a), (_, b)) in top.grads.iter().zip(&all.grads) {
                    assert!(a.iter().all(|x| x.is_finite()), "{what}: {n} not written");
                    let r = rel_diff(a, b);
                    assert!(r <= 1e-6, "{what}: {n} differs by {r:.2e} relative");
                    same += (bits(a) == bits(b)) as usize;
                }
                println!("{what}: logits and loss the same bits; {same} of {} gradients too", top.grads.len());
            }
        }
    }
}

/// The path's results against float64 (`expected_f64.safetensors`), bounded as `parity_f64.rs`
/// bounds every case: ours ≤ max(4 × PyTorch fp32's error, 2e-6), per tensor relative to its
/// largest value.
#[test]
fn against_float64() {
    let g = gpu();
    for case in cases().into_iter().filter(|c| c.0.join("expected_f64.safetensors").exists()) {
        let name = case.0.strip_prefix(fixtures()).unwrap().display().to_string();
        let out = run(
            &g,
            &case,
            Mode {
                head_rows: true,
                recompute: false,
                chunk: 0,
                resident: None,
                dropout: false,
                precision: WeightPrecision::F32,
            },
        );
        let exact = WeightFile::open(case.0.join("expected_f64.safetensors")).unwrap();
        let torch = WeightFile::open(case.0.join("expected.safetensors")).unwrap();
        let mut ours: Vec<(String, Vec<f32>)> = vec![("logits".into(), out.logits), ("loss".into(), vec![out.loss])];
        ours.extend(out.grads.into_iter().map(|(n, v)| (format!("grad.{n}"), v)));
        for (n, v) in &ours {
            let e = f64s_of(&exact, n);
            let t = f64s_of(&torch, n);
            let scale = e.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(f64::MIN_POSITIVE);
            let err = |x: &[f64]| x.iter().zip(&e).fold(0.0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
            let (eo, et) = (err(&f64s(v)), err(&t));
            assert!(eo <= (4.0 * et).max(2e-6), "{name} {n}: ours {eo:.2e} against float64, PyTorch fp32 {et:.2e}");
        }
        println!("{name}: {} tensors within max(4 × PyTorch fp32's error, 2e-6) of float64", ours.len());
    }
}

/// A tensor of the file as f64.
fn f64s_of(f: &WeightFile, name: &str) -> Vec<f64> {
    let (dtype, _, bytes) = f.raw(name).unwrap_or_else(|_| panic!("{name} not in the fixture"));
    match dtype {
        safetensors::Dtype::F64 => bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        _ => f.get(name).unwrap().1.iter().map(|&v| v as f64).collect(),
    }
}

/// The path lowers the measured peak of a sequence head's pass, and a tagging head (every row
/// read) is left on the every-row path: the same bits and the same peak. Each on a device of its
/// own, so that no other test's buffers count.
#[test]
fn lower_peak_and_tagging_unchanged() {
    let f = fixtures();
    let bert = f.join("tiny-bert/base");
    let classification = (f.join("tiny-bert/houlsby"), bert.clone(), HeadKind::Classification);
    let tagging = (f.join("heads-bert/tagging"), bert, HeadKind::Tagging);
    let peak = |case, head_rows| {
        let g = Gpu::for_tests();
        run(
            &g,
            case,
            Mode {
                head_rows,
                recompute: false,
                chunk: 0,
                resident: None,
                dropout: true,
                precision: WeightPrecision::F32,
            },
        )
    };
    let (all, top) = (peak(&classification, false), peak(&classification, true));
    assert!(
        top.peak < all.peak,
        "classification: peak {} B with the head's rows only, {} B with every row",
        top.peak,
        all.peak
    );
    println!("classification peak: {} B every row, {} B the head's rows", all.peak, top.peak);
    let (all, top) = (peak(&tagging, false), peak(&tagging, true));
    assert_eq!(top.peak, all.peak, "tagging: the head reads every row, nothing changes");
    assert_eq!(bits(&top.logits), bits(&all.logits));
    for ((n, a), (_, b)) in top.grads.iter().zip(&all.grads) {
        assert_eq!(bits(a), bits(b), "tagging: {n}");
    }
}
