// ---- layernorm.wgsl: LayerNorm over the last dimension, forward and input gradient ----
//
// forward:  s = x (+ r) (+ r2),  y = (s - mean) * rstd * gamma + beta,  rstd = 1 / sqrt(var + eps),
//           optionally storing s (the sum, LayerNorm's input, which backward needs).
// backward: g = dy * gamma,  dx (+)= rstd * (g - mean(g) - xhat * mean(g * xhat)),
//           mean and rstd recomputed from the saved input (no saved statistics).
//
// One workgroup of WG threads per row; thread t owns columns t, t + WG, ... Each reduction is a
// per-thread partial sum in a fixed order, one barrier, then every thread adds the WG partials in
// the same fixed order: two barriers per row, none inside a loop, and bit-identical results run to
// run. The variance is the two-pass sum of squared deviations (no E[x²] − mean² cancellation).
//
// CPU drivers run WG = 8 (one SIMD program a row on lavapipe) with PARTIALS: each thread then
// walks d / 8 columns, and sums them into four partial sums in turn (column i, i + WG, i + 2 WG,
// i + 3 WG, then again), added pairwise at the end, so a sum is no longer a chain of d / 8 terms
// (the MiniLM parity test's last hidden state: 3.5e-6 against float64 with one chain of 48,
// 4.9e-7 with WG = 64).

struct Params {
    rows: u32,
    d: u32,
    accumulate: u32, // backward: dx += instead of dx =
    _p0: u32,
    eps: f32,
    _p1: u32,
    _p2: u32,
    _p3: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

override WG: u32 = 64u;
override HAS_RESIDUAL: bool = false; // forward: normalise x + r
override HAS_SUM: bool = false;      // forward: store x + r
override HAS_RESIDUAL2: bool = false; // forward: normalise (x + r) + r2 (HAS_RESIDUAL too)
override HAS_DX2: bool = false;       // backward: write dx into dx2 as well
override PARTIALS: bool = false;     // four partial sums per thread (CPU drivers, see above)
// CACHED (CPU drivers, at most LN_CACHE columns a thread): each thread keeps its columns' values
// from the first pass in a private array and reads them there in the later passes, instead of
// reading (and adding) its inputs again: on lavapipe each storage access is a per-lane block of
// instructions. The same values in the same order, so the same bits.
override CACHED: bool = false;
const LN_CACHE: u32 = 128u;
const MAX_WG: u32 = 256u;

var<workgroup> part1: array<f32, MAX_WG>;
var<workgroup> part3: array<vec3<f32>, MAX_WG>;

// Every thread adds the WG partials in index order (the same bits in every thread).
fn total1() -> f32 {
    var s = 0.0;
    for (var i = 0u; i < WG; i++) { s += part1[i]; }
    return s;
}

fn total3() -> vec3<f32> {
    var s = vec3<f32>(0.0);
    for (var i = 0u; i < WG; i++) { s += part3[i]; }
    return s;
}

// One more term of a thread's sum: into the running sum (s.x) without PARTIALS; with PARTIALS
// into s.x, and the four partials rotate (s.x is the next term's partial).
fn add1(s: vec4<f32>, v: f32) -> vec4<f32> {
    if (PARTIALS) { return vec4<f32>(s.y, s.z, s.w, s.x + v); }
    return vec4<f32>(s.x + v, 0.0, 0.0, 0.0);
}

// The thread's sum from add1's partials.
fn sum1(s: vec4<f32>) -> f32 {
    if (PARTIALS) { return (s.x + s.y) + (s.z + s.w); }
    return s.x;
}

// add1 for three sums at once: s[0] is the running (or next) partial.
fn add3(s: ptr<function, array<vec3<f32>, 4>>, v: vec3<f32>) {
    if (PARTIALS) {
        let t = (*s)[0] + v;
        (*s)[0] = (*s)[1];
        (*s)[1] = (*s)[2];
        (*s)[2] = (*s)[3];
        (*s)[3] = t;
    } else {
        (*s)[0] += v;
    }
}

fn sum3(s: array<vec3<f32>, 4>) -> vec3<f32> {
    if (PARTIALS) { return (s[0] + s[1]) + (s[2] + s[3]); }
    return s[0];
}

// forward bindings
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> r: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> sum_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<storage, read> r2: array<f32>;

// (x + r) + r2: the order in which an adapter's up product (β = 1 onto its residual) and the
// two-term LayerNorm after it added the same three terms.
fn input(i: u32) -> f32 {
    if (HAS_RESIDUAL2) { return (x[i] + r[i]) + r2[i]; }
    if (HAS_RESIDUAL) { return x[i] + r[i]; }
    return x[i];
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    // A whole workgroup is either inside or past the end, so the barriers stay uniform.
    let row = linear_workgroup(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let d = p.d;
    let base = row * d;
    var s = vec4<f32>(0.0);
    var xs: array<f32, LN_CACHE>;
    var n = 0u;
    for (var i = lid; i < d; i += WG) {
        let v = input(base + i);
        if (HAS_SUM) { sum_out[base + i] = v; }
        if (CACHED) { xs[n] = v; n++; }
        s = add1(s, v);
    }
    part1[lid] = sum1(s);
    workgroupBarrier();
    let mean = total1() / f32(d);
    var q = vec4<f32>(0.0);
    n = 0u;
    for (var i = lid; i < d; i += WG) {
        var v: f32;
        if (CACHED) { v = xs[n]; n++; } else { v = input(base + i); }
        let c = v - mean;
        q = add1(q, c * c);
    }
    part3[lid] = vec3<f32>(sum1(q), 0.0, 0.0);
    workgroupBarrier();
    let rstd = inverseSqrt(total3().x / f32(d) + p.eps);
    n = 0u;
    for (var i = lid; i < d; i += WG) {
        var v: f32;
        if (CACHED) { v = xs[n]; n++; } else { v = input(base + i); }
        y[base + i] = (v - mean) * rstd * gamma[i] + beta[i];
    }
}

// backward bindings
@group(0) @binding(1) var<storage, read> bx: array<f32>;
@group(0) @binding(2) var<storage, read> bgamma: array<f32>;
@group(0) @binding(3) var<storage, read> bdy: array<f32>;
@group(0) @binding(4) var<storage, read_write> bdx: array<f32>;
@group(0) @binding(5) var<storage, read_write> bdx2: array<f32>;

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let d = p.d;
    let base = row * d;
    var s = vec4<f32>(0.0);
    for (var i = lid; i < d; i += WG) { s = add1(s, bx[base + i]); }
    part1[lid] = sum1(s);
    workgroupBarrier();
    let mean = total1() / f32(d);
    // (Σ (x - mean)², Σ g, Σ g (x - mean))
    var acc = array<vec3<f32>, 4>(vec3<f32>(0.0), vec3<f32>(0.0), vec3<f32>(0.0), vec3<f32>(0.0));
    var cs: array<f32, LN_CACHE>;
    var gs: array<f32, LN_CACHE>;
    var n = 0u;
    for (var i = lid; i < d; i += WG) {
        let c = bx[base + i] - mean;
        let g = bdy[base + i] * bgamma[i];
        if (CACHED) { cs[n] = c; gs[n] = g; n++; }
        add3(&acc, vec3<f32>(c * c, g, g * c));
    }
    part3[lid] = sum3(acc);
    workgroupBarrier();
    let t = total3();
    let inv_d = 1.0 / f32(d);
    let rstd = inverseSqrt(t.x * inv_d + p.eps);
    let mean_g = t.y * inv_d;
    // mean(g * xhat) = rstd * mean(g * (x - mean)); xhat * that = (x - mean) * rstd² * mean(g (x - mean))
    let k = rstd * rstd * t.z * inv_d;
    n = 0u;
    for (var i = lid; i < d; i += WG) {
        var c: f32;
        var g: f32;
        if (CACHED) {
            c = cs[n];
            g = gs[n];
            n++;
        } else {
            c = bx[base + i] - mean;
            g = bdy[base + i] * bgamma[i];
        }
        var v = rstd * (g - mean_g - c * k);
        if (p.accumulate != 0u) { v += bdx[base + i]; }
        bdx[base + i] = v;
        if (HAS_DX2) { bdx2[base + i] = v; }
    }
}

// ---- backward4: CPU drivers (WG = 8) where d is a multiple of 4 ----
// Thread t owns the column quads t, t + WG, ... of its row, read and written as vec4: on lavapipe
// each storage access is a per-lane block of instructions, one a quad here instead of one a
// column. A thread's sums keep one partial per quad component, added pairwise at the end,
// (s.x + s.y) + (s.z + s.w): four partial sums as with PARTIALS, over other columns, so results
// are close to `backward`'s but not the same bits. CACHED keeps up to LN_CACHE columns.
// (A forward over quads was tried: 22 % faster, as accurate on random rows, but it moved the
// saturated-fusion fixture's last hidden state from 1.2e-5 to 2.0e-5 of float64, over that
// case's bound; bench/NOTES.md.)
const LN_CACHE4: u32 = LN_CACHE / 4u;

fn hsum(s: vec4<f32>) -> f32 {
    return (s.x + s.y) + (s.z + s.w);
}

@group(0) @binding(1) var<storage, read> bx4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bgamma4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bdy4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> bdx4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> bdx2_4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let row = linear_workgroup(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let d4 = p.d / 4u;
    let base = row * d4;
    var s = vec4<f32>(0.0);
    for (var i = lid; i < d4; i += WG) { s += bx4[base + i]; }
    part1[lid] = hsum(s);
    workgroupBarrier();
    let mean = total1() / f32(p.d);
    // (Σ (x - mean)², Σ g, Σ g (x - mean)), one partial per quad component
    var scc = vec4<f32>(0.0);
    var sg = vec4<f32>(0.0);
    var sgc = vec4<f32>(0.0);
    var cs: array<vec4<f32>, LN_CACHE4>;
    var gs: array<vec4<f32>, LN_CACHE4>;
    var n = 0u;
    for (var i = lid; i < d4; i += WG) {
        let c = bx4[base + i] - mean;
        let g = bdy4[base + i] * bgamma4[i];
        if (CACHED) { cs[n] = c; gs[n] = g; n++; }
        scc += c * c;
        sg += g;
        sgc += g * c;
    }
    part3[lid] = vec3<f32>(hsum(scc), hsum(sg), hsum(sgc));
    workgroupBarrier();
    let t = total3();
    let inv_d = 1.0 / f32(p.d);
    let rstd = inverseSqrt(t.x * inv_d + p.eps);
    let mean_g = t.y * inv_d;
    let k = rstd * rstd * t.z * inv_d;
    n = 0u;
    for (var i = lid; i < d4; i += WG) {
        var c: vec4<f32>;
        var g: vec4<f32>;
        if (CACHED) {
            c = cs[n];
            g = gs[n];
            n++;
        } else {
            c = bx4[base + i] - mean;
            g = bdy4[base + i] * bgamma4[i];
        }
        var v = rstd * (g - mean_g - c * k);
        if (p.accumulate != 0u) { v += bdx4[base + i]; }
        bdx4[base + i] = v;
        if (HAS_DX2) { bdx2_4[base + i] = v; }
    }
}
