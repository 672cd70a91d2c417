// ---- matmul_coop.wgsl: the matmul_f16 kernel on cooperative matrices (tensor cores) ----
//
// (After `enable f16; enable wgpu_cooperative_matrix;`, common.wgsl, matmul_vec4.wgsl and
// matmul_f16.wgsl, which hold everything but the fragment products.) Needs the device features
// EXPERIMENTAL_COOPERATIVE_MATRIX (16 × 16 × 16, f16 A/B, f32 accumulator), SHADER_F16 and
// SUBGROUP, and subgroups of exactly SGS invocations. Subgroup g owns fragments
// (gi · FM + fm, gj · FN + fn) with FM ∈ {1, 2, 4}, FN ∈ {1, 2}: eight named accumulators, the
// unused ones never touched (FM, FN are override constants, so the branches fold away).
// Every coop operation is in uniform control flow (loop bounds are uniform).

fn frag_a(buf: u32, r: u32, k: u32) -> coop_mat16x16<f16, A> {
    if (A_KQ) {
        return coopLoadT<coop_mat16x16<f16, A>>(&ha[a_at(buf, r, k)], a_stride());
    }
    return coopLoad<coop_mat16x16<f16, A>>(&ha[a_at(buf, r, k)], a_stride());
}

fn frag_b(buf: u32, k: u32, j: u32) -> coop_mat16x16<f16, B> {
    if (B_JQ) {
        return coopLoadT<coop_mat16x16<f16, B>>(&hb[b_at(buf, k, j)], b_stride());
    }
    return coopLoad<coop_mat16x16<f16, B>>(&hb[b_at(buf, k, j)], b_stride());
}

// Stores accumulator (fm, fn) of every subgroup to scratch and writes those fragments to C.
fn coop_out(li: u32, sg: u32, c_base: u32, ti: u32, tj: u32, fm: u32, fn_: u32, x: coop_mat16x16<f32, C>) {
    coopStoreT(x, &scratch[sg * 256u], 16u);
    workgroupBarrier();
    epilogue(li, c_base, ti, tj, fm, fn_);
    workgroupBarrier();
}

@compute @workgroup_size(WG, 1, 1)
fn matmul_coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_id) sg: u32,
) {
    let fm_n = BM / (16u * SG_M);
    let fn_n = BN / (16u * SG_N);
    let gi = sg / SG_N;
    let gj = sg % SG_N;
    let ti = wid.y * BM;
    let tj = wid.x * BN;
    let ab = bases(wid.z);
    let r0 = gi * fm_n * 16u;
    let c0 = gj * fn_n * 16u;
    var x00 = coop_mat16x16<f32, C>();
    var x01 = coop_mat16x16<f32, C>();
    var x10 = coop_mat16x16<f32, C>();
    var x11 = coop_mat16x16<f32, C>();
    var x20 = coop_mat16x16<f32, C>();
    var x21 = coop_mat16x16<f32, C>();
    var x30 = coop_mat16x16<f32, C>();
    var x31 = coop_mat16x16<f32, C>();

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
            let b0 = frag_b(cur, k16, c0);
            let a0 = frag_a(cur, r0, k16);
            x00 = coopMultiplyAdd(a0, b0, x00);
            if (fn_n > 1u) {
                let b1 = frag_b(cur, k16, c0 + 16u);
                x01 = coopMultiplyAdd(a0, b1, x01);
                if (fm_n > 1u) {
                    let a1 = frag_a(cur, r0 + 16u, k16);
                    x10 = coopMultiplyAdd(a1, b0, x10);
                    x11 = coopMultiplyAdd(a1, b1, x11);
                }
                if (fm_n > 2u) {
                    let a2 = frag_a(cur, r0 + 32u, k16);
                    x20 = coopMultiplyAdd(a2, b0, x20);
                    x21 = coopMultiplyAdd(a2, b1, x21);
                    let a3 = frag_a(cur, r0 + 48u, k16);
                    x30 = coopMultiplyAdd(a3, b0, x30);
                    x31 = coopMultiplyAdd(a3, b1, x31);
                }
            } else {
                if (fm_n > 1u) {
                    let a1 = frag_a(cur, r0 + 16u, k16);
                    x10 = coopMultiplyAdd(a1, b0, x10);
                }
                if (fm_n > 2u) {
                    let a2 = frag_a(cur, r0 + 32u, k16);
                    x20 = coopMultiplyAdd(a2, b0, x20);
                    let a3 = frag_a(cur, r0 + 48u, k16);
                    x30 = coopMultiplyAdd(a3, b0, x30);
                }
            }
        }
        if (more) {
            stage_store(li, 1u - cur, st);
        }
        workgroupBarrier();
    }

    coop_out(li, sg, ab.z, ti, tj, 0u, 0u, x00);
    if (fn_n > 1u) { coop_out(li, sg, ab.z, ti, tj, 0u, 1u, x01); }
    if (fm_n > 1u) {
        coop_out(li, sg, ab.z, ti, tj, 1u, 0u, x10);
        if (fn_n > 1u) { coop_out(li, sg, ab.z, ti, tj, 1u, 1u, x11); }
    }
    if (fm_n > 2u) {
        coop_out(li, sg, ab.z, ti, tj, 2u, 0u, x20);
        if (fn_n > 1u) { coop_out(li, sg, ab.z, ti, tj, 2u, 1u, x21); }
        coop_out(li, sg, ab.z, ti, tj, 3u, 0u, x30);
        if (fn_n > 1u) { coop_out(li, sg, ab.z, ti, tj, 3u, 1u, x31); }
    }
}
