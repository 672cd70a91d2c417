//! The memory plan of a training run, shared by `peft train` and `peft fuse`: the largest batch
//! checked against the GPU's buffer limits, then resident layers, recompute and layer chunks
//! chosen to fit `--max-gpu-memory` (or as given), before anything big is allocated.

use crate::gpu::Gpu;
use crate::model::config::BertConfig;
use crate::model::encoder::DropoutRates;
use crate::model::load;
use crate::model::plan::{self, AdapterSpec, MemoryPlan};
use crate::train::guard;
use crate::train::options::MemoryArgs;
use crate::train::report::Reporter;
use crate::train::task::TaskData;
use crate::types::WeightPrecision;
use anyhow::{bail, Result};

/// What is trained over the frozen encoder (layer chunks apply to adapters only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trained {
    Adapter,
    Fusion,
}

/// Checks the largest batch of `task` against the GPU's limits and plans its step (with the
/// training steps' `dropout` and `gradient_accumulation` micro-batches a step); reports the plan's
/// line.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_memory(
    gpu: &Gpu,
    cfg: &BertConfig,
    task: &TaskData,
    batch_size: usize,
    adapter: &AdapterSpec,
    mem: &MemoryArgs,
    trained: Trained,
    dropout: Option<DropoutRates>,
    gradient_accumulation: usize,
    precision: WeightPrecision,
    rep: &mut dyn Reporter,
) -> Result<MemoryPlan> {
    // The largest batch must fit the GPU's buffers: found now, not in the middle of a step.
    let (widest, longest) = task.largest_batch(batch_size);
    guard::check_batch_fits(gpu, &load::dims(cfg), widest, longest)?;
    let layer_chunk = match trained {
        Trained::Adapter => mem.layer_chunk,
        Trained::Fusion if mem.layer_chunk.is_some_and(|c| c > 0 && c < batch_size) => {
            bail!("layer chunks (--layer-chunk) apply to adapter training, not to AdapterFusion")
        }
        // The planner must not choose chunks for a fusion either.
        Trained::Fusion => Some(0),
    };
    let mem_plan = plan::choose_for(
        gpu,
        &plan::PlanInput {
            per_token_head: matches!(task.train.targets, crate::train::data::TaskTargets::Tokens(_)),
            dropout: dropout.map(|r| r.sites()).unwrap_or_default(),
            gradient_accumulation,
            precision,
            ..plan::PlanInput::resident(cfg, adapter, widest, longest, task.labels.len())
        },
        plan::Choice {
            resident_layers: mem.resident_layers,
            recompute: mem.recompute.then_some(true),
            layer_chunk,
            keep_ffn_output: plan::keep_choice(mem.keep_ffn_output, mem.recompute),
        },
        mem.max_gpu_memory,
    )?;
    rep.message(&format!("memory: {mem_plan}"));
    // Buffers the GPU keeps for reuse stay within the budget too.
    gpu.set_memory_budget(mem.max_gpu_memory);
    Ok(mem_plan)
}
