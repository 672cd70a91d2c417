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

@compute @workgroup_size(1)
fn clip_factor() {
    let ss = clip_ss[0];
    let bits = bitcast<u32>(ss);
    // Exponent all ones: Inf or NaN. Tested on the bits (a compiler may assume floats finite).
    if ((bits & 0x7f800000u) == 0x7f800000u) {
        clip_out[0] = bitcast<f32>(bits | 0x7fc00000u); // a quiet NaN
        return;
    }
    let c = p.max_norm / (sqrt(ss) + 1e-6);
    clip_out[0] = min(c, 1.0);
}
