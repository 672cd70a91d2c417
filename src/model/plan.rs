//! The memory planner: the peak GPU bytes of one adapter training step (forward, backward, AdamW)
//! from the model config, batch, sequence length and placement, before anything is allocated, and
//! the choice of resident layers and `--recompute` that fits a budget (`--max-gpu-memory`).
//!
//! The plan replays the encoder's allocations ([`Encoder::pass`](super::encoder::Encoder)) with the
//! accounting rule of [`MemoryTracker`](crate::gpu::MemoryTracker): a buffer is freed when the GPU
//! is done with it, which inside a pass is the next per-layer wait (streaming or recompute) or the
//! end of the pass (everything resident, one submit).

use super::adapters::{AdapterSet, Location, Placement};
use super::config::BertConfig;
use super::store::LayerWeights;
use crate::formats::adapterhub::{BottleneckConfig, ResidualBeforeLn};
use crate::gpu::Gpu;
use anyhow::{bail, Result};
use std::fmt;

/// The trainable bottleneck adapters: placement, bottleneck width and which sites have one.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSpec {
    pub placement: Placement,
    pub bottleneck: usize,
    /// Per layer: (adapter after attention, adapter after the FFN).
    pub sites: Vec<(bool, bool)>,
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
        Self { placement: set.placement, bottleneck: m, sites }
    }

    /// The adapters a new AdapterHub bottleneck config puts on `cfg` (before any is allocated).
    pub fn from_bottleneck(cfg: &BertConfig, bn: &BottleneckConfig) -> Result<Self> {
        let placement = Placement {
            original_ln_before: bn.original_ln_before,
            original_ln_after: bn.original_ln_after,
            residual_before_ln: match bn.residual_before_ln {
                ResidualBeforeLn::True => true,
                ResidualBeforeLn::False => false,
                ResidualBeforeLn::PostAdd => bail!("residual_before_ln \"post_add\" is not supported"),
            },
        };
        let bottleneck = bn.bottleneck_dim(cfg.hidden_size, 0)?;
        let sites = (0..cfg.num_hidden_layers)
            .map(|l| (bn.mh_adapter && bn.has_layer(l), bn.output_adapter && bn.has_layer(l)))
            .collect();
        Ok(Self { placement, bottleneck, sites })
    }

    fn at(&self, l: usize, loc: Location) -> bool {
        self.sites.get(l).is_some_and(|s| if loc == Location::Attention { s.0 } else { s.1 })
    }

    /// Trainable parameters of the adapters.
    pub fn parameters(&self, d: usize) -> u64 {
        let per = (2 * d * self.bottleneck + self.bottleneck + d) as u64;
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
    pub adapter: &'a AdapterSpec,
    /// Layer slots on the GPU; `>= layers` keeps every layer resident, fewer stream.
    pub resident_layers: usize,
    pub recompute: bool,
    /// With `recompute`: sequences per layer chunk (0 or ≥ batch: the whole batch at once).
    pub layer_chunk: usize,
    /// With `recompute`: keep each layer's FFN output too (less recompute work, more memory).
    pub keep_ffn_output: bool,
}

/// Where the bytes at the peak are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Breakdown {
    /// Embedding tables.
    pub embeddings: u64,
    /// Frozen layer weights on the GPU (all layers, or the streaming slots).
    pub layer_weights: u64,
    /// Adapters + head: weights, gradients and AdamW moments.
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
    /// The largest single tensor (must fit one storage binding of the device).
    pub largest_tensor: u64,
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
        let weights = if self.resident() {
            format!("all {} layers resident", self.layers)
        } else {
            format!(
                "{} of {} layers on the GPU, {:.1} MiB streamed per step",
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cat {
    Embeddings,
    Weights,
    Trainable,
    Saved,
    Working,
}

/// Replays allocations: a freed buffer stays counted until the next wait ([`Sim::sync`]).
struct Sim {
    live: [u64; 5],
    pending: [u64; 5],
    peak: Breakdown,
}

impl Sim {
    fn idx(c: Cat) -> usize {
        c as usize
    }

    fn total(&self) -> u64 {
        self.live.iter().sum()
    }

    fn alloc(&mut self, c: Cat, bytes: u64) {
        let bytes = bytes.max(4);
        self.live[Self::idx(c)] += bytes;
        if self.total() > self.peak.total() {
            let l = self.live;
            self.peak =
                Breakdown { embeddings: l[0], layer_weights: l[1], trainable: l[2], saved: l[3], working: l[4] };
        }
    }

    fn free(&mut self, c: Cat, bytes: u64) {
        self.pending[Self::idx(c)] += bytes.max(4);
    }

    /// Moves `bytes` that stay alive from one category to another (e.g. a layer's output becomes
    /// a saved input).
    fn recat(&mut self, from: Cat, to: Cat, bytes: u64) {
        let bytes = bytes.max(4);
        self.live[Self::idx(from)] -= bytes;
        self.live[Self::idx(to)] += bytes;
    }

    fn sync(&mut self) {
        for i in 0..5 {
            self.live[i] -= self.pending[i];
            self.pending[i] = 0;
        }
    }
}

/// Allocations of one sub-layer's forward with an optional adapter: (kept for backward, temporary).
/// Mirrors `Encoder::sublayer_forward`; `h` (the dense output, `t` bytes) is counted by the caller
/// as temporary and is kept instead when it is the adapter's input.
fn sublayer_fwd(adapter: Option<Placement>, t: u64, m: u64) -> (u64, u64, bool) {
    match adapter {
        None => (2 * t, 0, false),
        Some(pl) => {
            let mut kept = m; // adapter pre-activation
            let mut temp = 0;
            let h_kept = !pl.original_ln_before;
            if pl.original_ln_before {
                kept += 2 * t; // s1, hs
            }
            if pl.original_ln_after {
                temp += t; // adapted
                kept += 2 * t; // u, out
            } else {
                kept += t; // adapted = out
            }
            (kept, temp, h_kept)
        }
    }
}

/// Allocations of one sub-layer's backward (all temporary). Mirrors `Encoder::sublayer_backward`.
fn sublayer_bwd(adapter: Option<Placement>, t: u64, m: u64) -> u64 {
    match adapter {
        None => 0,
        Some(pl) => {
            let mut b = t + 2 * m; // dhs, adapter scratch
            if pl.original_ln_after {
                b += t; // du
            }
            if pl.original_ln_before {
                b += t; // ds1
            }
            b
        }
    }
}

/// Bytes of the activations of `seqs` sequences.
#[derive(Clone, Copy)]
struct Sizes {
    /// ids, token types or mask
    tok4: u64,
    /// `[tokens, hidden]`
    td: u64,
    /// `[tokens, ffn]`
    tf: u64,
    /// `[seqs, heads, seq, seq]`
    probs: u64,
    /// `[tokens, bottleneck]`
    tm: u64,
}

/// The planned peak of one training step.
pub fn plan(p: &PlanInput) -> Result<MemoryPlan> {
    let cfg = p.cfg;
    if p.batch == 0 || p.seq == 0 {
        bail!("the batch size and the sequence length must be at least 1");
    }
    if p.adapter.sites.len() != cfg.num_hidden_layers {
        bail!("adapter spec has {} layers, the model {}", p.adapter.sites.len(), cfg.num_hidden_layers);
    }
    let chunk = if p.recompute && p.layer_chunk > 0 { p.layer_chunk.min(p.batch) } else { p.batch };
    let chunks: Vec<usize> = (0..p.batch).step_by(chunk).map(|s0| chunk.min(p.batch - s0)).collect();
    let chunked = chunks.len() > 1;
    let (d, f, n_layers, heads) =
        (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads);
    let b4 = |n: u64| n * 4;
    let m = p.adapter.bottleneck as u64;
    let sizes = |seqs: usize| {
        let tok = (seqs * p.seq) as u64;
        Sizes {
            tok4: b4(tok),
            td: b4(tok * d as u64),
            tf: b4(tok * f as u64),
            probs: b4((seqs * heads * p.seq * p.seq) as u64),
            tm: b4(tok * m),
        }
    };
    let all = sizes(p.batch);
    let (td, tf, probs) = (all.td, all.tf, all.probs);
    let (bsz, c) = (p.batch as u64, p.labels.max(1) as u64);
    let resident = p.resident_layers >= n_layers;
    let slots = if resident { n_layers } else { p.resident_layers.max(1) };
    let layer_bytes = LayerWeights::bytes(d, f);
    let syncs = p.recompute || !resident;
    let adapter_at = |l: usize, loc| p.adapter.at(l, loc).then_some(p.adapter.placement);
    let ud = d as u64;
    // One adapter's parameters (its gradients, and their running sum over chunks).
    let adapter_bytes = b4(2 * m * ud + m + ud);

    let mut s = Sim { live: [0; 5], pending: [0; 5], peak: Breakdown::default() };
    // Resident before the step: embeddings (tables only when the layers are resident too),
    // layer slots, adapters + head (weights, gradients, AdamW moments), the 16 dummy bindings, the
    // optimizer's two scalars.
    let tables = [cfg.vocab_size as u64 * ud, cfg.max_position_embeddings as u64 * ud, cfg.type_vocab_size as u64 * ud];
    if resident {
        for n in tables {
            s.alloc(Cat::Embeddings, b4(n));
        }
    }
    for n in [ud, ud] {
        s.alloc(Cat::Embeddings, b4(n));
    }
    for _ in 0..slots {
        for n in [ud * ud, ud, ud * ud, ud, ud * ud, ud, ud * ud, ud, ud, ud] {
            s.alloc(Cat::Weights, b4(n));
        }
        for n in [f as u64 * ud, f as u64, ud * f as u64, ud, ud, ud] {
            s.alloc(Cat::Weights, b4(n));
        }
    }
    debug_assert_eq!(s.live[1], slots as u64 * layer_bytes);
    let mut adapter_tensors = vec![];
    for l in 0..n_layers {
        for loc in [Location::Attention, Location::Output] {
            if p.adapter.at(l, loc) {
                adapter_tensors.extend([m * ud, m, ud * m, ud]);
            }
        }
    }
    let head_tensors = [ud * ud, ud, c * ud, c];
    for _copy in 0..4 {
        // weights, gradients, AdamW m and v
        for &n in adapter_tensors.iter().chain(&head_tensors) {
            s.alloc(Cat::Trainable, b4(n));
        }
    }
    s.alloc(Cat::Trainable, 4); // optimizer: sum of squares
    s.alloc(Cat::Trainable, 4); // optimizer: clip scale
    for _ in 0..16 {
        s.alloc(Cat::Working, 16); // dummy bindings
    }

    // Inputs, layer 0 input, then the lookup (streamed tables uploaded for it) into `emb`.
    s.alloc(Cat::Working, 3 * all.tok4);
    s.alloc(Cat::Working, td); // x0
    if !resident {
        for n in tables {
            s.alloc(Cat::Embeddings, b4(n));
            s.free(Cat::Embeddings, b4(n));
        }
    }
    s.alloc(Cat::Working, td); // emb
    s.free(Cat::Working, td);
    if !resident {
        s.sync();
    }
    if p.recompute {
        s.recat(Cat::Working, Cat::Saved, td);
    }

    // Forward, layer by layer. Per layer: kept bytes (LayerActs) and temporaries.
    // Excluding the FFN output dense `h2` (`[tokens, hidden]`): (kept, temporary, h2 kept by the
    // FFN sub-layer as the adapter's input). Recomputing from a saved `h2` skips `inter` too.
    let keep_h2 = p.recompute && p.keep_ffn_output;
    let layer_fwd_h2 = |l: usize, z: &Sizes, from_saved_h2: bool| -> (u64, u64, bool) {
        let mut kept = 3 * z.td + z.probs; // q, k, v, probs
        let mut temp = z.td; // ctx
        let (k1, t1, h1_kept) = sublayer_fwd(adapter_at(l, Location::Attention), z.td, z.tm);
        kept += k1 + z.tf; // attention sub-layer, pre
        temp += t1 + z.tf; // inter
        if h1_kept {
            kept += z.td;
        } else {
            temp += z.td;
        }
        let (k2, t2, h2_kept) = sublayer_fwd(adapter_at(l, Location::Output), z.td, z.tm);
        kept += k2;
        temp += t2;
        if from_saved_h2 {
            temp -= z.tf; // no inter
        }
        (kept, temp, h2_kept)
    };
    // With h2 in kept or temp (computed, not saved).
    let layer_fwd = |l: usize, z: &Sizes| -> (u64, u64) {
        let (kept, temp, h2_kept) = layer_fwd_h2(l, z, false);
        if h2_kept {
            (kept + z.td, temp)
        } else {
            (kept, temp + z.td)
        }
    };
    for l in 0..n_layers {
        if chunked {
            s.alloc(Cat::Working, td); // y
            if keep_h2 {
                s.alloc(Cat::Saved, td);
            }
            for &cs in &chunks {
                let z = sizes(cs);
                let (kept, temp) = layer_fwd(l, &z);
                let chunk_in = z.td + z.tok4; // its rows of x, its mask
                s.alloc(Cat::Working, chunk_in + kept + temp);
                s.free(Cat::Working, chunk_in + kept + temp);
                s.sync();
            }
            if l + 1 < n_layers {
                s.recat(Cat::Working, Cat::Saved, td);
            }
            continue;
        }
        let (kept, temp, h2_kept) = layer_fwd_h2(l, &all, false);
        s.alloc(Cat::Working, kept + temp + td);
        s.free(Cat::Working, temp);
        if p.recompute && l + 1 < n_layers {
            // Only the output (the next layer's input) stays, and h2 with --keep-ffn-output.
            s.free(Cat::Working, kept - td);
            s.recat(Cat::Working, Cat::Saved, td);
            if keep_h2 {
                s.recat(Cat::Working, Cat::Saved, td);
            } else {
                s.free(Cat::Working, td);
            }
        } else if p.recompute {
            if !h2_kept {
                s.free(Cat::Working, td);
            }
        } else {
            if !h2_kept {
                s.free(Cat::Working, td);
            }
            let kept = kept + if h2_kept { td } else { 0 };
            s.recat(Cat::Working, Cat::Saved, kept);
        }
        if syncs {
            s.sync();
        }
    }

    // Head forward, loss and head backward.
    let bd = b4(bsz * ud);
    for n in [bd, bd, bd, b4(bsz * c), b4(bsz), 4, b4(bsz * c)] {
        s.alloc(Cat::Working, n); // cls, hpre, hact, logits, labels, loss, dlogits
    }
    s.alloc(Cat::Working, 3 * bd); // dhact, dhpre, dcls
    s.free(Cat::Working, 3 * bd);
    s.alloc(Cat::Working, td); // dhidden = dy

    // Backward, top layer first; it stops below the lowest trainable site. The backward of one
    // layer (or chunk) allocates `work` (see `Encoder::layer_backward`): (bytes, stops here).
    let trainable = |l: usize| p.adapter.at(l, Location::Attention) || p.adapter.at(l, Location::Output);
    let bwd_work = |l: usize, z: &Sizes, accumulate: bool| -> (u64, bool) {
        let sums = |loc| if accumulate && p.adapter.at(l, loc) { 2 * adapter_bytes } else { 0 };
        let mut work = 2 * z.td + sublayer_bwd(adapter_at(l, Location::Output), z.td, z.tm); // dh2, dy1
        work += sums(Location::Output);
        let below = (0..l).any(trainable);
        if !below && !p.adapter.at(l, Location::Attention) {
            return (work, true);
        }
        // dinter, dpre, dh1, dx
        work += 2 * z.tf + 2 * z.td + sublayer_bwd(adapter_at(l, Location::Attention), z.td, z.tm);
        work += sums(Location::Attention);
        if !below {
            return (work, true);
        }
        (work + 4 * z.td + z.probs, false) // dctx, dq, dk, dv, scratch
    };
    for l in (0..n_layers).rev() {
        if chunked {
            s.alloc(Cat::Working, td); // dx
            let mut stop = false;
            for (i, &cs) in chunks.iter().enumerate() {
                let z = sizes(cs);
                s.alloc(Cat::Working, 2 * z.td + z.tok4); // its rows of x and dy, its mask
                                                          // Recomputed; with --keep-ffn-output from its rows of the saved h2 (copied here,
                                                          // then counted as h2 is: kept by the adapter, or a temporary).
                let (kept, temp) = if keep_h2 {
                    let (kept, temp, h2_kept) = layer_fwd_h2(l, &z, true);
                    s.alloc(Cat::Working, z.td);
                    let (kept, temp) = if h2_kept { (kept + z.td, temp) } else { (kept, temp + z.td) };
                    s.alloc(Cat::Working, kept + temp - z.td);
                    (kept, temp)
                } else {
                    let (kept, temp) = layer_fwd(l, &z);
                    s.alloc(Cat::Working, kept + temp);
                    (kept, temp)
                };
                s.free(Cat::Working, temp + z.td);
                s.sync();
                let (work, stops) = bwd_work(l, &z, i > 0);
                s.alloc(Cat::Working, work);
                stop = stops;
                s.free(Cat::Working, kept + work + z.td + z.tok4);
                if i + 1 == chunks.len() && !stop {
                    // The layer's input (and saved h2) and the old dy, dropped before the last wait.
                    s.free(Cat::Saved, if keep_h2 { 2 * td } else { td });
                    s.free(Cat::Working, td);
                }
                s.sync();
            }
            if stop {
                break;
            }
            continue;
        }
        let (kept, temp) = if keep_h2 && l + 1 < n_layers {
            let (kept, temp, _) = layer_fwd_h2(l, &all, true); // h2 is the saved one
            (kept, temp)
        } else {
            layer_fwd(l, &all)
        };
        let acts = if p.recompute && l + 1 < n_layers {
            s.alloc(Cat::Working, kept + temp); // recomputed, then a wait frees the temporaries
            s.free(Cat::Working, temp);
            s.sync();
            kept
        } else {
            if !p.recompute {
                s.recat(Cat::Saved, Cat::Working, kept);
            }
            kept
        };
        let (work, stop) = bwd_work(l, &all, false);
        s.alloc(Cat::Working, work);
        if stop {
            break;
        }
        // Done with this layer: its activations and temporaries, the old dy (dx, in `work`, is the
        // new one) and, with recompute, its input.
        s.free(Cat::Working, acts + work);
        if p.recompute {
            s.free(Cat::Saved, td);
            if keep_h2 && l + 1 < n_layers {
                s.free(Cat::Saved, td);
            }
        }
        if syncs {
            s.sync();
        }
    }

    let streamed = if resident { 0 } else { 2 * n_layers as u64 * layer_bytes + b4(tables.iter().sum::<u64>()) };
    Ok(MemoryPlan {
        slots,
        layers: n_layers,
        recompute: p.recompute,
        keep_ffn_output: keep_h2,
        layer_chunk: chunk,
        batch: p.batch,
        peak: s.peak,
        streamed_per_step: streamed,
        // The largest single tensors: word embeddings, an FFN activation, attention probabilities,
        // an FFN weight.
        largest_tensor: [b4(tables[0]), tf, probs, b4(ud * f as u64)].into_iter().max().unwrap_or(0),
    })
}

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
/// chunks of half the batch, a quarter, … (with recompute, as many slots as fit). Also checks the largest tensor against `max_binding`
/// bytes. Fails naming what to change when nothing fits.
pub fn choose(base: &PlanInput, choice: Choice, budget: Option<u64>, max_binding: Option<u64>) -> Result<MemoryPlan> {
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
    if let Some(max) = max_binding {
        let big = candidates[0].largest_tensor;
        if big > max {
            bail!(
                "the largest tensor of this step needs {:.1} MiB, more than this GPU's largest storage binding \
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
    bail!(
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

/// [`choose`] for `gpu`: its largest storage binding bounds the largest tensor. wgpu does not
/// report a GPU's total memory, so without `budget` (`--max-gpu-memory`) nothing else is checked.
pub fn choose_for(gpu: &Gpu, base: &PlanInput, choice: Choice, budget: Option<u64>) -> Result<MemoryPlan> {
    choose(base, choice, budget, Some(gpu.max_binding_bytes()))
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
