// ---- matmul_f16.wgsl: matmul on f16 inputs with f32 accumulation, in 16 × 16 fragments ----
//
// (After `enable f16;`, common.wgsl and matmul_vec4.wgsl.) The staging, fragment addressing and
// epilogue of the cooperative-matrix kernel (matmul_coop.wgsl, which is this file plus its entry
// point), and `matmul_f16`, the same kernel with the 16 × 16 × 16 fragment multiply-add done by
// ordinary invocations: it runs wherever SHADER_F16 does (lavapipe included), so the tests check
// every index of the coop kernel except the three coop built-ins themselves, and it is the f16
// path for GPUs without cooperative matrices.
//
// A workgroup computes a BM × BN tile of C with SG_M × SG_N subgroups of SGS invocations; subgroup
// (gi, gj) owns FM × FN fragments of 16 × 16 (FM = BM / (16 SG_M), FN = BN / (16 SG_N); FM ∈ {1,2,4},
// FN ∈ {1,2}). K is walked in slices of BK (a multiple of 16): each slice of A and B is read from
// global memory as f32 quads (matmul_vec4.wgsl), rounded to f16 (round to nearest even) and stored
// in workgroup memory, two buffers (the next slice is read into registers during the products).
// Layout in workgroup memory follows the global one so that quads are stored contiguously:
//   A: row-major [BM][BK + 8] when A_KQ (k contiguous), else column-major [BK][BM + 8];
//   B: row-major [BK][BN + 8] when B_JQ (j contiguous), else column-major [BN][BK + 8];
// fragments are loaded with coopLoadT (row-major) or coopLoad (column-major) at offsets and
// strides that are multiples of 8 halves (16 bytes). The epilogue stores each fragment to a
// per-subgroup 16 × 16 f32 scratch (row-major), and the whole workgroup applies alpha, bias,
// beta and the activation from there (any C layout, ragged edges masked).
//
// Precision: inputs are rounded to f16 (unit roundoff u = 2^-11); products of two f16 are exact
// in f32 and are summed in f32, so |C - C_exact| <= (2u + u^2 + K u_acc) sum_k |a_ik| |b_kj|
// (u_acc = 2^-24, or 2^-23 for accumulators that truncate); see src/kernels/matmul.rs.

override BM: u32 = 32u;
override BN: u32 = 32u;
override BK: u32 = 16u;
override SG_M: u32 = 1u;
override SG_N: u32 = 1u;
// Invocations per subgroup: the device's subgroup size for matmul_coop; 32 for matmul_f16.
override SGS: u32 = 32u;
// SG_M · SG_N · SGS, and the halves in one buffer of the A and B slices (set by the host).
override WG: u32 = 32u;
override A_TILE: u32 = 768u;
override B_TILE: u32 = 768u;

var<workgroup> ha: array<f16, 2u * A_TILE>;
var<workgroup> hb: array<f16, 2u * B_TILE>;
var<workgroup> scratch: array<f32, SG_M * SG_N * 256u>;

// Offset in `ha` of A(r, k) of slice buffer `buf` (tile coordinates), and the fragment stride.
fn a_at(buf: u32, r: u32, k: u32) -> u32 {
    if (A_KQ) {
        return buf * A_TILE + r * (BK + 8u) + k;
    }
    return buf * A_TILE + k * (BM + 8u) + r;
}

fn a_stride() -> u32 {
    return select(BM + 8u, BK + 8u, A_KQ);
}

fn b_at(buf: u32, k: u32, j: u32) -> u32 {
    if (B_JQ) {
        return buf * B_TILE + k * (BN + 8u) + j;
    }
    return buf * B_TILE + j * (BK + 8u) + k;
}

fn b_stride() -> u32 {
    return select(BK + 8u, BN + 8u, B_JQ);
}

// Quads of the A and B slices that start at k0, read by invocation li (zero outside the matrix).
struct Staged {
    qa: array<vec4<f32>, 8>,
    qb: array<vec4<f32>, 8>,
}

fn stage_load(li: u32, ab: vec3<u32>, ti: u32, tj: u32, k0: u32) -> Staged {
    var st: Staged;
    for (var u = 0u; u < BM * BK / (4u * WG); u++) {
        let pos = quad_pos(li + u * WG, BM, BK, A_KQ);
        st.qa[u] = load_a_quad(ab.x, ti + pos.x, k0 + pos.y);
    }
    for (var u = 0u; u < BK * BN / (4u * WG); u++) {
        let pos = quad_pos(li + u * WG, BK, BN, B_JQ);
        st.qb[u] = load_b_quad(ab.y, k0 + pos.x, tj + pos.y);
    }
    return st;
}

// Stores the quads as f16 into buffer `buf`; a quad is 4 consecutive halves in either layout.
fn stage_store(li: u32, buf: u32, st: Staged) {
    for (var u = 0u; u < BM * BK / (4u * WG); u++) {
        let pos = quad_pos(li + u * WG, BM, BK, A_KQ);
        let o = a_at(buf, pos.x, pos.y);
        let h = vec4<f16>(st.qa[u]);
        ha[o] = h.x;
        ha[o + 1u] = h.y;
        ha[o + 2u] = h.z;
        ha[o + 3u] = h.w;
    }
    for (var u = 0u; u < BK * BN / (4u * WG); u++) {
        let pos = quad_pos(li + u * WG, BK, BN, B_JQ);
        let o = b_at(buf, pos.x, pos.y);
        let h = vec4<f16>(st.qb[u]);
        hb[o] = h.x;
        hb[o + 1u] = h.y;
        hb[o + 2u] = h.z;
        hb[o + 3u] = h.w;
    }
}

// Fragment (fm, fn) of every subgroup is in `scratch` (subgroup g at g · 256, row-major 16 × 16):
// the workgroup writes them to C. Callers put workgroup barriers before and after.
fn epilogue(li: u32, c_base: u32, ti: u32, tj: u32, fm: u32, fn_: u32) {
    for (var s = 0u; s < SG_M * SG_N * 256u / WG; s++) {
        let e = li + s * WG;
        let g = e / 256u;
        let r = (e % 256u) / 16u;
        let cc = e % 16u;
        let i = ti + ((g / SG_N) * (BM / (16u * SG_M)) + fm) * 16u + r;
        let j = tj + ((g % SG_N) * (BN / (16u * SG_N)) + fn_) * 16u + cc;
        store_c(c_base, i, j, scratch[e]);
    }
}

// ---- matmul_f16: the fragment products by plain invocations (subgroups of SGS = 32 emulated) ----
//
// Lane l of a 32-invocation group holds elements e = l + 32 s (s < 8) of each 16 × 16
// accumulator, row e / 16, column e % 16, and reads A and B fragments exactly where coopLoadT /
// coopLoad would: element (r, t) at offset + r · stride + t (row-major) or + t · stride + r.

fn frag_at(off: u32, stride: u32, row_major: bool, r: u32, t: u32) -> u32 {
    return select(off + t * stride + r, off + r * stride + t, row_major);
}

@compute @workgroup_size(WG, 1, 1)
fn matmul_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let fm_n = BM / (16u * SG_M);
    let fn_n = BN / (16u * SG_N);
    let sg = li / 32u;
    let lane = li % 32u;
    let gi = sg / SG_N;
    let gj = sg % SG_N;
    let ti = wid.y * BM;
    let tj = wid.x * BN;
    let ab = bases(wid.z);
    var acc: array<array<f32, 8>, 8>; // [fm · FN + fn][s], zero-initialised

    stage_store(li, 0u, stage_load(li, ab, ti, tj, 0u));
    workgroupBarrier();
    let nk = (p.k + BK - 1u) / BK;
    for (var s = 0u; s < nk; s++) {
        let cur = s & 1u;
        let more = s + 1u < nk;
        var st: Staged;
        if (more) {
            st = stage_load(li, ab, ti, tj, (s + 1u) * BK);
        }
        for (var k16 = 0u; k16 < BK; k16 += 16u) {
            for (var fm = 0u; fm < fm_n; fm++) {
                let ao = a_at(cur, (gi * fm_n + fm) * 16u, k16);
                for (var fn_ = 0u; fn_ < fn_n; fn_++) {
                    let bo = b_at(cur, k16, (gj * fn_n + fn_) * 16u);
                    for (var q = 0u; q < 8u; q++) {
                        let e = lane + 32u * q;
                        var v = acc[fm * fn_n + fn_][q];
                        for (var t = 0u; t < 16u; t++) {
                            let x = f32(ha[frag_at(ao, a_stride(), A_KQ, e / 16u, t)]);
                            let y = f32(hb[frag_at(bo, b_stride(), B_JQ, t, e % 16u)]);
                            v = fma(x, y, v);
                        }
                        acc[fm * fn_n + fn_][q] = v;
                    }
                }
            }
        }
        if (more) {
            stage_store(li, 1u - cur, st);
        }
        workgroupBarrier();
    }

    for (var fm = 0u; fm < fm_n; fm++) {
        for (var fn_ = 0u; fn_ < fn_n; fn_++) {
            for (var q = 0u; q < 8u; q++) {
                let e = lane + 32u * q;
                scratch[sg * 256u + (e / 16u) * 16u + e % 16u] = acc[fm * fn_n + fn_][q];
            }
            workgroupBarrier();
            epilogue(li, ab.z, ti, tj, fm, fn_);
            workgroupBarrier();
        }
    }
}
