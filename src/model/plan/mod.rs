//! The memory planner: the peak GPU bytes of one adapter training step (forward, backward, AdamW)
//! from the model config, batch, sequence length and placement, before anything is allocated, and
//! the choice of resident layers and `--recompute` that fits a budget (`--max-gpu-memory`).
//!
//! The plan replays the encoder's allocations ([`Encoder::pass`](super::encoder::Encoder)) with the
//! accounting rule of [`MemoryTracker`](crate::gpu::MemoryTracker): a buffer is freed when the GPU
//! is done with it, which inside a pass is the next per-layer wait (streaming or recompute) or the
//! end of the pass (everything resident, one submit).

mod choose;
mod sim;
mod step;

pub use choose::{choose, choose_for, keep_choice, parse_size, Choice};
pub use step::plan;

use super::adapters::{AdapterSet, Location, ModuleOptions, Placement};
use super::config::BertConfig;
use crate::formats::adapterhub::BottleneckConfig;
use crate::types::WeightPrecision;
use anyhow::Result;
use std::fmt;

/// The trainable bottleneck adapters: placement, bottleneck width and which sites have one.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSpec {
    pub placement: Placement,
    /// Trained scaling, adapter LayerNorms.
    pub options: ModuleOptions,
    pub bottleneck: usize,
    /// Per layer: (adapter after attention, adapter after the FFN).
    pub sites: Vec<(bool, bool)>,
    /// AdapterFusion trained over frozen adapters at these sites (`peft fuse`), instead of the
    /// adapters training.
    pub fusion: Option<FusionSpec>,
}

/// An AdapterFusion over frozen adapters, as the planner counts it: a fusion layer at every site
/// of [`AdapterSpec::sites`] (the attention output too over Houlsby adapters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FusionSpec {
    /// The fused adapters.
    pub adapters: usize,
    /// With a value matrix (`dynamic`; `static` has none).
    pub value: bool,
}

impl AdapterSpec {
    /// The sites, placement and width of an adapter set already on the GPU.
    pub fn of(set: &AdapterSet, layers: usize) -> Self {
        let m = (0..layers)
            .flat_map(|l| [set.at(l, Location::Attention), set.at(l, Location::Output)])
            .flatten()
            .map(|a| a.shape.m)
            .next()
            .unwrap_or(0);
        let sites = (0..layers)
            .map(|l| (set.at(l, Location::Attention).is_some(), set.at(l, Location::Output).is_some()))
            .collect();
        Self { placement: set.placement, options: set.options, bottleneck: m, sites, fusion: None }
    }

    /// A fusion over the frozen `sets` (their sites agree: checked when the fusion is made).
    pub fn fusion_over(sets: &[AdapterSet], layers: usize, value: bool) -> Self {
        let mut spec = sets.first().map(|s| Self::of(s, layers)).unwrap_or_else(|| Self {
            placement: Placement::HOULSBY,
            options: ModuleOptions::default(),
            bottleneck: 0,
            sites: vec![(false, false); layers],
            fusion: None,
        });
        spec.fusion = Some(FusionSpec { adapters: sets.len(), value });
        spec
    }

    /// The adapters a new AdapterHub bottleneck config puts on `cfg` (before any is allocated).
    pub fn from_bottleneck(cfg: &BertConfig, bn: &BottleneckConfig) -> Result<Self> {
        let placement = Placement::of(bn)?;
        let bottleneck = bn.bottleneck_dim(cfg.hidden_size, 0)?;
        let sites = (0..cfg.num_hidden_layers)
            .map(|l| (bn.mh_adapter && bn.has_layer(l), bn.output_adapter && bn.has_layer(l)))
            .collect();
        Ok(Self { placement, options: ModuleOptions::of(bn), bottleneck, sites, fusion: None })
    }

    fn at(&self, l: usize, loc: Location) -> bool {
        self.sites.get(l).is_some_and(|s| if loc == Location::Attention { s.0 } else { s.1 })
    }

    /// Trainable parameters of the adapters.
    pub fn parameters(&self, d: usize) -> u64 {
        let options: usize = self.options.tensor_sizes(d).iter().sum();
        let per = (2 * d * self.bottleneck + self.bottleneck + d + options) as u64;
        self.sites.iter().map(|s| s.0 as u64 + s.1 as u64).sum::<u64>() * per
    }
}

/// What is planned: shapes and options of one training step.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    pub cfg: &'a BertConfig,
    pub batch: usize,
    pub seq: usize,
    pub labels: usize,
    /// The head reads every token (tagging): its activations and logits have `batch · seq` rows.
    pub per_token_head: bool,
    pub adapter: &'a AdapterSpec,
    /// Layer slots on the GPU; `>= layers` keeps every layer resident, fewer stream.
    pub resident_layers: usize,
    pub recompute: bool,
    /// With `recompute`: sequences per layer chunk (0 or ≥ batch: the whole batch at once).
    pub layer_chunk: usize,
    /// With `recompute`: keep each layer's FFN output too (less recompute work, more memory).
    pub keep_ffn_output: bool,
    /// The training pass's dropout sites with a non-zero rate (none with `--no-dropout`): each
    /// allocates its dropped output, attention-probability dropout a work tensor.
    pub dropout: DropoutSites,
    /// Micro-batches per optimizer step (`--gradient-accumulation`; 0 or 1: none). Above 1, one
    /// set of gradient sums lives through each later micro-batch's pass, and a second is made
    /// at its end.
    pub gradient_accumulation: usize,
    /// How the layers' matrices are stored (`--precision`): f16 halves them in the slots (and
    /// what streams), plus one layer's f32 matrices to widen into.
    pub precision: WeightPrecision,
}

impl<'a> PlanInput<'a> {
    /// A classification step with every layer resident: no recompute, no dropout, no gradient
    /// accumulation (the other settings by struct update, `PlanInput { recompute: true, ..p }`).
    pub fn resident(cfg: &'a BertConfig, adapter: &'a AdapterSpec, batch: usize, seq: usize, labels: usize) -> Self {
        Self {
            cfg,
            batch,
            seq,
            labels,
            per_token_head: false,
            adapter,
            resident_layers: cfg.num_hidden_layers,
            recompute: false,
            layer_chunk: 0,
            keep_ffn_output: false,
            dropout: DropoutSites::default(),
            precision: WeightPrecision::F32,
            gradient_accumulation: 1,
        }
    }
}

/// Which dropout sites of a training pass allocate (`Encoder::dropout_rows` returns its input when
/// a site's rate is 0, and `Encoder::probs_dropout` allocates no work tensor then); from
/// [`DropoutRates::sites`](super::encoder::DropoutRates::sites). The default: no dropout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropoutSites {
    /// Embeddings' output and FFN output dense (`hidden_dropout_prob`).
    pub hidden: bool,
    /// Attention output dense.
    pub attention_output: bool,
    /// Attention probabilities: a `[seqs, heads, seq, seq]` work tensor in forward and backward.
    pub probs: bool,
    /// The head's two Linear inputs.
    pub head: bool,
}

/// Where the bytes at the peak are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Breakdown {
    /// Embedding tables.
    pub embeddings: u64,
    /// Frozen layer weights on the GPU (all layers, or the streaming slots).
    pub layer_weights: u64,
    /// Adapters + head: weights, gradients and AdamW moments (and gradient accumulation's sums).
    pub trainable: u64,
    /// Activations kept across layers for backward (every layer's, or only layer inputs with
    /// `--recompute`).
    pub saved: u64,
    /// Everything else alive at the peak: the current layer's working set, inputs, head.
    pub working: u64,
}

impl Breakdown {
    pub fn total(&self) -> u64 {
        self.embeddings + self.layer_weights + self.trainable + self.saved + self.working
    }
}

/// A planned training step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Layer slots on the GPU (= layers when resident).
    pub slots: usize,
    pub layers: usize,
    pub recompute: bool,
    /// Sequences each layer runs over at a time (= the batch when not chunked).
    pub layer_chunk: usize,
    /// Recompute keeps each layer's FFN output (`--keep-ffn-output`).
    pub keep_ffn_output: bool,
    /// The batch it was planned for.
    pub batch: usize,
    /// Planned peak bytes of the step, broken down at the peak.
    pub peak: Breakdown,
    /// Weight bytes uploaded per step when streaming (0 when resident).
    pub streamed_per_step: u64,
    /// How the layers' matrices are stored.
    pub precision: WeightPrecision,
    /// The largest single tensor (must fit one storage binding of the device).
    pub largest_tensor: u64,
    /// The largest frozen weight (the word embeddings or an FFN weight): unlike the activations it
    /// does not shrink with the batch, so a device whose binding cannot hold it cannot run the model.
    pub largest_weight: u64,
}

impl MemoryPlan {
    pub fn peak_bytes(&self) -> u64 {
        self.peak.total()
    }

    pub fn resident(&self) -> bool {
        self.slots >= self.layers
    }

    /// The `--resident-layers` value that gives this plan.
    pub fn resident_layers(&self) -> usize {
        self.slots
    }

    /// The encoder's `layer_chunk` for this plan (0: not chunked).
    pub fn encoder_chunk(&self) -> usize {
        if self.layer_chunk < self.batch {
            self.layer_chunk
        } else {
            0
        }
    }

    fn setup(&self) -> String {
        format!("{} of {} layers on the GPU, {}", self.slots, self.layers, self.activations_text())
    }

    /// How activations are kept: `recompute on keeping FFN outputs, layer chunks of N sequences`.
    fn activations_text(&self) -> String {
        let recompute = match (self.recompute, self.keep_ffn_output) {
            (false, _) => "off",
            (true, false) => "on",
            (true, true) => "on keeping FFN outputs",
        };
        let chunks = match self.layer_chunk {
            c if c >= self.batch => String::new(),
            1 => ", layer chunks of 1 sequence".into(),
            c => format!(", layer chunks of {c} sequences"),
        };
        format!("recompute {recompute}{chunks}")
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.peak;
        let f16 = if self.precision == WeightPrecision::F16 { ", matrices in f16" } else { "" };
        let weights = if self.resident() {
            format!("all {} layers resident{f16}", self.layers)
        } else {
            format!(
                "{} of {} layers on the GPU{f16}, {:.1} MiB streamed per step",
                self.slots,
                self.layers,
                mib(self.streamed_per_step)
            )
        };
        write!(
            f,
            "planned peak {:.1} MiB ({weights}, {}): embeddings {:.1}, layer weights {:.1}, \
             adapters+head+optimizer {:.1}, saved activations {:.1}, working set {:.1} MiB",
            mib(p.total()),
            self.activations_text(),
            mib(p.embeddings),
            mib(p.layer_weights),
            mib(p.trainable),
            mib(p.saved),
            mib(p.working)
        )
    }
}
