//! Matmul throughput on the encoder's real shapes (all-MiniLM-L6-v2 training step: T = 32×32 = 1024
//! tokens, hidden 384, FFN 1536, 12 heads of 32), per kernel variant.
//!
//! Each product is queued `reps` times in one batch and timed with the wall clock around submit +
//! full GPU sync (`reps` chosen after two warm-up runs so that one sample takes at least
//! `--min-ms`); the samples of all variants are taken round-robin so that load from other processes
//! spreads over them, and the median (and best) of `--samples` is reported as GFLOP/s. Every
//! variant's output is checked against an f64 reference on sampled elements first.
//!
//! cargo run --example matmul_bench -- [--variants basic,register,tiled,subgroup|all] [--samples N]
//!     [--min-ms MS] [--filter TEXT] [--markdown]
//!
//! `auto` in `--variants` is what products use by default (`PEFT_MATMUL_VARIANT` or the device rule).

use anyhow::{bail, Context, Result};
use peft_wgpu::kernels::matmul::{default_variant, InnerBatch, Matmul, MatmulVariant, View};
use peft_wgpu::{Gpu, GpuTensor};
use std::time::Instant;

/// One operand layout: element (outer, inner, r, c) at `off + outer·sb + inner·si + r·sr + c·sc`.
#[derive(Clone, Copy)]
struct Layout {
    sr: usize,
    sc: usize,
    sb: usize,
    si: usize,
}

impl Layout {
    fn rows(cols: usize) -> Self {
        Self { sr: cols, sc: 1, sb: 0, si: 0 }
    }
    fn transposed(cols: usize) -> Self {
        Self { sr: 1, sc: cols, sb: 0, si: 0 }
    }
    fn at(&self, o: usize, h: usize, r: usize, c: usize) -> usize {
        o * self.sb + h * self.si + r * self.sr + c * self.sc
    }
    /// Elements a `outer × inner` batch of `rows × cols` matrices spans.
    fn len(&self, outer: usize, inner: usize, rows: usize, cols: usize) -> usize {
        self.at(outer - 1, inner - 1, rows - 1, cols - 1) + 1
    }
    fn view<'a>(&self, t: &'a GpuTensor) -> View<'a> {
        View { t, off: 0, s_row: self.sr, s_col: self.sc, s_batch: self.sb }
    }
}

struct Case {
    name: &'static str,
    /// How many times one MiniLM layer's forward + activation backward runs this product.
    per_layer: usize,
    m: usize,
    n: usize,
    k: usize,
    outer: usize,
    inner: usize,
    a: Layout,
    b: Layout,
    c: Layout,
}

impl Case {
    fn flop(&self) -> f64 {
        2.0 * (self.m * self.n * self.k * self.outer * self.inner) as f64
    }
}

const T: usize = 1024;
const D: usize = 384;
const FFN: usize = 1536;
const BATCH: usize = 32;
const SEQ: usize = 32;
const HEADS: usize = 12;
const HD: usize = 32;
const BOTTLENECK: usize = 64;

fn cases() -> Vec<Case> {
    let plain = |name, per_layer, m, n, k, a, b, c| Case { name, per_layer, m, n, k, outer: 1, inner: 1, a, b, c };
    // Attention operands: activations [batch·seq, heads·hd] (head h at column h·hd), probabilities
    // [batch, heads, seq, seq].
    let act = Layout { sr: D, sc: 1, sb: SEQ * D, si: HD };
    let act_t = Layout { sr: 1, sc: D, sb: SEQ * D, si: HD };
    let probs = Layout { sr: SEQ, sc: 1, sb: HEADS * SEQ * SEQ, si: SEQ * SEQ };
    let probs_t = Layout { sr: 1, sc: SEQ, sb: HEADS * SEQ * SEQ, si: SEQ * SEQ };
    let attn =
        |name, per_layer, a, b, c| Case { name, per_layer, m: SEQ, n: SEQ, k: HD, outer: BATCH, inner: HEADS, a, b, c };
    vec![
        // nn.Linear forward: y = x·Wᵀ, W [out, in] read transposed (K contiguous in both operands).
        plain("x·Wᵀ 384→384 (q k v out)", 4, T, D, D, Layout::rows(D), Layout::transposed(D), Layout::rows(D)),
        plain("x·Wᵀ 384→1536 (ffn in)", 1, T, FFN, D, Layout::rows(D), Layout::transposed(D), Layout::rows(FFN)),
        plain("x·Wᵀ 1536→384 (ffn out)", 1, T, D, FFN, Layout::rows(FFN), Layout::transposed(FFN), Layout::rows(D)),
        // Activation backward: dX = dY·W, W row-major (B contiguous along j).
        plain("dY·W 384→384", 4, T, D, D, Layout::rows(D), Layout::rows(D), Layout::rows(D)),
        plain("dY·W 384→1536 (dinter)", 1, T, FFN, D, Layout::rows(D), Layout::rows(FFN), Layout::rows(FFN)),
        plain("dY·W 1536→384 (dy1)", 1, T, D, FFN, Layout::rows(FFN), Layout::rows(D), Layout::rows(D)),
        // Weight gradients (adapter): dW = Aᵀ·B over the tokens.
        plain(
            "Aᵀ·B 384×64 K=1024",
            1,
            D,
            BOTTLENECK,
            T,
            Layout::transposed(D),
            Layout::rows(BOTTLENECK),
            Layout::rows(BOTTLENECK),
        ),
        plain(
            "Aᵀ·B 64×384 K=1024",
            1,
            BOTTLENECK,
            D,
            T,
            Layout::transposed(BOTTLENECK),
            Layout::rows(D),
            Layout::rows(D),
        ),
        // Attention, per (batch, head): 384 products of 32×32×32.
        attn("attn Q·Kᵀ (also dP)", 2, act, act_t, probs),
        attn("attn P·V (also dQ)", 2, probs, act, act),
        attn("attn dSᵀ·Q (dK, dV)", 2, probs_t, act, act),
    ]
}

struct Args {
    variants: Vec<String>,
    samples: usize,
    min_ms: f64,
    filter: Option<String>,
    markdown: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { variants: vec!["all".into()], samples: 9, min_ms: 100.0, filter: None, markdown: false };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--variants" => args.variants = val()?.split(',').map(|s| s.trim().to_string()).collect(),
            "--samples" => args.samples = val()?.parse()?,
            "--min-ms" => args.min_ms = val()?.parse()?,
            "--filter" => args.filter = Some(val()?),
            "--markdown" => args.markdown = true,
            "-h" | "--help" => {
                println!(
                    "matmul_bench [--variants basic,register,tiled,subgroup,auto|all] [--samples N] [--min-ms MS] \
                     [--filter TEXT] [--markdown]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if args.samples == 0 {
        bail!("--samples must be at least 1");
    }
    Ok(args)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

/// Deterministic uniform values in [-1, 1).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let gpu = Gpu::new(&Default::default())?;
    let default = default_variant(&gpu)?;
    let mut variants: Vec<MatmulVariant> = vec![];
    for name in &args.variants {
        let chosen: Vec<MatmulVariant> = match name.as_str() {
            "all" => MatmulVariant::ALL.into_iter().filter(|v| v.is_supported(&gpu)).collect(),
            "auto" => vec![default],
            other => match MatmulVariant::parse(other)? {
                Some(v) if v.is_supported(&gpu) => vec![v],
                Some(v) => bail!("variant {v} is not supported on {}", gpu.description.summary()),
                None => vec![default],
            },
        };
        for v in chosen {
            if !variants.contains(&v) {
                variants.push(v);
            }
        }
    }
    let load_before = load_average();
    println!("device: {}", gpu.description.summary());
    println!(
        "default variant: {default}; LP_NUM_THREADS={}; load average (1/5/15 min) before: {load_before}",
        std::env::var("LP_NUM_THREADS").unwrap_or_else(|_| "unset".into())
    );
    println!("timing: wall clock around submit + full sync, median of {} samples per variant", args.samples);
    println!();

    // results[case][variant] = (median seconds, best seconds)
    let mut results: Vec<(&Case, Vec<(f64, f64)>)> = vec![];
    let all_cases = cases();
    for (ci, case) in all_cases.iter().enumerate() {
        if args.filter.as_ref().is_some_and(|f| !case.name.contains(f.as_str())) {
            continue;
        }
        let (m, n, k, outer, inner) = (case.m, case.n, case.k, case.outer, case.inner);
        let (al, bl, cl) =
            (case.a.len(outer, inner, m, k), case.b.len(outer, inner, k, n), case.c.len(outer, inner, m, n));
        let a = random(al, 1 + ci as u64);
        let b = random(bl, 100 + ci as u64);
        let at = GpuTensor::from_slice(&gpu, &[al], &a)?;
        let bt = GpuTensor::from_slice(&gpu, &[bl], &b)?;
        let ct = GpuTensor::filled(&gpu, &[cl], f32::NAN)?;
        let ib = InnerBatch { count: inner, a: case.a.si, b: case.b.si, c: case.c.si };
        let run = |v: MatmulVariant, reps: usize| -> Result<f64> {
            let mut batch = gpu.batch();
            for _ in 0..reps {
                Matmul::new(m, n, k).batch(outer).variant(v).run_inner(
                    &mut batch,
                    ib,
                    case.a.view(&at),
                    case.b.view(&bt),
                    None,
                    case.c.view(&ct),
                )?;
            }
            let t = Instant::now();
            batch.finish()?;
            Ok(t.elapsed().as_secs_f64())
        };
        // Warm up (pipeline build), check, and size the samples.
        let mut reps = vec![];
        for &v in &variants {
            ct.write(&gpu, &vec![f32::NAN; cl])?;
            run(v, 1)?;
            let got = ct.to_vec(&gpu)?;
            let (mut worst, mut scale) = (0f64, 0f64);
            for s in 0..257usize {
                let (z, i, j) = ((s * 7919) % (outer * inner), (s * 31 + s / 3) % m, (s * 17 + 5) % n);
                let (o, h) = (z / inner, z % inner);
                let want: f64 =
                    (0..k).map(|kk| a[case.a.at(o, h, i, kk)] as f64 * b[case.b.at(o, h, kk, j)] as f64).sum();
                worst = worst.max((got[case.c.at(o, h, i, j)] as f64 - want).abs());
                scale = scale.max(want.abs());
            }
            let err = worst / scale.max(f64::MIN_POSITIVE);
            if err.is_nan() || err > 1e-5 {
                bail!("{}: variant {v} is wrong (relative error {err:.2e})", case.name);
            }
            let once = run(v, 1)?.max(1e-6);
            reps.push(((args.min_ms * 1e-3 / once).ceil() as usize).clamp(1, 1000));
        }
        let mut times = vec![vec![]; variants.len()];
        for _ in 0..args.samples {
            for (vi, &v) in variants.iter().enumerate() {
                times[vi].push(run(v, reps[vi])? / reps[vi] as f64);
            }
        }
        let row: Vec<(f64, f64)> = times
            .iter_mut()
            .map(|t| {
                let best = t.iter().copied().fold(f64::INFINITY, f64::min);
                (median(t), best)
            })
            .collect();
        let cells: Vec<String> = row.iter().map(|&(med, _)| format!("{:>9.2}", case.flop() / med / 1e9)).collect();
        eprintln!("{:<28} {}", case.name, cells.join(" "));
        results.push((case, row));
    }
    let load_after = load_average();

    // Table: GFLOP/s (median; best in parentheses), then a MiniLM step estimate.
    let gf = |case: &Case, s: f64| case.flop() / s / 1e9;
    let names: Vec<String> = variants.iter().map(|v| v.to_string()).collect();
    let base = variants.iter().position(|&v| v == MatmulVariant::Basic);
    let def = variants.iter().position(|&v| v == default);
    println!();
    if args.markdown {
        let mut head = "| product | m×n×k × batch |".to_string();
        for nme in &names {
            head += &format!(" {nme} GFLOP/s |");
        }
        if base.is_some() && def.is_some() {
            head += &format!(" {default} / basic |");
        }
        println!("{head}");
        println!("|{}", "---|".repeat(2 + names.len() + usize::from(base.is_some() && def.is_some())));
        for (case, row) in &results {
            let mut line =
                format!("| {} | {}×{}×{} × {} |", case.name, case.m, case.n, case.k, case.outer * case.inner);
            for &(med, best) in row {
                line += &format!(" {:.2} ({:.2}) |", gf(case, med), gf(case, best));
            }
            if let (Some(b), Some(d)) = (base, def) {
                line += &format!(" {:.1}× |", row[b].0 / row[d].0);
            }
            println!("{line}");
        }
    } else {
        print!("{:<28} {:>22}", "product", "m×n×k × batch");
        for nme in &names {
            print!(" {nme:>16}");
        }
        println!();
        for (case, row) in &results {
            print!(
                "{:<28} {:>22}",
                case.name,
                format!("{}×{}×{} × {}", case.m, case.n, case.k, case.outer * case.inner)
            );
            for &(med, best) in row {
                print!(" {:>16}", format!("{:.2} ({:.2})", gf(case, med), gf(case, best)));
            }
            println!();
        }
        println!("(GFLOP/s: median of {} samples, best in parentheses)", args.samples);
    }
    // Matmul time of one MiniLM layer's forward + activation backward (6 layers per step), from the
    // products' per-layer counts; the sum only covers the shapes measured.
    println!();
    let mut flop = 0.0;
    let mut secs = vec![0.0; variants.len()];
    for (case, row) in &results {
        flop += case.flop() * case.per_layer as f64;
        for (vi, &(med, _)) in row.iter().enumerate() {
            secs[vi] += med * case.per_layer as f64;
        }
    }
    println!("6-layer step, matmuls above ({:.1} GFLOP):", 6.0 * flop / 1e9);
    for (vi, nme) in names.iter().enumerate() {
        println!("  {nme:>10}: {:.2} s ({:.2} GFLOP/s)", 6.0 * secs[vi], flop / secs[vi] / 1e9);
    }
    println!();
    println!("load average (1/5/15 min) after: {load_after}");
    Ok(())
}
