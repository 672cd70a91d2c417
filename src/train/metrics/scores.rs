//! Classification scores: confusion counts, accuracy, macro-F1, argmax of logits.

use std::fmt;

/// Counts of (true label, predicted label) pairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confusion {
    pub num_classes: usize,
    /// `counts[label * num_classes + predicted]`.
    pub counts: Vec<u64>,
}

/// Precision, recall and F1 of one class (0 where a ratio is 0/0, as scikit-learn reports it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Examples whose true label is this class.
    pub support: u64,
    /// Examples predicted as this class.
    pub predicted: u64,
}

impl Confusion {
    pub fn new(num_classes: usize) -> Self {
        Self { num_classes, counts: vec![0; num_classes * num_classes] }
    }

    /// From parallel label / prediction lists; grows past `num_classes` if an id is larger.
    pub fn from_predictions(labels: &[u32], preds: &[u32], num_classes: usize) -> Self {
        assert_eq!(labels.len(), preds.len(), "labels and predictions differ in length");
        let n = labels.iter().chain(preds).map(|&c| c as usize + 1).max().unwrap_or(0).max(num_classes);
        let mut c = Self::new(n);
        for (&l, &p) in labels.iter().zip(preds) {
            c.add(l, p);
        }
        c
    }

    /// Counts one example, growing the matrix when a class id is new.
    pub fn add(&mut self, label: u32, pred: u32) {
        let need = (label.max(pred) as usize) + 1;
        if need > self.num_classes {
            let mut grown = Self::new(need);
            for l in 0..self.num_classes {
                for p in 0..self.num_classes {
                    grown.counts[l * need + p] = self.get(l as u32, p as u32);
                }
            }
            *self = grown;
        }
        self.counts[label as usize * self.num_classes + pred as usize] += 1;
    }

    pub fn get(&self, label: u32, pred: u32) -> u64 {
        let (l, p) = (label as usize, pred as usize);
        if l < self.num_classes && p < self.num_classes {
            self.counts[l * self.num_classes + p]
        } else {
            0
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Correct predictions over all; 0 when there are none.
    pub fn accuracy(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        let correct: u64 = (0..self.num_classes).map(|c| self.counts[c * self.num_classes + c]).sum();
        correct as f64 / total as f64
    }

    /// Scores of every class id `0..num_classes`.
    pub fn per_class(&self) -> Vec<ClassScores> {
        let n = self.num_classes;
        (0..n)
            .map(|c| {
                let tp = self.counts[c * n + c];
                let support: u64 = (0..n).map(|p| self.counts[c * n + p]).sum();
                let predicted: u64 = (0..n).map(|l| self.counts[l * n + c]).sum();
                let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
                // 2tp / (2tp + fp + fn), which equals 2PR / (P + R) and is 0 where that is 0/0.
                ClassScores {
                    precision: ratio(tp, predicted),
                    recall: ratio(tp, support),
                    f1: ratio(2 * tp, support + predicted),
                    support,
                    predicted,
                }
            })
            .collect()
    }

    /// F1 averaged over the classes that occur among the labels or the predictions: scikit-learn's
    /// `f1_score(y_true, y_pred, average="macro")` with the labels inferred. A class that is
    /// present but never predicted counts with F1 = 0; a class in neither does not count.
    pub fn macro_f1(&self) -> f64 {
        let present: Vec<ClassScores> = self.per_class().into_iter().filter(|s| s.support + s.predicted > 0).collect();
        if present.is_empty() {
            return 0.0;
        }
        present.iter().map(|s| s.f1).sum::<f64>() / present.len() as f64
    }
}

/// Share of `preds` equal to `labels`; 0 for empty lists.
pub fn accuracy(labels: &[u32], preds: &[u32]) -> f64 {
    Confusion::from_predictions(labels, preds, 0).accuracy()
}

/// Macro-averaged F1 over the classes in `labels ∪ preds` (see [`Confusion::macro_f1`]).
pub fn macro_f1(labels: &[u32], preds: &[u32]) -> f64 {
    Confusion::from_predictions(labels, preds, 0).macro_f1()
}

/// The dev metrics of a head other than classification.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HeadScores {
    Regression {
        pearson: f64,
        spearman: f64,
        mse: f64,
    },
    Multilabel {
        micro_f1: f64,
        macro_f1: f64,
    },
    /// Entity level (seqeval's default mode), over the words.
    Tagging {
        precision: f64,
        recall: f64,
        f1: f64,
    },
}

/// The metric the trainer keeps the best epoch by, for a head of `kind`.
pub fn primary_metric(kind: crate::formats::adapterhub::HeadKind) -> &'static str {
    use crate::formats::adapterhub::HeadKind;
    match kind {
        HeadKind::Classification => "accuracy",
        HeadKind::Regression => "Pearson",
        HeadKind::MultilabelClassification => "micro-F1",
        HeadKind::Tagging => "entity F1",
    }
}

/// What `peft eval` reports. For heads other than classification `accuracy` holds the metric the
/// trainer keeps the best epoch by (Pearson, micro-F1, entity F1) and `macro_f1` a second one
/// (Spearman, macro-F1, entity recall); `detail` has them all.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub n: usize,
    pub detail: Option<HeadScores>,
}

impl Scores {
    pub fn new(labels: &[u32], preds: &[u32]) -> Self {
        let c = Confusion::from_predictions(labels, preds, 0);
        Self { accuracy: c.accuracy(), macro_f1: c.macro_f1(), n: labels.len(), detail: None }
    }

    /// The scores of a head other than classification over `n` examples.
    pub fn of_head(detail: HeadScores, n: usize) -> Self {
        let (accuracy, macro_f1) = match detail {
            HeadScores::Regression { pearson, spearman, .. } => (pearson, spearman),
            HeadScores::Multilabel { micro_f1, macro_f1 } => (micro_f1, macro_f1),
            HeadScores::Tagging { f1, recall, .. } => (f1, recall),
        };
        Self { accuracy, macro_f1, n, detail: Some(detail) }
    }

    /// The name of the metric in `accuracy` (what the best epoch is chosen by).
    pub fn primary_name(&self) -> &'static str {
        match self.detail {
            None => "accuracy",
            Some(HeadScores::Regression { .. }) => "Pearson",
            Some(HeadScores::Multilabel { .. }) => "micro-F1",
            Some(HeadScores::Tagging { .. }) => "entity F1",
        }
    }

    /// One line for the epoch's report: `accuracy 0.xxxx, macro-F1 0.xxxx`, or the head's metrics.
    pub fn summary(&self) -> String {
        match self.detail {
            None => format!("accuracy {:.4}, macro-F1 {:.4}", self.accuracy, self.macro_f1),
            Some(HeadScores::Regression { pearson, spearman, mse }) => {
                format!("Pearson {pearson:.4}, Spearman {spearman:.4}, MSE {mse:.4}")
            }
            Some(HeadScores::Multilabel { micro_f1, macro_f1 }) => {
                format!("micro-F1 {micro_f1:.4}, macro-F1 {macro_f1:.4}")
            }
            Some(HeadScores::Tagging { precision, recall, f1 }) => {
                format!("entity F1 {f1:.4} (precision {precision:.4}, recall {recall:.4})")
            }
        }
    }
}

/// `accuracy=0.xxxx macro_f1=0.xxxx n=N`, or the head's metrics as `name=value`.
impl fmt::Display for Scores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.detail {
            None => write!(f, "accuracy={:.4} macro_f1={:.4} n={}", self.accuracy, self.macro_f1, self.n),
            Some(HeadScores::Regression { pearson, spearman, mse }) => {
                write!(f, "pearson={pearson:.4} spearman={spearman:.4} mse={mse:.4} n={}", self.n)
            }
            Some(HeadScores::Multilabel { micro_f1, macro_f1 }) => {
                write!(f, "micro_f1={micro_f1:.4} macro_f1={macro_f1:.4} n={}", self.n)
            }
            Some(HeadScores::Tagging { precision, recall, f1 }) => {
                write!(f, "entity_f1={f1:.4} precision={precision:.4} recall={recall:.4} n={}", self.n)
            }
        }
    }
}

/// The index of each row's largest logit (`logits` is `[rows, num_labels]`, row-major). NaN
/// never wins; ties go to the lower index.
pub fn argmax_rows(logits: &[f32], num_labels: usize) -> Vec<u32> {
    if num_labels == 0 {
        return Vec::new();
    }
    logits
        .chunks(num_labels)
        .map(|row| {
            let mut best = 0usize;
            for (i, &x) in row.iter().enumerate() {
                if x > row[best] || row[best].is_nan() && !x.is_nan() {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn accuracy_and_macro_f1_by_hand() {
        // Perfect.
        assert!(close(accuracy(&[0, 1, 1], &[0, 1, 1]), 1.0));
        assert!(close(macro_f1(&[0, 1, 1], &[0, 1, 1]), 1.0));
        // y = [0,0,1,1], p = [0,1,1,1]: class 0 P=1 R=1/2 F1=2/3; class 1 P=2/3 R=1 F1=4/5.
        let (y, p) = ([0, 0, 1, 1], [0, 1, 1, 1]);
        assert!(close(accuracy(&y, &p), 0.75));
        assert!(close(macro_f1(&y, &p), (2.0 / 3.0 + 0.8) / 2.0));
        // A class never predicted: y = [0,1,2,2], p = [0,1,1,2].
        // class 0: F1 1; class 1: tp 1, fp 1, fn 0 -> 2/3; class 2: tp 1, fp 0, fn 1 -> 2/3.
        assert!(close(macro_f1(&[0, 1, 2, 2], &[0, 1, 1, 2]), (1.0 + 2.0 / 3.0 + 2.0 / 3.0) / 3.0));
        // y = [0,0,1,1], p = [0,0,0,0]: class 1 never predicted, F1 0; class 0 P=1/2 R=1 F1=2/3.
        assert!(close(macro_f1(&[0, 0, 1, 1], &[0, 0, 0, 0]), (2.0 / 3.0) / 2.0));
        // A predicted class absent from the labels counts (labels ∪ predictions):
        // y = [0,0], p = [0,2] -> class 0 P=1 R=1/2 F1=2/3, class 2 F1=0, class 1 in neither.
        assert!(close(macro_f1(&[0, 0], &[0, 2]), (2.0 / 3.0) / 2.0));
        // Ids need not start at 0 or be contiguous: only present classes are averaged.
        assert!(close(macro_f1(&[3, 3, 7], &[3, 3, 7]), 1.0));
        assert_eq!(accuracy(&[], &[]), 0.0);
        assert_eq!(macro_f1(&[], &[]), 0.0);
    }

    #[test]
    fn confusion_counts() {
        let c = Confusion::from_predictions(&[0, 0, 1, 2, 2, 2], &[0, 1, 1, 2, 0, 2], 3);
        assert_eq!(c.counts, vec![1, 1, 0, 0, 1, 0, 1, 0, 2]);
        assert_eq!(c.get(2, 0), 1);
        assert_eq!(c.total(), 6);
        let s = c.per_class();
        assert_eq!((s[0].support, s[0].predicted), (2, 2));
        assert!(close(s[2].recall, 2.0 / 3.0));
        assert!(close(s[2].precision, 1.0));
        let mut g = Confusion::new(1);
        g.add(0, 0);
        g.add(3, 1);
        assert_eq!(g.num_classes, 4);
        assert_eq!((g.get(0, 0), g.get(3, 1)), (1, 1));
    }

    #[test]
    fn scores_line() {
        let s = Scores::new(&[0, 0, 1, 1], &[0, 1, 1, 1]);
        assert_eq!(s.to_string(), "accuracy=0.7500 macro_f1=0.7333 n=4");
    }

    #[test]
    fn argmax() {
        assert_eq!(argmax_rows(&[0.1, 0.9, 2.0, -1.0, f32::NAN, 0.0], 2), vec![1, 0, 1]);
    }
}
