//! CPU reference of the dropout kernels: Philox4x32-10 in plain u64 arithmetic, the element →
//! (row, column) keys of [`MaskLayout`], and inverted dropout in f64.

use super::{MaskKey, MaskLayout, Rate};

const M0: u64 = 0xD251_1F53;
const M1: u64 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32-10 (Salmon et al., SC 2011): the four output words of `counter` under `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = M0 * c[0] as u64;
        let p1 = M1 * c[2] as u64;
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// The (global row, column) whose draw decides element `e`.
pub fn row_col(layout: MaskLayout, e: usize) -> (u32, u32) {
    match layout {
        MaskLayout::Rows { cols, row0 } => ((row0 + e / cols) as u32, (e % cols) as u32),
        MaskLayout::RowsEvery { cols, row0, every } => ((row0 + (e / cols) * every) as u32, (e % cols) as u32),
        MaskLayout::Attention { heads, seq, row0 } => {
            let ss = seq * seq;
            let (b, h, i, j) = (e / (heads * ss), (e / ss) % heads, (e / seq) % seq, e % seq);
            ((row0 + b * seq + i) as u32, (h * seq + j) as u32)
        }
    }
}

/// The draw of element `e`: word `column % 4` of Philox at counter (column / 4, row, step,
/// stream) under key (seed low, seed high).
pub fn draw(key: MaskKey, layout: MaskLayout, e: usize) -> u32 {
    let (row, col) = row_col(layout, e);
    let stream = key.stream().expect("a valid mask key");
    philox4x32_10([col >> 2, row, key.step, stream], [key.seed as u32, (key.seed >> 32) as u32])[(col & 3) as usize]
}

/// The keep mask of `n` elements (true: kept).
pub fn keep_mask(key: MaskKey, rate: Rate, layout: MaskLayout, n: usize) -> Vec<bool> {
    let t = rate.threshold();
    (0..n).map(|e| draw(key, layout, e) >= t).collect()
}

/// Inverted dropout in f64: `x · mask / (1 − p)` (the forward on activations, the backward on
/// gradients).
pub fn apply(x: &[f64], keep: &[bool], p: f64) -> Vec<f64> {
    x.iter().zip(keep).map(|(&v, &k)| if k { v / (1.0 - p) } else { 0.0 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Random123 known-answer vectors of Philox4x32-10 (its `kat_vectors`).
    #[test]
    fn philox_known_answers() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]);
        assert_eq!(
            philox4x32_10([0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344], [0xa409_3822, 0x299f_31d0]),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }
}
