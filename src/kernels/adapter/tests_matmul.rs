//! The adapter through the matmul implementation ([`AdapterKernel::Matmul`], the default on GPUs)
//! vs the f64 reference, in every residual mode, on lavapipe. The kernel is chosen per call
//! (`forward_with` / `backward_with`), so the other tests of this binary keep the device's choice.

use super::reference::Adapter;
use crate::kernels::adapter::{AdapterKernel, AdapterScratch, AdapterShape, AdapterWeights, Residual};
use crate::kernels::test_support::*;
use crate::types::Activation;

#[test]
fn matmul_adapter_matches_reference_in_every_residual_mode() {
    let mut worst = 0f64;
    // Ragged sizes (not multiples of any tile), every activation.
    for (i, &(t, d, m, act)) in
        [(7, 48, 3, Activation::Gelu), (129, 100, 8, Activation::Relu), (67, 768, 64, Activation::Silu)]
            .iter()
            .enumerate()
    {
        let mut rng = rng(100 + i as u64);
        let wd = rand_f32(&mut rng, m * d, 1.0 / (d as f32).sqrt());
        let bd = rand_f32(&mut rng, m, 0.5);
        let wu = rand_f32(&mut rng, d * m, 1.0 / (m as f32).sqrt());
        let bu = rand_f32(&mut rng, d, 0.5);
        let (x, r, dy) =
            (rand_f32(&mut rng, t * d, 1.0), rand_f32(&mut rng, t * d, 1.0), rand_f32(&mut rng, t * d, 1.0));
        let shape = AdapterShape { d, m, act, scale: 1.0 };
        let w = AdapterWeights {
            w_down: upload(&[m, d], &wd),
            b_down: upload(&[m], &bd),
            w_up: upload(&[d, m], &wu),
            b_up: upload(&[d], &bu),
        };
        let reference =
            Adapter { d, m, act, scale: 1.0, w_down: f64s(&wd), b_down: f64s(&bd), w_up: f64s(&wu), b_up: f64s(&bu) };
        let (ry, ra) = reference.forward(&f64s(&x), t);
        // The matmul path saves act(a) (its product's epilogue) for backward, not a.
        let want_h: Vec<f64> = ra.iter().map(|&v| crate::kernels::reference::act(act, v)).collect();
        let (rdx, rg) = reference.backward(&f64s(&x), &f64s(&dy), t);
        let (xg, rgpu, dyg) = (upload(&[t, d], &x), upload(&[t, d], &r), upload(&[t, d], &dy));
        for mode in 0..3 {
            let residual = [Residual::Input, Residual::Tensor(&rgpu), Residual::None][mode];
            let (y, a, dx) = (poisoned(&[t, d]), poisoned(&[t, m]), poisoned(&[t, d]));
            let grads = AdapterWeights {
                w_down: poisoned(&[m, d]),
                b_down: poisoned(&[m]),
                w_up: poisoned(&[d, m]),
                b_up: poisoned(&[d]),
            };
            let scratch = AdapterScratch { da: poisoned(&[t, m]), g: poisoned(&[t, m]) };
            let mut b = gpu().batch();
            shape.forward_with(AdapterKernel::Matmul, &mut b, &w, &xg, residual, &y, &a).unwrap();
            shape
                .backward_with(AdapterKernel::Matmul, &mut b, &w, &xg, mode != 0, &a, &dyg, &dx, &grads, &scratch)
                .unwrap();
            b.finish().unwrap();
            // y = base + (reference y − x), base = x / r / 0; dx loses dy without the input residual.
            let want_y: Vec<f64> =
                (0..t * d).map(|k| ry[k] - x[k] as f64 + [x[k] as f64, r[k] as f64, 0.0][mode]).collect();
            let want_dx: Vec<f64> =
                (0..t * d).map(|k| if mode == 0 { rdx[k] } else { rdx[k] - dy[k] as f64 }).collect();
            for (got, want) in [
                (download(&a), &want_h),
                (download(&y), &want_y),
                (download(&dx), &want_dx),
                (download(&grads.w_down), &rg.w_down),
                (download(&grads.b_down), &rg.b_down),
                (download(&grads.w_up), &rg.w_up),
                (download(&grads.b_up), &rg.b_up),
            ] {
                let e = crate::kernels::reference::rel_err(&got, want);
                assert!(e <= 1e-5, "t={t} d={d} m={m} {act:?} mode {mode}: relative error {e:e}");
                worst = worst.max(e);
            }
        }
    }
    println!("matmul adapter: worst relative error {worst:.2e}");
}
