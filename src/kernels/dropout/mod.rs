//! `shaders/dropout.wgsl`: inverted dropout (keep with probability 1 − p, scaled by 1/(1 − p))
//! with masks that are never stored. Each element's decision is one word of a Philox4x32-10 draw
//! keyed by (seed, step, layer, site, global row, column / 4), the word `column % 4` — see
//! [`MaskKey`] and [`MaskLayout`]; one thread draws one counter for four columns — so the
//! forward, the backward (the same op on the gradient) and a recompute regenerate the same mask,
//! and a chunk of the batch draws exactly the masks the whole batch would.

use super::elementwise::check_no_alias;
use crate::gpu::{Access, CommandRecorder, GpuTensor, KernelSpec};
use crate::shaders;
use anyhow::{bail, Result};

#[cfg(any(test, feature = "reference"))]
pub mod reference;
#[cfg(test)]
mod tests;

const APPLY: KernelSpec =
    KernelSpec { shader: &shaders::DROPOUT, entry: "dropout_apply", bindings: &[Access::Read, Access::ReadWrite] };
const APPLY4: KernelSpec =
    KernelSpec { shader: &shaders::DROPOUT, entry: "dropout_apply4", bindings: &[Access::Read, Access::ReadWrite] };
const PAIR: KernelSpec = KernelSpec {
    shader: &shaders::DROPOUT,
    entry: "dropout_pair",
    bindings: &[Access::Read, Access::ReadWrite, Access::ReadWrite],
};
const PAIR4: KernelSpec = KernelSpec {
    shader: &shaders::DROPOUT,
    entry: "dropout_pair4",
    bindings: &[Access::Read, Access::ReadWrite, Access::ReadWrite],
};
const DRAWS: KernelSpec =
    KernelSpec { shader: &shaders::DROPOUT, entry: "dropout_draws", bindings: &[Access::ReadWrite] };

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cols: u32,
    row0: u32,
    heads: u32,
    seq: u32,
    threshold: u32,
    scale: f32,
    step: u32,
    seed_lo: u32,
    seed_hi: u32,
    stream: u32,
    groups: u32,
}

/// Every kernel of this module with the size of its parameter block (`kernels/bindings.rs` checks
/// them against the WGSL).
#[cfg(test)]
pub(crate) fn specs() -> Vec<(KernelSpec, usize)> {
    let p = std::mem::size_of::<Params>();
    vec![(APPLY, p), (APPLY4, p), (PAIR, p), (PAIR4, p), (DRAWS, p)]
}

/// Every set of override constants the host passes, per kernel (`kernels/translate.rs`).
#[cfg(test)]
pub(crate) fn launches() -> Vec<(KernelSpec, Vec<crate::kernels::Constants>)> {
    let sets = super::with_either_divmod(&[("WG", WG as f64)]);
    specs().into_iter().map(|(s, _)| (s, sets.clone())).collect()
}

/// Where in the model a mask is drawn: one stream of draws per (layer, site).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    /// The embeddings' output, after their LayerNorm.
    Embeddings = 0,
    /// The attention probabilities, after the softmax, before `P·V`.
    AttentionProbs = 1,
    /// The attention output dense, before the adapter / residual + LayerNorm.
    AttentionOutput = 2,
    /// The FFN output dense, before the adapter (or fusion) / residual + LayerNorm.
    FfnOutput = 3,
    /// The head's input (the `[CLS]` hidden state), before its first Linear.
    HeadInput = 4,
    /// The head's hidden activation, before its last Linear.
    HeadHidden = 5,
}

/// The key of one mask: the run's seed, the optimizer step, the layer and the site. Masks of
/// different keys are independent streams of the same generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskKey {
    pub seed: u64,
    pub step: u32,
    pub layer: u32,
    pub site: Site,
}

impl MaskKey {
    /// The generator's fourth counter word: `(layer << 8) | site`.
    pub fn stream(&self) -> Result<u32> {
        if self.layer >= 1 << 24 {
            bail!("dropout: layer index {} is too large for the mask key", self.layer);
        }
        Ok((self.layer << 8) | self.site as u32)
    }
}

/// How an element index maps to the (global row, column) of its draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskLayout {
    /// `[rows, cols]` row-major; the tensor's first row is row `row0` of the whole batch.
    Rows { cols: usize, row0: usize },
    /// `[rows, cols]` row-major, one row of every `every` of the whole batch: row `r` of the
    /// tensor is global row `row0 + r·every` (a sequence's `[CLS]` row, `every` = its length),
    /// so it draws the mask that row draws in [`Rows`](MaskLayout::Rows) over all rows.
    RowsEvery { cols: usize, row0: usize, every: usize },
    /// Attention probabilities `[batch, heads, seq, seq]`: row = `row0 + b·seq + i` (the query's
    /// token row in the whole batch), column = `h·seq + j`.
    Attention { heads: usize, seq: usize, row0: usize },
}

impl MaskLayout {
    /// Whether every group of four columns is four consecutive elements from a multiple of 4
    /// (`dropout_apply4`): rows of a multiple of 4 columns, attention rows of a multiple of 4 keys.
    fn groups_of_four_consecutive(&self) -> bool {
        match *self {
            MaskLayout::Rows { cols, .. } | MaskLayout::RowsEvery { cols, .. } => cols % 4 == 0,
            MaskLayout::Attention { seq, .. } => seq % 4 == 0,
        }
    }

    /// `(rows, width)` of `n` elements: the tensor's rows (tokens for attention probabilities)
    /// and the columns of each.
    fn rows_width(&self, n: usize) -> (usize, usize) {
        match *self {
            MaskLayout::Rows { cols, .. } | MaskLayout::RowsEvery { cols, .. } => (n / cols.max(1), cols),
            MaskLayout::Attention { heads, seq, .. } => (n / (heads * seq * seq).max(1) * seq, heads * seq),
        }
    }

    fn check(&self, what: &str, n: usize) -> Result<()> {
        let (unit, row0, every) = match *self {
            MaskLayout::Rows { cols, row0 } => (cols, row0, 1),
            MaskLayout::RowsEvery { cols, row0, every } => (cols, row0, every),
            MaskLayout::Attention { heads, seq, row0 } => (heads * seq * seq, row0, 1),
        };
        if unit == 0 || every == 0 || n % unit != 0 {
            bail!("dropout {what}: {n} elements are not whole rows of the mask layout {self:?}");
        }
        let (rows, _) = self.rows_width(n);
        // One past the last global row a draw is keyed by.
        let end = row0 + rows.saturating_sub(1).saturating_mul(every) + 1;
        if u32::try_from(n).is_err() || u32::try_from(end).is_err() {
            bail!("dropout {what}: {n} elements from row {row0} exceed u32 indexing");
        }
        Ok(())
    }
}

/// A dropout rate with its integer threshold and scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub p: f32,
}

impl Rate {
    /// `p` in `[0, 1)`: a rate of 1 would drop everything (and divide by zero).
    pub fn new(p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            bail!("dropout probability {p} is outside [0, 1)");
        }
        Ok(Self { p: p as f32 })
    }

    /// Dropped when the 32-bit draw is below this: `round(p·2³²)`.
    pub fn threshold(&self) -> u32 {
        ((self.p as f64) * 4294967296.0).round().min(u32::MAX as f64) as u32
    }

    /// The kept elements' factor, `1/(1 − p)` rounded to f32.
    pub fn scale(&self) -> f32 {
        (1.0 / (1.0 - self.p as f64)) as f32
    }
}

/// The words a kernel needs to draw the mask of `key` at `rate` as these kernels do (for kernels
/// of other families that apply a mask in passing: the row-thread softmax).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DrawKey {
    pub threshold: u32,
    pub scale: f32,
    pub step: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub stream: u32,
}

pub(crate) fn draw_key(key: MaskKey, rate: Rate) -> Result<DrawKey> {
    Ok(DrawKey {
        threshold: rate.threshold(),
        scale: rate.scale(),
        step: key.step,
        seed_lo: key.seed as u32,
        seed_hi: (key.seed >> 32) as u32,
        stream: key.stream()?,
    })
}

fn params(key: MaskKey, layout: MaskLayout, n: usize, rate: Rate) -> Result<Params> {
    let (cols, row0, heads, seq) = match layout {
        // Rows layouts: `seq` is the global rows' step (1: consecutive).
        MaskLayout::Rows { cols, row0 } => (cols, row0, 0, 1),
        MaskLayout::RowsEvery { cols, row0, every } => (cols, row0, 0, every),
        MaskLayout::Attention { heads, seq, row0 } => (0, row0, heads, seq),
    };
    let k = draw_key(key, rate)?;
    Ok(Params {
        n: n as u32,
        cols: cols as u32,
        row0: row0 as u32,
        heads: heads as u32,
        seq: seq as u32,
        threshold: k.threshold,
        scale: k.scale,
        step: k.step,
        seed_lo: k.seed_lo,
        seed_hi: k.seed_hi,
        stream: k.stream,
        groups: {
            let (rows, width) = layout.rows_width(n);
            (rows * width.div_ceil(4)) as u32
        },
    })
}

/// The kernels' override constants: the workgroup size, and `divmod` without integer division
/// where the threads (`groups`), rows and row widths it splits are small enough.
fn constants(layout: MaskLayout, n: usize, p: &Params) -> [(&'static str, f64); 2] {
    let (rows, width) = layout.rows_width(n);
    let largest = (p.groups as usize).max(rows).max(width.div_ceil(4)).max(p.seq as usize);
    [("WG", WG as f64), super::divmod_override(largest)]
}

#[cfg(test)]
thread_local! {
    /// Tests: the one-element-at-a-time kernel even where the vec4 one applies.
    pub(crate) static FORCE_SCALAR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn scalar_forced() -> bool {
    #[cfg(test)]
    return FORCE_SCALAR.with(|f| f.get());
    #[cfg(not(test))]
    false
}

/// `out = x · mask · 1/(1 − p)` with the mask of `key` over `layout`: the forward of dropout on
/// activations and, applied to the gradient with the same key, its backward. `out` has `x`'s
/// shape and does not share its buffer.
pub fn apply(
    batch: &mut CommandRecorder,
    key: MaskKey,
    rate: Rate,
    layout: MaskLayout,
    x: &GpuTensor,
    out: &GpuTensor,
) -> Result<()> {
    if x.shape != out.shape {
        bail!("dropout: output shape {:?} differs from the input's {:?}", out.shape, x.shape);
    }
    check_no_alias("dropout", &[out], &[Some(x)])?;
    dispatch_mask(batch, key, rate, layout, [&APPLY4, &APPLY], &[Some(x), Some(out)])
}

/// One dispatch of a masking kernel over `tensors[0]`'s elements: the vec4 form (`specs[0]`)
/// where a group's four columns are consecutive elements, else the scalar one; nothing for none.
fn dispatch_mask(
    batch: &mut CommandRecorder,
    key: MaskKey,
    rate: Rate,
    layout: MaskLayout,
    specs: [&KernelSpec; 2],
    tensors: &[Option<&GpuTensor>],
) -> Result<()> {
    let n = tensors[0].map_or(0, |t| t.numel());
    layout.check("apply", n)?;
    if n == 0 {
        return Ok(());
    }
    let p = params(key, layout, n, rate)?;
    let spec = if layout.groups_of_four_consecutive() && !scalar_forced() { specs[0] } else { specs[1] };
    batch.dispatch(spec, &constants(layout, n, &p), &p, tensors, [p.groups.div_ceil(WG), 1, 1]);
    Ok(())
}

/// [`apply`] with one mask on two tensors of the layout in one dispatch, each draw made once:
/// `out = x · mask · 1/(1 − p)` and `z = z · mask · 1/(1 − p)` in place (the attention backward's
/// probabilities and their gradient). The same bits as two [`apply`] calls.
pub fn apply_pair(
    batch: &mut CommandRecorder,
    key: MaskKey,
    rate: Rate,
    layout: MaskLayout,
    x: &GpuTensor,
    out: &GpuTensor,
    z: &GpuTensor,
) -> Result<()> {
    for (what, t) in [("output", out), ("in-place operand", z)] {
        if t.shape != x.shape {
            bail!("dropout pair: {what} shape {:?} differs from the input's {:?}", t.shape, x.shape);
        }
    }
    check_no_alias("dropout pair", &[out, z], &[Some(x)])?;
    dispatch_mask(batch, key, rate, layout, [&PAIR4, &PAIR], &[Some(x), Some(out), Some(z)])
}

/// Each element's 32-bit word of the generator for every element of `out` (read back as f32 bit patterns;
/// the generator's tests compare them with [`reference::philox4x32_10`]).
pub fn draws(batch: &mut CommandRecorder, key: MaskKey, layout: MaskLayout, out: &GpuTensor) -> Result<()> {
    let n = out.numel();
    layout.check("draws", n)?;
    if n == 0 {
        return Ok(());
    }
    let p = params(key, layout, n, Rate { p: 0.0 })?;
    batch.dispatch(&DRAWS, &constants(layout, n, &p), &p, &[Some(out)], [p.groups.div_ceil(WG), 1, 1]);
    Ok(())
}
