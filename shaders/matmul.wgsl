// ---- matmul.wgsl: C = act(alpha * A·B + bias + beta * C), batched, with arbitrary strides ----
//
// Element (b, i, k) of A is A[a_off + b*a_sb + i*a_si + k*a_sk]; likewise B (b, k, j) and C (b, i, j),
// so every transpose (A·Bᵀ for nn.Linear, Aᵀ·B for weight gradients, per-head attention) is the
// same kernel with other strides. bias (optional, HAS_BIAS) is per output column j.
// An optional inner batch dimension (host: InnerBatch): matrix z < batch is (z / inner, z % inner)
// and each operand adds inner_index * its inner stride (attention's (batch, head) pairs); inner = 1
// with zero inner strides is the plain batched product.
// beta == 0 never reads C (outputs may hold garbage or NaN before the kernel runs).
// Epilogue options (override constants, so an unused one folds away per pipeline): PRE_OUT also
// writes v = alpha * A·B + bias + beta * C into aux (a layer's pre-activation beside act(v));
// GRAD_MUL writes C = v * act'(aux) instead of act(v) (a gradient through the activation whose
// pre-activation aux holds). aux is indexed as C is (same offset and strides).
//
// Variants (entry points; the host picks one per device, see src/kernels/matmul.rs). Every variant
// sums each output in k order 0, 1, ..., K-1 in one invocation, so results are deterministic, and
// all variants but `matmul` use the same fma chain and epilogue:
//   matmul           4×4 register tile per invocation, 8×8 invocations (the original kernel).
//   matmul_reg       8×8 register tile per invocation: 16 loads per 64 multiply-adds instead of
//                    8 per 16. For CPU drivers without usable subgroups.
//   matmul_tiled     64×64 workgroup tile staged through workgroup memory in k-steps of 16,
//                    16×16 invocations with 4×4 outputs each. For GPUs.
//   matmul_subgroup  (after the SUBGROUP KERNELS line; needs subgroups of exactly 8) a subgroup owns
//                    32 rows × 32 columns; per k each lane loads 4 rows of A and 4 columns of B, and
//                    the A values reach all lanes through subgroupBroadcast: 8 loads per 128
//                    multiply-adds. For lavapipe.
// Why loads: Mesa lavapipe (25.0) runs 8 invocations as one 8-wide SIMD program and turns every
// storage-buffer load whose offset is not a constant into 8 scalar, bounds-checked loads (~100
// instructions), so the number of load instructions per multiply-add decides the speed there;
// vec4 loads do not help (the same per-lane path, per component). No variant needs barriers except
// matmul_tiled (barriers inside loops are very slow on lavapipe).

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
@group(0) @binding(5) var<storage, read_write> aux: array<f32>;

override WG_X: u32 = 8u;
override WG_Y: u32 = 8u;
override HAS_BIAS: bool = false;
override ACT: u32 = 3u; // identity
override PRE_OUT: bool = false;
override GRAD_MUL: bool = false;

// C (and aux) at index ci from v (see the header).
fn finish_c(ci: u32, v: f32) {
    if (GRAD_MUL) {
        c[ci] = v * activate_grad(ACT, aux[ci]);
    } else {
        if (PRE_OUT) { aux[ci] = v; }
        c[ci] = activate(ACT, v);
    }
}

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
            finish_c(ci, v);
        }
    }
}

// ---- shared by the variants below ----

// Element offsets of A, B and C for matrix z of the (outer × inner) batch.
fn bases(z: u32) -> vec3<u32> {
    let zo = z / p.inner;
    let zi = z - zo * p.inner;
    return vec3<u32>(
        p.a_off + zo * p.a_sb + zi * p.a_sbi,
        p.b_off + zo * p.b_sb + zi * p.b_sbi,
        p.c_off + zo * p.c_sb + zi * p.c_sbi,
    );
}

// bias[j] (a clamped column, so reads stay in bounds), or 0 without bias.
fn bias_at(j: u32) -> f32 {
    if (HAS_BIAS) {
        return bias[p.bias_off + min(j, p.n - 1u)];
    }
    return 0.0;
}

// Whether beta != 0 (an override rather than a branch on p.beta: lavapipe runs both sides of
// branches, masked, so a runtime test would still cost the loads of C).
override USE_BETA: bool = false;

// The epilogue of one output: act(alpha * acc + bias + beta * C); nothing outside the matrix.
fn store_c(c_base: u32, i: u32, j: u32, acc: f32, bj: f32) {
    if (j < p.n) {
        var v = p.alpha * acc;
        if (HAS_BIAS) { v += bj; }
        let ci = c_base + i * p.c_si + j * p.c_sj;
        if (USE_BETA) { v += p.beta * c[ci]; }
        finish_c(ci, v);
    }
}

// Four outputs of row i at columns j, j + step, j + 2 step, j + 3 step.
fn store_row4(c_base: u32, i: u32, j: u32, step: u32, acc: vec4<f32>, bj: vec4<f32>) {
    if (i < p.m) {
        store_c(c_base, i, j, acc.x, bj.x);
        store_c(c_base, i, j + step, acc.y, bj.y);
        store_c(c_base, i, j + 2u * step, acc.z, bj.z);
        store_c(c_base, i, j + 3u * step, acc.w, bj.w);
    }
}

// ---- matmul_reg: 8×8 outputs per invocation, WG_X × WG_Y invocations ----
//
// Rows and columns past the edge read a valid (clamped) row/column; their results are not stored.
// Written out in full: loops over local arrays are not unrolled on lavapipe and land in scratch memory.
@compute @workgroup_size(WG_X, WG_Y, 1)
fn matmul_reg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i0 = (wid.y * WG_Y + lid.y) * 8u;
    let j0 = (wid.x * WG_X + lid.x) * 8u;
    let ab = bases(wid.z);
    let ra0 = ab.x + min(i0, p.m - 1u) * p.a_si;
    let ra1 = ab.x + min(i0 + 1u, p.m - 1u) * p.a_si;
    let ra2 = ab.x + min(i0 + 2u, p.m - 1u) * p.a_si;
    let ra3 = ab.x + min(i0 + 3u, p.m - 1u) * p.a_si;
    let ra4 = ab.x + min(i0 + 4u, p.m - 1u) * p.a_si;
    let ra5 = ab.x + min(i0 + 5u, p.m - 1u) * p.a_si;
    let ra6 = ab.x + min(i0 + 6u, p.m - 1u) * p.a_si;
    let ra7 = ab.x + min(i0 + 7u, p.m - 1u) * p.a_si;
    let cb0 = ab.y + min(j0, p.n - 1u) * p.b_sj;
    let cb1 = ab.y + min(j0 + 1u, p.n - 1u) * p.b_sj;
    let cb2 = ab.y + min(j0 + 2u, p.n - 1u) * p.b_sj;
    let cb3 = ab.y + min(j0 + 3u, p.n - 1u) * p.b_sj;
    let cb4 = ab.y + min(j0 + 4u, p.n - 1u) * p.b_sj;
    let cb5 = ab.y + min(j0 + 5u, p.n - 1u) * p.b_sj;
    let cb6 = ab.y + min(j0 + 6u, p.n - 1u) * p.b_sj;
    let cb7 = ab.y + min(j0 + 7u, p.n - 1u) * p.b_sj;
    var c00 = vec4<f32>(0.0);
    var c01 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0);
    var c11 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0);
    var c21 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0);
    var c31 = vec4<f32>(0.0);
    var c40 = vec4<f32>(0.0);
    var c41 = vec4<f32>(0.0);
    var c50 = vec4<f32>(0.0);
    var c51 = vec4<f32>(0.0);
    var c60 = vec4<f32>(0.0);
    var c61 = vec4<f32>(0.0);
    var c70 = vec4<f32>(0.0);
    var c71 = vec4<f32>(0.0);
    var ak = 0u;
    var bk = 0u;
    for (var kk = 0u; kk < p.k; kk++) {
        let b0 = vec4<f32>(b[cb0 + bk], b[cb1 + bk], b[cb2 + bk], b[cb3 + bk]);
        let b1 = vec4<f32>(b[cb4 + bk], b[cb5 + bk], b[cb6 + bk], b[cb7 + bk]);
        let a0 = vec4<f32>(a[ra0 + ak]);
        c00 = fma(a0, b0, c00);
        c01 = fma(a0, b1, c01);
        let a1 = vec4<f32>(a[ra1 + ak]);
        c10 = fma(a1, b0, c10);
        c11 = fma(a1, b1, c11);
        let a2 = vec4<f32>(a[ra2 + ak]);
        c20 = fma(a2, b0, c20);
        c21 = fma(a2, b1, c21);
        let a3 = vec4<f32>(a[ra3 + ak]);
        c30 = fma(a3, b0, c30);
        c31 = fma(a3, b1, c31);
        let a4 = vec4<f32>(a[ra4 + ak]);
        c40 = fma(a4, b0, c40);
        c41 = fma(a4, b1, c41);
        let a5 = vec4<f32>(a[ra5 + ak]);
        c50 = fma(a5, b0, c50);
        c51 = fma(a5, b1, c51);
        let a6 = vec4<f32>(a[ra6 + ak]);
        c60 = fma(a6, b0, c60);
        c61 = fma(a6, b1, c61);
        let a7 = vec4<f32>(a[ra7 + ak]);
        c70 = fma(a7, b0, c70);
        c71 = fma(a7, b1, c71);
        ak += p.a_sk;
        bk += p.b_sk;
    }
    let bias0 = vec4<f32>(bias_at(j0), bias_at(j0 + 1u), bias_at(j0 + 2u), bias_at(j0 + 3u));
    let bias1 = vec4<f32>(bias_at(j0 + 4u), bias_at(j0 + 5u), bias_at(j0 + 6u), bias_at(j0 + 7u));
    // The epilogue as a loop that stores row 0 and shifts the rows up (see matmul_subgroup).
    for (var r = 0u; r < 8u; r++) {
        store_row4(ab.z, i0 + r, j0, 1u, c00, bias0);
        store_row4(ab.z, i0 + r, j0 + 4u, 1u, c01, bias1);
        c00 = c10;
        c01 = c11;
        c10 = c20;
        c11 = c21;
        c20 = c30;
        c21 = c31;
        c30 = c40;
        c31 = c41;
        c40 = c50;
        c41 = c51;
        c50 = c60;
        c51 = c61;
        c60 = c70;
        c61 = c71;
    }
}

// ---- matmul_tiled: workgroup memory, for GPUs ----
//
// A 64×64 tile of C per workgroup of 16×16 invocations (4×4 outputs each). Each k-step of 16 stages
// a 64×16 slice of A and a 16×64 slice of B in workgroup memory, read from global memory so that
// neighbouring invocations read neighbouring addresses: along k when A_K_CONTIGUOUS (a_sk = 1),
// else along i; along j when B_J_CONTIGUOUS (b_sj = 1), else along k.
override A_K_CONTIGUOUS: bool = false;
override B_J_CONTIGUOUS: bool = true;
const TILE: u32 = 64u;
const TILE_K: u32 = 16u;
// Rows of TILE + 1: invocations that stage consecutive k of one row store to different banks.
const TILE_STRIDE: u32 = 65u;
var<workgroup> tile_a: array<f32, 1040>; // [TILE_K][TILE_STRIDE] (k-major)
var<workgroup> tile_b: array<f32, 1040>; // [TILE_K][TILE_STRIDE]

@compute @workgroup_size(16, 16, 1)
fn matmul_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let ti = wid.y * TILE;
    let tj = wid.x * TILE;
    let ab = bases(wid.z);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        for (var q = 0u; q < 4u; q++) {
            let e = li + q * 256u;
            var r: u32;
            var kk: u32;
            if (A_K_CONTIGUOUS) {
                r = e / TILE_K;
                kk = e % TILE_K;
            } else {
                kk = e / TILE;
                r = e % TILE;
            }
            var v = 0.0;
            if (ti + r < p.m && k0 + kk < p.k) {
                v = a[ab.x + (ti + r) * p.a_si + (k0 + kk) * p.a_sk];
            }
            tile_a[kk * TILE_STRIDE + r] = v;
            var cc: u32;
            if (B_J_CONTIGUOUS) {
                kk = e / TILE;
                cc = e % TILE;
            } else {
                cc = e / TILE_K;
                kk = e % TILE_K;
            }
            var w = 0.0;
            if (tj + cc < p.n && k0 + kk < p.k) {
                w = b[ab.y + (k0 + kk) * p.b_sk + (tj + cc) * p.b_sj];
            }
            tile_b[kk * TILE_STRIDE + cc] = w;
        }
        workgroupBarrier();
        // Only the k < K part of the last step: the sums stay the same chain as the other variants.
        let kn = min(TILE_K, p.k - k0);
        for (var kk = 0u; kk < kn; kk++) {
            let ao = kk * TILE_STRIDE + lid.y * 4u;
            let bo = kk * TILE_STRIDE + lid.x * 4u;
            let bv = vec4<f32>(tile_b[bo], tile_b[bo + 1u], tile_b[bo + 2u], tile_b[bo + 3u]);
            acc0 = fma(vec4<f32>(tile_a[ao]), bv, acc0);
            acc1 = fma(vec4<f32>(tile_a[ao + 1u]), bv, acc1);
            acc2 = fma(vec4<f32>(tile_a[ao + 2u]), bv, acc2);
            acc3 = fma(vec4<f32>(tile_a[ao + 3u]), bv, acc3);
        }
        workgroupBarrier();
    }
    let i0 = ti + lid.y * 4u;
    let j0 = tj + lid.x * 4u;
    let bj = vec4<f32>(bias_at(j0), bias_at(j0 + 1u), bias_at(j0 + 2u), bias_at(j0 + 3u));
    store_row4(ab.z, i0, j0, 1u, acc0, bj);
    store_row4(ab.z, i0 + 1u, j0, 1u, acc1, bj);
    store_row4(ab.z, i0 + 2u, j0, 1u, acc2, bj);
    store_row4(ab.z, i0 + 3u, j0, 1u, acc3, bj);
}

// ==== SUBGROUP KERNELS: everything below needs the SUBGROUP feature ====
// The host builds the part above this line into its own module (wgpu validates a whole module against
// the device's features), and the whole file only on devices with subgroups.

// ---- matmul_subgroup: subgroups of 8, each owning 32 rows × 32 columns of C ----
//
// Workgroup: WG_X / 8 subgroups side by side along j; workgroup (x, y, z) and subgroup s cover rows
// 32y .. 32y + 31 and columns 32 (x · WG_X / 8 + s) + lane + {0, 8, 16, 24} of matrix z. Per k, lane
// l loads A rows 32y + l + {0, 8, 16, 24} and its 4 columns of B; subgroupBroadcast hands row
// 32y + 8q + l' to every lane. Control flow stays uniform up to the stores (no early exits).
@compute @workgroup_size(WG_X, 1, 1)
fn matmul_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_id) sid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let i0 = wid.y * 32u;
    let j0 = (wid.x * (WG_X / 8u) + sid) * 32u + lane;
    let ab = bases(wid.z);
    let ra0 = ab.x + min(i0 + lane, p.m - 1u) * p.a_si;
    let ra1 = ab.x + min(i0 + 8u + lane, p.m - 1u) * p.a_si;
    let ra2 = ab.x + min(i0 + 16u + lane, p.m - 1u) * p.a_si;
    let ra3 = ab.x + min(i0 + 24u + lane, p.m - 1u) * p.a_si;
    let cb0 = ab.y + min(j0, p.n - 1u) * p.b_sj;
    let cb1 = ab.y + min(j0 + 8u, p.n - 1u) * p.b_sj;
    let cb2 = ab.y + min(j0 + 16u, p.n - 1u) * p.b_sj;
    let cb3 = ab.y + min(j0 + 24u, p.n - 1u) * p.b_sj;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    var c8 = vec4<f32>(0.0);
    var c9 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0);
    var c11 = vec4<f32>(0.0);
    var c12 = vec4<f32>(0.0);
    var c13 = vec4<f32>(0.0);
    var c14 = vec4<f32>(0.0);
    var c15 = vec4<f32>(0.0);
    var c16 = vec4<f32>(0.0);
    var c17 = vec4<f32>(0.0);
    var c18 = vec4<f32>(0.0);
    var c19 = vec4<f32>(0.0);
    var c20 = vec4<f32>(0.0);
    var c21 = vec4<f32>(0.0);
    var c22 = vec4<f32>(0.0);
    var c23 = vec4<f32>(0.0);
    var c24 = vec4<f32>(0.0);
    var c25 = vec4<f32>(0.0);
    var c26 = vec4<f32>(0.0);
    var c27 = vec4<f32>(0.0);
    var c28 = vec4<f32>(0.0);
    var c29 = vec4<f32>(0.0);
    var c30 = vec4<f32>(0.0);
    var c31 = vec4<f32>(0.0);
    // Two k per iteration, both steps' loads first and then both steps' multiply-adds (in k
    // order, so every output is the same chain as one k at a time): on lavapipe the loads are
    // per-lane blocks with branches, and the accumulators spill less when no load block sits
    // between the two steps (67 vs 61 GFLOP/s; see bench/NOTES.md). An odd K ends with one step.
    var ak = 0u;
    var bk = 0u;
    let k_pairs = p.k / 2u;
    for (var kk = 0u; kk < k_pairs; kk++) {
        let ak1 = ak + p.a_sk;
        let bk1 = bk + p.b_sk;
        let a0 = a[ra0 + ak];
        let a1 = a[ra1 + ak];
        let a2 = a[ra2 + ak];
        let a3 = a[ra3 + ak];
        let bv = vec4<f32>(b[cb0 + bk], b[cb1 + bk], b[cb2 + bk], b[cb3 + bk]);
        let a0n = a[ra0 + ak1];
        let a1n = a[ra1 + ak1];
        let a2n = a[ra2 + ak1];
        let a3n = a[ra3 + ak1];
        let bvn = vec4<f32>(b[cb0 + bk1], b[cb1 + bk1], b[cb2 + bk1], b[cb3 + bk1]);
        c0 = fma(vec4<f32>(subgroupBroadcast(a0, 0u)), bv, c0);
        c1 = fma(vec4<f32>(subgroupBroadcast(a0, 1u)), bv, c1);
        c2 = fma(vec4<f32>(subgroupBroadcast(a0, 2u)), bv, c2);
        c3 = fma(vec4<f32>(subgroupBroadcast(a0, 3u)), bv, c3);
        c4 = fma(vec4<f32>(subgroupBroadcast(a0, 4u)), bv, c4);
        c5 = fma(vec4<f32>(subgroupBroadcast(a0, 5u)), bv, c5);
        c6 = fma(vec4<f32>(subgroupBroadcast(a0, 6u)), bv, c6);
        c7 = fma(vec4<f32>(subgroupBroadcast(a0, 7u)), bv, c7);
        c8 = fma(vec4<f32>(subgroupBroadcast(a1, 0u)), bv, c8);
        c9 = fma(vec4<f32>(subgroupBroadcast(a1, 1u)), bv, c9);
        c10 = fma(vec4<f32>(subgroupBroadcast(a1, 2u)), bv, c10);
        c11 = fma(vec4<f32>(subgroupBroadcast(a1, 3u)), bv, c11);
        c12 = fma(vec4<f32>(subgroupBroadcast(a1, 4u)), bv, c12);
        c13 = fma(vec4<f32>(subgroupBroadcast(a1, 5u)), bv, c13);
        c14 = fma(vec4<f32>(subgroupBroadcast(a1, 6u)), bv, c14);
        c15 = fma(vec4<f32>(subgroupBroadcast(a1, 7u)), bv, c15);
        c16 = fma(vec4<f32>(subgroupBroadcast(a2, 0u)), bv, c16);
        c17 = fma(vec4<f32>(subgroupBroadcast(a2, 1u)), bv, c17);
        c18 = fma(vec4<f32>(subgroupBroadcast(a2, 2u)), bv, c18);
        c19 = fma(vec4<f32>(subgroupBroadcast(a2, 3u)), bv, c19);
        c20 = fma(vec4<f32>(subgroupBroadcast(a2, 4u)), bv, c20);
        c21 = fma(vec4<f32>(subgroupBroadcast(a2, 5u)), bv, c21);
        c22 = fma(vec4<f32>(subgroupBroadcast(a2, 6u)), bv, c22);
        c23 = fma(vec4<f32>(subgroupBroadcast(a2, 7u)), bv, c23);
        c24 = fma(vec4<f32>(subgroupBroadcast(a3, 0u)), bv, c24);
        c25 = fma(vec4<f32>(subgroupBroadcast(a3, 1u)), bv, c25);
        c26 = fma(vec4<f32>(subgroupBroadcast(a3, 2u)), bv, c26);
        c27 = fma(vec4<f32>(subgroupBroadcast(a3, 3u)), bv, c27);
        c28 = fma(vec4<f32>(subgroupBroadcast(a3, 4u)), bv, c28);
        c29 = fma(vec4<f32>(subgroupBroadcast(a3, 5u)), bv, c29);
        c30 = fma(vec4<f32>(subgroupBroadcast(a3, 6u)), bv, c30);
        c31 = fma(vec4<f32>(subgroupBroadcast(a3, 7u)), bv, c31);
        c0 = fma(vec4<f32>(subgroupBroadcast(a0n, 0u)), bvn, c0);
        c1 = fma(vec4<f32>(subgroupBroadcast(a0n, 1u)), bvn, c1);
        c2 = fma(vec4<f32>(subgroupBroadcast(a0n, 2u)), bvn, c2);
        c3 = fma(vec4<f32>(subgroupBroadcast(a0n, 3u)), bvn, c3);
        c4 = fma(vec4<f32>(subgroupBroadcast(a0n, 4u)), bvn, c4);
        c5 = fma(vec4<f32>(subgroupBroadcast(a0n, 5u)), bvn, c5);
        c6 = fma(vec4<f32>(subgroupBroadcast(a0n, 6u)), bvn, c6);
        c7 = fma(vec4<f32>(subgroupBroadcast(a0n, 7u)), bvn, c7);
        c8 = fma(vec4<f32>(subgroupBroadcast(a1n, 0u)), bvn, c8);
        c9 = fma(vec4<f32>(subgroupBroadcast(a1n, 1u)), bvn, c9);
        c10 = fma(vec4<f32>(subgroupBroadcast(a1n, 2u)), bvn, c10);
        c11 = fma(vec4<f32>(subgroupBroadcast(a1n, 3u)), bvn, c11);
        c12 = fma(vec4<f32>(subgroupBroadcast(a1n, 4u)), bvn, c12);
        c13 = fma(vec4<f32>(subgroupBroadcast(a1n, 5u)), bvn, c13);
        c14 = fma(vec4<f32>(subgroupBroadcast(a1n, 6u)), bvn, c14);
        c15 = fma(vec4<f32>(subgroupBroadcast(a1n, 7u)), bvn, c15);
        c16 = fma(vec4<f32>(subgroupBroadcast(a2n, 0u)), bvn, c16);
        c17 = fma(vec4<f32>(subgroupBroadcast(a2n, 1u)), bvn, c17);
        c18 = fma(vec4<f32>(subgroupBroadcast(a2n, 2u)), bvn, c18);
        c19 = fma(vec4<f32>(subgroupBroadcast(a2n, 3u)), bvn, c19);
        c20 = fma(vec4<f32>(subgroupBroadcast(a2n, 4u)), bvn, c20);
        c21 = fma(vec4<f32>(subgroupBroadcast(a2n, 5u)), bvn, c21);
        c22 = fma(vec4<f32>(subgroupBroadcast(a2n, 6u)), bvn, c22);
        c23 = fma(vec4<f32>(subgroupBroadcast(a2n, 7u)), bvn, c23);
        c24 = fma(vec4<f32>(subgroupBroadcast(a3n, 0u)), bvn, c24);
        c25 = fma(vec4<f32>(subgroupBroadcast(a3n, 1u)), bvn, c25);
        c26 = fma(vec4<f32>(subgroupBroadcast(a3n, 2u)), bvn, c26);
        c27 = fma(vec4<f32>(subgroupBroadcast(a3n, 3u)), bvn, c27);
        c28 = fma(vec4<f32>(subgroupBroadcast(a3n, 4u)), bvn, c28);
        c29 = fma(vec4<f32>(subgroupBroadcast(a3n, 5u)), bvn, c29);
        c30 = fma(vec4<f32>(subgroupBroadcast(a3n, 6u)), bvn, c30);
        c31 = fma(vec4<f32>(subgroupBroadcast(a3n, 7u)), bvn, c31);
        ak = ak1 + p.a_sk;
        bk = bk1 + p.b_sk;
    }
    if (p.k > 2u * k_pairs) {
        let a0 = a[ra0 + ak];
        let a1 = a[ra1 + ak];
        let a2 = a[ra2 + ak];
        let a3 = a[ra3 + ak];
        let bv = vec4<f32>(b[cb0 + bk], b[cb1 + bk], b[cb2 + bk], b[cb3 + bk]);
        c0 = fma(vec4<f32>(subgroupBroadcast(a0, 0u)), bv, c0);
        c1 = fma(vec4<f32>(subgroupBroadcast(a0, 1u)), bv, c1);
        c2 = fma(vec4<f32>(subgroupBroadcast(a0, 2u)), bv, c2);
        c3 = fma(vec4<f32>(subgroupBroadcast(a0, 3u)), bv, c3);
        c4 = fma(vec4<f32>(subgroupBroadcast(a0, 4u)), bv, c4);
        c5 = fma(vec4<f32>(subgroupBroadcast(a0, 5u)), bv, c5);
        c6 = fma(vec4<f32>(subgroupBroadcast(a0, 6u)), bv, c6);
        c7 = fma(vec4<f32>(subgroupBroadcast(a0, 7u)), bv, c7);
        c8 = fma(vec4<f32>(subgroupBroadcast(a1, 0u)), bv, c8);
        c9 = fma(vec4<f32>(subgroupBroadcast(a1, 1u)), bv, c9);
        c10 = fma(vec4<f32>(subgroupBroadcast(a1, 2u)), bv, c10);
        c11 = fma(vec4<f32>(subgroupBroadcast(a1, 3u)), bv, c11);
        c12 = fma(vec4<f32>(subgroupBroadcast(a1, 4u)), bv, c12);
        c13 = fma(vec4<f32>(subgroupBroadcast(a1, 5u)), bv, c13);
        c14 = fma(vec4<f32>(subgroupBroadcast(a1, 6u)), bv, c14);
        c15 = fma(vec4<f32>(subgroupBroadcast(a1, 7u)), bv, c15);
        c16 = fma(vec4<f32>(subgroupBroadcast(a2, 0u)), bv, c16);
        c17 = fma(vec4<f32>(subgroupBroadcast(a2, 1u)), bv, c17);
        c18 = fma(vec4<f32>(subgroupBroadcast(a2, 2u)), bv, c18);
        c19 = fma(vec4<f32>(subgroupBroadcast(a2, 3u)), bv, c19);
        c20 = fma(vec4<f32>(subgroupBroadcast(a2, 4u)), bv, c20);
        c21 = fma(vec4<f32>(subgroupBroadcast(a2, 5u)), bv, c21);
        c22 = fma(vec4<f32>(subgroupBroadcast(a2, 6u)), bv, c22);
        c23 = fma(vec4<f32>(subgroupBroadcast(a2, 7u)), bv, c23);
        c24 = fma(vec4<f32>(subgroupBroadcast(a3, 0u)), bv, c24);
        c25 = fma(vec4<f32>(subgroupBroadcast(a3, 1u)), bv, c25);
        c26 = fma(vec4<f32>(subgroupBroadcast(a3, 2u)), bv, c26);
        c27 = fma(vec4<f32>(subgroupBroadcast(a3, 3u)), bv, c27);
        c28 = fma(vec4<f32>(subgroupBroadcast(a3, 4u)), bv, c28);
        c29 = fma(vec4<f32>(subgroupBroadcast(a3, 5u)), bv, c29);
        c30 = fma(vec4<f32>(subgroupBroadcast(a3, 6u)), bv, c30);
        c31 = fma(vec4<f32>(subgroupBroadcast(a3, 7u)), bv, c31);
    }
    let bj = vec4<f32>(bias_at(j0), bias_at(j0 + 8u), bias_at(j0 + 16u), bias_at(j0 + 24u));
    // The epilogue as a loop: store 4 rows, shift the next ones up. Fully inlined, the 128 stores
    // (lavapipe turns each into per-lane branches) took ~20 s to compile; an array indexed by the
    // row runs slower (scratch memory); 4 rows per step compile in ~1 s and run as fast as 8.
    for (var q = 0u; q < 32u; q += 4u) {
        store_row4(ab.z, i0 + q, j0, 8u, c0, bj);
        store_row4(ab.z, i0 + q + 1u, j0, 8u, c1, bj);
        store_row4(ab.z, i0 + q + 2u, j0, 8u, c2, bj);
        store_row4(ab.z, i0 + q + 3u, j0, 8u, c3, bj);
        c0 = c4;
        c1 = c5;
        c2 = c6;
        c3 = c7;
        c4 = c8;
        c5 = c9;
        c6 = c10;
        c7 = c11;
        c8 = c12;
        c9 = c13;
        c10 = c14;
        c11 = c15;
        c12 = c16;
        c13 = c17;
        c14 = c18;
        c15 = c19;
        c16 = c20;
        c17 = c21;
        c18 = c22;
        c19 = c23;
        c20 = c24;
        c21 = c25;
        c22 = c26;
        c23 = c27;
        c24 = c28;
        c25 = c29;
        c26 = c30;
        c27 = c31;
    }
}
