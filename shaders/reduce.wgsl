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
