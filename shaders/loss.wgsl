// ---- loss.wgsl: softmax and mean softmax cross-entropy over the rows of [B, C] logits ----
//
// cross_entropy: one workgroup. Thread t takes rows t, t + WG, ... (a whole row each: C is a
// classifier's handful of classes), writes dlogits = (softmax − onehot) / B and sums its rows'
// losses in order; after one barrier thread 0 adds the WG partials in index order. The result is
// the same bits every run. A label ≥ C is clamped to C − 1 (the host validates labels; the clamp
// only keeps the kernel inside its buffers).
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
    let inv_b = 1.0 / f32(p.rows);
    var acc = 0.0;
    for (var r = lid; r < p.rows; r += WG) {
        let base = r * nc;
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
    part[lid] = acc;
    workgroupBarrier();
    if (lid == 0u) {
        var s = 0.0;
        for (var i = 0u; i < WG; i++) { s += part[i]; }
        loss[0] = s * inv_b;
    }
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
