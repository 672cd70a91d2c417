// ---- attention_fused.wgsl: masked multi-head self-attention, forward in one dispatch and its
// input gradients in two (the `Fused` attention kernel; attention.wgsl + the matmul are `Separate`) ----
//
// One invocation owns one row: a query row (forward, backward_rows) or a key row (backward_keys)
// of one (batch, head) pair. A workgroup holds WG consecutive rows of one pair (K and V rows are
// shared through the cache); the 1-D grid is pairs · blocks workgroups (blocks = ⌈seq / WG⌉),
// folded into x·y by the host for large grids. No workgroup memory and no barriers: each
// invocation reads back only what it wrote itself. Each invocation keeps its row's head_dim-wide
// operand and accumulators in private arrays (head_dim ≤ MAX_HD): the loops over columns index them
// with the same c in every invocation, which CPU drivers run as vector operations.
//
// forward (query row i of pair (b, h)):
//   s_j = scale · q_i·k_j for unmasked keys j (into probs), m = max_j s_j
//   e_j = exp(s_j − m) (0 for masked keys), z = Σ_j e_j, P_ij = e_j / z (0 when every key is masked)
//   with dropout: P'_ij = P_ij · keep_ij (0 or 1/(1 − p)) into `dropped`; ctx_i = Σ_j P'_ij v_j
// backward_rows (query row i):
//   dP'_ij = dctx_i·v_j, dP_ij = keep_ij · dP'_ij (with dropout; P'_ij into `dropped` for the key pass)
//   dS_ij = scale · P_ij (dP_ij − Σ_l P_il dP_il) into `ds`; dq_i = Σ_j dS_ij k_j
// backward_keys (key row j):
//   dk_j = Σ_i dS_ij q_i, dv_j = Σ_i P'_ij dctx_i (P' = `dropped` with dropout, else P)
//
// keep_ij is dropout.wgsl's mask of the attention layout: word (h·seq + j) % 4 of the Philox
// counter ((h·seq + j) / 4, row0 + b·seq + i, step, stream); one draw serves four columns.
// Every sum runs in a fixed order (the row sums over four partials by j % 4): deterministic.
//
// Indexing: rows past seq and workgroups past pairs · blocks return at once; every index below is
// inside [0, pairs·seq²) for the probability tensors and inside the activation views the host
// validated (t · stride + off + h · head_dim + c with t < batch · seq, c < head_dim); the private
// arrays with c < head_dim ≤ MAX_HD (the host refuses wider heads).

struct Params {
    pairs: u32,      // batch * heads
    seq: u32,
    heads: u32,
    head_dim: u32,
    in_stride: u32,  // row stride of Q, K, V: hidden, or 3·hidden when packed
    q_off: u32,
    k_off: u32,
    v_off: u32,
    out_stride: u32, // row stride of dQ, dK, dV (ctx and dctx are [tokens, hidden])
    dq_off: u32,
    dk_off: u32,
    dv_off: u32,
    scale: f32,      // 1 / sqrt(head_dim)
    drop: u32,       // 1: dropout on the probabilities
    threshold: u32,  // dropped when the draw < threshold
    keep_scale: f32, // 1 / (1 - p)
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    stream: u32,     // (layer << 8) | site
    row0: u32,       // global token row of the batch's first token
    blocks: u32,     // workgroups per pair: ceil(seq / WG)
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

override WG: u32 = 64u;
// The widest head: each invocation keeps a row of head_dim values (a query row, its context or
// gradient accumulators) in private arrays.
const MAX_HD: u32 = 128u;
const NEG_BIG: f32 = -3.4028234e38;

// The row an invocation owns: pair = b · heads + h, row i (a query or a key) of the pair.
struct Row {
    valid: bool,
    pair: u32,
    b: u32,
    h: u32,
    i: u32,
}

fn row_of(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Row {
    let w = linear_workgroup(wid, nwg);
    let pair = w / p.blocks;
    let i = (w % p.blocks) * WG + lid;
    return Row(pair < p.pairs && i < p.seq, pair, pair / p.heads, pair % p.heads, i);
}

// First element of head h of token t in a Q/K/V view at column offset `off`.
fn act_at(t: u32, off: u32, h: u32) -> u32 {
    return t * p.in_stride + off + h * p.head_dim;
}

// First element of head h of token t in ctx / dctx ([tokens, heads·head_dim]).
fn ctx_at(t: u32, h: u32) -> u32 {
    return (t * p.heads + h) * p.head_dim;
}

// The keep factors of one row's columns, drawn four at a time (see the header).
struct Draws {
    group: u32,
    words: vec4<u32>,
}

fn keep_factor(st: ptr<function, Draws>, grow: u32, col: u32) -> f32 {
    let g = col / 4u;
    if ((*st).group != g) {
        (*st).words = philox4x32_10(vec4<u32>(g, grow, p.step, p.stream), vec2<u32>(p.seed_lo, p.seed_hi));
        (*st).group = g;
    }
    return select(p.keep_scale, 0.0, (*st).words[col % 4u] < p.threshold);
}

fn no_draws() -> Draws {
    return Draws(0xffffffffu, vec4<u32>(0u));
}

// ---- attention_fused_forward ----
@group(0) @binding(1) var<storage, read> mask: array<f32>;
@group(0) @binding(2) var<storage, read> q_in: array<f32>;
@group(0) @binding(3) var<storage, read> k_in: array<f32>;
@group(0) @binding(4) var<storage, read> v_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> probs: array<f32>;
@group(0) @binding(6) var<storage, read_write> dropped: array<f32>;
@group(0) @binding(7) var<storage, read_write> ctx: array<f32>;

@compute @workgroup_size(WG)
fn attention_fused_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wid, nwg, lid);
    if (!r.valid) { return; }
    let n = p.seq;
    let hd = p.head_dim;
    let t0 = r.b * n;           // the sequence's first token
    let t = t0 + r.i;           // the query's token
    let base = (r.pair * n + r.i) * n;
    // The query row once (a gather on CPU drivers, where each lane owns a row); the loops over
    // columns below then index private arrays with the same c in every lane.
    let qo = act_at(t, p.q_off, r.h);
    var qrow: array<f32, MAX_HD>;
    for (var c = 0u; c < hd; c++) { qrow[c] = q_in[qo + c]; }
    var mx = NEG_BIG;
    for (var j = 0u; j < n; j++) {
        if (mask[t0 + j] > 0.5) {
            let ko = act_at(t0 + j, p.k_off, r.h);
            var s = 0.0;
            for (var c = 0u; c < hd; c++) { s = fma(qrow[c], k_in[ko + c], s); }
            s = s * p.scale;
            probs[base + j] = s;
            mx = max(mx, s);
        }
    }
    var z = vec4<f32>(0.0);
    for (var j = 0u; j < n; j++) {
        var e = 0.0;
        if (mask[t0 + j] > 0.5) { e = exp(probs[base + j] - mx); }
        probs[base + j] = e;
        z[j % 4u] += e;
    }
    let zs = (z.x + z.y) + (z.z + z.w);
    // zs == 0 only when every key is masked: the row stays all zeros.
    let inv = select(0.0, 1.0 / zs, zs > 0.0);
    var st = no_draws();
    for (var j = 0u; j < n; j++) {
        let pj = probs[base + j] * inv;
        probs[base + j] = pj;
        if (p.drop != 0u) { dropped[base + j] = pj * keep_factor(&st, p.row0 + t, r.h * n + j); }
    }
    // ctx_i = Σ_j P'_ij v_j, j in order; masked keys (P' = 0, the same keys for every row of the
    // workgroup) are skipped.
    var acc: array<f32, MAX_HD>;
    for (var j = 0u; j < n; j++) {
        if (mask[t0 + j] > 0.5) {
            var pj = probs[base + j];
            if (p.drop != 0u) { pj = dropped[base + j]; }
            let vo = act_at(t0 + j, p.v_off, r.h);
            for (var c = 0u; c < hd; c++) { acc[c] = fma(pj, v_in[vo + c], acc[c]); }
        }
    }
    let co = ctx_at(t, r.h);
    for (var c = 0u; c < hd; c++) { ctx[co + c] = acc[c]; }
}

// ---- attention_fused_backward_rows ----
@group(0) @binding(1) var<storage, read> k_rows: array<f32>;
@group(0) @binding(2) var<storage, read> v_rows: array<f32>;
@group(0) @binding(3) var<storage, read> probs_rows: array<f32>;
@group(0) @binding(4) var<storage, read> dctx_rows: array<f32>;
@group(0) @binding(5) var<storage, read_write> ds_out: array<f32>;
// binding 6: `dropped` (P' for the key pass)
@group(0) @binding(7) var<storage, read_write> dq_out: array<f32>;

@compute @workgroup_size(WG)
fn attention_fused_backward_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                 @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wid, nwg, lid);
    if (!r.valid) { return; }
    let n = p.seq;
    let hd = p.head_dim;
    let t0 = r.b * n;
    let t = t0 + r.i;
    let base = (r.pair * n + r.i) * n;
    let go = ctx_at(t, r.h);
    var drow: array<f32, MAX_HD>;
    for (var c = 0u; c < hd; c++) { drow[c] = dctx_rows[go + c]; }
    var st = no_draws();
    var dot = vec4<f32>(0.0);
    for (var j = 0u; j < n; j++) {
        let pj = probs_rows[base + j];
        var s = 0.0;
        // P = 0 (a masked key) gives dS = 0 whatever dP is.
        if (pj != 0.0) {
            let vo = act_at(t0 + j, p.v_off, r.h);
            for (var c = 0u; c < hd; c++) { s = fma(drow[c], v_rows[vo + c], s); }
        }
        if (p.drop != 0u) {
            let f = keep_factor(&st, p.row0 + t, r.h * n + j);
            s = s * f;
            dropped[base + j] = pj * f;
        }
        ds_out[base + j] = s;
        dot[j % 4u] += pj * s;
    }
    let d = (dot.x + dot.y) + (dot.z + dot.w);
    var acc: array<f32, MAX_HD>;
    for (var j = 0u; j < n; j++) {
        let ds = p.scale * probs_rows[base + j] * (ds_out[base + j] - d);
        ds_out[base + j] = ds;
        if (ds != 0.0) {
            let ko = act_at(t0 + j, p.k_off, r.h);
            for (var c = 0u; c < hd; c++) { acc[c] = fma(ds, k_rows[ko + c], acc[c]); }
        }
    }
    let qo = t * p.out_stride + p.dq_off + r.h * hd;
    for (var c = 0u; c < hd; c++) { dq_out[qo + c] = acc[c]; }
}

// ---- attention_fused_backward_keys ----
@group(0) @binding(1) var<storage, read> q_keys: array<f32>;
@group(0) @binding(2) var<storage, read> dctx_keys: array<f32>;
@group(0) @binding(3) var<storage, read> ds_in: array<f32>;
@group(0) @binding(4) var<storage, read> pd_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> dk_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> dv_out: array<f32>;
// dK and dV are thirds of one packed [T, 3d] gradient: the host binds it once (as dk_out; WebGPU
// rejects one buffer in two writable bindings) and dV goes there at its own offset.
override KV_PACKED: bool = false;

@compute @workgroup_size(WG)
fn attention_fused_backward_keys(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                 @builtin(local_invocation_index) lid: u32) {
    let r = row_of(wid, nwg, lid);
    if (!r.valid) { return; }
    let n = p.seq;
    let hd = p.head_dim;
    let t0 = r.b * n;
    let col = r.pair * n * n + r.i; // element (i = 0, j) of the pair; + i·n for query i
    var dk: array<f32, MAX_HD>;
    var dv: array<f32, MAX_HD>;
    for (var i = 0u; i < n; i++) {
        let e = col + i * n;
        let ds = ds_in[e];
        let pd = pd_in[e];
        let qo = act_at(t0 + i, p.q_off, r.h);
        let go = ctx_at(t0 + i, r.h);
        for (var c = 0u; c < hd; c++) {
            dk[c] = fma(ds, q_keys[qo + c], dk[c]);
            dv[c] = fma(pd, dctx_keys[go + c], dv[c]);
        }
    }
    let ko = (t0 + r.i) * p.out_stride + r.h * hd;
    for (var c = 0u; c < hd; c++) {
        dk_out[ko + p.dk_off + c] = dk[c];
        if (KV_PACKED) {
            dk_out[ko + p.dv_off + c] = dv[c];
        } else {
            dv_out[ko + p.dv_off + c] = dv[c];
        }
    }
}
