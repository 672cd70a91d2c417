// ---- loss.wgsl: the heads' losses over [B, C] logits, and a row softmax ----
//
// Every loss runs in one workgroup with a fixed order of summation: the same bits every run.
// cross_entropy: thread t takes rows t, t + WG, ... (a whole row each: C is a classifier's or a
// tagger's handful of classes). Rows whose label is IGNORE (u32 max; HF's -100) are left out: the
// kernel first counts the labelled rows N, then writes dlogits = (softmax − onehot) / N (zero on
// ignored rows) and sums its rows' losses in order; thread 0 adds the WG partials in index order.
// With no labelled row the loss and every gradient are 0. A label ≥ C other than IGNORE is
// clamped to C − 1 (the host validates labels; the clamp only keeps the kernel inside its buffers).
// mse: mean over the B·C elements of (x − y)², dlogits = 2 (x − y) / (B·C) (regression, C = 1).
// bce_logits: mean over the B·C elements of max(x, 0) − x·y + log(1 + exp(−|x|)), dlogits =
// (sigmoid(x) − y) / (B·C) (multi-label classification, y in [0, 1]).
// softmax: one thread per row.

struct Params {
    rows: u32,
    classes: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

override WG: u32 = 256u;
const MAX_WG: u32 = 256u;

var<workgroup> part: array<f32, MAX_WG>;
var<workgroup> count_part: array<u32, MAX_WG>;
var<workgroup> labelled: u32;

const IGNORE: u32 = 0xffffffffu;

// Thread 0 adds the WG partials in index order and writes loss[0] = sum · scale.
fn finish_sum(lid: u32, acc: f32, scale: f32) {
    part[lid] = acc;
    workgroupBarrier();
    if (lid == 0u) {
        var s = 0.0;
        for (var i = 0u; i < WG; i++) { s += part[i]; }
        loss[0] = s * scale;
    }
}

@group(0) @binding(1) var<storage, read> logits: array<f32>;

// Largest logit of the row starting at `base`.
fn row_max(base: u32) -> f32 {
    var m = logits[base];
    for (var c = 1u; c < p.classes; c++) { m = max(m, logits[base + c]); }
    return m;
}

// cross_entropy bindings
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>;

@compute @workgroup_size(WG)
fn cross_entropy(@builtin(local_invocation_index) lid: u32) {
    let nc = p.classes;
    var n = 0u;
    for (var r = lid; r < p.rows; r += WG) { n += select(1u, 0u, labels[r] == IGNORE); }
    count_part[lid] = n;
    workgroupBarrier();
    if (lid == 0u) {
        var s = 0u;
        for (var i = 0u; i < WG; i++) { s += count_part[i]; }
        labelled = s;
    }
    workgroupBarrier();
    let total = labelled;
    let inv_b = select(0.0, 1.0 / f32(total), total > 0u);
    var acc = 0.0;
    for (var r = lid; r < p.rows; r += WG) {
        let base = r * nc;
        if (labels[r] == IGNORE) {
            for (var c = 0u; c < nc; c++) { dlogits[base + c] = 0.0; }
            continue;
        }
        let m = row_max(base);
        var z = 0.0;
        for (var c = 0u; c < nc; c++) {
            let e = exp(logits[base + c] - m);
            dlogits[base + c] = e;
            z += e;
        }
        let label = min(labels[r], nc - 1u);
        // -log softmax(l)[label] = log z - (l[label] - max)
        acc += log(z) - (logits[base + label] - m);
        let inv_z = 1.0 / z;
        for (var c = 0u; c < nc; c++) {
            let onehot = select(0.0, 1.0, c == label);
            dlogits[base + c] = (dlogits[base + c] * inv_z - onehot) * inv_b;
        }
    }
    finish_sum(lid, acc, inv_b);
}

// mse / bce_logits bindings: float targets, one per logit
@group(0) @binding(2) var<storage, read> targets: array<f32>;

@compute @workgroup_size(WG)
fn mse(@builtin(local_invocation_index) lid: u32) {
    let n = p.rows * p.classes;
    let inv_n = 1.0 / f32(n);
    var acc = 0.0;
    for (var i = lid; i < n; i += WG) {
        let e = logits[i] - targets[i];
        acc += e * e;
        dlogits[i] = 2.0 * e * inv_n;
    }
    finish_sum(lid, acc, inv_n);
}

@compute @workgroup_size(WG)
fn bce_logits(@builtin(local_invocation_index) lid: u32) {
    let n = p.rows * p.classes;
    let inv_n = 1.0 / f32(n);
    var acc = 0.0;
    for (var i = lid; i < n; i += WG) {
        let x = logits[i];
        let y = targets[i];
        // exp of a non-positive number only: no overflow for any x.
        let e = exp(-abs(x));
        acc += max(x, 0.0) - x * y + log(1.0 + e);
        let sig = select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
        dlogits[i] = (sig - y) * inv_n;
    }
    finish_sum(lid, acc, inv_n);
}

// softmax bindings
@group(0) @binding(2) var<storage, read_write> probs: array<f32>;

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let r = linear_workgroup(wid, nwg) * WG + lid;
    if (r >= p.rows) { return; }
    let nc = p.classes;
    let base = r * nc;
    let m = row_max(base);
    var z = 0.0;
    for (var c = 0u; c < nc; c++) {
        let e = exp(logits[base + c] - m);
        probs[base + c] = e;
        z += e;
    }
    let inv_z = 1.0 / z;
    for (var c = 0u; c < nc; c++) { probs[base + c] = probs[base + c] * inv_z; }
}
