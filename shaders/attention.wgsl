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
    _p0: u32,
    scale: f32,  // softmax_backward: 1 / sqrt(head_dim)
    _p1: u32,
    _p2: u32,
    _p3: u32,
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
    let mbase = (row / (p.heads * n)) * n;
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
