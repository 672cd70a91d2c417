//! Per-channel kernels (trainable scaling, the affine part of adapter LayerNorms) vs the f64
//! reference, on shapes that are not multiples of the workgroup, into poisoned outputs.

use super::channel::{channel_scale, scale_grad, trainable_layer_norm, trainable_layer_norm_backward, ChannelAdd};
use super::reference;
use crate::kernels::test_support::*;

#[test]
fn channel_scale_matches_reference_for_every_addend() {
    for (i, &(t, d, per_channel)) in
        [(1usize, 1usize, true), (7, 33, true), (13, 100, false), (3, 130, true)].iter().enumerate()
    {
        let mut r = rng(40 + i as u64);
        let m = if per_channel { d } else { 1 };
        let (x, s, v, res) = (
            rand_f32(&mut r, t * d, 1.0),
            rand_f32(&mut r, m, 2.0),
            rand_f32(&mut r, d, 1.0),
            rand_f32(&mut r, t * d, 1.0),
        );
        let (xg, sg, vg, rg) = (upload(&[t, d], &x), upload(&[m], &s), upload(&[d], &v), upload(&[t, d], &res));
        let outs = [poisoned(&[t, d]), poisoned(&[t, d]), poisoned(&[t, d])];
        let g = gpu();
        let mut b = g.batch();
        channel_scale(&mut b, &xg, &sg, ChannelAdd::Nothing, &outs[0]).unwrap();
        channel_scale(&mut b, &xg, &sg, ChannelAdd::Vector(&vg), &outs[1]).unwrap();
        channel_scale(&mut b, &xg, &sg, ChannelAdd::Tensor(&rg), &outs[2]).unwrap();
        b.finish().unwrap();
        let (xf, sf) = (f64s(&x), f64s(&s));
        let what = format!("t={t} d={d} m={m}");
        assert_close(&format!("{what} none"), &download(&outs[0]), &reference::channel_scale(&xf, &sf, None, d), 1e-6);
        let vf = f64s(&v);
        assert_close(
            &format!("{what} vector"),
            &download(&outs[1]),
            &reference::channel_scale(&xf, &sf, Some(&vf), d),
            1e-6,
        );
        let rf = f64s(&res);
        assert_close(
            &format!("{what} tensor"),
            &download(&outs[2]),
            &reference::channel_scale(&xf, &sf, Some(&rf), d),
            1e-6,
        );
    }
}

#[test]
fn scale_grad_matches_reference_scalar_and_per_channel_and_accumulates() {
    for (i, &(t, d)) in [(1usize, 5usize), (67, 33), (129, 70)].iter().enumerate() {
        let mut r = rng(60 + i as u64);
        let (dy, u) = (rand_f32(&mut r, t * d, 1.0), rand_f32(&mut r, t * d, 1.0));
        let (dyg, ug) = (upload(&[t, d], &dy), upload(&[t, d], &u));
        let (channel, scalar) = (poisoned(&[d]), poisoned(&[1]));
        let prev = rand_f32(&mut r, d, 1.0);
        let acc = upload(&[d], &prev);
        let g = gpu();
        let mut b = g.batch();
        scale_grad(&mut b, &dyg, &ug, false, &channel).unwrap();
        scale_grad(&mut b, &dyg, &ug, false, &scalar).unwrap();
        scale_grad(&mut b, &dyg, &ug, true, &acc).unwrap();
        b.finish().unwrap();
        let (dyf, uf) = (f64s(&dy), f64s(&u));
        let per = reference::scale_grad(&dyf, &uf, d, false);
        assert_close("per channel", &download(&channel), &per, 1e-5);
        assert_close("scalar", &download(&scalar), &reference::scale_grad(&dyf, &uf, d, true), 1e-5);
        let summed: Vec<f64> = per.iter().zip(&prev).map(|(a, b)| a + *b as f64).collect();
        assert_close("accumulated", &download(&acc), &summed, 1e-5);
    }
}

#[test]
fn trainable_layer_norm_forward_and_gradients_match_reference() {
    for (i, &(t, d)) in [(3usize, 32usize), (11, 100), (1, 7)].iter().enumerate() {
        let mut r = rng(80 + i as u64);
        let x = rand_f32(&mut r, t * d, 2.0);
        let gamma: Vec<f32> = rand_f32(&mut r, d, 0.5).iter().map(|v| 1.0 + v).collect();
        let beta = rand_f32(&mut r, d, 0.5);
        let dy = rand_f32(&mut r, t * d, 1.0);
        let (xg, gg, bg, dyg) = (upload(&[t, d], &x), upload(&[d], &gamma), upload(&[d], &beta), upload(&[t, d], &dy));
        let (unit, zero) = (upload(&[d], &vec![1.0; d]), upload(&[d], &vec![0.0; d]));
        let (x_hat, y, dx, dg, db) =
            (poisoned(&[t, d]), poisoned(&[t, d]), poisoned(&[t, d]), poisoned(&[d]), poisoned(&[d]));
        let eps = 1e-12f32;
        let g = gpu();
        let mut b = g.batch();
        trainable_layer_norm(&mut b, &xg, &gg, &bg, &unit, &zero, eps, &x_hat, &y).unwrap();
        trainable_layer_norm_backward(&mut b, &xg, &gg, &unit, &zero, eps, &dyg, &dx, false, &dg, &db, false).unwrap();
        b.finish().unwrap();
        let (xf, gf, bf) = (f64s(&x), f64s(&gamma), f64s(&beta));
        let ry = crate::kernels::layernorm::reference::layer_norm(&xf, t, d, &gf, &bf, eps as f64);
        let (rdx, rdg, rdb) = reference::layer_norm_grads(&xf, &gf, eps as f64, &f64s(&dy));
        let what = format!("t={t} d={d}");
        assert_close(&format!("{what} y"), &download(&y), &ry, 1e-5);
        assert_close(&format!("{what} dx"), &download(&dx), &rdx, 1e-4);
        assert_close(&format!("{what} d_gamma"), &download(&dg), &rdg, 1e-4);
        assert_close(&format!("{what} d_beta"), &download(&db), &rdb, 1e-4);
    }
}
