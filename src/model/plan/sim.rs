//! The allocation replay the planner runs: categories of bytes, what is live, what a wait frees,
//! and the sizes of one sub-layer's allocations.

use super::super::adapters::{ModuleOptions, Placement};
use super::Breakdown;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Cat {
    Embeddings,
    Weights,
    Trainable,
    Saved,
    Working,
}

/// Replays allocations: a freed buffer stays counted until the next wait ([`Sim::sync`]).
pub(super) struct Sim {
    pub live: [u64; 5],
    pending: [u64; 5],
    pub peak: Breakdown,
}

impl Sim {
    pub fn new() -> Self {
        Self { live: [0; 5], pending: [0; 5], peak: Breakdown::default() }
    }

    fn idx(c: Cat) -> usize {
        c as usize
    }

    fn total(&self) -> u64 {
        self.live.iter().sum()
    }

    pub fn alloc(&mut self, c: Cat, bytes: u64) {
        let bytes = bytes.max(4);
        self.live[Self::idx(c)] += bytes;
        if self.total() > self.peak.total() {
            let l = self.live;
            self.peak =
                Breakdown { embeddings: l[0], layer_weights: l[1], trainable: l[2], saved: l[3], working: l[4] };
        }
    }

    pub fn free(&mut self, c: Cat, bytes: u64) {
        self.pending[Self::idx(c)] += bytes.max(4);
    }

    /// Moves `bytes` that stay alive from one category to another (e.g. a layer's output becomes
    /// a saved input).
    pub fn recat(&mut self, from: Cat, to: Cat, bytes: u64) {
        let bytes = bytes.max(4);
        self.live[Self::idx(from)] -= bytes;
        self.live[Self::idx(to)] += bytes;
    }

    pub fn sync(&mut self) {
        for i in 0..5 {
            self.live[i] -= self.pending[i];
            self.pending[i] = 0;
        }
    }
}

/// An adapter at a site: its placement and options.
pub(super) type SiteAdapter = (Placement, ModuleOptions);

/// Whether the adapter takes the options path (`encoder/adapter.rs`) rather than the plain one.
fn with_options((pl, o): SiteAdapter) -> bool {
    pl.parallel || o != ModuleOptions::default()
}

/// Allocations of one sub-layer's forward with an optional adapter: (kept for backward, temporary).
/// Mirrors `Encoder::sublayer_forward`; `h` (the dense output, `t` bytes) is counted by the caller
/// as temporary and is kept instead when it is the adapter's input.
pub(super) fn sublayer_fwd(adapter: Option<SiteAdapter>, t: u64, m: u64) -> (u64, u64, bool) {
    match adapter {
        None => (2 * t, 0, false),
        Some(a) if with_options(a) => options_fwd(a, t, m),
        Some((pl, _)) => {
            // The adapter's activation and its pre-activation (the matmul path, every device's
            // default, keeps both from one product).
            let mut kept = 2 * m;
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

/// [`sublayer_fwd`] of an adapter with options (`Encoder::adapter_with_options_forward`).
fn options_fwd((pl, o): SiteAdapter, t: u64, m: u64) -> (u64, u64, bool) {
    let mut kept = m; // pre-activation
    let mut temp = 0;
    if pl.original_ln_before {
        kept += 2 * t; // s1, hs
    }
    if o.ln_before {
        kept += t; // the bottleneck's input
        temp += t; // its normalised input
    }
    let scaling = o.trained_scaling.is_some();
    let before = !pl.parallel && pl.adapter_residual_before_ln && o.ln_after;
    if scaling {
        kept += t; // the bottleneck's output, for the scaling's gradient
    } else if before {
        temp += t; // the bottleneck's output, the residual added to a copy
    }
    if o.ln_after {
        kept += t; // its LayerNorm's input
        temp += t; // normalised
        if pl.parallel || !before {
            temp += t; // its output, before the residual / h is added
        }
    } else {
        temp += t; // the scaled output, before the residual / h is added
    }
    if pl.original_ln_after {
        temp += t; // adapted
        kept += 2 * t; // u, out
    } else {
        kept += t; // adapted = out
    }
    // The sequential adapter's input is h itself unless the LayerNorm before made another.
    (kept, temp, !pl.parallel && !pl.original_ln_before)
}

/// Allocations of one sub-layer's backward (all temporary). Mirrors `Encoder::adapter_backward`.
pub(super) fn sublayer_bwd(adapter: Option<SiteAdapter>, t: u64, m: u64) -> u64 {
    match adapter {
        None => 0,
        Some(a) if with_options(a) => options_bwd(a, t, m),
        Some((pl, _)) => {
            // The adapter's scratch; du and the adapter's input gradient go straight into dh or
            // dx_in where they can (no LayerNorm before: both; a separate residual: du).
            let mut b = 2 * m;
            if pl.original_ln_before {
                b += t; // dhs
                if pl.original_ln_after && !pl.separate_residual() {
                    b += t; // du
                }
            }
            b
        }
    }
}

/// [`sublayer_bwd`] of an adapter with options (`Encoder::adapter_with_options_backward`).
fn options_bwd((pl, o): SiteAdapter, t: u64, m: u64) -> u64 {
    let mut b = t + 2 * m; // the bottleneck's input gradient, its scratch
    let norm = 3 * t; // an adapter LayerNorm's input gradient, x̂ and dx̂
    if pl.original_ln_after {
        b += t; // du
    }
    if o.ln_after {
        b += norm;
    }
    if o.trained_scaling.is_some() {
        b += t; // the bottleneck output's gradient
    }
    if o.ln_before {
        b += norm;
    }
    if pl.parallel {
        if pl.original_ln_after {
            b += t; // dx_in = adapter input's gradient + du
        }
    } else {
        b += t; // dh = ds1 + the residual's gradient (separate residual), else dhs's sum
        if pl.original_ln_before {
            b += t; // ds1
            if pl.original_ln_after {
                b += t; // dx_in = ds1 + du
            }
        }
    }
    b
}

/// Allocations of one sub-layer's forward with AdapterFusion over `n` frozen adapters placed as
/// `pl`: (kept for backward, temporary, `h` kept). Mirrors `Encoder::fusion_forward`: `t` is a
/// `[tokens, hidden]` tensor, `tm` a `[tokens, bottleneck]` one, `tok4` a `[tokens]` one.
pub(super) fn fusion_fwd(pl: Placement, n: u64, t: u64, tm: u64, tok4: u64) -> (u64, u64, bool) {
    let mut kept = n * t + n * tm; // z [N, T, d]; each adapter's pre-activation
    let mut temp = n * t; // each adapter's output, copied into z
    kept += 3 * t + n * tok4; // saved: q, q̃, the mix, p [T, N]
    if pl.original_ln_before {
        kept += 2 * t; // s1, hs
    }
    if pl.original_ln_after {
        temp += t; // the fusion's output
        kept += 2 * t; // u, out
    } else {
        kept += t; // the fusion's output = out
    }
    // h is the adapters' input, or the residual (`residual_before_ln`).
    (kept, temp, !pl.original_ln_before || pl.residual_before_ln)
}

/// Allocations of one fused sub-layer's backward (all temporary), `adapter` the bytes of one
/// frozen adapter's parameters (the zero gradients its backward writes and drops). Mirrors
/// `Encoder::fusion_backward`.
pub(super) fn fusion_bwd(pl: Placement, n: u64, t: u64, tm: u64, adapter: u64) -> u64 {
    let mut b = 3 * t + n * t; // dquery, dr, scratch du; dz [N, T, d]
    b += 2 * t; // scratch dq̃, dq
    b += n * (2 * t + adapter + 2 * tm); // per adapter: dz_n, dx_n, zero gradients, scratch
    b += (n + 1) * t; // the sums into hs and h (one new tensor per term added)
    if pl.original_ln_after {
        b += t; // du
    }
    if pl.original_ln_before {
        b += 2 * t; // ds1, and x_in's sum
    }
    b
}

/// Bytes of the activations of `seqs` sequences.
#[derive(Clone, Copy)]
pub(super) struct Sizes {
    /// ids, token types or mask
    pub tok4: u64,
    /// `[tokens, hidden]`
    pub td: u64,
    /// `[tokens, ffn]`
    pub tf: u64,
    /// `[seqs, heads, seq, seq]`
    pub probs: u64,
    /// `[tokens, bottleneck]`
    pub tm: u64,
}

/// Bytes of `n` f32 values.
pub(super) fn b4(n: u64) -> u64 {
    n * 4
}

/// `bytes` when `on`, else 0.
pub(super) fn when(on: bool, bytes: u64) -> u64 {
    if on {
        bytes
    } else {
        0
    }
}
