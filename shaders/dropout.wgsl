// ---- dropout.wgsl: inverted dropout with masks from a counter-based generator ----
//
// Each element's keep/drop decision is one Philox4x32-10 draw (Salmon et al., "Parallel random
// numbers: as easy as 1, 2, 3", SC 2011) of the counter (column, global row, step, stream) under
// the key (seed low, seed high) — nothing is stored: forward, backward and recompute regenerate the
// same mask from the same key. The element is dropped when the draw is below `threshold`
// (= p·2³², so P(drop) = p) and kept scaled by `scale` = 1/(1 − p) otherwise.
//
// Keys of an element `e` of the tensor:
// - rows layout (`heads == 0`): row = row0 + e / cols, column = e % cols;
// - attention layout (`heads > 0`, probabilities `[batch, heads, seq, seq]`): row = row0 + b·seq + i
//   (the query's token row), column = h·seq + j.
// `row0` is the global row of the tensor's first row, so a chunk of the batch draws the same masks
// as the whole batch. The grid is 1-D, folded into x * y by the host for large tensors.

struct Params {
    n: u32,         // elements
    cols: u32,      // rows layout: elements per row
    row0: u32,      // global row of the tensor's first row
    heads: u32,     // attention layout when > 0
    seq: u32,       // attention layout: tokens per sequence
    threshold: u32, // dropped when the draw < threshold
    scale: f32,     // 1 / (1 - p)
    step: u32,      // optimizer step
    seed_lo: u32,
    seed_hi: u32,
    stream: u32,    // (layer << 8) | site
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

override WG: u32 = 256u;

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return linear_workgroup(wid, nwg) * WG + lid;
}

// (high, low) 32-bit halves of the 64-bit product a·b, from 16-bit pieces (WGSL has no u64).
fn mul_hi_lo(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

// Philox4x32-10: the first of the four outputs of counter `c` under key `k`.
fn philox4x32_10(c_in: vec4<u32>, k_in: vec2<u32>) -> u32 {
    var c = c_in;
    var k = k_in;
    for (var r = 0u; r < 10u; r = r + 1u) {
        let m0 = mul_hi_lo(0xD2511F53u, c.x);
        let m1 = mul_hi_lo(0xCD9E8D57u, c.z);
        c = vec4<u32>(m1.x ^ c.y ^ k.x, m1.y, m0.x ^ c.w ^ k.y, m0.y);
        k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
    }
    return c.x;
}

// The draw of element `e` (see the keys above).
fn draw(e: u32) -> u32 {
    var row: u32;
    var col: u32;
    if (p.heads == 0u) {
        row = p.row0 + e / p.cols;
        col = e % p.cols;
    } else {
        let ss = p.seq * p.seq;
        let b = e / (p.heads * ss);
        let h = (e / ss) % p.heads;
        let i = (e / p.seq) % p.seq;
        let j = e % p.seq;
        row = p.row0 + b * p.seq + i;
        col = h * p.seq + j;
    }
    return philox4x32_10(vec4<u32>(col, row, p.step, p.stream), vec2<u32>(p.seed_lo, p.seed_hi));
}

// ---- dropout_apply: out = x · mask · scale (forward on activations, backward on gradients) ----
@group(0) @binding(1) var<storage, read> x_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> y_out: array<f32>;

@compute @workgroup_size(WG)
fn dropout_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let e = element(wid, nwg, lid);
    if (e >= p.n) { return; }
    // A dropped element is x·0 (NaN stays NaN, as in PyTorch's x·mask·scale).
    y_out[e] = x_in[e] * select(p.scale, 0.0, draw(e) < p.threshold);
}

// ---- dropout_draws: the raw draws (tests of the generator) ----
@group(0) @binding(1) var<storage, read_write> draws_out: array<u32>;

@compute @workgroup_size(WG)
fn dropout_draws(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let e = element(wid, nwg, lid);
    if (e >= p.n) { return; }
    draws_out[e] = draw(e);
}
