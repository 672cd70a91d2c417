// ---- attention.wgsl: the row-wise parts of masked multi-head self-attention ----
//
// The products (S = scale·Q·Kᵀ, ctx = P·V and their gradients) run on the shared matmul kernel;
// these kernels work on rows of the [batch, heads, seq, seq] score / probability tensors:
//
// softmax_rows:     P = softmax over keys j of S, with keys whose mask is 0 getting exactly 0
//                   (in place: the tensor holds S on entry and P on exit). A row whose keys are
//                   all masked gets all zeros.
// softmax_backward: dS = scale · P ⊙ (dP − Σ_j P dP) (in place: the tensor holds dP on entry).
//
// A workgroup of WG threads owns WG / TPR rows, TPR threads per row; thread t of a row walks keys
// t, t + TPR, ... Reductions: per-thread partials, one barrier, then each thread combines its
// row's TPR partials in index order (deterministic). Two barriers in softmax_rows, one in
// softmax_backward, none inside loops. CPU drivers run WG = 8 (one SIMD program on lavapipe) with
// TPR up to 8.
// ROW_THREAD (CPU drivers, rows of at most ROW_KEYS keys): one thread a row, its values held in
// registers between the passes, no barriers (on lavapipe each barrier suspends the SIMD program
// and every storage access is a per-lane block of instructions); it keeps the TPR partial sums
// that TPR threads a row would (key j into partial j % TPR), added in the same order: the same bits.

struct Params {
    rows: u32,   // batch * heads * seq
    seq: u32,
    heads: u32,
    row0: u32,   // softmax_rows4_dropout: the global token row of the batch's first query
    scale: f32,  // softmax_backward: 1 / sqrt(head_dim)
    // softmax_rows4_dropout: the probabilities' dropout mask, drawn as dropout.wgsl draws it
    threshold: u32,
    drop_scale: f32,
    step: u32,
    seed_lo: u32,
    seed_hi: u32,
    stream: u32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

override WG: u32 = 64u;
override TPR: u32 = 8u; // threads per row, a power of two dividing WG
const MAX_WG: u32 = 256u;
const NEG_BIG: f32 = -3.4028234e38;
override ROW_THREAD: bool = false;
override ROW_LOOP: u32 = 128u; // keys walked: seq rounded up to a power of two (at most ROW_KEYS)
const ROW_KEYS: u32 = 128u;

var<workgroup> part_a: array<f32, MAX_WG>;
var<workgroup> part_b: array<f32, MAX_WG>;

// softmax_rows bindings
@group(0) @binding(1) var<storage, read> mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> scores: array<f32>;

@compute @workgroup_size(WG)
fn softmax_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    if (ROW_THREAD) {
        softmax_row_thread(linear_workgroup(wid, nwg) * WG + lid);
        return;
    }
    let first = (lid / TPR) * TPR; // this row's first partial
    let t = lid - first;
    let row = linear_workgroup(wid, nwg) * (WG / TPR) + lid / TPR;
    // Threads of rows past the end do no memory work but still reach the barriers.
    let valid = row < p.rows;
    let n = p.seq;
    let base = row * n;
    let mbase = (row / (p.heads * n)) * n; // batch index * seq
    var mx = NEG_BIG;
    if (valid) {
        for (var j = t; j < n; j += TPR) {
            if (mask[mbase + j] > 0.5) { mx = max(mx, scores[base + j]); }
        }
    }
    part_a[lid] = mx;
    workgroupBarrier();
    var m = NEG_BIG;
    for (var i = 0u; i < TPR; i++) { m = max(m, part_a[first + i]); }
    var s = 0.0;
    if (valid) {
        for (var j = t; j < n; j += TPR) {
            var e = 0.0;
            if (mask[mbase + j] > 0.5) { e = exp(scores[base + j] - m); }
            scores[base + j] = e;
            s += e;
        }
    }
    part_b[lid] = s;
    workgroupBarrier();
    var z = 0.0;
    for (var i = 0u; i < TPR; i++) { z += part_b[first + i]; }
    if (valid) {
        // z == 0 only when every key is masked: the row stays all zeros.
        let inv = select(0.0, 1.0 / z, z > 0.0);
        for (var j = t; j < n; j += TPR) {
            scores[base + j] = scores[base + j] * inv;
        }
    }
}

// softmax_rows for one row in one thread (see ROW_THREAD).
fn softmax_row_thread(row: u32) {
    if (row >= p.rows) { return; }
    let n = p.seq;
    let base = row * n;
    let mbase = divmod(row, p.heads * n).x * n;
    var v: array<f32, ROW_KEYS>;
    var keep: array<bool, ROW_KEYS>;
    var mx = NEG_BIG;
    for (var j = 0u; j < ROW_LOOP; j++) {
        keep[j] = false;
        if (j < n) {
            keep[j] = mask[mbase + j] > 0.5;
            v[j] = scores[base + j];
            if (keep[j]) { mx = max(mx, v[j]); }
        }
    }
    var part = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var j = 0u; j < ROW_LOOP; j++) {
        var e = 0.0;
        if (keep[j]) { e = exp(v[j] - mx); }
        v[j] = e;
        if (j < n) { part[j % TPR] += e; }
    }
    var z = 0.0;
    for (var i = 0u; i < TPR; i++) { z += part[i]; }
    let inv = select(0.0, 1.0 / z, z > 0.0);
    for (var j = 0u; j < ROW_LOOP; j++) {
        if (j < n) { scores[base + j] = v[j] * inv; }
    }
}

// softmax_backward bindings
@group(0) @binding(1) var<storage, read> probs: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;

@compute @workgroup_size(WG)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    if (ROW_THREAD) {
        softmax_backward_thread(linear_workgroup(wid, nwg) * WG + lid);
        return;
    }
    let first = (lid / TPR) * TPR;
    let t = lid - first;
    let row = linear_workgroup(wid, nwg) * (WG / TPR) + lid / TPR;
    let valid = row < p.rows;
    let n = p.seq;
    let base = row * n;
    var s = 0.0;
    if (valid) {
        for (var j = t; j < n; j += TPR) { s += probs[base + j] * grad[base + j]; }
    }
    part_a[lid] = s;
    workgroupBarrier();
    var dot = 0.0;
    for (var i = 0u; i < TPR; i++) { dot += part_a[first + i]; }
    if (valid) {
        for (var j = t; j < n; j += TPR) {
            let pj = probs[base + j];
            grad[base + j] = p.scale * pj * (grad[base + j] - dot);
        }
    }
}

// softmax_backward for one row in one thread (see ROW_THREAD).
fn softmax_backward_thread(row: u32) {
    if (row >= p.rows) { return; }
    let n = p.seq;
    let base = row * n;
    var pv: array<f32, ROW_KEYS>;
    var gv: array<f32, ROW_KEYS>;
    var part = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var j = 0u; j < ROW_LOOP; j++) {
        if (j < n) {
            pv[j] = probs[base + j];
            gv[j] = grad[base + j];
            part[j % TPR] += pv[j] * gv[j];
        }
    }
    var dot = 0.0;
    for (var i = 0u; i < TPR; i++) { dot += part[i]; }
    for (var j = 0u; j < ROW_LOOP; j++) {
        if (j < n) { grad[base + j] = p.scale * pv[j] * (gv[j] - dot); }
    }
}

// ---- softmax_rows4 / softmax_backward4: the one-thread-a-row kernels over key quads ----
// For rows of a multiple of 4 keys (CPU drivers): the row read and written as vec4 (on lavapipe
// one per-lane block of instructions a quad instead of one a key) and held as quads between the
// passes. The maximum is still taken key by key in key order and key j still goes into partial
// j % TPR in key order: the same bits as softmax_row_thread / softmax_backward_thread.
@group(0) @binding(1) var<storage, read> mask4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> scores4: array<vec4<f32>>;

const ROW_QUADS: u32 = ROW_KEYS / 4u;

// The quad q's four terms into the partials of keys 4q .. 4q + 3, in key order.
fn add_quad(part: ptr<function, array<f32, 8>>, q: u32, e: vec4<f32>) {
    let j = 4u * q;
    (*part)[j % TPR] += e.x;
    (*part)[(j + 1u) % TPR] += e.y;
    (*part)[(j + 2u) % TPR] += e.z;
    (*part)[(j + 3u) % TPR] += e.w;
}

fn sum_parts(part: array<f32, 8>) -> f32 {
    var z = 0.0;
    for (var i = 0u; i < TPR; i++) { z += part[i]; }
    return z;
}

// The row's quads between the passes (private: each invocation its own).
var<private> quad_row: array<vec4<f32>, ROW_QUADS>;

// The softmax of `row` into quad_row (the probabilities once scaled by the returned 1 / z).
fn softmax_quads(row: u32) -> f32 {
    let n4 = p.seq / 4u;
    let base = row * n4;
    let mbase = divmod(row, p.heads * p.seq).x * n4;
    var keep: array<vec4<bool>, ROW_QUADS>;
    var mx = NEG_BIG;
    for (var q = 0u; q < ROW_LOOP / 4u; q++) {
        if (q < n4) {
            let k = mask4[mbase + q] > vec4<f32>(0.5);
            let s = scores4[base + q];
            keep[q] = k;
            quad_row[q] = s;
            if (k.x) { mx = max(mx, s.x); }
            if (k.y) { mx = max(mx, s.y); }
            if (k.z) { mx = max(mx, s.z); }
            if (k.w) { mx = max(mx, s.w); }
        }
    }
    var part = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var q = 0u; q < ROW_LOOP / 4u; q++) {
        if (q < n4) {
            // Masked keys: exactly 0 (their exp, possibly infinite, is not used).
            let e = select(vec4<f32>(0.0), exp(quad_row[q] - mx), keep[q]);
            quad_row[q] = e;
            add_quad(&part, q, e);
        }
    }
    let z = sum_parts(part);
    return select(0.0, 1.0 / z, z > 0.0);
}

@compute @workgroup_size(WG)
fn softmax_rows4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg) * WG + lid;
    if (row >= p.rows) { return; }
    let inv = softmax_quads(row);
    let n4 = p.seq / 4u;
    for (var q = 0u; q < ROW_LOOP / 4u; q++) {
        if (q < n4) { scores4[row * n4 + q] = quad_row[q] * inv; }
    }
}

// The mask words of row `row` (= (b · heads + h) · seq + i): the query's global token row
// row0 + b · seq + i and head h's first column group h · seq / 4, as dropout.wgsl keys them.
fn row_draw_base(row: u32) -> vec2<u32> {
    let bh_i = divmod(row, p.seq);
    let b_h = divmod(bh_i.x, p.heads);
    return vec2<u32>(p.row0 + b_h.x * p.seq + bh_i.y, b_h.y * (p.seq / 4u));
}

// The factor of quad q of a row whose words `row_draw_base` gave: 0 where dropped, 1 / (1 − p)
// where kept (one Philox4x32-10 call a quad, as dropout_apply4 draws it).
fn quad_keep_scale(base: vec2<u32>, q: u32) -> vec4<f32> {
    let draws = philox4x32_10(vec4<u32>(base.y + q, base.x, p.step, p.stream), vec2<u32>(p.seed_lo, p.seed_hi));
    return select(vec4<f32>(p.drop_scale), vec4<f32>(0.0), draws < vec4<u32>(p.threshold));
}

// ---- softmax_rows4_dropout: softmax_rows4 that also writes the dropped probabilities P' ----
// P into scores4 (backward needs it undropped) and P' = P · mask · 1/(1 − p) into dropped4, the
// mask drawn exactly as dropout.wgsl's attention layout draws it (one Philox4x32-10 call a quad:
// counter (column / 4, global query row, step, stream), key (seed low, seed high)): the bits of
// softmax_rows4 followed by dropout_apply4, in one pass over the row.
@group(0) @binding(3) var<storage, read_write> dropped4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn softmax_rows4_dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg) * WG + lid;
    if (row >= p.rows) { return; }
    let inv = softmax_quads(row);
    let n4 = p.seq / 4u;
    let words = row_draw_base(row);
    for (var q = 0u; q < ROW_LOOP / 4u; q++) {
        if (q < n4) {
            let probs = quad_row[q] * inv;
            scores4[row * n4 + q] = probs;
            dropped4[row * n4 + q] = probs * quad_keep_scale(words, q);
        }
    }
}

@group(0) @binding(1) var<storage, read> probs4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> grad4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn softmax_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg) * WG + lid;
    if (row >= p.rows) { return; }
    let n4 = p.seq / 4u;
    let base = row * n4;
    var pv: array<vec4<f32>, ROW_QUADS>;
    var gv: array<vec4<f32>, ROW_QUADS>;
    var part = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var q = 0u; q < ROW_LOOP / 4u; q++) {
        if (q < n4) {
            pv[q] = probs4[base + q];
            gv[q] = grad4[base + q];
            add_quad(&part, q, pv[q] * gv[q]);
        }
    }
    let dot = sum_parts(part);
    for (var q = 0u; q < ROW_LOOP / 4u; q++) {
        if (q < n4) { grad4[base + q] = p.scale * pv[q] * (gv[q] - dot); }
    }
}

// ---- softmax_backward4_dropout: the pair dropout and softmax_backward4 in one pass ----
// Bindings: P (read), dP' (read_write: dS on exit), P' (written, for dV = P'ᵀ · dctx). Each quad's
// mask is drawn once, as softmax_rows4_dropout draws it; dP = dP' · mask · 1/(1 − p) and
// P' = P · mask · 1/(1 − p) are the products dropout_pair4 computes, and dS the one
// softmax_backward4 computes from them: the same bits as those two dispatches.
@group(0) @binding(3) var<storage, read_write> dropped_probs4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn softmax_backward4_dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg) * WG + lid;
    if (row >= p.rows) { return; }
    let n4 = p.seq / 4u;
    let base = row * n4;
    let words = row_draw_base(row);
    var pv: array<vec4<f32>, ROW_QUADS>;
    var gv: array<vec4<f32>, ROW_QUADS>;
    var part = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (var q = 0u; q < ROW_LOOP / 4u; q++) {
        if (q < n4) {
            let m = quad_keep_scale(words, q);
            pv[q] = probs4[base + q];
            dropped_probs4[base + q] = pv[q] * m;
            gv[q] = grad4[base + q] * m;
            add_quad(&part, q, pv[q] * gv[q]);
        }
    }
    let dot = sum_parts(part);
    for (var q = 0u; q < ROW_LOOP / 4u; q++) {
        if (q < n4) { grad4[base + q] = p.scale * pv[q] * (gv[q] - dot); }
    }
}
