//! [`choose`]: the fastest setup (resident layers, recompute, layer chunks) whose planned peak fits
//! a budget, and the command line's memory options.

use super::{mib, plan, MemoryPlan, PlanInput};
use crate::gpu::Gpu;
use anyhow::{bail, Result};

/// What the user fixed on the command line (`None`: the planner chooses).
#[derive(Clone, Copy, Debug, Default)]
pub struct Choice {
    pub resident_layers: Option<usize>,
    pub recompute: Option<bool>,
    /// `--layer-chunk`: sequences per layer chunk (needs recompute; 0: the whole batch).
    pub layer_chunk: Option<usize>,
    /// `--keep-ffn-output` (with recompute).
    pub keep_ffn_output: Option<bool>,
}

/// [`Choice::keep_ffn_output`] from the command line: `--keep-ffn-output` given, or off when
/// `--recompute` is given without it (recompute asked for as the leaner setup), else the planner's.
pub fn keep_choice(keep_ffn_output: bool, recompute: bool) -> Option<bool> {
    if keep_ffn_output {
        Some(true)
    } else if recompute {
        Some(false)
    } else {
        None
    }
}

/// The fastest setup that fits `budget` bytes (`None`: no budget; the user's choice or all
/// resident without recompute): every layer resident, then recompute keeping FFN outputs, then
/// plain recompute, then streaming with as many slots as fit (the same three each), then layer
/// chunks of half the batch, a quarter, … (with recompute, as many slots as fit). Also checks
/// the largest tensor against `max_binding` bytes. Fails naming what to change when nothing fits.
pub fn choose(base: &PlanInput, choice: Choice, budget: Option<u64>, max_binding: Option<u64>) -> Result<MemoryPlan> {
    let candidates = candidates(base, choice)?;
    if let Some(max) = max_binding {
        let weight = candidates[0].largest_weight;
        if weight > max {
            bail!(
                "this model's largest weight (an FFN matrix or a position table) needs {:.1} MiB, more than this \
                 GPU's largest storage binding or buffer ({:.1} MiB): no batch size fits it (only the word \
                 embeddings are split across bindings; under --limits webgpu the limit is WebGPU's 128 MiB)",
                mib(weight),
                mib(max)
            );
        }
        let big = candidates[0].largest_tensor;
        if big > max {
            bail!(
                "the largest tensor of this step needs {:.1} MiB, more than this GPU's largest storage binding or buffer \
                 ({:.1} MiB): lower --batch-size ({}) or --max-length ({})",
                mib(big),
                mib(max),
                base.batch,
                base.seq
            );
        }
    }
    let Some(budget) = budget else {
        return Ok(candidates[0]);
    };
    if let Some(p) = candidates.iter().find(|p| p.peak_bytes() <= budget) {
        return Ok(*p);
    }
    let best = candidates.iter().min_by_key(|p| p.peak_bytes()).expect("at least one candidate");
    Err(no_fit(base, choice, budget, best))
}

/// The setups [`choose`] considers, fastest first, within what the user fixed.
fn candidates(base: &PlanInput, choice: Choice) -> Result<Vec<MemoryPlan>> {
    let n = base.cfg.num_hidden_layers;
    let with = |slots: usize, rc: bool, chunk: usize, keep: bool| {
        plan(&PlanInput {
            resident_layers: slots,
            recompute: rc,
            layer_chunk: chunk,
            keep_ffn_output: keep,
            ..base.clone()
        })
    };
    let keeps: Vec<bool> = match choice.keep_ffn_output {
        Some(k) => vec![k],
        None => vec![true, false],
    };
    if choice.keep_ffn_output == Some(true) && choice.recompute == Some(false) {
        bail!("--keep-ffn-output applies to recompute (it keeps more of each layer for it)");
    }
    let chunk_given = choice.layer_chunk.filter(|&c| c > 0 && c < base.batch);
    if chunk_given.is_some() && choice.recompute == Some(false) {
        bail!("--layer-chunk needs recompute (layer chunks recompute each layer's activations in backward)");
    }
    let rcs: Vec<bool> = match (choice.recompute, chunk_given) {
        (_, Some(_)) => vec![true],
        (None, None) if choice.keep_ffn_output == Some(true) => vec![true],
        (Some(r), None) => vec![r],
        (None, None) => vec![false, true],
    };
    let slot_options: Vec<usize> = match choice.resident_layers {
        Some(k) => vec![k.min(n).max(1)],
        None => {
            let mut v = vec![n];
            v.extend((1..n).rev());
            v
        }
    };
    // Whole batch, then halves, quarters, … down to one sequence (when not given).
    let chunk_options: Vec<usize> = match choice.layer_chunk {
        Some(c) => vec![if c == 0 { base.batch } else { c.min(base.batch) }],
        None => {
            let mut v = vec![base.batch];
            let mut c = base.batch;
            while c > 1 && rcs.contains(&true) {
                c = c.div_ceil(2);
                v.push(c);
            }
            v
        }
    };
    let mut candidates = vec![];
    // All resident first (without, then with recompute), then fewer slots; then smaller chunks.
    for &chunk in &chunk_options {
        for &slots in &slot_options {
            for &rc in &rcs {
                if chunk < base.batch && !rc {
                    continue;
                }
                if rc {
                    for &keep in &keeps {
                        candidates.push(with(slots, rc, chunk, keep)?);
                    }
                } else {
                    candidates.push(with(slots, rc, chunk, false)?);
                }
            }
        }
    }
    Ok(candidates)
}

/// The error when nothing fits `budget`: the leanest setup `best` and where its bytes are.
fn no_fit(base: &PlanInput, choice: Choice, budget: u64, best: &MemoryPlan) -> anyhow::Error {
    let mut fixed = vec![];
    if choice.resident_layers.is_some() {
        fixed.push("--resident-layers");
    }
    if choice.recompute == Some(false) {
        fixed.push("recompute off");
    }
    if choice.layer_chunk.is_some() {
        fixed.push("--layer-chunk");
    }
    let freedom = if fixed.is_empty() {
        String::new()
    } else {
        format!(" with {} as given (leave it to the planner to go lower)", fixed.join(" and "))
    };
    anyhow::anyhow!(
        "this step does not fit --max-gpu-memory {:.1} MiB: the leanest setup{freedom} ({}) needs {:.1} MiB \
         (embeddings {:.1}, layer weights {:.1}, adapters+head+optimizer {:.1}, saved activations {:.1}, working \
         set {:.1}). Lower --batch-size ({}) or --max-length ({}), or raise --max-gpu-memory",
        mib(budget),
        best.setup(),
        mib(best.peak_bytes()),
        mib(best.peak.embeddings),
        mib(best.peak.layer_weights),
        mib(best.peak.trainable),
        mib(best.peak.saved),
        mib(best.peak.working),
        base.batch,
        base.seq
    )
}

/// [`choose`] for `gpu`: its largest storage binding or buffer, whichever is smaller, bounds the
/// largest tensor (the limits requested of the device: WebGPU's 128 MiB binding and 256 MiB
/// buffer under `--limits webgpu`). wgpu does not report a GPU's total memory, so without
/// `budget` (`--max-gpu-memory`) nothing else is checked.
pub fn choose_for(gpu: &Gpu, base: &PlanInput, choice: Choice, budget: Option<u64>) -> Result<MemoryPlan> {
    choose(base, choice, budget, Some(gpu.max_binding_bytes().min(gpu.limits.max_buffer_size)))
}

/// Parses a memory size such as `2GiB`, `1.5 GB`, `512MiB` or a byte count.
pub fn parse_size(s: &str) -> Result<u64> {
    let v: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("--max-gpu-memory {s:?}: not a size like 2GiB or 512MiB ({e})"))?;
    if v.as_u64() == 0 {
        bail!("--max-gpu-memory {s:?}: must be more than 0 bytes");
    }
    Ok(v.as_u64())
}
