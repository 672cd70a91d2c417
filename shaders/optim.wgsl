// ---- optim.wgsl: AdamW and the global gradient norm for clipping ----
//
// adamw: one thread per element, torch.optim.AdamW's update (the host folds the step's scalars):
//   g = grad * scale                    (scale = grad_scale, times scale_t[0] when use_scale)
//   p = p * decay_mul                   (decay_mul = 1 - lr * weight_decay, or exactly 1)
//   m = m + (1 - b1) * (g - m)          (torch's exp_avg.lerp_(g, 1 - b1))
//   v = v * b2 + (1 - b2) * g * g
//   p = p - step_size * m / (sqrt(v) / bc2_sqrt + eps)
// with step_size = lr / (1 - b1^t) and bc2_sqrt = sqrt(1 - b2^t).
//
// sumsq_partial: Σ x² over one tensor, one partial per chunk of CHUNK elements (a workgroup each),
// written to scratch[off + chunk]. sumsq_final: one workgroup adds scratch[0..n] into out[0].
// Every sum runs in a fixed order (per thread in index order, then 16 groups of 16 partials, then
// the 16 group sums), so the same gradients give the same bits every run; no atomics.
//
// clip_factor: out[0] = min(1, max_norm / (sqrt(ss) + 1e-6)) as torch.nn.utils.clip_grad_norm_;
// a non-finite ss gives NaN (torch: a non-finite gradient turns the clipped gradients into NaN).
//
// The multi-tensor kernels at the end (adamw_multi, sumsq_multi, sumsq_final_clip) do the same over
// many tensors per dispatch.

struct Params {
    n: u32,           // adamw / sumsq_partial: elements; sumsq_final: partials
    use_scale: u32,   // adamw: multiply the gradient by scale_t[0] too
    off: u32,         // sumsq_partial: first scratch slot of this tensor
    _p0: u32,
    grad_scale: f32,
    decay_mul: f32,
    one_minus_b1: f32,
    beta2: f32,
    one_minus_b2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    max_norm: f32,    // clip_factor
    _p1: f32,
    _p2: f32,
    _p3: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 256u;
const PER_THREAD: u32 = 16u;
const CHUNK: u32 = 4096u; // WG * PER_THREAD, elements per sumsq_partial workgroup

// ---- adamw ----
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<f32>;
@group(0) @binding(5) var<storage, read> scale_t: array<f32>;

@compute @workgroup_size(WG)
fn adamw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wid, nwg) * WG + lid;
    if (i >= p.n) { return; }
    var scale = p.grad_scale;
    if (p.use_scale != 0u) { scale = scale * scale_t[0]; }
    let g = grad[i] * scale;
    let w = param[i] * p.decay_mul;
    let m0 = exp_avg[i];
    let m = m0 + p.one_minus_b1 * (g - m0);
    let v = exp_avg_sq[i] * p.beta2 + p.one_minus_b2 * (g * g);
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    let denom = sqrt(v) / p.bc2_sqrt + p.eps;
    param[i] = w - p.step_size * (m / denom);
}

// ---- sums of squares ----
var<workgroup> part: array<f32, WG>;
var<workgroup> part16: array<f32, 16>;

// Adds part[0..WG] in a fixed order; the result is valid in thread 0. Call in uniform control flow.
fn workgroup_sum(lid: u32, s: f32) -> f32 {
    part[lid] = s;
    workgroupBarrier();
    if (lid < 16u) {
        var t = 0.0;
        for (var j = 0u; j < 16u; j++) { t += part[lid * 16u + j]; }
        part16[lid] = t;
    }
    workgroupBarrier();
    var total = 0.0;
    if (lid == 0u) {
        for (var j = 0u; j < 16u; j++) { total += part16[j]; }
    }
    return total;
}

@group(0) @binding(1) var<storage, read> sq_src: array<f32>;
@group(0) @binding(2) var<storage, read_write> sq_scratch: array<f32>;

@compute @workgroup_size(WG)
fn sumsq_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let chunk = linear_workgroup(wid, nwg);
    let base = chunk * CHUNK;
    if (base >= p.n) { return; } // a whole workgroup past the end (folded grid): uniform
    var s = 0.0;
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = base + k * WG + lid;
        if (i < p.n) {
            let x = sq_src[i];
            s += x * x;
        }
    }
    let total = workgroup_sum(lid, s);
    if (lid == 0u) { sq_scratch[p.off + chunk] = total; }
}

@group(0) @binding(1) var<storage, read> fin_scratch: array<f32>;
@group(0) @binding(2) var<storage, read_write> fin_out: array<f32>;

@compute @workgroup_size(WG)
fn sumsq_final(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.n; i += WG) { s += fin_scratch[i]; }
    let total = workgroup_sum(lid, s);
    if (lid == 0u) { fin_out[0] = total; }
}

// ---- clip factor ----
@group(0) @binding(1) var<storage, read> clip_ss: array<f32>;
@group(0) @binding(2) var<storage, read_write> clip_out: array<f32>;

// min(1, max_norm / (sqrt(ss) + 1e-6)), or a quiet NaN for a non-finite ss.
fn clip_of(ss: f32, max_norm: f32) -> f32 {
    let bits = bitcast<u32>(ss);
    // Exponent all ones: Inf or NaN. Tested on the bits (a compiler may assume floats finite).
    if ((bits & 0x7f800000u) == 0x7f800000u) {
        return bitcast<f32>(bits | 0x7fc00000u); // a quiet NaN
    }
    let c = max_norm / (sqrt(ss) + 1e-6);
    return min(c, 1.0);
}

@compute @workgroup_size(1)
fn clip_factor() {
    clip_out[0] = clip_of(clip_ss[0], p.max_norm);
}

// sumsq_final_clip: sumsq_final and clip_factor in one dispatch (the same sums, the same factor).
@group(0) @binding(1) var<storage, read> fc_scratch: array<f32>;
@group(0) @binding(2) var<storage, read_write> fc_ss: array<f32>;
@group(0) @binding(3) var<storage, read_write> fc_factor: array<f32>;

@compute @workgroup_size(WG)
fn sumsq_final_clip(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.n; i += WG) { s += fc_scratch[i]; }
    let total = workgroup_sum(lid, s);
    if (lid == 0u) {
        fc_ss[0] = total;
        fc_factor[0] = clip_of(total, p.max_norm);
    }
}

// ---- multi-tensor AdamW and sums of squares ----
//
// Several tensors bound side by side in one dispatch; a table in the parameter block gives each
// slot's element count and first workgroup (first[slots] = the dispatch's workgroups), so every
// workgroup works on one slot (the slot is uniform across it). Each element goes through the
// same expressions as in adamw / sumsq_partial, and each tensor's CHUNK partials land in the same
// scratch slots: results are bit-identical to the per-tensor kernels.
//
// adamw_multi: ADAMW_SLOTS (param, grad, exp_avg, exp_avg_sq) quadruples at bindings 1 + 4s ..
// 4 + 4s, the clip factor at binding 33; decay_mul per slot.
// sumsq_multi: SQ_SLOTS gradients at bindings 1 .. 16, the scratch at 17; slot s's chunk c goes
// to scratch[base + first[s] + c] (base: this dispatch's first partial).

struct MultiParams {
    slots: u32,
    use_scale: u32,  // adamw_multi: multiply the gradient by multi_scale[0] too
    base: u32,       // sumsq_multi: first scratch slot of this dispatch
    _p0: u32,
    grad_scale: f32,
    one_minus_b1: f32,
    beta2: f32,
    one_minus_b2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    _p1: f32,
    n: array<vec4<u32>, 4>,          // elements of each slot (up to 16)
    first: array<vec4<u32>, 5>,      // first workgroup of each slot; first[slots] = all workgroups
    decay_mul: array<vec4<f32>, 4>,  // adamw_multi
}

@group(0) @binding(0) var<uniform> mt: MultiParams;

fn mt_n(s: u32) -> u32 { return mt.n[s / 4u][s % 4u]; }
fn mt_first(s: u32) -> u32 { return mt.first[s / 4u][s % 4u]; }

// The slot whose workgroups include workgroup w (first[] is non-decreasing).
fn slot_of(w: u32) -> u32 {
    var s = 0u;
    for (var j = 1u; j < mt.slots; j++) {
        if (w >= mt_first(j)) { s = j; }
    }
    return s;
}

struct Moments {
    w: f32,
    m: f32,
    v: f32,
}

// adamw's update of one element (the same expressions in the same order).
fn adamw_element(w0: f32, g0: f32, m0: f32, v0: f32, scale: f32, decay_mul: f32) -> Moments {
    let g = g0 * scale;
    let w = w0 * decay_mul;
    let m = m0 + mt.one_minus_b1 * (g - m0);
    let v = v0 * mt.beta2 + mt.one_minus_b2 * (g * g);
    let denom = sqrt(v) / mt.bc2_sqrt + mt.eps;
    return Moments(w - mt.step_size * (m / denom), m, v);
}

@group(0) @binding(1) var<storage, read_write> par0: array<f32>;
@group(0) @binding(2) var<storage, read> grd0: array<f32>;
@group(0) @binding(3) var<storage, read_write> avg0: array<f32>;
@group(0) @binding(4) var<storage, read_write> sq0: array<f32>;
@group(0) @binding(5) var<storage, read_write> par1: array<f32>;
@group(0) @binding(6) var<storage, read> grd1: array<f32>;
@group(0) @binding(7) var<storage, read_write> avg1: array<f32>;
@group(0) @binding(8) var<storage, read_write> sq1: array<f32>;
@group(0) @binding(9) var<storage, read_write> par2: array<f32>;
@group(0) @binding(10) var<storage, read> grd2: array<f32>;
@group(0) @binding(11) var<storage, read_write> avg2: array<f32>;
@group(0) @binding(12) var<storage, read_write> sq2: array<f32>;
@group(0) @binding(13) var<storage, read_write> par3: array<f32>;
@group(0) @binding(14) var<storage, read> grd3: array<f32>;
@group(0) @binding(15) var<storage, read_write> avg3: array<f32>;
@group(0) @binding(16) var<storage, read_write> sq3: array<f32>;
@group(0) @binding(17) var<storage, read_write> par4: array<f32>;
@group(0) @binding(18) var<storage, read> grd4: array<f32>;
@group(0) @binding(19) var<storage, read_write> avg4: array<f32>;
@group(0) @binding(20) var<storage, read_write> sq4: array<f32>;
@group(0) @binding(21) var<storage, read_write> par5: array<f32>;
@group(0) @binding(22) var<storage, read> grd5: array<f32>;
@group(0) @binding(23) var<storage, read_write> avg5: array<f32>;
@group(0) @binding(24) var<storage, read_write> sq5: array<f32>;
@group(0) @binding(25) var<storage, read_write> par6: array<f32>;
@group(0) @binding(26) var<storage, read> grd6: array<f32>;
@group(0) @binding(27) var<storage, read_write> avg6: array<f32>;
@group(0) @binding(28) var<storage, read_write> sq6: array<f32>;
@group(0) @binding(29) var<storage, read_write> par7: array<f32>;
@group(0) @binding(30) var<storage, read> grd7: array<f32>;
@group(0) @binding(31) var<storage, read_write> avg7: array<f32>;
@group(0) @binding(32) var<storage, read_write> sq7: array<f32>;
@group(0) @binding(33) var<storage, read> multi_scale: array<f32>;

@compute @workgroup_size(WG)
fn adamw_multi(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let wg = linear_workgroup(wid, nwg);
    if (wg >= mt_first(mt.slots)) { return; } // past the last slot (folded grid)
    let s = slot_of(wg);
    let i = (wg - mt_first(s)) * WG + lid;
    if (i >= mt_n(s)) { return; }
    var scale = mt.grad_scale;
    if (mt.use_scale != 0u) { scale = scale * multi_scale[0]; }
    let dm = mt.decay_mul[s / 4u][s % 4u];
    var r: Moments;
    switch s {
        case 0u: { r = adamw_element(par0[i], grd0[i], avg0[i], sq0[i], scale, dm); par0[i] = r.w; avg0[i] = r.m; sq0[i] = r.v; }
        case 1u: { r = adamw_element(par1[i], grd1[i], avg1[i], sq1[i], scale, dm); par1[i] = r.w; avg1[i] = r.m; sq1[i] = r.v; }
        case 2u: { r = adamw_element(par2[i], grd2[i], avg2[i], sq2[i], scale, dm); par2[i] = r.w; avg2[i] = r.m; sq2[i] = r.v; }
        case 3u: { r = adamw_element(par3[i], grd3[i], avg3[i], sq3[i], scale, dm); par3[i] = r.w; avg3[i] = r.m; sq3[i] = r.v; }
        case 4u: { r = adamw_element(par4[i], grd4[i], avg4[i], sq4[i], scale, dm); par4[i] = r.w; avg4[i] = r.m; sq4[i] = r.v; }
        case 5u: { r = adamw_element(par5[i], grd5[i], avg5[i], sq5[i], scale, dm); par5[i] = r.w; avg5[i] = r.m; sq5[i] = r.v; }
        case 6u: { r = adamw_element(par6[i], grd6[i], avg6[i], sq6[i], scale, dm); par6[i] = r.w; avg6[i] = r.m; sq6[i] = r.v; }
        default: { r = adamw_element(par7[i], grd7[i], avg7[i], sq7[i], scale, dm); par7[i] = r.w; avg7[i] = r.m; sq7[i] = r.v; }
    }
}

@group(0) @binding(1) var<storage, read> sg0: array<f32>;
@group(0) @binding(2) var<storage, read> sg1: array<f32>;
@group(0) @binding(3) var<storage, read> sg2: array<f32>;
@group(0) @binding(4) var<storage, read> sg3: array<f32>;
@group(0) @binding(5) var<storage, read> sg4: array<f32>;
@group(0) @binding(6) var<storage, read> sg5: array<f32>;
@group(0) @binding(7) var<storage, read> sg6: array<f32>;
@group(0) @binding(8) var<storage, read> sg7: array<f32>;
@group(0) @binding(9) var<storage, read> sg8: array<f32>;
@group(0) @binding(10) var<storage, read> sg9: array<f32>;
@group(0) @binding(11) var<storage, read> sg10: array<f32>;
@group(0) @binding(12) var<storage, read> sg11: array<f32>;
@group(0) @binding(13) var<storage, read> sg12: array<f32>;
@group(0) @binding(14) var<storage, read> sg13: array<f32>;
@group(0) @binding(15) var<storage, read> sg14: array<f32>;
@group(0) @binding(16) var<storage, read> sg15: array<f32>;
@group(0) @binding(17) var<storage, read_write> sq_multi_scratch: array<f32>;

// Element i of slot s's gradient.
fn sq_load(s: u32, i: u32) -> f32 {
    switch s {
        case 0u: { return sg0[i]; }
        case 1u: { return sg1[i]; }
        case 2u: { return sg2[i]; }
        case 3u: { return sg3[i]; }
        case 4u: { return sg4[i]; }
        case 5u: { return sg5[i]; }
        case 6u: { return sg6[i]; }
        case 7u: { return sg7[i]; }
        case 8u: { return sg8[i]; }
        case 9u: { return sg9[i]; }
        case 10u: { return sg10[i]; }
        case 11u: { return sg11[i]; }
        case 12u: { return sg12[i]; }
        case 13u: { return sg13[i]; }
        case 14u: { return sg14[i]; }
        default: { return sg15[i]; }
    }
}

@compute @workgroup_size(WG)
fn sumsq_multi(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let wg = linear_workgroup(wid, nwg);
    if (wg >= mt_first(mt.slots)) { return; } // a whole workgroup past the end (folded grid): uniform
    let s = slot_of(wg);
    let base = (wg - mt_first(s)) * CHUNK;
    let n = mt_n(s);
    var acc = 0.0;
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = base + k * WG + lid;
        if (i < n) {
            let x = sq_load(s, i);
            acc += x * x;
        }
    }
    let total = workgroup_sum(lid, acc);
    if (lid == 0u) { sq_multi_scratch[mt.base + wg] = total; }
}
