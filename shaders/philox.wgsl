// ---- philox.wgsl: the counter-based generator of the dropout masks (a snippet) ----
//
// Joined before shaders that draw dropout masks (dropout.wgsl, attention.wgsl, attention_fused.wgsl), so every
// kernel that draws a mask runs the same generator.

// (high, low) 32-bit halves of the 64-bit product a·b, from 16-bit pieces (WGSL has no u64).
fn mul_hi_lo(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

// Philox4x32-10: the four output words of counter `c` under key `k`.
fn philox4x32_10(c_in: vec4<u32>, k_in: vec2<u32>) -> vec4<u32> {
    var c = c_in;
    var k = k_in;
    for (var r = 0u; r < 10u; r = r + 1u) {
        let m0 = mul_hi_lo(0xD2511F53u, c.x);
        let m1 = mul_hi_lo(0xCD9E8D57u, c.z);
        c = vec4<u32>(m1.x ^ c.y ^ k.x, m1.y, m0.x ^ c.w ^ k.y, m0.y);
        k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
    }
    return c;
}
