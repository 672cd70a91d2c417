//! `--limits webgpu` on the real device: a GPU opened with `GpuOptions::limits = WebGpu` (whatever
//! `PEFT_LIMITS` says) has exactly WebGPU's default limits and no optional feature, and the
//! kernels the policy picks there run within them against their f64 references: the optimizer,
//! whose multi-tensor kernels bind 33 and 17 storage buffers and so step one tensor a dispatch
//! here, and the `smem` matmul with the large tile sized to 16 KiB of workgroup memory. Tensors,
//! batches and memory plans beyond 128 MiB per binding / 256 MiB per buffer are refused with a
//! clear error before anything runs. (The parity, training and fusion suites run whole in this
//! mode with `PEFT_LIMITS=webgpu`: `make test-webgpu-limits`.)

mod common;
use common::cli::{assert_clean_failure, peft, text};
use common::*;
use peft_wgpu::gpu::policy::{LimitsMode, MatmulVariant, TileConfig};
use peft_wgpu::kernels::matmul::{Matmul, View};
use peft_wgpu::kernels::optim::{self, reference as r, AdamW, AdamWTensor};
use peft_wgpu::kernels::reference::{matmul, rel_err};
use peft_wgpu::kernels::test_support::{f64s, rand_f32, rng};
use peft_wgpu::{Gpu, GpuOptions, GpuTensor};
use std::sync::{Arc, OnceLock};

/// One GPU opened with WebGPU's limits for the whole binary.
fn webgpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| {
        Gpu::new(&GpuOptions { limits: Some(LimitsMode::WebGpu), ..Default::default() })
            .unwrap_or_else(|e| panic!("{e:#}"))
    })
    .clone()
}

fn upload(data: &[f32]) -> GpuTensor {
    GpuTensor::from_slice(&webgpu(), &[data.len()], data).unwrap()
}

fn poisoned(n: usize) -> GpuTensor {
    GpuTensor::filled(&webgpu(), &[n], f32::NAN).unwrap()
}

fn download(t: &GpuTensor) -> Vec<f32> {
    t.to_vec(&webgpu()).unwrap()
}

#[test]
fn device_has_exactly_webgpus_limits_and_no_features() {
    let g = webgpu();
    assert_eq!(g.limits, wgpu::Limits::default());
    assert_eq!(
        (
            g.limits.max_storage_buffers_per_shader_stage,
            g.limits.max_storage_buffer_binding_size,
            g.limits.max_buffer_size,
            g.limits.max_compute_workgroup_storage_size,
            g.limits.max_compute_invocations_per_workgroup,
        ),
        (8, 128 << 20, 256 << 20, 16 << 10, 256)
    );
    assert!(g.features.is_empty(), "{:?}", g.features);
    // wgpu enforces what was requested, not what the adapter offers.
    assert_eq!(g.device.limits().max_storage_buffers_per_shader_stage, 8);
    assert!(g.device.features().is_empty());
    let p = g.policy();
    assert_eq!(p.limits, LimitsMode::WebGpu);
    assert!(!p.multi_tensor_optimizer && !p.cooperative_matrix);
    assert!(p.matmul_variant.is_supported(&g), "{p}");
    for v in [MatmulVariant::Subgroup, MatmulVariant::F16, MatmulVariant::Coop] {
        assert!(!v.is_supported(&g), "{v} needs a feature this mode does not request");
    }
    p.smem_large_tile.check(&g).unwrap();
    println!("policy: {p}");
}

/// Three clipped AdamW steps over 19 tensors of ragged sizes (more than the 8 a multi-tensor
/// dispatch takes) through the multi-tensor API, which steps them one by one here.
#[test]
fn optimizer_steps_match_the_f64_reference() {
    const SIZES: [usize; 19] =
        [1, 255, 257, 4095, 4097, 9000, 0, 3, 64, 1000, 12289, 7, 513, 2, 8191, 300, 5, 4096, 77];
    const OPT: AdamW = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    const MAX_NORM: f32 = 0.5;
    let g = webgpu();
    assert!(!optim::multi_tensor_supported(&g));
    let mut rng = rng(1800);
    let p0: Vec<Vec<f32>> = SIZES.iter().map(|&n| rand_f32(&mut rng, n, 1.0)).collect();
    let g0: Vec<Vec<f32>> =
        SIZES.iter().enumerate().map(|(i, &n)| rand_f32(&mut rng, n, 0.01 * (1 + i % 5) as f32)).collect();
    let params: Vec<GpuTensor> = p0.iter().map(|p| upload(p)).collect();
    let grads: Vec<GpuTensor> = g0.iter().map(|x| upload(x)).collect();
    let zeros = || SIZES.iter().map(|&n| upload(&vec![0.0; n])).collect::<Vec<_>>();
    let (m, v) = (zeros(), zeros());
    let decay = |i: usize| i % 3 != 0;
    let grad_refs: Vec<&GpuTensor> = grads.iter().collect();
    let (ss, factor) = (poisoned(1), poisoned(1));
    let h = r::AdamWHyper { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let mut want: Vec<r::AdamWTensor> =
        p0.iter().enumerate().map(|(i, p)| r::AdamWTensor::new(f64s(p), decay(i))).collect();
    let ref_grads: Vec<Vec<f64>> = g0.iter().map(|x| f64s(x)).collect();
    for step in 1..=3u32 {
        let lr = OPT.lr * step as f32 / 3.0;
        let mut b = g.batch();
        let scratch = poisoned(optim::sum_of_squares_scratch_len(&grad_refs));
        optim::sum_of_squares_and_clip(&mut b, &grad_refs, &scratch, MAX_NORM, &ss, &factor).unwrap();
        let tensors: Vec<AdamWTensor> = (0..SIZES.len())
            .map(|i| AdamWTensor { param: &params[i], grad: &grads[i], m: &m[i], v: &v[i], decay: decay(i) })
            .collect();
        optim::adamw_step_multi(&mut b, &OPT, step, lr, 1.0, Some(&factor), &tensors).unwrap();
        b.finish().unwrap();
        let norm = r::trainer_step(&h, step, lr as f64, Some(MAX_NORM as f64), &mut want, &ref_grads);
        let e = rel_err(&[download(&ss)[0].sqrt()], &[norm]);
        assert!(e <= 1e-5, "step {step}: gradient norm off by {e:.2e}");
    }
    for (i, t) in want.iter().enumerate() {
        let e = rel_err(&download(&params[i]), &t.p);
        assert!(e <= 1e-5, "param {i} ({} values): relative error {e:.2e}", SIZES[i]);
    }
}

/// C = A·B + bias on shapes that are not tile multiples, C poisoned first.
fn check_matmul(mm: Matmul, (m, n, k): (usize, usize, usize), seed: u64) -> f64 {
    let g = webgpu();
    let mut rng = rng(seed);
    let (a, b, bias) = (rand_f32(&mut rng, m * k, 1.0), rand_f32(&mut rng, k * n, 1.0), rand_f32(&mut rng, n, 1.0));
    let (at, bt, biast, ct) = (upload(&a), upload(&b), upload(&bias), poisoned(m * n));
    let mut batch = g.batch();
    mm.run(&mut batch, View::rows(&at, k), View::rows(&bt, n), Some((&biast, 0)), View::rows(&ct, n)).unwrap();
    batch.finish().unwrap();
    let mut want = matmul(&f64s(&a), &f64s(&b), m, k, n);
    for (i, w) in want.iter_mut().enumerate() {
        *w += bias[i % n] as f64;
    }
    let e = rel_err(&download(&ct), &want);
    assert!(e <= 1e-5, "{m}×{n}×{k}: relative error {e:.2e}");
    e
}

#[test]
fn matmul_of_the_webgpu_policy_matches_the_reference() {
    let g = webgpu();
    let tile = g.policy().smem_large_tile;
    assert_eq!(tile, TileConfig::LARGE_16K);
    for (i, shape) in [(1, 1, 1), (37, 70, 41), (130, 68, 36), (257, 129, 40)].into_iter().enumerate() {
        let (m, n, k) = shape;
        let auto = check_matmul(Matmul::new(m, n, k), shape, 1900 + i as u64);
        let smem =
            check_matmul(Matmul::new(m, n, k).variant(MatmulVariant::Smem).smem_tiles(tile), shape, 1950 + i as u64);
        println!("{m}×{n}×{k}: {} {auto:.1e}, smem {tile} {smem:.1e}", g.policy().matmul_variant);
    }
    // A tile beyond 16 KiB of workgroup memory is refused against the requested limits (wgpu
    // itself does not check workgroup memory when it builds the pipeline), as is a variant that
    // needs a feature this mode does not request.
    let (a, b, c) = (upload(&[0.5; 64 * 64]), upload(&[0.5; 64 * 64]), poisoned(64 * 64));
    let mut batch = g.batch();
    for (mm, want) in [
        (Matmul::new(64, 64, 64).variant(MatmulVariant::Smem).smem_tiles(TileConfig::LARGE), "16384"),
        (Matmul::new(64, 64, 64).variant(MatmulVariant::Subgroup), "SUBGROUP"),
    ] {
        let r = mm.run(&mut batch, View::rows(&a, 64), View::rows(&b, 64), None, View::rows(&c, 64));
        assert_err_contains(r, &[want]);
    }
    assert!(batch.is_empty());
}

#[test]
fn tensors_batches_and_plans_beyond_webgpus_buffers_are_refused() {
    use peft_wgpu::model::{load, plan};
    use peft_wgpu::train::guard;
    let g = webgpu();
    // One element past 128 MiB: refused before any buffer is made.
    let over = (128 << 20) / 4 + 1;
    assert_err_contains(GpuTensor::zeros(&g, &[over]), &["128 MiB", "--batch-size"]);
    GpuTensor::zeros(&g, &[1 << 20]).unwrap();
    // BERT-base: attention probabilities of 32 × 512 tokens are 384 MiB.
    let cfg = peft_wgpu::bench::model::preset("bert-base").unwrap();
    let dims = load::dims(&cfg);
    let fits = guard::max_batch(&g, &dims, 512);
    assert!((1..32).contains(&fits), "{fits}");
    guard::check_batch_fits(&g, &dims, fits, 512).unwrap();
    assert_err_contains(
        guard::check_batch_fits(&g, &dims, 32, 512),
        &["128 MiB per storage binding", "256 MiB per buffer", &format!("--batch-size {fits} or less")],
    );
    // The planner bounds the largest tensor by the same limits.
    let spec = plan::AdapterSpec::from_bottleneck(&cfg, &peft_wgpu::bench::memory::bench_adapter()).unwrap();
    let input = |batch: usize, seq: usize| plan::PlanInput::resident(&cfg, &spec, batch, seq, 2);
    let ok = plan::choose_for(&g, &input(32, 128), plan::Choice::default(), None).unwrap();
    assert!(ok.largest_tensor <= 128 << 20);
    // RoBERTa-base's word embeddings (50265 × 768, 147.3 MiB) are larger than a binding: they are
    // uploaded in blocks, so the plan fits; an FFN weight that large is refused whatever the batch.
    let roberta = peft_wgpu::model::config::BertConfig { vocab_size: 50265, ..cfg.clone() };
    let planned =
        plan::choose_for(&g, &plan::PlanInput { cfg: &roberta, ..input(8, 128) }, plan::Choice::default(), None);
    assert!(planned.unwrap().largest_tensor <= 128 << 20);
    let wide_ffn = peft_wgpu::model::config::BertConfig { intermediate_size: 50265, ..cfg.clone() };
    assert_err_contains(
        plan::choose_for(&g, &plan::PlanInput { cfg: &wide_ffn, ..input(1, 8) }, plan::Choice::default(), None),
        &["largest weight", "147.3 MiB", "128.0 MiB", "no batch size"],
    );
    assert_err_contains(
        plan::choose_for(&g, &input(32, 512), plan::Choice::default(), None),
        &["largest tensor", "128.0 MiB", "--batch-size"],
    );
}

/// `peft info` shows the mode in force, from `--limits` or `PEFT_LIMITS`; a bad value is refused.
#[test]
fn info_shows_the_limits_mode() {
    let out = peft(&["--limits", "webgpu", "info"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for want in ["limits webgpu", "optimizer per tensor", "8 storage buffers per stage", "16 KiB workgroup memory"] {
        assert!(stdout.contains(want), "peft --limits webgpu info lacks {want:?}:\n{stdout}");
    }
    let run = |value: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_peft"))
            .arg("info")
            .env("PEFT_LIMITS", value)
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("running peft")
    };
    let env_on = run("webgpu");
    assert!(text(&env_on.stdout).contains("limits webgpu; overridden by PEFT_LIMITS"), "{}", text(&env_on.stdout));
    let default = run("");
    assert!(text(&default.stdout).contains("limits adapter"), "{}", text(&default.stdout));
    assert_clean_failure(&run("browser"), &["PEFT_LIMITS", "browser", "adapter", "webgpu"]);
    let bad = peft(&["--limits", "browser", "info"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("expected adapter or webgpu"), "{}", text(&bad.stderr));
}

/// A word table larger than one storage binding (RoBERTa-base's and XLM-R's are, under WebGPU's
/// 128 MiB) is uploaded in blocks and looked up a block a dispatch: tiny-bert with its word table
/// moved to rows past the first block of a 160 MiB table gives, for the shifted ids, the logits
/// and loss tiny-bert gives, bit for bit.
#[test]
fn word_table_larger_than_a_binding_is_looked_up_in_blocks() {
    use peft_wgpu::formats::weights::{write_tensors, Tensor, WeightFile};
    use peft_wgpu::model::encoder::Setup;
    use peft_wgpu::model::load;
    let g = webgpu();
    let case = tiny().join("houlsby");
    let (adapter, head) = load::load_adapter(&g, &case.join("adapter"), &tiny_config()).unwrap();
    let head = head.unwrap();
    let (inputs, labels) = peft_wgpu::train::data::read_inputs_json(&case.join("inputs.json")).unwrap();
    let logits = |model: &std::path::Path, inputs: &peft_wgpu::model::encoder::Inputs| {
        let (_, mut enc) = load::load_encoder(&g, model, None).unwrap();
        let out = enc.pass(&Setup::Adapter(&adapter), &head, inputs, Some(&labels), false, false).unwrap();
        (out.logits, out.loss)
    };
    let plain = logits(&tiny().join("base"), &inputs);

    let name = "embeddings.word_embeddings.weight";
    let mut m = WeightFile::open(tiny().join("base/model.safetensors")).unwrap().to_map().unwrap();
    let (vocab, w) = (m[name].shape[0], m[name].shape[1]);
    let first_block = (128 << 20) / (4 * w);
    let (shift, rows) = (first_block + 1000, first_block + 250_000);
    let mut big = vec![0.0f32; rows * w];
    big[shift * w..(shift + vocab) * w].copy_from_slice(&m[name].data);
    assert!(big.len() * 4 > 128 << 20);
    m.insert(name.to_string(), Tensor::new(vec![rows, w], big).unwrap());
    let dir = tempfile::tempdir().unwrap();
    write_tensors(&dir.path().join("model.safetensors"), &m, None).unwrap();
    drop(m);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny().join("base/config.json")).unwrap()).unwrap();
    config["vocab_size"] = rows.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let shifted = peft_wgpu::model::encoder::Inputs {
        ids: inputs.ids.iter().map(|&i| i + shift as u32).collect(),
        ..inputs.clone()
    };
    assert_eq!(logits(dir.path(), &shifted), plain);
}
