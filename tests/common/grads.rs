//! `peft grads` (the library call) against a fixture's `expected.safetensors`: the comparison the
//! parity tests of single adapters and of fusions share.

use super::{assert_close, f64s, gpu};
use peft_wgpu::formats::weights::WeightFile;
use peft_wgpu::train::grads::GradsArgs;
use std::path::Path;

/// Runs `peft grads` with `args` (its `out` replaced by a temporary file named after `tag`) and
/// compares every tensor with `expected`: the same names, the same shapes, gradients within 1e-3
/// and outputs within 1e-4 relative; a fusion `key.bias` gradient must be exactly zero (zero by
/// the algebra: the softmax ignores a shift common to all adapters; the fixture's is float noise,
/// ~1e-9). Returns each tensor's name and relative error, sorted by name.
pub fn grads_against_fixture(mut args: GradsArgs, expected: &Path, tag: &str) -> Vec<(String, f64)> {
    let out = std::env::temp_dir().join(format!("peft-{tag}-{}.safetensors", std::process::id()));
    args.out = out.clone();
    peft_wgpu::train::grads::run(&gpu(), &args).unwrap();
    let ours = WeightFile::open(&out).unwrap();
    let exp = WeightFile::open(expected).unwrap();
    let mut a: Vec<&str> = ours.names();
    let mut b: Vec<&str> = exp.names();
    a.sort();
    b.sort();
    assert_eq!(a, b, "{tag}: tensor names differ from the fixture's");
    let errors = b
        .into_iter()
        .map(|n| {
            let (shape, v) = ours.get(n).unwrap();
            let (eshape, e) = exp.get(n).unwrap();
            assert_eq!(shape, eshape, "{tag}: {n} shape");
            let err = if n.starts_with("grad.") && n.ends_with("key.bias") {
                assert!(v.iter().all(|&x| x == 0.0), "{tag}: {n} should be exactly zero");
                assert!(e.iter().all(|x| x.abs() < 1e-6), "{tag}: {n}: the fixture's is not ~0");
                0.0
            } else {
                assert_close(n, &v, &f64s(&e), if n.starts_with("grad.") { 1e-3 } else { 1e-4 })
            };
            (n.to_string(), err)
        })
        .collect();
    std::fs::remove_file(out).ok();
    errors
}

/// The largest error of `errors` and its tensor's name.
pub fn worst(errors: &[(String, f64)]) -> (f64, &str) {
    errors.iter().fold((0.0, ""), |w, (n, e)| if *e > w.0 { (*e, n.as_str()) } else { w })
}
