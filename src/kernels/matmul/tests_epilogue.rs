//! The matmul epilogues ([`Epilogue`]) on every variant this GPU runs: `KeepPre` writes the same
//! bits as a plain product (into aux) followed by the `activate` kernel (into C), and
//! `TimesActGrad` the same bits as a plain product followed by `act_backward`: the two-dispatch
//! paths they replace in the encoder. Every activation, bias and α, shapes that are not tile
//! multiples, NaN-poisoned outputs; the plain product is checked against the f64 reference.

use crate::kernels::elementwise;
use crate::kernels::matmul::{Epilogue, Matmul, MatmulVariant, View};
use crate::kernels::reference::matmul;
use crate::kernels::test_support::*;
use crate::types::Activation;

#[test]
fn epilogues_equal_the_kernels_they_replace() {
    let g = gpu();
    let mut ran = vec![];
    for v in MatmulVariant::ALL {
        if !v.is_supported(&g) {
            println!("skipping matmul variant {v}: not supported by {}", g.description.summary());
            continue;
        }
        for (si, &(m, n, k)) in [(5usize, 7usize, 3usize), (33, 65, 17), (70, 9, 40)].iter().enumerate() {
            let mut rng = rng(900 + si as u64);
            let a = rand_f32(&mut rng, m * k, 1.0);
            let b = rand_f32(&mut rng, n * k, 1.0); // [n, k]: nn.Linear's weight, used transposed
            let bias = rand_f32(&mut rng, n, 1.0);
            let pre = rand_f32(&mut rng, m * n, 2.0);
            let (ag, bg, biasg, preg) =
                (upload(&[m, k], &a), upload(&[n, k], &b), upload(&[n], &bias), upload(&[m, n], &pre));
            for act in [Activation::Gelu, Activation::Relu, Activation::Silu, Activation::Tanh, Activation::Identity] {
                let what = format!("{v} {m}×{n}×{k} {act:?}");
                let base = Matmul::new(m, n, k).variant(v).alpha(0.75);
                let (plain, activated, kept_c, kept_pre) =
                    (poisoned(&[m, n]), poisoned(&[m, n]), poisoned(&[m, n]), poisoned(&[m, n]));
                let (grad_ref, grad) = (poisoned(&[m, n]), poisoned(&[m, n]));
                let (av, bv, cv) = (View::rows(&ag, k), View::transposed(&bg, k), |t| View::rows(t, n));
                let mut batch = g.batch();
                base.run(&mut batch, av, bv, Some((&biasg, 0)), cv(&plain)).unwrap();
                elementwise::activate(&mut batch, act, &plain, &activated).unwrap();
                elementwise::act_backward(&mut batch, act, &preg, &plain, &grad_ref).unwrap();
                let keep = base.act(act).epilogue(Epilogue::KeepPre);
                keep.run_aux(&mut batch, av, bv, Some((&biasg, 0)), cv(&kept_c), &kept_pre).unwrap();
                let times = base.act(act).epilogue(Epilogue::TimesActGrad);
                times.run_aux(&mut batch, av, bv, Some((&biasg, 0)), cv(&grad), &preg).unwrap();
                batch.finish().unwrap();
                assert_eq!(bits(&download(&kept_pre)), bits(&download(&plain)), "{what}: KeepPre's aux");
                assert_eq!(bits(&download(&kept_c)), bits(&download(&activated)), "{what}: KeepPre's C");
                assert_eq!(bits(&download(&grad)), bits(&download(&grad_ref)), "{what}: TimesActGrad");
                // The plain product itself against f64 (inputs as the variant multiplies them).
                let used = |x: &[f32]| -> Vec<f64> {
                    if v.f16_inputs() {
                        x.iter().map(|&y| half::f16::from_f32(y).to_f32() as f64).collect()
                    } else {
                        f64s(x)
                    }
                };
                let bt = crate::kernels::reference::transpose(&used(&b), n, k);
                let want: Vec<f64> = matmul(&used(&a), &bt, m, k, n)
                    .iter()
                    .enumerate()
                    .map(|(i, x)| 0.75 * x + bias[i % n] as f64)
                    .collect();
                assert_close(&format!("{what}: product"), &download(&plain), &want, 1e-5);
            }
        }
        ran.push(v);
    }
    assert!(ran.contains(&crate::kernels::matmul::default_variant(&g).unwrap()), "the default variant was not tested");
    // Misuse is an error, not a dispatch: an epilogue without aux, aux without an epilogue, aux
    // that is C, and aux too small for C's view.
    let (x, c, small) = (poisoned(&[4, 4]), poisoned(&[4, 4]), poisoned(&[3, 4]));
    let mut batch = g.batch();
    let mm = Matmul::new(4, 4, 4);
    let keep = mm.epilogue(Epilogue::KeepPre);
    assert!(keep.run(&mut batch, View::rows(&x, 4), View::rows(&x, 4), None, View::rows(&c, 4)).is_err());
    assert!(mm.run_aux(&mut batch, View::rows(&x, 4), View::rows(&x, 4), None, View::rows(&c, 4), &small).is_err());
    assert!(keep.run_aux(&mut batch, View::rows(&x, 4), View::rows(&x, 4), None, View::rows(&c, 4), &c).is_err());
    assert!(keep.run_aux(&mut batch, View::rows(&x, 4), View::rows(&x, 4), None, View::rows(&c, 4), &small).is_err());
    assert!(batch.is_empty());
}
