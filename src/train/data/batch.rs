//! Padded batches and length-bucketed epochs.

use super::Tokenized;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// A padded batch, row-major `[batch, seq]`, padded (right) to its longest example.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub ids: Vec<u32>,
    /// 1.0 for real tokens, 0.0 for padding.
    pub mask: Vec<f32>,
    pub types: Vec<u32>,
    pub batch: usize,
    pub seq: usize,
    /// One per row; empty when the examples have no labels (or are not classification examples).
    pub labels: Vec<u32>,
    /// The rows' targets for any head kind ([`Batch::with_targets`]); `None` without.
    pub targets: Option<super::OwnedTargets>,
    /// Which examples (indices into the tokenized set) the rows are.
    pub indices: Vec<usize>,
}

/// How a batch is padded: with token `id`, to its longest example rounded up to a multiple of
/// `multiple` (1: not rounded), never past `cap` (the trainer's: the longest example of the
/// run's data, which the memory plan was made for) unless an example is longer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Padding {
    pub id: u32,
    pub multiple: usize,
    pub cap: usize,
}

impl Padding {
    /// To the batch's longest example (`multiple` 1).
    pub fn to_longest(id: u32) -> Self {
        Self { id, multiple: 1, cap: usize::MAX }
    }

    /// The padded length of a batch whose longest example has `longest` tokens.
    pub fn length(&self, longest: usize) -> usize {
        let m = self.multiple.max(1);
        longest.div_ceil(m).saturating_mul(m).min(self.cap).max(longest)
    }
}

impl Batch {
    /// Rows `indices` of `tokens` (and of `labels`, when given), padded as `pad` says.
    pub fn new(tokens: &[Tokenized], labels: Option<&[u32]>, indices: &[usize], pad: Padding) -> Self {
        let batch = indices.len();
        let pad_id = pad.id;
        let seq = pad.length(indices.iter().map(|&i| tokens[i].len()).max().unwrap_or(0));
        let mut ids = vec![pad_id; batch * seq];
        let mut mask = vec![0.0f32; batch * seq];
        let mut types = vec![0u32; batch * seq];
        for (r, &i) in indices.iter().enumerate() {
            let t = &tokens[i];
            let row = r * seq;
            ids[row..row + t.len()].copy_from_slice(&t.ids);
            types[row..row + t.len()].copy_from_slice(&t.types);
            mask[row..row + t.len()].fill(1.0);
        }
        let labels: Vec<u32> = labels.map(|l| indices.iter().map(|&i| l[i]).collect()).unwrap_or_default();
        let targets = (!labels.is_empty()).then(|| super::OwnedTargets::Classes(labels.clone()));
        Self { ids, mask, types, batch, seq, labels, targets, indices: indices.to_vec() }
    }

    /// Rows `indices` of `tokens` with their `targets` (any head kind), padded as `pad` says.
    pub fn with_targets(tokens: &[Tokenized], targets: &super::TaskTargets, indices: &[usize], pad: Padding) -> Self {
        let mut b = Self::new(tokens, None, indices, pad);
        if let super::TaskTargets::Classes(c) = targets {
            b.labels = indices.iter().map(|&i| c[i]).collect();
        }
        b.targets = Some(targets.batch(indices, b.seq));
        b
    }

    /// Tokens that are not padding.
    pub fn real_tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m != 0.0).count()
    }

    /// `batch · seq`: what the encoder computes on.
    pub fn padded_tokens(&self) -> usize {
        self.batch * self.seq
    }

    /// The encoder's input.
    pub fn inputs(&self) -> crate::model::encoder::Inputs {
        crate::model::encoder::Inputs {
            batch: self.batch,
            seq: self.seq,
            ids: self.ids.clone(),
            token_types: self.types.clone(),
            mask: self.mask.clone(),
        }
    }
}

/// Examples a bucketing window holds, in batches: sorting by length within `BUCKET_WINDOW ·
/// batch_size` shuffled examples keeps batches random while their lengths are close.
pub const BUCKET_WINDOW: usize = 50;

/// Batches of example indices for one epoch, deterministic for a seed (use a new seed per epoch,
/// e.g. `seed + epoch`). Every index appears once; only the last batch may be short.
///
/// Without `bucket`: a seeded shuffle cut into batches. With `bucket`: the shuffled order is cut
/// into windows of `BUCKET_WINDOW · batch_size` examples, each window is sorted by length and cut
/// into batches, and the order of all batches is shuffled, so a batch holds examples of similar
/// length and little compute goes to padding (see [`padding_efficiency`]).
pub fn make_batches(lengths: &[usize], batch_size: usize, seed: u64, bucket: bool) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.shuffle(&mut rng);
    if !bucket {
        return order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    }
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(lengths.len().div_ceil(batch_size));
    for window in order.chunks_mut(BUCKET_WINDOW * batch_size) {
        // Stable: ties keep their shuffled order.
        window.sort_by_key(|&i| lengths[i]);
        batches.extend(window.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// Batches of example indices in order (`0..n` cut into `batch_size` pieces, the last may be
/// short): `--batch-order file`.
pub fn batches_in_order(n: usize, batch_size: usize) -> Vec<Vec<usize>> {
    (0..n).collect::<Vec<_>>().chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect()
}

/// Real tokens over padded tokens (`Σ len / Σ batch · longest`) for batches of `lengths`;
/// 1.0 means no padding at all.
pub fn padding_efficiency(lengths: &[usize], batches: &[Vec<usize>]) -> f64 {
    let mut real = 0usize;
    let mut padded = 0usize;
    for b in batches {
        let longest = b.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        real += b.iter().map(|&i| lengths[i]).sum::<usize>();
        padded += longest * b.len();
    }
    if padded == 0 {
        1.0
    } else {
        real as f64 / padded as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_pads_right() {
        let toks = vec![
            Tokenized { ids: vec![101, 5, 102], types: vec![0, 0, 0] },
            Tokenized { ids: vec![101, 102], types: vec![0, 0] },
        ];
        let b = Batch::new(&toks, Some(&[1, 0]), &[1, 0], Padding::to_longest(0));
        assert_eq!((b.batch, b.seq), (2, 3));
        assert_eq!(b.ids, [101, 102, 0, 101, 5, 102]);
        assert_eq!(b.mask, [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(b.labels, [0, 1]);
        assert_eq!((b.real_tokens(), b.padded_tokens()), (5, 6));
    }
}
