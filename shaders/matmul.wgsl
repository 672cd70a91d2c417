// ---- matmul.wgsl: C = act(alpha * A·B + bias + beta * C), batched, with arbitrary strides ----
//
// Element (b, i, k) of A is A[a_off + b*a_sb + i*a_si + k*a_sk]; likewise B (b, k, j) and C (b, i, j),
// so every transpose (A·Bᵀ for nn.Linear, Aᵀ·B for weight gradients, per-head attention) is the
// same kernel with other strides. bias (optional, HAS_BIAS) is per output column j.
// An optional inner batch dimension (host: InnerBatch): matrix z < batch is (z / inner, z % inner)
// and each operand adds inner_index * its inner stride (attention's (batch, head) pairs); inner = 1
// with zero inner strides is the plain batched product.
// beta == 0 never reads C (outputs may hold garbage or NaN before the kernel runs).
//
// Register tiling: each thread computes a 4×4 block of C, a workgroup WG_X×WG_Y threads; no
// workgroup memory and no barriers (the variant that runs well on lavapipe and is simple
// everywhere).

struct Params {
    m: u32, n: u32, k: u32, batch: u32,
    a_off: u32, a_si: u32, a_sk: u32, a_sb: u32,
    b_off: u32, b_sk: u32, b_sj: u32, b_sb: u32,
    c_off: u32, c_si: u32, c_sj: u32, c_sb: u32,
    bias_off: u32, inner: u32, alpha: f32, beta: f32,
    a_sbi: u32, b_sbi: u32, c_sbi: u32, _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

override WG_X: u32 = 8u;
override WG_Y: u32 = 8u;
override HAS_BIAS: bool = false;
override ACT: u32 = 3u; // identity

@compute @workgroup_size(WG_X, WG_Y, 1)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i0 = (wid.y * WG_Y + lid.y) * 4u;
    let j0 = (wid.x * WG_X + lid.x) * 4u;
    let bz = wid.z;
    if (i0 >= p.m || j0 >= p.n || bz >= p.batch) {
        return;
    }
    let zo = bz / p.inner;
    let zi = bz - zo * p.inner;
    let a_base = p.a_off + zo * p.a_sb + zi * p.a_sbi;
    let b_base = p.b_off + zo * p.b_sb + zi * p.b_sbi;
    // Rows/columns past the edge read a valid row/column; their results are not stored.
    var ar: vec4<u32>;
    var bc: vec4<u32>;
    for (var r = 0u; r < 4u; r++) {
        ar[r] = a_base + min(i0 + r, p.m - 1u) * p.a_si;
        bc[r] = b_base + min(j0 + r, p.n - 1u) * p.b_sj;
    }
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var ak = 0u;
    var bk = 0u;
    for (var kk = 0u; kk < p.k; kk++) {
        let bv = vec4<f32>(b[bc.x + bk], b[bc.y + bk], b[bc.z + bk], b[bc.w + bk]);
        acc0 += a[ar.x + ak] * bv;
        acc1 += a[ar.y + ak] * bv;
        acc2 += a[ar.z + ak] * bv;
        acc3 += a[ar.w + ak] * bv;
        ak += p.a_sk;
        bk += p.b_sk;
    }
    var accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    let c_base = p.c_off + zo * p.c_sb + zi * p.c_sbi;
    for (var r = 0u; r < 4u; r++) {
        let i = i0 + r;
        if (i >= p.m) { break; }
        for (var cc = 0u; cc < 4u; cc++) {
            let j = j0 + cc;
            if (j >= p.n) { break; }
            var v = p.alpha * accs[r][cc];
            if (HAS_BIAS) { v += bias[p.bias_off + j]; }
            let ci = c_base + i * p.c_si + j * p.c_sj;
            if (p.beta != 0.0) { v += p.beta * c[ci]; }
            c[ci] = activate(ACT, v);
        }
    }
}
