// ---- adapter.wgsl: fused bottleneck adapter (Houlsby et al. 2019), forward and backward ----
//
// Per token row x (d):  a = W_down x + b_down (m),  g = act(a),  y = x + s * (W_up g + b_up).
// Weights use nn.Linear's layout: w_down [m, d], w_up [d, m]. Row-major [T, *] activations.
//
// One workgroup owns TT consecutive tokens. The bottleneck is walked in chunks of WG units:
// phase 1 computes the chunk of `a` (thread = bottleneck unit, TT tokens in registers) into
// workgroup memory, phase 2 multiplies it into the d outputs (thread = output column, TT tokens in
// registers). For m <= WG (the usual case) there is one chunk: two barriers per workgroup.

struct Params {
    t: u32,      // tokens
    d: u32,      // hidden size
    m: u32,      // bottleneck size
    _pad: u32,
    scale: f32,  // s
    _p1: u32,
    _p2: u32,
    _p3: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

override ACT: u32 = 0u;   // activation id (common.wgsl)
// Residual: 0 = the input x (y = x + s·(...)), 1 = a separate tensor r (y = r + s·(...), as
// AdapterHub's Pfeiffer placement, whose residual is the sub-layer output before the LayerNorm),
// 2 = none (y = s·(...), the adapter outputs AdapterFusion mixes).
override RESIDUAL: u32 = 0u;
override WG: u32 = 64u;   // threads per workgroup = bottleneck chunk
const TT: u32 = 8u;       // tokens per workgroup
const MAX_WG: u32 = 256u;

var<workgroup> tile: array<f32, 2048>; // TT * MAX_WG

// forward bindings
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w_down: array<f32>;
@group(0) @binding(3) var<storage, read> b_down: array<f32>;
@group(0) @binding(4) var<storage, read> w_up: array<f32>;
@group(0) @binding(5) var<storage, read> b_up: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<storage, read_write> a_out: array<f32>;
@group(0) @binding(8) var<storage, read> r_in: array<f32>;

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let t0 = linear_workgroup(wid, nwg) * TT;
    // Whole workgroups past the end still reach the barriers (uniform control flow); they only
    // skip the stores.
    let d = p.d;
    let m = p.m;
    let last_t = p.t - 1u;
    for (var c0 = 0u; c0 < m; c0 += WG) {
        // Phase 1: a[t0 + tt, c0 + lid].
        let j = c0 + lid;
        if (j < m) {
            var acc: array<f32, TT>;
            for (var tt = 0u; tt < TT; tt++) { acc[tt] = 0.0; }
            for (var i = 0u; i < d; i++) {
                let w = w_down[j * d + i];
                for (var tt = 0u; tt < TT; tt++) {
                    acc[tt] += w * x[min(t0 + tt, last_t) * d + i];
                }
            }
            let b = b_down[j];
            for (var tt = 0u; tt < TT; tt++) {
                let a = acc[tt] + b;
                if (t0 + tt <= last_t) { a_out[(t0 + tt) * m + j] = a; }
                tile[tt * WG + lid] = activate(ACT, a);
            }
        }
        workgroupBarrier();
        // Phase 2: y[t0 + tt, k] over this chunk's units, for columns k = lid, lid + WG, ...
        let cn = min(WG, m - c0);
        let is_last = c0 + WG >= m;
        for (var k = lid; k < d; k += WG) {
            var u: array<f32, TT>;
            for (var tt = 0u; tt < TT; tt++) { u[tt] = 0.0; }
            for (var jj = 0u; jj < cn; jj++) {
                let w = w_up[k * m + c0 + jj];
                for (var tt = 0u; tt < TT; tt++) {
                    u[tt] += w * tile[tt * WG + jj];
                }
            }
            for (var tt = 0u; tt < TT; tt++) {
                let t = t0 + tt;
                if (t <= last_t) {
                    let idx = t * d + k;
                    var total = u[tt];
                    if (c0 > 0u) { total += y[idx]; } // partial sum of earlier chunks
                    if (is_last) {
                        var res = 0.0;
                        if (RESIDUAL == 0u) { res = x[idx]; } else if (RESIDUAL == 1u) { res = r_in[idx]; }
                        y[idx] = res + p.scale * (total + b_up[k]);
                    } else {
                        y[idx] = total;
                    }
                }
            }
        }
        workgroupBarrier();
    }
}

// backward_dx bindings: given dy, the saved pre-activation a, and the weights, computes
//   dg = s W_up^T dy,  da = dg * act'(a),  dx = [dy +] W_down^T da,  and g = act(a)
// (dy is added only when the residual is the input, RESIDUAL == 0; otherwise the residual's
// gradient is dy itself and the caller routes it)
// (da and g feed the weight-gradient reductions).
@group(0) @binding(1) var<storage, read> bdy: array<f32>;
@group(0) @binding(2) var<storage, read> ba: array<f32>;
@group(0) @binding(3) var<storage, read> bw_down: array<f32>;
@group(0) @binding(4) var<storage, read> bw_up: array<f32>;
@group(0) @binding(5) var<storage, read_write> bdx: array<f32>;
@group(0) @binding(6) var<storage, read_write> bda: array<f32>;
@group(0) @binding(7) var<storage, read_write> bg: array<f32>;

@compute @workgroup_size(WG)
fn backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let t0 = linear_workgroup(wid, nwg) * TT;
    let d = p.d;
    let m = p.m;
    let last_t = p.t - 1u;
    for (var c0 = 0u; c0 < m; c0 += WG) {
        let j = c0 + lid;
        if (j < m) {
            var acc: array<f32, TT>;
            for (var tt = 0u; tt < TT; tt++) { acc[tt] = 0.0; }
            for (var k = 0u; k < d; k++) {
                let w = bw_up[k * m + j];
                for (var tt = 0u; tt < TT; tt++) {
                    acc[tt] += w * bdy[min(t0 + tt, last_t) * d + k];
                }
            }
            for (var tt = 0u; tt < TT; tt++) {
                let t = min(t0 + tt, last_t);
                let a = ba[t * m + j];
                let da = p.scale * acc[tt] * activate_grad(ACT, a);
                if (t0 + tt <= last_t) {
                    bda[t * m + j] = da;
                    bg[t * m + j] = activate(ACT, a);
                }
                tile[tt * WG + lid] = da;
            }
        }
        workgroupBarrier();
        let cn = min(WG, m - c0);
        for (var i = lid; i < d; i += WG) {
            var v: array<f32, TT>;
            for (var tt = 0u; tt < TT; tt++) { v[tt] = 0.0; }
            for (var jj = 0u; jj < cn; jj++) {
                let w = bw_down[(c0 + jj) * d + i];
                for (var tt = 0u; tt < TT; tt++) {
                    v[tt] += w * tile[tt * WG + jj];
                }
            }
            for (var tt = 0u; tt < TT; tt++) {
                let t = t0 + tt;
                if (t <= last_t) {
                    let idx = t * d + i;
                    if (c0 == 0u) {
                        bdx[idx] = select(0.0, bdy[idx], RESIDUAL == 0u) + v[tt];
                    } else {
                        bdx[idx] = bdx[idx] + v[tt];
                    }
                }
            }
        }
        workgroupBarrier();
    }
}

// ---- per-channel scaling (AdapterHub's `scaling: "learned" | "channel"`, and the affine part of
// the adapter's own LayerNorms, whose normalisation is the LayerNorm kernel with unit gamma) ----
// Over rows of d values (p.t rows, p.d columns); the scale vector has p.m values: 1 (one trainable
// scalar) or d (one per channel).

// channel_scale: y = x * s[k] (+ add). ADD: 0 nothing, 1 a vector add[k], 2 a tensor add[t, k].
override ADD: u32 = 0u;
@group(0) @binding(1) var<storage, read> cx: array<f32>;
@group(0) @binding(2) var<storage, read> cs: array<f32>;
@group(0) @binding(3) var<storage, read> cadd: array<f32>;
@group(0) @binding(4) var<storage, read_write> cy: array<f32>;

@compute @workgroup_size(WG)
fn channel_scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * WG + lid;
    if (i >= p.t * p.d) { return; }
    let k = i % p.d;
    var v = cx[i] * cs[select(0u, k, p.m > 1u)];
    if (ADD == 1u) {
        v += cadd[k];
    } else if (ADD == 2u) {
        v += cadd[i];
    }
    cy[i] = v;
}

// channel_dot: out[k] = sum_t a[t, k] * b[t, k] + p.scale * out[k] (p.scale: 0 writes, 1 adds).
// One thread per column, summing the rows in order: the same bits every run.
@group(0) @binding(1) var<storage, read> da_in: array<f32>;
@group(0) @binding(2) var<storage, read> db_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> dout: array<f32>;

@compute @workgroup_size(WG)
fn channel_dot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let k = linear_workgroup(wid, nwg) * WG + lid;
    if (k >= p.d) { return; }
    var acc = 0.0;
    for (var t = 0u; t < p.t; t++) {
        acc += da_in[t * p.d + k] * db_in[t * p.d + k];
    }
    if (p.scale != 0.0) {
        acc += p.scale * dout[k];
    }
    dout[k] = acc;
}
