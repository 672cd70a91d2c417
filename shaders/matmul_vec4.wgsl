// ---- matmul_vec4.wgsl: shared by the workgroup-memory matmul kernels (matmul_smem, matmul_f16,
// matmul_coop); a snippet the host joins in front of them, not a module of its own ----
//
// The same product as matmul.wgsl: C = act(alpha * A·B + bias + beta * C), batched, arbitrary
// strides (see there for the Params fields). A and B are bound twice, as scalars and as vec4s
// (the same buffer; read-only bindings may alias), so tiles are read in "quads": 4 consecutive
// elements along the operand's contiguous dimension, one 16-byte load where the host has checked
// that every quad is aligned and whole (A_VEC / B_VEC), else 4 scalar loads each guarded by the
// matrix edge. Everything outside the matrix reads as 0, so partial tiles need no other masking.
//
// Index safety (these kernels are built without runtime bounds checks in release builds): the
// host checks that the last element of every operand view lies inside its tensor
// (View::check_inner); every load below is of an element (i < m, k < K) or (k < K, j < n) of the
// view, and a vec4 load is used only where the whole quad is part of the view (dimension a
// multiple of 4, quad start aligned, stride 1 along the quad), so its index is < numel / 4.
// Stores go only to (i < m, j < n). Workgroup-memory indices are bounded by construction from
// the override constants, which the host validates (TileConfig::check / CoopConfig::check).

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
@group(0) @binding(2) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> c: array<f32>;
@group(0) @binding(7) var<storage, read_write> aux: array<f32>;

override HAS_BIAS: bool = false;
override ACT: u32 = 3u; // identity
// Epilogue options, as in matmul.wgsl: PRE_OUT also writes v into aux; GRAD_MUL writes
// C = v * act'(aux) instead of act(v). aux is indexed as C is.
override PRE_OUT: bool = false;
override GRAD_MUL: bool = false;
// beta != 0 (an override: no loads of C when it is 0, and C may hold NaN then).
override USE_BETA: bool = false;
// A's quads run along k (A_KQ, for a_sk = 1) or along i; B's along j (B_JQ, for b_sj = 1) or k.
override A_KQ: bool = true;
override B_JQ: bool = true;
// Quads are single aligned vec4 loads (host-checked; implies stride 1 along the quad).
override A_VEC: bool = false;
override B_VEC: bool = false;

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

// bias[j] for a column inside the matrix (callers check j < n), or 0 without bias.
fn bias_at(j: u32) -> f32 {
    if (HAS_BIAS) {
        return bias[p.bias_off + j];
    }
    return 0.0;
}

// The epilogue of one output: act(alpha * acc + bias + beta * C); nothing outside the matrix.
fn store_c(c_base: u32, i: u32, j: u32, acc: f32) {
    if (i < p.m && j < p.n) {
        var v = p.alpha * acc;
        if (HAS_BIAS) { v += bias_at(j); }
        let ci = c_base + i * p.c_si + j * p.c_sj;
        if (USE_BETA) { v += p.beta * c[ci]; }
        if (GRAD_MUL) {
            c[ci] = v * activate_grad(ACT, aux[ci]);
        } else {
            if (PRE_OUT) { aux[ci] = v; }
            c[ci] = activate(ACT, v);
        }
    }
}

// The quad of A at (i, k): elements (i, k..k+3) when A_KQ, else (i..i+3, k); 0 outside.
fn load_a_quad(base: u32, i: u32, k: u32) -> vec4<f32> {
    var q = vec4<f32>(0.0);
    if (A_KQ) {
        if (i < p.m) {
            let e = base + i * p.a_si + k * p.a_sk;
            if (A_VEC) {
                if (k < p.k) { q = a4[e >> 2u]; }
            } else {
                for (var t = 0u; t < 4u; t++) {
                    if (k + t < p.k) { q[t] = a[e + t * p.a_sk]; }
                }
            }
        }
    } else {
        if (k < p.k) {
            let e = base + i * p.a_si + k * p.a_sk;
            if (A_VEC) {
                if (i < p.m) { q = a4[e >> 2u]; }
            } else {
                for (var t = 0u; t < 4u; t++) {
                    if (i + t < p.m) { q[t] = a[e + t * p.a_si]; }
                }
            }
        }
    }
    return q;
}

// The quad of B at (k, j): elements (k, j..j+3) when B_JQ, else (k..k+3, j); 0 outside.
fn load_b_quad(base: u32, k: u32, j: u32) -> vec4<f32> {
    var q = vec4<f32>(0.0);
    if (B_JQ) {
        if (k < p.k) {
            let e = base + k * p.b_sk + j * p.b_sj;
            if (B_VEC) {
                if (j < p.n) { q = b4[e >> 2u]; }
            } else {
                for (var t = 0u; t < 4u; t++) {
                    if (j + t < p.n) { q[t] = b[e + t * p.b_sj]; }
                }
            }
        }
    } else {
        if (j < p.n) {
            let e = base + k * p.b_sk + j * p.b_sj;
            if (B_VEC) {
                if (k < p.k) { q = b4[e >> 2u]; }
            } else {
                for (var t = 0u; t < 4u; t++) {
                    if (k + t < p.k) { q[t] = b[e + t * p.b_sk]; }
                }
            }
        }
    }
    return q;
}

// Quad number q of a tile of `rows` × `cols` (a multiple of 4 along the quad direction) as
// (row, col) of its first element: quads run along the columns when `along_cols`, and
// consecutive q are consecutive quads along that direction (coalesced global reads).
fn quad_pos(q: u32, rows: u32, cols: u32, along_cols: bool) -> vec2<u32> {
    if (along_cols) {
        let per_row = cols / 4u;
        return vec2<u32>(q / per_row, (q % per_row) * 4u);
    }
    let per_col = rows / 4u;
    return vec2<u32>((q % per_col) * 4u, q / per_col);
}
