// ---- reduce.wgsl: deterministic reductions ----
//
// col_sum: out[out_off + j] = scale * Σ_i x[x_off + i * row_stride + j] (+ beta * out), j < cols.
// One thread per column, rows summed in order: the same inputs give the same bits every run.

struct Params {
    rows: u32, cols: u32, row_stride: u32, x_off: u32,
    out_off: u32, _p0: u32, scale: f32, beta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn col_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = gid.x + gid.y * nwg.x * WG;
    if (j >= p.cols) {
        return;
    }
    // Four independent partial sums (fixed order) for more memory-level parallelism.
    var s = vec4<f32>(0.0);
    var i = 0u;
    for (; i + 4u <= p.rows; i += 4u) {
        let base = p.x_off + i * p.row_stride + j;
        s += vec4<f32>(x[base], x[base + p.row_stride], x[base + 2u * p.row_stride], x[base + 3u * p.row_stride]);
    }
    for (; i < p.rows; i++) {
        s.x += x[p.x_off + i * p.row_stride + j];
    }
    var v = p.scale * ((s.x + s.y) + (s.z + s.w));
    if (p.beta != 0.0) { v += p.beta * out[p.out_off + j]; }
    out[p.out_off + j] = v;
}

// col_sum2: two column sums in one dispatch (an adapter's two bias gradients): threads j < cols
// sum x's columns into out, the next cols2 threads x2's into out2, each column exactly as col_sum
// sums it (the same bits). Row-major, no offsets.
struct Params2 {
    rows: u32, cols: u32, cols2: u32, _p0: u32,
    scale: f32, beta: f32, scale2: f32, beta2: f32,
}

@group(0) @binding(0) var<uniform> q: Params2;
@group(0) @binding(1) var<storage, read> y1: array<f32>;
@group(0) @binding(2) var<storage, read_write> o1: array<f32>;
@group(0) @binding(3) var<storage, read> y2: array<f32>;
@group(0) @binding(4) var<storage, read_write> o2: array<f32>;

// Element i of the first (second = false) or the second tensor.
fn pair_at(second: bool, i: u32) -> f32 {
    if (second) { return y2[i]; }
    return y1[i];
}

@compute @workgroup_size(WG)
fn col_sum2(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = gid.x + gid.y * nwg.x * WG;
    if (t >= q.cols + q.cols2) {
        return;
    }
    let second = t >= q.cols;
    let j = select(t, t - q.cols, second);
    let cols = select(q.cols, q.cols2, second);
    var s = vec4<f32>(0.0);
    var i = 0u;
    for (; i + 4u <= q.rows; i += 4u) {
        let base = i * cols + j;
        s += vec4<f32>(pair_at(second, base), pair_at(second, base + cols), pair_at(second, base + 2u * cols),
                       pair_at(second, base + 3u * cols));
    }
    for (; i < q.rows; i++) {
        s.x += pair_at(second, i * cols + j);
    }
    let scale = select(q.scale, q.scale2, second);
    let beta = select(q.beta, q.beta2, second);
    var v = scale * ((s.x + s.y) + (s.z + s.w));
    if (second) {
        if (beta != 0.0) { v += beta * o2[j]; }
        o2[j] = v;
    } else {
        if (beta != 0.0) { v += beta * o1[j]; }
        o1[j] = v;
    }
}
