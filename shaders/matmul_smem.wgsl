// ---- matmul_smem.wgsl: f32 matmul through workgroup memory with a register tile per invocation ----
//
// (After matmul_vec4.wgsl, which holds the bindings, quad loads and epilogue.)
// A workgroup of (BM / TM) × (BN / TN) invocations computes a BM × BN tile of C; each invocation a
// TM × TN register tile (TM, TN ∈ {4, 8}). K is walked in steps of BK: the A slice (BM × BK) and
// the B slice (BK × BN) are staged k-major in workgroup memory (two buffers: the next slice is
// read from global memory into registers while the current one is multiplied, so one barrier per
// step), and every invocation reads vec4s of A's rows and B's columns from there.
// Invocation (tx, ty) owns rows 4 (q · NY + ty) + 0..3 for q < TM / 4 and columns
// 4 (p · NX + tx) + 0..3 for p < TN / 4 (NX = BN / TN, NY = BM / TM): neighbouring invocations
// read neighbouring vec4s of B (no bank conflicts) and write neighbouring 16-byte runs of C.
// Each output is one fma chain over k = 0, 1, ..., K - 1 (the k past K of the last slice add
// 0 · 0), the same sums in the same order as matmul_reg / matmul_subgroup.

override BM: u32 = 64u;
override BN: u32 = 64u;
override BK: u32 = 16u;
override TM: u32 = 4u;
override TN: u32 = 4u;
// (BM / TM) · (BN / TN), set by the host.
override WG: u32 = 256u;

// Rows of a slice are padded by one vec4 (the A_KQ / !B_JQ transposing stores of one warp then
// fall in different banks); both slices double-buffered.
var<workgroup> sa: array<vec4<f32>, 2u * BK * (BM / 4u + 1u)>;
var<workgroup> sb: array<vec4<f32>, 2u * BK * (BN / 4u + 1u)>;

// Stores quad `v` of the A slice (tile position r, kk) into buffer `buf` (k-major).
fn put_a(buf: u32, r: u32, kk: u32, v: vec4<f32>) {
    let row = BM / 4u + 1u; // vec4s per k-row
    if (A_KQ) {
        // Elements (r, kk..kk+3): one column entry in 4 k-rows.
        for (var t = 0u; t < 4u; t++) {
            let o = (buf * BK + kk + t) * row * 4u + r;
            sa[o >> 2u][o & 3u] = v[t];
        }
    } else {
        sa[(buf * BK + kk) * row + r / 4u] = v;
    }
}

fn put_b(buf: u32, kk: u32, cc: u32, v: vec4<f32>) {
    let row = BN / 4u + 1u;
    if (B_JQ) {
        sb[(buf * BK + kk) * row + cc / 4u] = v;
    } else {
        for (var t = 0u; t < 4u; t++) {
            let o = (buf * BK + kk + t) * row * 4u + cc;
            sb[o >> 2u][o & 3u] = v[t];
        }
    }
}

@compute @workgroup_size(WG, 1, 1)
fn matmul_smem(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let nx = BN / TN;
    let ny = BM / TM;
    let tx = li % nx;
    let ty = li / nx;
    let ti = wid.y * BM;
    let tj = wid.x * BN;
    let ab = bases(wid.z);
    // Quads per invocation per slice (the host keeps them within 1..=4).
    let qa = BM * BK / (4u * WG);
    let qb = BK * BN / (4u * WG);

    var acc: array<vec4<f32>, 16>; // [TM][TN / 4], zero-initialised
    var ra: array<vec4<f32>, 4>;
    var rb: array<vec4<f32>, 4>;

    // Slice 0 into buffer 0.
    for (var u = 0u; u < qa; u++) {
        let pos = quad_pos(li + u * WG, BM, BK, A_KQ);
        put_a(0u, pos.x, pos.y, load_a_quad(ab.x, ti + pos.x, pos.y));
    }
    for (var u = 0u; u < qb; u++) {
        let pos = quad_pos(li + u * WG, BK, BN, B_JQ);
        put_b(0u, pos.x, pos.y, load_b_quad(ab.y, pos.x, tj + pos.y));
    }
    workgroupBarrier();

    let nk = (p.k + BK - 1u) / BK;
    for (var s = 0u; s < nk; s++) {
        let cur = s & 1u;
        let more = s + 1u < nk;
        if (more) {
            let k0 = (s + 1u) * BK;
            for (var u = 0u; u < qa; u++) {
                let pos = quad_pos(li + u * WG, BM, BK, A_KQ);
                ra[u] = load_a_quad(ab.x, ti + pos.x, k0 + pos.y);
            }
            for (var u = 0u; u < qb; u++) {
                let pos = quad_pos(li + u * WG, BK, BN, B_JQ);
                rb[u] = load_b_quad(ab.y, k0 + pos.x, tj + pos.y);
            }
        }
        for (var kk = 0u; kk < BK; kk++) {
            let ao = (cur * BK + kk) * (BM / 4u + 1u);
            let bo = (cur * BK + kk) * (BN / 4u + 1u);
            var av: array<vec4<f32>, 2>;
            var bv: array<vec4<f32>, 2>;
            for (var q = 0u; q < TM / 4u; q++) {
                av[q] = sa[ao + q * ny + ty];
            }
            for (var pp = 0u; pp < TN / 4u; pp++) {
                bv[pp] = sb[bo + pp * nx + tx];
            }
            for (var q = 0u; q < TM / 4u; q++) {
                for (var r = 0u; r < 4u; r++) {
                    let x = vec4<f32>(av[q][r]);
                    for (var pp = 0u; pp < TN / 4u; pp++) {
                        let idx = (q * 4u + r) * (TN / 4u) + pp;
                        acc[idx] = fma(x, bv[pp], acc[idx]);
                    }
                }
            }
        }
        if (more) {
            let nb = 1u - cur;
            for (var u = 0u; u < qa; u++) {
                let pos = quad_pos(li + u * WG, BM, BK, A_KQ);
                put_a(nb, pos.x, pos.y, ra[u]);
            }
            for (var u = 0u; u < qb; u++) {
                let pos = quad_pos(li + u * WG, BK, BN, B_JQ);
                put_b(nb, pos.x, pos.y, rb[u]);
            }
        }
        workgroupBarrier();
    }

    for (var q = 0u; q < TM / 4u; q++) {
        for (var r = 0u; r < 4u; r++) {
            let i = ti + (q * ny + ty) * 4u + r;
            for (var pp = 0u; pp < TN / 4u; pp++) {
                let j = tj + (pp * nx + tx) * 4u;
                let v = acc[(q * 4u + r) * (TN / 4u) + pp];
                store_c(ab.z, i, j, v.x);
                store_c(ab.z, i, j + 1u, v.y);
                store_c(ab.z, i, j + 2u, v.z);
                store_c(ab.z, i, j + 3u, v.w);
            }
        }
    }
}
