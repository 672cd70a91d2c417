//! Matmul throughput per kernel variant (and tile configuration) on the encoder's products
//! (MiniLM and BERT-base training steps) and on 4096³; every variant is checked against a CPU
//! reference on sampled outputs before it is timed (see `peft_wgpu::bench::matmul`).
//! Prints one JSON object per result on stdout (progress and a summary table on stderr).
//!
//! cargo run --release --example matmul_bench -- [--variants all|basic,smem,coop,...]
//!     [--shapes all|minilm,bert,square] [--sweep] [--samples N] [--min-ms MS] [--filter TEXT]
//!
//! `--sweep` also times fixed tile configurations of `smem` and `coop` (`configs_for`).
//! Defaults: every variant this GPU runs, every shape, 10 samples of ≥ 20 ms.

use anyhow::{bail, Context, Result};
use peft_wgpu::bench::matmul::{self as mb, BenchOptions, ShapeData};
use peft_wgpu::kernels::matmul::{default_variant, MatmulVariant};
use peft_wgpu::Gpu;
use std::io::Write;

struct Args {
    variants: Vec<MatmulVariant>,
    shapes: Vec<String>,
    sweep: bool,
    opts: BenchOptions,
    filter: Option<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { variants: vec![], shapes: vec![], sweep: false, opts: BenchOptions::default(), filter: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--variants" => {
                for name in val()?.split(',') {
                    if name.trim() == "all" {
                        args.variants.clear();
                        break;
                    }
                    match MatmulVariant::parse(name)? {
                        Some(v) => args.variants.push(v),
                        None => bail!("--variants: name variants (or all), not auto"),
                    }
                }
            }
            "--shapes" => args.shapes = val()?.split(',').map(|s| s.trim().to_string()).collect(),
            "--sweep" => args.sweep = true,
            "--samples" => args.opts.samples = val()?.parse()?,
            "--min-ms" => args.opts.min_sample_s = val()?.parse::<f64>()? * 1e-3,
            "--filter" => args.filter = Some(val()?),
            "-h" | "--help" => {
                println!(
                    "matmul_bench [--variants all|basic,register,tiled,subgroup,smem,f16,coop] \
                     [--shapes all|minilm,bert,square] [--sweep] [--samples N] [--min-ms MS] [--filter TEXT]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if args.opts.samples == 0 {
        bail!("--samples must be at least 1");
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let gpu = Gpu::new(&Default::default())?;
    eprintln!("device: {}", gpu.description.summary());
    for line in gpu.description.details() {
        eprintln!("  {line}");
    }
    eprintln!("default variant: {}", default_variant(&gpu)?);
    eprintln!(
        "shader runtime checks: {} ({})",
        if gpu.policy().shader_checks { "on" } else { "off for trusted shaders" },
        if cfg!(debug_assertions) { "debug build" } else { "release build" }
    );
    for v in MatmulVariant::ALL {
        if let Some(why) = v.unsupported_reason(&gpu) {
            eprintln!("variant {v}: not available ({why})");
        }
    }
    let variants = mb::variants_to_run(&gpu, &args.variants);
    for v in &args.variants {
        if !variants.contains(v) {
            bail!("variant {v} is not available on {}", gpu.description.summary());
        }
    }
    let mut results = vec![];
    let out = std::io::stdout();
    for (si, shape) in mb::shapes(&args.shapes).iter().enumerate() {
        if args.filter.as_ref().is_some_and(|f| !shape.name.contains(f.as_str())) {
            continue;
        }
        let data = ShapeData::new(&gpu, shape, 1 + si as u64)?;
        for &v in &variants {
            for tiles in mb::configs_for(&gpu, v, args.sweep) {
                let r = mb::bench(&gpu, shape, &data, v, tiles, &args.opts);
                let line = serde_json::to_string(&r)?;
                writeln!(out.lock(), "{line}")?;
                out.lock().flush()?;
                if r.ok {
                    eprintln!(
                        "{:<36} {:>9} {:<16} {:>10.1} GFLOP/s {:>10.1} µs",
                        r.shape,
                        r.variant,
                        r.tiles,
                        r.tflops * 1e3,
                        r.median_us
                    );
                } else {
                    eprintln!(
                        "{:<36} {:>9} {:<16} FAILED: {}",
                        r.shape,
                        r.variant,
                        r.tiles,
                        r.error.as_deref().unwrap_or("")
                    );
                }
                results.push(r);
            }
        }
    }
    // Summary: the best configuration of each variant per shape.
    eprintln!();
    eprintln!("best TFLOP/s per shape (median time of the best tiles per variant):");
    let mut names: Vec<String> = vec![];
    for r in &results {
        if !names.contains(&r.shape) {
            names.push(r.shape.clone());
        }
    }
    for name in names {
        let mut cells = vec![];
        for &v in &variants {
            let best = results
                .iter()
                .filter(|r| r.shape == name && r.variant == v.name() && r.ok)
                .max_by(|a, b| a.tflops.total_cmp(&b.tflops));
            cells.push(match best {
                Some(r) => format!("{}={:.3} ({})", v, r.tflops, r.tiles),
                None => format!("{v}=failed"),
            });
        }
        eprintln!("  {name}: {}", cells.join("  "));
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        eprintln!("{failed} result(s) FAILED their check or did not run (see the JSON lines' \"error\")");
    }
    Ok(())
}
