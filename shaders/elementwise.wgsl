// ---- elementwise.wgsl: one thread per output element ----
//
// add, act_backward, copy, scale, fill, BERT embeddings (word + position + token type), the row
// gather / scatter that pick the [CLS] token of each sequence, and unpack_f16 (frozen weights
// stored as f16). The grid is 1-D, folded into x * y
// by the host for large tensors (linear_workgroup); every kernel guards its bound.

struct Params {
    n: u32,          // output elements
    d: u32,          // row length (embeddings, gather, scatter)
    seq: u32,        // embeddings: tokens per sequence (position = token % seq)
    stride: u32,     // gather / scatter: rows per sequence
    vocab: u32,      // embeddings: rows of the word table
    types: u32,      // embeddings: rows of the token-type table
    accumulate: u32, // scatter: out += instead of out =
    src_off: u32,    // copy_range: first source element
    value: f32,      // fill, scale
    dst_off: u32,    // copy_range: first destination element
    row_start: u32,  // embeddings: first word-table row of this block (a table split across bindings)
    block_rows: u32, // embeddings: rows of this block
}

@group(0) @binding(0) var<uniform> p: Params;

override WG: u32 = 256u;
override ACT: u32 = 3u;

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return linear_workgroup(wid, nwg) * WG + lid;
}

// ---- add: out = a + b; act_backward: dx = dy * act'(pre) ----
@group(0) @binding(1) var<storage, read> in_a: array<f32>;
@group(0) @binding(2) var<storage, read> in_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out3: array<f32>;

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    out3[i] = in_a[i] + in_b[i];
}

// in_a = pre-activation, in_b = dy, out3 = dx
@compute @workgroup_size(WG)
fn act_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    out3[i] = in_b[i] * activate_grad(ACT, in_a[i]);
}

// ---- copy, gather_rows, scatter_rows: src -> out2 ----
@group(0) @binding(2) var<storage, read_write> out2: array<f32>;

// ---- activate: out2 = act(src) ----
@compute @workgroup_size(WG)
fn activate_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    out2[i] = activate(ACT, in_a[i]);
}


@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    out2[i] = in_a[i];
}

// scale: out2 = in_a * value
@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    out2[i] = in_a[i] * p.value;
}

// out2[dst_off + i] = in_a[src_off + i], i < n
@compute @workgroup_size(WG)
fn copy_range(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    out2[p.dst_off + i] = in_a[p.src_off + i];
}

// out2 [B, d] = rows 0, stride, 2 stride, ... of in_a [B * stride, d]
@compute @workgroup_size(WG)
fn gather_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    let bc = divmod(i, p.d);
    out2[i] = in_a[bc.x * p.stride * p.d + bc.y];
}

// out2 [B * stride, d]: row b * stride = in_a row b, other rows 0; with accumulate, n = B * d
// threads add in_a into rows b * stride and leave the other rows untouched.
@compute @workgroup_size(WG)
fn scatter_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    if (p.accumulate != 0u) {
        let bc = divmod(i, p.d);
        let o = bc.x * p.stride * p.d + bc.y;
        out2[o] = out2[o] + in_a[i];
        return;
    }
    let tc = divmod(i, p.d);
    let b = divmod(tc.x, p.stride).x;
    out2[i] = select(0.0, in_a[b * p.d + tc.y], tc.x == b * p.stride);
}

// scatter_rows over column quads (d % 4 == 0): thread q writes quad q of out2 (with
// accumulate, quad q of the B target rows); the same values in the same order as scatter_rows.
@group(0) @binding(1) var<storage, read> in_a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn scatter_rows4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let q = element(wid, nwg, lid);
    if (q >= p.n / 4u) { return; }
    let d4 = p.d / 4u;
    if (p.accumulate != 0u) {
        let bc = divmod(q, d4);
        let o = bc.x * p.stride * d4 + bc.y;
        out4[o] = out4[o] + in_a4[q];
        return;
    }
    let tc = divmod(q, d4);
    let b = divmod(tc.x, p.stride).x;
    out4[q] = select(vec4<f32>(0.0), in_a4[b * d4 + tc.y], tc.x == b * p.stride);
}

// ---- fill ----
@group(0) @binding(1) var<storage, read_write> out1: array<f32>;

@compute @workgroup_size(WG)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    out1[i] = p.value;
}

// ---- embeddings: out[t] = word[ids[t]] + position[t % seq] + token_type[types[t]] ----
// Ids past the tables are clamped to the last row (the host validates them; this only keeps the
// kernel inside its buffers).
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> type_ids: array<u32>;
@group(0) @binding(3) var<storage, read> word: array<f32>;
@group(0) @binding(4) var<storage, read> position: array<f32>;
@group(0) @binding(5) var<storage, read> token_type: array<f32>;
@group(0) @binding(6) var<storage, read_write> emb_out: array<f32>;

@compute @workgroup_size(WG)
fn embeddings(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = element(wid, nwg, lid);
    if (i >= p.n) { return; }
    let d = p.d;
    let tc = divmod(i, d);
    let t = tc.x;
    let c = tc.y;
    let id = min(ids[t], p.vocab - 1u);
    // A word table split into blocks is looked up one block a dispatch: each token is written by
    // the dispatch of the block that holds its row.
    if (id < p.row_start || id - p.row_start >= p.block_rows) { return; }
    let tt = min(type_ids[t], p.types - 1u);
    let pos = divmod(t, p.seq).y;
    emb_out[i] = word[(id - p.row_start) * d + c] + position[pos * d + c] + token_type[tt * d + c];
}

// embeddings over column quads (d % 4 == 0): thread q writes quad q of the output, the same
// three-term sums as embeddings.
@group(0) @binding(3) var<storage, read> word4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> position4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> token_type4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> emb_out4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn embeddings4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let q = element(wid, nwg, lid);
    if (q >= p.n / 4u) { return; }
    let d4 = p.d / 4u;
    let tc = divmod(q, d4);
    let t = tc.x;
    let c = tc.y;
    let id = min(ids[t], p.vocab - 1u);
    if (id < p.row_start || id - p.row_start >= p.block_rows) { return; }
    let tt = min(type_ids[t], p.types - 1u);
    let pos = divmod(t, p.seq).y;
    emb_out4[q] = word4[(id - p.row_start) * d4 + c] + position4[pos * d4 + c] + token_type4[tt * d4 + c];
}

// ---- unpack_f16: out2[i] = the f16 value in half i of `packed` (two halves a word, element 2w in
// the low half of word w), widened to f32 exactly. One thread a word; p.n = elements.
@group(0) @binding(1) var<storage, read> packed: array<u32>;

@compute @workgroup_size(WG)
fn unpack_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let w = element(wid, nwg, lid);
    let i = 2u * w;
    if (i >= p.n) { return; }
    let v = unpack2x16float(packed[w]);
    out2[i] = v.x;
    if (i + 1u < p.n) { out2[i + 1u] = v.y; }
}
