// ---- common.wgsl: shared by every shader (prepended by the host) ----

// Activation ids, matching `Activation` in src/kernels/mod.rs.
const ACT_GELU: u32 = 0u;
const ACT_RELU: u32 = 1u;
const ACT_SILU: u32 = 2u;
const ACT_IDENTITY: u32 = 3u;
const ACT_TANH: u32 = 4u;

// erfc(z) for z >= 0 with fractional error below 1.2e-7 (Chebyshev fit, Numerical Recipes
// `erfcc`); relative accuracy holds in the tail, where 1 - erf would cancel.
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
        t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
        t * (-0.82215223 + t * 0.17087277))))))));
    return t * exp(p);
}

// Standard normal CDF Phi(x) = erfc(-x / sqrt 2) / 2.
fn normal_cdf(x: f32) -> f32 {
    let z = abs(x) * 0.70710678118654752;
    let c = 0.5 * erfc_pos(z);
    return select(c, 1.0 - c, x >= 0.0);
}

// Exact-erf GELU as PyTorch's nn.GELU(): x * Phi(x).
fn gelu(x: f32) -> f32 {
    return x * normal_cdf(x);
}

// d/dx GELU = Phi(x) + x * phi(x).
fn gelu_grad(x: f32) -> f32 {
    return normal_cdf(x) + x * 0.3989422804014327 * exp(-0.5 * x * x);
}

fn sigmoid(x: f32) -> f32 {
    // Written so that neither branch overflows.
    let e = exp(-abs(x));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}

fn stable_tanh(x: f32) -> f32 {
    let e = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - e) / (1.0 + e);
}

fn activate(kind: u32, x: f32) -> f32 {
    switch kind {
        case 0u: { return gelu(x); }
        case 1u: { return max(x, 0.0); }
        case 2u: { return x * sigmoid(x); }
        case 4u: { return stable_tanh(x); }
        default: { return x; }
    }
}

// Derivative of `activate(kind, .)` at x (pre-activation).
fn activate_grad(kind: u32, x: f32) -> f32 {
    switch kind {
        case 0u: { return gelu_grad(x); }
        case 1u: { return select(0.0, 1.0, x > 0.0); }
        case 2u: {
            let s = sigmoid(x);
            return s + x * s * (1.0 - s);
        }
        case 4u: {
            let t = stable_tanh(x);
            return 1.0 - t * t;
        }
        default: { return 1.0; }
    }
}

// Workgroup index when the host folded a large 1-D grid into x * y (see Batch::dispatch).
fn linear_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// ---- divmod(a, b) = (a / b, a % b) for b > 0 ----
// With FAST_DIVMOD (set by the host only where every dividend and divisor the kernel splits is
// below 2^22, `kernels::divmod_override`) without an integer division: CPU drivers divide integers lane by lane
// (x86 has no vector integer division: eight scalar `div`s), GPUs in a software loop. The f32
// quotient is within 2.5 ulp of a / b (Vulkan's bound for a division): below 2^22, within 0.625,
// so its truncation is the quotient or one off either way, and the remainder's sign and size say
// which. Else the exact `/` and `%`.
override FAST_DIVMOD: bool = false;

fn divmod(a: u32, b: u32) -> vec2<u32> {
    if (FAST_DIVMOD) {
        // Signed conversions: x86 converts i32 <-> f32 in one instruction, u32 in several.
        let ai = i32(a);
        let bi = i32(b);
        let q0 = i32(f32(ai) / f32(bi));
        let r0 = ai - q0 * bi;
        let over = select(0, 1, r0 >= bi);
        let under = select(0, 1, r0 < 0);
        return vec2<u32>(u32(q0 + over - under), u32(r0 + (under - over) * bi));
    }
    return vec2<u32>(a / b, a % b);
}
