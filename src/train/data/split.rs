//! Seeded shuffles and train/dev splits.

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Shuffles `items` in place, the same way for the same seed.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    items.shuffle(&mut StdRng::seed_from_u64(seed));
}

/// A seeded train/dev split: shuffles (with `seed`), then puts `round(n · dev_fraction)` examples
/// (at least 1 when the fraction is positive) into dev and the rest into train. Both parts stay in
/// shuffled order, so the first `k` train examples are a random subset. The same seed and input
/// give the same split.
pub fn seeded_split<T>(mut items: Vec<T>, dev_fraction: f64, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    if !(0.0..1.0).contains(&dev_fraction) {
        bail!("the dev fraction must be in [0, 1), got {dev_fraction}");
    }
    let n = items.len();
    let mut n_dev = (n as f64 * dev_fraction).round() as usize;
    if dev_fraction > 0.0 {
        n_dev = n_dev.max(1);
    }
    if n_dev >= n {
        bail!("{n} examples are too few to hold out a dev fraction of {dev_fraction} and still train");
    }
    shuffle(&mut items, seed);
    let dev = items.split_off(n - n_dev);
    Ok((items, dev))
}
