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

var<workgroup> part_a: array<f32, MAX_WG>;
var<workgroup> part_b: array<f32, MAX_WG>;

// softmax_rows bindings
@group(0) @binding(1) var<storage, read> mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> scores: array<f32>;

@compute @workgroup_size(WG)
fn softmax_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
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

// softmax_backward bindings
@group(0) @binding(1) var<storage, read> probs: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;

@compute @workgroup_size(WG)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
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
