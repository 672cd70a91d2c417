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
use crate::gpu::Gpu;
use crate::io::adapterhub::{BottleneckConfig, ResidualBeforeLn};
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
            "planned peak {:.1} MiB ({weights}, recompute {}): embeddings {:.1}, layer weights {:.1}, \
             adapters+head+optimizer {:.1}, saved activations {:.1}, working set {:.1} MiB",
            mib(p.total()),
            if self.recompute { "on" } else { "off" },
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

/// The planned peak of one training step.
pub fn plan(p: &PlanInput) -> Result<MemoryPlan> {
    let cfg = p.cfg;
    if p.batch == 0 || p.seq == 0 {
        bail!("the batch size and the sequence length must be at least 1");
    }
    if p.adapter.sites.len() != cfg.num_hidden_layers {
        bail!("adapter spec has {} layers, the model {}", p.adapter.sites.len(), cfg.num_hidden_layers);
    }
    let (d, f, n_layers, heads) =
        (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads);
    let tok = (p.batch * p.seq) as u64;
    let b4 = |n: u64| n * 4;
    let td = b4(tok * d as u64);
    let tf = b4(tok * f as u64);
    let probs = b4((p.batch * heads * p.seq * p.seq) as u64);
    let m = p.adapter.bottleneck as u64;
    let tm = b4(tok * m);
    let (bsz, c) = (p.batch as u64, p.labels.max(1) as u64);
    let resident = p.resident_layers >= n_layers;
    let slots = if resident { n_layers } else { p.resident_layers.max(1) };
    let layer_bytes = LayerWeights::bytes(d, f);
    let syncs = p.recompute || !resident;
    let adapter_at = |l: usize, loc| p.adapter.at(l, loc).then_some(p.adapter.placement);

    let mut s = Sim { live: [0; 5], pending: [0; 5], peak: Breakdown::default() };
    // Resident before the step: embeddings, layer slots, adapters + head (weights, gradients,
    // AdamW moments), the 16 dummy bindings, the optimizer's two scalars.
    let ud = d as u64;
    for n in
        [cfg.vocab_size as u64 * ud, cfg.max_position_embeddings as u64 * ud, cfg.type_vocab_size as u64 * ud, ud, ud]
    {
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

    // Inputs, embeddings output, layer 0 input.
    let io = 3 * b4(tok);
    s.alloc(Cat::Working, io);
    s.alloc(Cat::Working, td); // emb
    s.alloc(Cat::Working, td); // x0
    if p.recompute {
        s.recat(Cat::Working, Cat::Saved, td);
    }

    // Forward, layer by layer. Per layer: kept bytes (LayerActs) and temporaries.
    let layer_fwd = |l: usize| -> (u64, u64) {
        let mut kept = 3 * td + probs; // q, k, v, probs
        let mut temp = td; // ctx
        let (k1, t1, h1_kept) = sublayer_fwd(adapter_at(l, Location::Attention), td, tm);
        kept += k1 + tf; // attention sub-layer, pre
        temp += t1 + tf; // inter
        if h1_kept {
            kept += td;
        } else {
            temp += td;
        }
        let (k2, t2, h2_kept) = sublayer_fwd(adapter_at(l, Location::Output), td, tm);
        kept += k2;
        temp += t2;
        if h2_kept {
            kept += td;
        } else {
            temp += td;
        }
        (kept, temp)
    };
    for l in 0..n_layers {
        let (kept, temp) = layer_fwd(l);
        s.alloc(Cat::Working, kept + temp);
        s.free(Cat::Working, temp);
        if p.recompute && l + 1 < n_layers {
            // Only the output (the next layer's input) stays.
            s.free(Cat::Working, kept - td);
            s.recat(Cat::Working, Cat::Saved, td);
        } else if !p.recompute {
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

    // Backward, top layer first; it stops below the lowest trainable site.
    let trainable = |l: usize| p.adapter.at(l, Location::Attention) || p.adapter.at(l, Location::Output);
    for l in (0..n_layers).rev() {
        let (kept, temp) = layer_fwd(l);
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
        let mut work = 2 * td + sublayer_bwd(adapter_at(l, Location::Output), td, tm); // dh2, dy1
        let below = (0..l).any(trainable);
        let stop_ffn = !below && !p.adapter.at(l, Location::Attention);
        if !stop_ffn {
            work += 2 * tf + 2 * td + sublayer_bwd(adapter_at(l, Location::Attention), td, tm); // dinter, dpre, dh1, dx
            if below {
                work += 4 * td + probs; // dctx, dq, dk, dv, scratch
            }
        }
        s.alloc(Cat::Working, work);
        if !below || stop_ffn {
            break;
        }
        // Done with this layer: its activations and temporaries, the old dy (dx, in `work`, is the
        // new one) and, with recompute, its input.
        s.free(Cat::Working, acts + work);
        if p.recompute {
            s.free(Cat::Saved, td);
        }
        if syncs {
            s.sync();
        }
    }

    let streamed = if resident { 0 } else { 2 * n_layers as u64 * layer_bytes };
    Ok(MemoryPlan {
        slots,
        layers: n_layers,
        recompute: p.recompute,
        peak: s.peak,
        streamed_per_step: streamed,
        // The largest single tensors: word embeddings, an FFN activation, attention probabilities,
        // an FFN weight.
        largest_tensor: [b4(cfg.vocab_size as u64 * ud), tf, probs, b4(ud * f as u64)].into_iter().max().unwrap_or(0),
    })
}

/// What the user fixed on the command line (`None`: the planner chooses).
#[derive(Clone, Copy, Debug, Default)]
pub struct Choice {
    pub resident_layers: Option<usize>,
    pub recompute: Option<bool>,
}

/// The fastest setup that fits `budget` bytes (`None`: no budget; the user's choice or all
/// resident without recompute): every layer resident, then recompute, then streaming with as many
/// slots as fit (without, then with recompute). Also checks the largest tensor against
/// `max_binding` bytes. Fails naming what to change when nothing fits.
pub fn choose(base: &PlanInput, choice: Choice, budget: Option<u64>, max_binding: Option<u64>) -> Result<MemoryPlan> {
    let n = base.cfg.num_hidden_layers;
    let with = |slots: usize, rc: bool| plan(&PlanInput { resident_layers: slots, recompute: rc, ..base.clone() });
    let rcs: Vec<bool> = match choice.recompute {
        Some(r) => vec![r],
        None => vec![false, true],
    };
    let slot_options: Vec<usize> = match choice.resident_layers {
        Some(k) => vec![k.min(n).max(1)],
        None => {
            let mut v = vec![n];
            v.extend((1..n).rev());
            v
        }
    };
    let mut candidates = vec![];
    // All resident first (without, then with recompute), then fewer slots.
    for &slots in &slot_options {
        for &rc in &rcs {
            candidates.push(with(slots, rc)?);
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
    let freedom = if fixed.is_empty() {
        String::new()
    } else {
        format!(" with {} as given (leave it to the planner to go lower)", fixed.join(" and "))
    };
    bail!(
        "this step does not fit --max-gpu-memory {:.1} MiB: the leanest setup{freedom} ({} of {} layers on the GPU, \
         recompute {}) needs {:.1} MiB (embeddings {:.1}, layer weights {:.1}, adapters+head+optimizer {:.1}, saved \
         activations {:.1}, working set {:.1}). Lower --batch-size ({}) or --max-length ({}), or raise \
         --max-gpu-memory",
        mib(budget),
        best.slots,
        n,
        if best.recompute { "on" } else { "off" },
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
