// ---- fusion.wgsl: AdapterFusion (Pfeiffer et al. 2021), the attention over N adapter outputs ----
//
// Per token t (row-major [T, d] activations; z and dz are [N, T, d]: z(n, t, i) at
// n * z_sn + t * z_st + i), with q̃ = W_Kᵀ q from the matmul kernel (the key bias and, with
// residual_before, the residual's key term are the same for every adapter and cancel in softmax):
//   s_n = q̃ · z_n / T,  p = softmax(s),  z̄ = Σ_n p_n z_n,  u = z̄ (+ r if residual_before)
// and the output o = W_V u (+ r unless residual_before) is finished by the matmul kernel when
// there is a value matrix; without one ("static") this kernel writes o = z̄ + r itself.
//
// `forward` and `backward` give one workgroup to one token; thread `lid` owns the columns
// i = lid + c * WG (c < COLS). Each z_n is read from memory exactly once: the adapters go in chunks
// of NC whose columns stay in registers while their dot products are summed over the workgroup
// (two barriers a chunk), then enter an online softmax. Every thread sums the same partial sums in
// the same order, so all threads hold identical scores and every result is bit-reproducible.
//
// Scores are computed relative to adapter 0 (s_n - s_0 = q̃ · (z_n - z_0) / T; softmax is
// shift-invariant): when the adapters' outputs share a large component the differences that decide
// the scores are not lost to cancellation. Backward works relative to the token's most probable
// adapter m instead (z_n - z_m; see `backward`).

struct Params {
    t: u32,      // tokens
    d: u32,      // hidden size
    n: u32,      // adapters
    z_sn: u32,   // z / dz stride between adapters
    z_st: u32,   // z / dz stride between tokens
    len: u32,    // regularization / fill: number of elements
    temp: f32,   // softmax temperature T
    coef: f32,   // regularization coefficient
    beta: f32,   // regularization: out = beta * out + ...
    flags: u32,  // bit 0: a value matrix follows (dynamic), bit 1: residual_before
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

override WG: u32 = 64u;          // threads per token workgroup (64 or 256)
override COLS: u32 = 1u;         // columns per thread: ceil(d / WG) <= MAX_COLS

const NC: u32 = 4u;              // adapters per chunk
const RG: u32 = 16u;             // partial-sum groups per adapter in the workgroup reduction
const MAX_COLS: u32 = 16u;
const MAX_N: u32 = 1024u;        // adapters (backward keeps one score each in workgroup memory)

var<workgroup> red: array<f32, 1024>;  // NC * max WG
var<workgroup> red2: array<f32, 64>;   // NC * RG
var<workgroup> gsh: array<f32, MAX_N>;

fn has_value() -> bool {
    return (p.flags & 1u) != 0u;
}

fn residual_before() -> bool {
    return (p.flags & 2u) != 0u;
}

// Sums each of the NC per-thread partials over the workgroup. Every thread returns the same NC
// totals: the same additions in the same order. Two barriers; call from uniform control flow.
fn chunk_sums(lid: u32, part: array<f32, 4>) -> array<f32, 4> {
    for (var j = 0u; j < NC; j++) {
        red[j * WG + lid] = part[j];
    }
    workgroupBarrier();
    if (lid < NC * RG) {
        let per = WG / RG;
        let base = (lid / RG) * WG + (lid % RG) * per;
        var s = 0.0;
        for (var k = 0u; k < per; k++) {
            s += red[base + k];
        }
        red2[lid] = s;
    }
    workgroupBarrier();
    var out: array<f32, 4>;
    for (var j = 0u; j < NC; j++) {
        var s = 0.0;
        for (var g = 0u; g < RG; g++) {
            s += red2[j * RG + g];
        }
        out[j] = s;
    }
    return out;
}

// ---- forward: scores, softmax and mix in one pass over z ----
// Writes p [T, N], the mixed u [T, d] (what W_V multiplies) and o [T, d]: o = z̄ + r when static;
// with a value matrix, o = r (the matmul then accumulates W_V u with beta = 1), or nothing if
// residual_before.
@group(0) @binding(1) var<storage, read> f_qt: array<f32>;
@group(0) @binding(2) var<storage, read> f_z: array<f32>;
@group(0) @binding(3) var<storage, read> f_r: array<f32>;
@group(0) @binding(4) var<storage, read_write> f_p: array<f32>;
@group(0) @binding(5) var<storage, read_write> f_mix: array<f32>;
@group(0) @binding(6) var<storage, read_write> f_o: array<f32>;

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let t = linear_workgroup(wid, nwg);
    if (t >= p.t) {
        return; // the whole workgroup: uniform
    }
    let d = p.d;
    let nn = p.n;
    let row = t * d;
    let z_tok = t * p.z_st;
    var qv: array<f32, MAX_COLS>;
    var z0: array<f32, MAX_COLS>;
    var acc: array<f32, MAX_COLS>;
    for (var c = 0u; c < COLS; c++) {
        let i = lid + c * WG;
        let ok = i < d;
        let ic = min(i, d - 1u);
        qv[c] = select(0.0, f_qt[row + ic], ok);
        z0[c] = select(0.0, f_z[z_tok + ic], ok);
        acc[c] = 0.0;
    }
    // Online softmax over the shifted scores; s_0 = 0 is in the first chunk, so m = 0 is a valid
    // start and no exponential overflows.
    var m = 0.0;
    var l = 0.0;
    for (var n0 = 0u; n0 < nn; n0 += NC) {
        var zv: array<array<f32, MAX_COLS>, 4>;
        var part: array<f32, 4>;
        for (var j = 0u; j < NC; j++) {
            // Adapters past the end re-read the last one; they get no weight.
            let base = min(n0 + j, nn - 1u) * p.z_sn + z_tok;
            var s = 0.0;
            for (var c = 0u; c < COLS; c++) {
                let i = lid + c * WG;
                let e = select(0.0, f_z[base + min(i, d - 1u)] - z0[c], i < d);
                zv[j][c] = e;
                s += qv[c] * e;
            }
            part[j] = s;
        }
        let tot = chunk_sums(lid, part);
        var sj: array<f32, 4>;
        var cmax = m;
        for (var j = 0u; j < NC; j++) {
            sj[j] = tot[j] / p.temp;
            if (n0 + j < nn) {
                cmax = max(cmax, sj[j]);
            }
        }
        let scale = exp(m - cmax);
        l *= scale;
        for (var c = 0u; c < COLS; c++) {
            acc[c] *= scale;
        }
        for (var j = 0u; j < NC; j++) {
            let n = n0 + j;
            if (n < nn) {
                let e = exp(sj[j] - cmax);
                l += e;
                for (var c = 0u; c < COLS; c++) {
                    acc[c] += e * zv[j][c];
                }
                // The thread that will normalize this score keeps it (same invocation: no barrier).
                if (lid == n % WG) {
                    f_p[t * nn + n] = sj[j];
                }
            }
        }
        m = cmax;
    }
    for (var n = lid; n < nn; n += WG) {
        f_p[t * nn + n] = exp(f_p[t * nn + n] - m) / l;
    }
    for (var c = 0u; c < COLS; c++) {
        let i = lid + c * WG;
        if (i < d) {
            let zb = z0[c] + acc[c] / l;
            let rr = f_r[row + i];
            var u = zb;
            if (residual_before()) {
                u = zb + rr;
            }
            f_mix[row + i] = u;
            if (!has_value()) {
                f_o[row + i] = zb + rr;
            } else if (!residual_before()) {
                f_o[row + i] = rr;
            }
        }
    }
}

// ---- backward: everything per token that needs z, in one pass over z ----
// Given dū = W_Vᵀ do (or do when static) as b_du, with g_n = dū · z_n and G = Σ p_m g_m:
//   ds_n = p_n (g_n - G),  dz_n = p_n dū + ds_n q̃ / T,  dq̃ = Σ_n ds_n z_n / T,
//   dr = dū if residual_before else do.
// With e_n = z_n - z_m (ĝ_n = dū · e_n, Ĝ = Σ p_n ĝ_n, Σ ds_n = 0):
//   ds_n = p_n (ĝ_n - Ĝ),  dq̃ = (Σ p_n ĝ_n e_n - Ĝ Σ p_n e_n) / T  (accumulated chunk by chunk).
// The reference m is the token's most probable adapter (the first largest p_n), so e_m = 0 and
// ĝ_m = 0 exactly. When the softmax saturates (p_m → 1) the true ds and dq̃ are O(1 - p_m): with
// any other reference, Σ p_n ĝ_n e_n and Ĝ Σ p_n e_n (and in the plain formula g_m and Σ p_n g_n)
// are O(1) and nearly equal, and their difference keeps only the f32 rounding of the large terms
// (PyTorch's softmax backward p·(g - Σ p g) loses the same digits). Relative to m every term is
// already O(1 - p_m), so the gradients keep their relative accuracy however saturated p is.
@group(0) @binding(1) var<storage, read> b_p: array<f32>;
@group(0) @binding(2) var<storage, read> b_qt: array<f32>;
@group(0) @binding(3) var<storage, read> b_z: array<f32>;
@group(0) @binding(4) var<storage, read> b_du: array<f32>;
@group(0) @binding(5) var<storage, read> b_do: array<f32>;
@group(0) @binding(6) var<storage, read_write> b_dz: array<f32>;
@group(0) @binding(7) var<storage, read_write> b_dqt: array<f32>;
@group(0) @binding(8) var<storage, read_write> b_dr: array<f32>;

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let t = linear_workgroup(wid, nwg);
    if (t >= p.t) {
        return;
    }
    let d = p.d;
    let nn = p.n;
    let row = t * d;
    let z_tok = t * p.z_st;
    // The reference adapter: the first with the largest p (every thread finds the same one).
    var mref = 0u;
    var pbest = b_p[t * nn];
    for (var n = 1u; n < nn; n++) {
        let pn = b_p[t * nn + n];
        if (pn > pbest) {
            pbest = pn;
            mref = n;
        }
    }
    let z_ref = mref * p.z_sn + z_tok;
    var du: array<f32, MAX_COLS>;
    var qv: array<f32, MAX_COLS>;
    var z0: array<f32, MAX_COLS>; // z_m
    var a: array<f32, MAX_COLS>;  // Σ p_n ĝ_n e_n
    var b: array<f32, MAX_COLS>;  // Σ p_n e_n
    for (var c = 0u; c < COLS; c++) {
        let i = lid + c * WG;
        let ok = i < d;
        let ic = min(i, d - 1u);
        du[c] = select(0.0, b_du[row + ic], ok);
        qv[c] = select(0.0, b_qt[row + ic], ok);
        z0[c] = select(0.0, b_z[z_ref + ic], ok);
        a[c] = 0.0;
        b[c] = 0.0;
    }
    var gg = 0.0;  // Ĝ
    for (var n0 = 0u; n0 < nn; n0 += NC) {
        var zv: array<array<f32, MAX_COLS>, 4>;
        var part: array<f32, 4>;
        for (var j = 0u; j < NC; j++) {
            let base = min(n0 + j, nn - 1u) * p.z_sn + z_tok;
            var s = 0.0;
            for (var c = 0u; c < COLS; c++) {
                let i = lid + c * WG;
                let e = select(0.0, b_z[base + min(i, d - 1u)] - z0[c], i < d);
                zv[j][c] = e;
                s += du[c] * e;
            }
            part[j] = s;
        }
        let tot = chunk_sums(lid, part);
        for (var j = 0u; j < NC; j++) {
            let n = n0 + j;
            if (n < nn) {
                let pn = b_p[t * nn + n];
                let w = pn * tot[j];
                gg += w;
                for (var c = 0u; c < COLS; c++) {
                    a[c] += w * zv[j][c];
                    b[c] += pn * zv[j][c];
                }
                if (lid == 0u) {
                    gsh[n] = tot[j];
                }
            }
        }
    }
    workgroupBarrier();
    for (var c = 0u; c < COLS; c++) {
        let i = lid + c * WG;
        if (i < d) {
            b_dqt[row + i] = (a[c] - gg * b[c]) / p.temp;
            if (residual_before()) {
                b_dr[row + i] = du[c];
            } else {
                b_dr[row + i] = b_do[row + i];
            }
        }
    }
    for (var n = 0u; n < nn; n++) {
        let pn = b_p[t * nn + n];
        let ds = pn * (gsh[n] - gg) / p.temp;
        let base = n * p.z_sn + z_tok;
        for (var c = 0u; c < COLS; c++) {
            let i = lid + c * WG;
            if (i < d) {
                b_dz[base + i] = pn * du[c] + ds * qv[c];
            }
        }
    }
}

// ---- regularization: AdapterHub's coef * ||I - W_V||²_F (W_V square, d x d) ----
@group(0) @binding(1) var<storage, read> r_w: array<f32>;
@group(0) @binding(2) var<storage, read_write> r_out: array<f32>;

// r_out[k] = beta * r_out[k] + 2 coef (W_V - I)[k]: the gradient.
@compute @workgroup_size(64)
fn reg_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let k = gid.x + gid.y * nwg.x * 64u;
    if (k >= p.len) {
        return;
    }
    let eye = select(0.0, 1.0, k / p.d == k % p.d);
    var v = 2.0 * p.coef * (r_w[k] - eye);
    if (p.beta != 0.0) {
        v += p.beta * r_out[k];
    }
    r_out[k] = v;
}

var<workgroup> rsum: array<f32, 256>;

// r_out[0] = beta * r_out[0] + coef * Σ (I - W_V)²: the loss. One workgroup; fixed-order sums.
@compute @workgroup_size(256)
fn reg_loss(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var k = lid; k < p.len; k += 256u) {
        let diff = select(0.0, 1.0, k / p.d == k % p.d) - r_w[k];
        s += diff * diff;
    }
    rsum[lid] = s;
    workgroupBarrier();
    for (var h = 128u; h > 0u; h >>= 1u) {
        if (lid < h) {
            rsum[lid] += rsum[lid + h];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var v = p.coef * rsum[0];
        if (p.beta != 0.0) {
            v += p.beta * r_out[0];
        }
        r_out[0] = v;
    }
}

// ---- zero_fill: out[k] = 0 for k < len (the key-bias gradient, zero by the algebra) ----
@group(0) @binding(1) var<storage, read_write> z_out: array<f32>;

@compute @workgroup_size(64)
fn zero_fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let k = gid.x + gid.y * nwg.x * 64u;
    if (k < p.len) {
        z_out[k] = 0.0;
    }
}
