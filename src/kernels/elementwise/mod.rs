//! `shaders/elementwise.wgsl`: one thread per output element — `add`, `act_backward`, `copy`,
//! `fill`, BERT `embeddings`, the [CLS]-row `gather_rows` / `scatter_rows`, and `unpack_f16` (with
//! its host side [`pack_f16`]: frozen weights stored as f16).

use super::expect_shape;
use crate::gpu::{Access, CommandRecorder, GpuTensor, KernelSpec};
use crate::shaders;
use crate::types::Activation;
use anyhow::{bail, Result};
use std::sync::Arc;

#[cfg(any(test, feature = "reference"))]
pub mod reference;
#[cfg(test)]
mod tests;

const R: Access = Access::Read;
const W: Access = Access::ReadWrite;

const ADD: KernelSpec = KernelSpec { shader: &shaders::ELEMENTWISE, entry: "add", bindings: &[R, R, W] };
const ACT_BACKWARD: KernelSpec =
    KernelSpec { shader: &shaders::ELEMENTWISE, entry: "act_backward", bindings: &[R, R, W] };
const ACTIVATE: KernelSpec = KernelSpec { shader: &shaders::ELEMENTWISE, entry: "activate_fwd", bindings: &[R, W] };
const COPY_RANGE: KernelSpec = KernelSpec { shader: &shaders::ELEMENTWISE, entry: "copy_range", bindings: &[R, W] };
const COPY: KernelSpec = KernelSpec { shader: &shaders::ELEMENTWISE, entry: "copy", bindings: &[R, W] };
const GATHER_ROWS: KernelSpec = KernelSpec { shader: &shaders::ELEMENTWISE, entry: "gather_rows", bindings: &[R, W] };
const SCATTER_ROWS: KernelSpec = KernelSpec { shader: &shaders::ELEMENTWISE, entry: "scatter_rows", bindings: &[R, W] };
const SCALE: KernelSpec = KernelSpec { shader: &shaders::ELEMENTWISE, entry: "scale", bindings: &[R, W] };
const FILL: KernelSpec = KernelSpec { shader: &shaders::ELEMENTWISE, entry: "fill", bindings: &[W] };
const UNPACK_F16: KernelSpec = KernelSpec { shader: &shaders::ELEMENTWISE, entry: "unpack_f16", bindings: &[R, W] };
const EMBEDDINGS: KernelSpec =
    KernelSpec { shader: &shaders::ELEMENTWISE, entry: "embeddings", bindings: &[R, R, R, R, R, W] };
/// [`SCATTER_ROWS`] and [`EMBEDDINGS`] over column quads (vec4), where `d % 4 == 0`.
const SCATTER_ROWS4: KernelSpec = KernelSpec { entry: "scatter_rows4", ..SCATTER_ROWS };
const EMBEDDINGS4: KernelSpec = KernelSpec { entry: "embeddings4", ..EMBEDDINGS };

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    d: u32,
    seq: u32,
    stride: u32,
    vocab: u32,
    types: u32,
    accumulate: u32,
    src_off: u32,
    value: f32,
    dst_off: u32,
    row_start: u32,
    block_rows: u32,
}

/// Every kernel of this module with the size of its parameter block (`kernels/bindings.rs` checks
/// them against the WGSL).
#[cfg(test)]
pub(crate) fn specs() -> Vec<(KernelSpec, usize)> {
    let p = std::mem::size_of::<Params>();
    vec![
        (ADD, p),
        (ACT_BACKWARD, p),
        (ACTIVATE, p),
        (COPY_RANGE, p),
        (COPY, p),
        (GATHER_ROWS, p),
        (SCATTER_ROWS, p),
        (SCALE, p),
        (FILL, p),
        (EMBEDDINGS, p),
        (SCATTER_ROWS4, p),
        (EMBEDDINGS4, p),
        (UNPACK_F16, p),
    ]
}

/// Fails when an output shares a buffer with another output or an input: wgpu forbids binding a
/// buffer read-only and read-write in one dispatch, and the kernels assume no aliasing.
pub(crate) fn check_no_alias(what: &str, outputs: &[&GpuTensor], inputs: &[Option<&GpuTensor>]) -> Result<()> {
    for (i, o) in outputs.iter().enumerate() {
        let clash = outputs[i + 1..].iter().any(|p| Arc::ptr_eq(&o.buffer, &p.buffer))
            || inputs.iter().flatten().any(|p| Arc::ptr_eq(&o.buffer, &p.buffer));
        if clash {
            bail!(
                "{what}: an output tensor {:?} shares its buffer with another operand (in-place is not supported)",
                o.shape
            );
        }
    }
    Ok(())
}

/// Every set of override constants the host passes, per kernel, apart from the activation
/// (`kernels/translate.rs`): the one workgroup size, and for the kernels that split indices
/// ([`run_split`]) either `divmod`.
#[cfg(test)]
pub(crate) fn launches() -> Vec<(KernelSpec, Vec<crate::kernels::Constants>)> {
    let split = [GATHER_ROWS.entry, SCATTER_ROWS.entry, EMBEDDINGS.entry, SCATTER_ROWS4.entry, EMBEDDINGS4.entry];
    specs()
        .into_iter()
        .map(|(s, _)| {
            let sets = match split.contains(&s.entry) {
                true => crate::kernels::with_either_divmod(&[("WG", WG as f64)]),
                false => vec![vec![("WG", WG as f64)]],
            };
            (s, sets)
        })
        .collect()
}

fn count(what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| anyhow::anyhow!("{what}: {n} elements exceed u32 indexing"))
}

fn groups(n: u32) -> [u32; 3] {
    [n.div_ceil(WG), 1, 1]
}

#[cfg(test)]
thread_local! {
    /// Tests: the element-at-a-time kernels even where the quad ones apply.
    pub(crate) static NO_QUADS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// [`run`] for the kernels that split element indices into rows and columns (`divmod`): without
/// an integer division where the elements and the divisors allow; with `quads` (the kernel's
/// vec4 form), a thread per four elements of a row where `d` is a multiple of 4.
fn run_split(
    batch: &mut CommandRecorder,
    spec: &KernelSpec,
    quads: Option<&KernelSpec>,
    params: Params,
    tensors: &[Option<&GpuTensor>],
) {
    let largest = [params.n, params.d, params.seq, params.stride].into_iter().max().unwrap_or(0) as usize;
    let constants = [("WG", WG as f64), crate::kernels::divmod_override(largest)];
    #[cfg(test)]
    let no_quads = NO_QUADS.with(|f| f.get());
    #[cfg(not(test))]
    let no_quads = false;
    match quads {
        Some(q) if params.d % 4 == 0 && !no_quads => {
            batch.dispatch(q, &constants, &params, tensors, groups(params.n / 4))
        }
        _ => batch.dispatch(spec, &constants, &params, tensors, groups(params.n)),
    }
}

fn run(
    batch: &mut CommandRecorder,
    spec: &KernelSpec,
    act: Option<Activation>,
    params: Params,
    tensors: &[Option<&GpuTensor>],
) {
    let wg = ("WG", WG as f64);
    match act {
        Some(a) => batch.dispatch(spec, &[wg, ("ACT", a.id())], &params, tensors, groups(params.n)),
        None => batch.dispatch(spec, &[wg], &params, tensors, groups(params.n)),
    }
}

/// `out = a + b` (all the same shape; `out` distinct from the inputs).
pub fn add(batch: &mut CommandRecorder, a: &GpuTensor, b: &GpuTensor, out: &GpuTensor) -> Result<()> {
    expect_shape("add b", &b.shape, &a.shape)?;
    expect_shape("add out", &out.shape, &a.shape)?;
    check_no_alias("add", &[out], &[Some(a), Some(b)])?;
    let params = Params { n: count("add", a.numel())?, ..Default::default() };
    run(batch, &ADD, None, params, &[Some(a), Some(b), Some(out)]);
    Ok(())
}

/// `dx = dy ⊙ act'(pre)` (all the same shape; `dx` distinct from the inputs).
pub fn act_backward(
    batch: &mut CommandRecorder,
    act: Activation,
    pre: &GpuTensor,
    dy: &GpuTensor,
    dx: &GpuTensor,
) -> Result<()> {
    expect_shape("act_backward dy", &dy.shape, &pre.shape)?;
    expect_shape("act_backward dx", &dx.shape, &pre.shape)?;
    check_no_alias("act_backward", &[dx], &[Some(pre), Some(dy)])?;
    let params = Params { n: count("act_backward", pre.numel())?, ..Default::default() };
    run(batch, &ACT_BACKWARD, Some(act), params, &[Some(pre), Some(dy), Some(dx)]);
    Ok(())
}

/// `out = act(x)` (same shape; `out` distinct from `x`).
pub fn activate(batch: &mut CommandRecorder, act: Activation, x: &GpuTensor, out: &GpuTensor) -> Result<()> {
    expect_shape("activate out", &out.shape, &x.shape)?;
    check_no_alias("activate", &[out], &[Some(x)])?;
    let params = Params { n: count("activate", x.numel())?, ..Default::default() };
    run(batch, &ACTIVATE, Some(act), params, &[Some(x), Some(out)]);
    Ok(())
}

/// `dst[dst_off..dst_off + n] = src[src_off..src_off + n]` (slices of stacked tensors).
pub fn copy_range(
    batch: &mut CommandRecorder,
    src: &GpuTensor,
    src_off: usize,
    dst: &GpuTensor,
    dst_off: usize,
    n: usize,
) -> Result<()> {
    if src_off + n > src.numel() || dst_off + n > dst.numel() {
        bail!("copy_range: {n} values from {src_off} of {:?} to {dst_off} of {:?} out of range", src.shape, dst.shape);
    }
    check_no_alias("copy_range", &[dst], &[Some(src)])?;
    let params = Params {
        n: count("copy_range", n)?,
        src_off: count("copy_range", src_off)?,
        dst_off: count("copy_range", dst_off)?,
        ..Default::default()
    };
    run(batch, &COPY_RANGE, None, params, &[Some(src), Some(dst)]);
    Ok(())
}

/// `dst = src` (same number of elements; shapes may differ).
pub fn copy(batch: &mut CommandRecorder, src: &GpuTensor, dst: &GpuTensor) -> Result<()> {
    if src.numel() != dst.numel() {
        bail!("copy: source {:?} and destination {:?} differ in size", src.shape, dst.shape);
    }
    check_no_alias("copy", &[dst], &[Some(src)])?;
    let params = Params { n: count("copy", src.numel())?, ..Default::default() };
    run(batch, &COPY, None, params, &[Some(src), Some(dst)]);
    Ok(())
}

/// The largest finite f16 value.
const F16_MAX: f32 = 65504.0;

/// `values` as f16, two to a u32 word (element 2w in the low half of word w; an odd count leaves
/// the last high half zero), rounded to nearest even; what [`unpack_f16`] reads. Values under f16's
/// smallest normal (6.1e-5) in magnitude are stored as (signed) zero: GPUs may flush f16
/// subnormals when widening them, so the host does it for every GPU alike. Fails on a value that is
/// not finite or beyond f16's range (±65504).
pub fn pack_f16(values: &[f32]) -> Result<Vec<u32>> {
    let half = |x: f32| -> Result<u32> {
        if !x.is_finite() || x.abs() > F16_MAX {
            bail!("the value {x} does not fit in f16 (finite, at most {F16_MAX} in magnitude)");
        }
        let h = half::f16::from_f32(x);
        // A rounded value past F16_MAX becomes infinite: refused above, as the unrounded one is.
        let h = if h.is_normal() { h } else { half::f16::from_bits(h.to_bits() & 0x8000) };
        Ok(h.to_bits() as u32)
    };
    values
        .chunks(2)
        .map(|pair| Ok(half(pair[0])? | pair.get(1).map(|&y| half(y)).transpose()?.unwrap_or(0) << 16))
        .collect()
}

/// `out` (n values) = the f16 values `packed` holds ([`pack_f16`]'s layout, ⌈n/2⌉ words), widened
/// to f32 exactly.
pub fn unpack_f16(batch: &mut CommandRecorder, packed: &GpuTensor, out: &GpuTensor) -> Result<()> {
    let n = out.numel();
    if packed.numel() != n.div_ceil(2) {
        bail!("unpack_f16: {} packed words for {n} values (need {})", packed.numel(), n.div_ceil(2));
    }
    check_no_alias("unpack_f16", &[out], &[Some(packed)])?;
    let params = Params { n: count("unpack_f16", n)?, ..Default::default() };
    let words = count("unpack_f16", packed.numel())?;
    batch.dispatch(&UNPACK_F16, &[("WG", WG as f64)], &params, &[Some(packed), Some(out)], groups(words));
    Ok(())
}

/// `out = x · value` (same number of elements; `out` distinct from `x`).
pub fn scale(batch: &mut CommandRecorder, x: &GpuTensor, value: f32, out: &GpuTensor) -> Result<()> {
    if x.numel() != out.numel() {
        bail!("scale: input {:?} and output {:?} differ in size", x.shape, out.shape);
    }
    check_no_alias("scale", &[out], &[Some(x)])?;
    let params = Params { n: count("scale", x.numel())?, value, ..Default::default() };
    run(batch, &SCALE, None, params, &[Some(x), Some(out)]);
    Ok(())
}

/// Every element of `t` = `value`.
pub fn fill(batch: &mut CommandRecorder, t: &GpuTensor, value: f32) -> Result<()> {
    let params = Params { n: count("fill", t.numel())?, value, ..Default::default() };
    run(batch, &FILL, None, params, &[Some(t)]);
    Ok(())
}

/// Rows and row length of a `[rows, d]` (or `[.., d]`) tensor.
fn rows_d(what: &str, t: &GpuTensor) -> Result<(usize, usize)> {
    match t.shape.last() {
        Some(&d) if d > 0 => Ok((t.numel() / d, d)),
        _ => bail!("{what}: expected a [rows, d] tensor with d ≥ 1, got {:?}", t.shape),
    }
}

/// BERT embeddings before their LayerNorm: `out[t] = word[ids[t]] + position[t % seq] +
/// token_type[token_types[t]]` for `B·seq` tokens. `ids` and `token_types` are u32 tensors of
/// `B·seq` values ([`GpuTensor::from_u32`]); tables are `[vocab, d]`, `[max_positions, d]` (≥ seq
/// rows) and `[types, d]`; `out` is `[B·seq, d]`. The word table may be split into blocks of
/// consecutive rows (`word`, in order: a table larger than one storage binding), looked up one
/// dispatch a block; each token is written once, by its block, with the same arithmetic as from
/// one table. Ids are the caller's to validate: the kernel clamps an id past the table to its
/// last row, so it never reads out of bounds.
#[allow(clippy::too_many_arguments)]
pub fn embeddings(
    batch: &mut CommandRecorder,
    ids: &GpuTensor,
    token_types: &GpuTensor,
    seq: usize,
    word: &[GpuTensor],
    position: &GpuTensor,
    token_type: &GpuTensor,
    out: &GpuTensor,
) -> Result<()> {
    let mut blocks = Vec::with_capacity(word.len());
    let (mut vocab, mut d) = (0, 0);
    for (i, block) in word.iter().enumerate() {
        let (rows, width) = rows_d("embeddings word table", block)?;
        if i > 0 && width != d {
            bail!(
                "embeddings: word-table blocks of different widths: {:?}",
                word.iter().map(|w| &w.shape).collect::<Vec<_>>()
            );
        }
        blocks.push((vocab, rows));
        (vocab, d) = (vocab + rows, width);
    }
    if word.is_empty() {
        bail!("embeddings: no word table");
    }
    let (positions, dp) = rows_d("embeddings position table", position)?;
    let (types, dt) = rows_d("embeddings token-type table", token_type)?;
    if dp != d || dt != d {
        bail!(
            "embeddings: tables have different widths: word {:?}, position {:?}, token type {:?}",
            word[0].shape,
            position.shape,
            token_type.shape
        );
    }
    let tokens = ids.numel();
    if seq == 0 || tokens % seq != 0 {
        bail!("embeddings: {tokens} token ids are not a whole number of sequences of length {seq}");
    }
    if seq > positions {
        bail!("embeddings: sequence length {seq} exceeds the {positions} position embeddings");
    }
    if token_types.numel() != tokens {
        bail!("embeddings: {} token types for {tokens} token ids", token_types.numel());
    }
    if vocab == 0 || types == 0 {
        bail!("embeddings: empty word or token-type table");
    }
    expect_shape("embeddings out", &out.shape, &[tokens, d])?;
    let inputs: Vec<Option<&GpuTensor>> =
        [ids, token_types, position, token_type].into_iter().chain(word).map(Some).collect();
    check_no_alias("embeddings", &[out], &inputs)?;
    for (block, (row_start, rows)) in word.iter().zip(blocks) {
        // For the profiler: the rows looked up (three a token), ids and types, the output; not the
        // tables; once, at the first block.
        if row_start == 0 {
            batch.cost(0.0, 4.0 * (tokens * (4 * d + 2)) as f64);
        }
        let params = Params {
            n: count("embeddings", tokens * d)?,
            d: d as u32,
            seq: seq as u32,
            vocab: count("embeddings vocabulary", vocab)?,
            types: count("embeddings token types", types)?,
            row_start: row_start as u32,
            block_rows: rows as u32,
            ..Default::default()
        };
        let bindings = [Some(ids), Some(token_types), Some(block), Some(position), Some(token_type), Some(out)];
        run_split(batch, &EMBEDDINGS, Some(&EMBEDDINGS4), params, &bindings);
    }
    Ok(())
}

/// Shapes shared by gather/scatter: `full` is `[B·stride, d]`, `rows` is `[B, d]`.
fn gather_shapes(what: &str, full: &GpuTensor, rows: &GpuTensor, stride: usize) -> Result<(usize, usize)> {
    let (n_full, d) = rows_d(what, full)?;
    if stride == 0 || n_full % stride != 0 {
        bail!("{what}: {n_full} rows are not a whole number of sequences of length {stride}");
    }
    let b = n_full / stride;
    expect_shape(&format!("{what} per-sequence rows"), &rows.shape, &[b, d])?;
    Ok((b, d))
}

/// `out[b] = x[b·stride]` for `x` `[B·stride, d]` and `out` `[B, d]` (the [CLS] token of each
/// sequence).
pub fn gather_rows(batch: &mut CommandRecorder, x: &GpuTensor, stride: usize, out: &GpuTensor) -> Result<()> {
    let (b, d) = gather_shapes("gather_rows", x, out, stride)?;
    check_no_alias("gather_rows", &[out], &[Some(x)])?;
    let params = Params { n: count("gather_rows", b * d)?, d: d as u32, stride: stride as u32, ..Default::default() };
    run_split(batch, &GATHER_ROWS, None, params, &[Some(x), Some(out)]);
    Ok(())
}

/// The transpose of [`gather_rows`]: row `b·stride` of `out` `[B·stride, d]` = `src[b]` (`+=` with
/// `accumulate`); every other row is zeroed (left untouched with `accumulate`).
pub fn scatter_rows(
    batch: &mut CommandRecorder,
    src: &GpuTensor,
    stride: usize,
    out: &GpuTensor,
    accumulate: bool,
) -> Result<()> {
    let (b, d) = gather_shapes("scatter_rows", out, src, stride)?;
    check_no_alias("scatter_rows", &[out], &[Some(src)])?;
    let params = Params {
        // accumulate touches only the B target rows; otherwise every element of `out` is written
        n: count("scatter_rows", if accumulate { b * d } else { b * stride * d })?,
        d: d as u32,
        stride: stride as u32,
        accumulate: accumulate as u32,
        ..Default::default()
    };
    run_split(batch, &SCATTER_ROWS, Some(&SCATTER_ROWS4), params, &[Some(src), Some(out)]);
    Ok(())
}
