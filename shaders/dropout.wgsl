// ---- dropout.wgsl: inverted dropout with masks from a counter-based generator ----
//
// Each element's keep/drop decision is one 32-bit word of Philox4x32-10 (Salmon et al., "Parallel
// random numbers: as easy as 1, 2, 3", SC 2011): word `column % 4` of the counter
// (column / 4, global row, step, stream) under the key (seed low, seed high). One thread draws one
// counter and decides the four columns it covers. Nothing is stored: forward, backward and
// recompute regenerate the same mask from the same key. The element is dropped when its word is
// below `threshold` (= p·2³², so P(drop) = p) and kept scaled by `scale` = 1/(1 − p) otherwise.
//
// Keys of an element `e` of the tensor:
// - rows layout (`heads == 0`): row = row0 + (e / cols)·seq, column = e % cols (`seq` is 1 for
//   consecutive rows; a sequence's length for one row a sequence, e.g. the [CLS] rows);
// - attention layout (`heads > 0`, probabilities `[batch, heads, seq, seq]`): row = row0 + b·seq + i
//   (the query's token row), column = h·seq + j.
// `row0` is the global row of the tensor's first row, so a chunk of the batch draws the same masks
// as the whole batch. A thread per (row, group of four columns): `groups` = rows · ⌈width / 4⌉,
// width = `cols` (rows) or heads·seq (attention). The grid is 1-D, folded into x * y by the host
// for large tensors. Indices are split with `divmod` (common.wgsl; FAST_DIVMOD where the host
// finds the threads, rows and row widths below its limit).

struct Params {
    n: u32,         // elements
    cols: u32,      // rows layout: elements per row
    row0: u32,      // global row of the tensor's first row
    heads: u32,     // attention layout when > 0
    seq: u32,       // attention layout: tokens per sequence; rows layout: global rows between rows
    threshold: u32, // dropped when the draw < threshold
    scale: f32,     // 1 / (1 - p)
    step: u32,      // optimizer step
    seed_lo: u32,
    seed_hi: u32,
    stream: u32,    // (layer << 8) | site
    groups: u32,    // threads: rows · ceil(width / 4)
}

@group(0) @binding(0) var<uniform> p: Params;

override WG: u32 = 256u;

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return linear_workgroup(wid, nwg) * WG + lid;
}

// The generator, philox4x32_10, is shaders/philox.wgsl (joined before this file).

// Columns of a row: `cols`, or heads·seq for attention probabilities.
fn row_width() -> u32 {
    if (p.heads == 0u) { return p.cols; }
    return p.heads * p.seq;
}

// The element at (row r of the tensor, column c) (see the keys above); < n for r < rows, c < width.
fn element_at(r: u32, c: u32) -> u32 {
    if (p.heads == 0u) { return r * p.cols + c; }
    let bi = divmod(r, p.seq);
    let hj = divmod(c, p.seq);
    return ((bi.x * p.heads + hj.x) * p.seq + bi.y) * p.seq + hj.y;
}

// Thread t's row r of the tensor and group g (columns 4g..4g+3): (r, g).
fn row_and_group(t: u32) -> vec2<u32> {
    return divmod(t, (row_width() + 3u) / 4u);
}

// The four words of the group of columns 4g..4g+3 of row r.
fn draws_of(r: u32, g: u32) -> vec4<u32> {
    let row = select(p.row0 + r, p.row0 + r * p.seq, p.heads == 0u);
    return philox4x32_10(vec4<u32>(g, row, p.step, p.stream), vec2<u32>(p.seed_lo, p.seed_hi));
}

// ---- dropout_apply: out = x · mask · scale (forward on activations, backward on gradients) ----
@group(0) @binding(1) var<storage, read> x_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> y_out: array<f32>;

@compute @workgroup_size(WG)
fn dropout_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let t = element(wid, nwg, lid);
    if (t >= p.groups) { return; }
    let width = row_width();
    let rg = row_and_group(t);
    let r = rg.x;
    let g = rg.y;
    let d = draws_of(r, g);
    for (var w = 0u; w < 4u; w = w + 1u) {
        let c = 4u * g + w;
        if (c < width) {
            let e = element_at(r, c);
            // A dropped element is x·0 (NaN stays NaN, as in PyTorch's x·mask·scale).
            y_out[e] = x_in[e] * select(p.scale, 0.0, d[w] < p.threshold);
        }
    }
}

// ---- dropout_apply4: dropout_apply where each group's four columns are four consecutive
// elements starting at a multiple of 4 (rows of a multiple of 4 columns; attention rows of a
// multiple of 4 keys), as one vec4 load and store (on lavapipe each storage access is a per-lane
// block of instructions, one per vec4 instead of one per element). The same products, so the
// same bits as dropout_apply.
@group(0) @binding(1) var<storage, read> x_in4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y_out4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn dropout_apply4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let t = element(wid, nwg, lid);
    if (t >= p.groups) { return; }
    let rg = row_and_group(t);
    let e4 = element_at(rg.x, 4u * rg.y) / 4u;
    let dropped = draws_of(rg.x, rg.y) < vec4<u32>(p.threshold);
    y_out4[e4] = x_in4[e4] * select(vec4<f32>(p.scale), vec4<f32>(0.0), dropped);
}

// ---- dropout_pair / dropout_pair4: one mask on two tensors of the same layout in one pass,
// each mask word drawn once: y_out = x_in · mask · scale, and z_io = z_io · mask · scale in place
// (the attention backward: the probabilities P into P' for dV, and dP' into dP). The same products
// as two dropout_apply calls, so the same bits.
@group(0) @binding(3) var<storage, read_write> z_io: array<f32>;
@group(0) @binding(3) var<storage, read_write> z_io4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn dropout_pair(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let t = element(wid, nwg, lid);
    if (t >= p.groups) { return; }
    let width = row_width();
    let rg = row_and_group(t);
    let d = draws_of(rg.x, rg.y);
    for (var w = 0u; w < 4u; w = w + 1u) {
        let c = 4u * rg.y + w;
        if (c < width) {
            let e = element_at(rg.x, c);
            let m = select(p.scale, 0.0, d[w] < p.threshold);
            y_out[e] = x_in[e] * m;
            z_io[e] = z_io[e] * m;
        }
    }
}

@compute @workgroup_size(WG)
fn dropout_pair4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let t = element(wid, nwg, lid);
    if (t >= p.groups) { return; }
    let rg = row_and_group(t);
    let e4 = element_at(rg.x, 4u * rg.y) / 4u;
    let m = select(vec4<f32>(p.scale), vec4<f32>(0.0), draws_of(rg.x, rg.y) < vec4<u32>(p.threshold));
    y_out4[e4] = x_in4[e4] * m;
    z_io4[e4] = z_io4[e4] * m;
}

// ---- dropout_draws: each element's word (tests of the generator) ----
@group(0) @binding(1) var<storage, read_write> draws_out: array<u32>;

@compute @workgroup_size(WG)
fn dropout_draws(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let t = element(wid, nwg, lid);
    if (t >= p.groups) { return; }
    let width = row_width();
    let rg = row_and_group(t);
    let r = rg.x;
    let g = rg.y;
    let d = draws_of(r, g);
    for (var w = 0u; w < 4u; w = w + 1u) {
        let c = 4u * g + w;
        if (c < width) {
            draws_out[element_at(r, c)] = d[w];
        }
    }
}
