//! f64 reference of the optimizer: torch.optim.AdamW (decoupled weight decay, bias correction)
//! over several steps, torch.nn.utils.clip_grad_norm_, and a whole HF-Trainer-style step (clip,
//! then AdamW on every tensor).

/// AdamW hyper-parameters (the step's learning rate is an argument).
#[derive(Clone, Copy, Debug)]
pub struct AdamWHyper {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// One tensor's parameters and optimizer state (`m` = exp_avg, `v` = exp_avg_sq).
#[derive(Clone, Debug)]
pub struct AdamWTensor {
    pub p: Vec<f64>,
    pub m: Vec<f64>,
    pub v: Vec<f64>,
    /// Apply weight decay to this tensor.
    pub decay: bool,
}

impl AdamWTensor {
    /// Parameters `p` with zero state, as torch initialises it.
    pub fn new(p: Vec<f64>, decay: bool) -> Self {
        let n = p.len();
        Self { p, m: vec![0.0; n], v: vec![0.0; n], decay }
    }
}

/// One AdamW update of one tensor at 1-based step `step` with learning rate `lr`, the gradient
/// multiplied by `grad_scale` first. Exactly torch.optim.AdamW's formula, in f64.
pub fn adamw_update(h: &AdamWHyper, step: u32, lr: f64, grad_scale: f64, t: &mut AdamWTensor, grad: &[f64]) {
    assert!(step >= 1, "AdamW steps count from 1");
    assert_eq!(grad.len(), t.p.len(), "gradient length");
    let bc1 = 1.0 - h.beta1.powi(step as i32);
    let bc2 = 1.0 - h.beta2.powi(step as i32);
    for i in 0..t.p.len() {
        let g = grad[i] * grad_scale;
        if t.decay {
            t.p[i] -= lr * h.weight_decay * t.p[i];
        }
        t.m[i] = h.beta1 * t.m[i] + (1.0 - h.beta1) * g;
        t.v[i] = h.beta2 * t.v[i] + (1.0 - h.beta2) * g * g;
        let m_hat = t.m[i] / bc1;
        let v_hat = t.v[i] / bc2;
        t.p[i] -= lr * m_hat / (v_hat.sqrt() + h.eps);
    }
}

/// Σ g² over every gradient (the squared global L2 norm).
pub fn sum_of_squares(grads: &[&[f64]]) -> f64 {
    grads.iter().flat_map(|g| g.iter()).map(|x| x * x).sum()
}

/// torch.nn.utils.clip_grad_norm_'s coefficient for a global norm `total_norm`:
/// `min(1, max_norm / (total_norm + 1e-6))`.
pub fn clip_factor(total_norm: f64, max_norm: f64) -> f64 {
    (max_norm / (total_norm + 1e-6)).min(1.0)
}

/// torch.nn.utils.clip_grad_norm_: scales every gradient in place by [`clip_factor`] and returns
/// the global norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f64>], max_norm: f64) -> f64 {
    let norm = sum_of_squares(&grads.iter().map(|g| g.as_slice()).collect::<Vec<_>>()).sqrt();
    let c = clip_factor(norm, max_norm);
    for g in grads.iter_mut() {
        for x in g.iter_mut() {
            *x *= c;
        }
    }
    norm
}

/// One optimizer step over every tensor as the HF Trainer takes it: clip the gradients to
/// `max_norm` (when given), then AdamW at 1-based `step` with learning rate `lr`. Returns the
/// global gradient norm before clipping.
pub fn trainer_step(
    h: &AdamWHyper,
    step: u32,
    lr: f64,
    max_norm: Option<f64>,
    tensors: &mut [AdamWTensor],
    grads: &[Vec<f64>],
) -> f64 {
    assert_eq!(tensors.len(), grads.len(), "one gradient per tensor");
    let mut grads = grads.to_vec();
    let norm = match max_norm {
        Some(mx) => clip_grad_norm(&mut grads, mx),
        None => sum_of_squares(&grads.iter().map(|g| g.as_slice()).collect::<Vec<_>>()).sqrt(),
    };
    for (t, g) in tensors.iter_mut().zip(&grads) {
        adamw_update(h, step, lr, 1.0, t, g);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: AdamWHyper = AdamWHyper { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };

    #[test]
    fn first_step_moves_by_lr_times_sign() {
        // Step 1: m̂ = g, v̂ = g², so the update is lr · g / (|g| + eps) ≈ lr · sign(g).
        let mut t = AdamWTensor::new(vec![1.0, -2.0, 0.5], false);
        adamw_update(&H, 1, 0.01, 1.0, &mut t, &[0.3, -4.0, 0.0]);
        let want = [1.0 - 0.01 * 0.3 / (0.3 + 1e-8), -2.0 + 0.01 * 4.0 / (4.0 + 1e-8), 0.5];
        for (p, w) in t.p.iter().zip(want) {
            assert!((p - w).abs() < 1e-15, "{p} vs {w}");
        }
        assert!((t.m[1] - -0.4).abs() < 1e-15 && (t.v[1] - 0.016).abs() < 1e-15);
    }

    #[test]
    fn weight_decay_is_decoupled() {
        // A zero gradient leaves only the decay: p · (1 − lr·wd).
        let mut t = AdamWTensor::new(vec![2.0], true);
        adamw_update(&H, 1, 0.5, 1.0, &mut t, &[0.0]);
        assert!((t.p[0] - 2.0 * (1.0 - 0.5 * 0.1)).abs() < 1e-15);
        let mut t = AdamWTensor::new(vec![2.0], false);
        adamw_update(&H, 1, 0.5, 1.0, &mut t, &[0.0]);
        assert_eq!(t.p[0], 2.0);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = vec![vec![3.0], vec![4.0]];
        let norm = clip_grad_norm(&mut g, 1.0);
        assert_eq!(norm, 5.0);
        let after = sum_of_squares(&[&g[0], &g[1]]).sqrt();
        assert!((after - 5.0 / (5.0 + 1e-6)).abs() < 1e-15);
        let mut g = vec![vec![0.3], vec![0.4]];
        clip_grad_norm(&mut g, 1.0);
        assert_eq!(g, vec![vec![0.3], vec![0.4]]);
    }

    #[test]
    fn scale_equals_prescaled_gradient() {
        let mut a = AdamWTensor::new(vec![1.0, 2.0], true);
        let mut b = a.clone();
        for step in 1..=3 {
            adamw_update(&H, step, 0.01, 0.25, &mut a, &[0.4, -0.8]);
            adamw_update(&H, step, 0.01, 1.0, &mut b, &[0.1, -0.2]);
        }
        assert_eq!(a.p, b.p);
    }
}
