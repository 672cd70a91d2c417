//! A task's training targets by head kind: class ids (classification), numbers (regression),
//! 0 / 1 per label (multi-label classification), a class id per token (tagging); labelled
//! examples turned into them, and a batch's rows of them.

use super::{Example, LabelMap};
use crate::formats::adapterhub::HeadKind;
use crate::kernels::loss::IGNORE_LABEL;
use anyhow::{bail, Result};

/// Between the label names of a multi-label example in a CSV / TSV cell (`sports|politics`).
pub const MULTI_LABEL_SEPARATOR: char = '|';

/// Every example's targets.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskTargets {
    /// Classification: one class id per example.
    Classes(Vec<u32>),
    /// Regression (`per` 1) and multi-label classification (`per` labels, 0 / 1 each): `per`
    /// values per example, row-major.
    Values { per: usize, values: Vec<f32> },
    /// Tagging: per example, one class id per token ([`IGNORE_LABEL`] where no word starts).
    Tokens(Vec<Vec<u32>>),
}

impl TaskTargets {
    /// How many examples.
    pub fn len(&self) -> usize {
        match self {
            TaskTargets::Classes(c) => c.len(),
            TaskTargets::Values { per, values } => values.len() / per.max(&1),
            TaskTargets::Tokens(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`label_map`]: the label map of a sequence head's training examples.
    pub fn label_map_for(kind: HeadKind, examples: &[Example], label_column: &str) -> Result<LabelMap> {
        label_map(kind, examples, label_column)
    }

    /// [`encode`]: the targets of a sequence head's examples.
    pub fn encode_for(kind: HeadKind, examples: &[Example], labels: &LabelMap, source: &str) -> Result<Self> {
        encode(kind, examples, labels, source)
    }

    /// The targets of the examples `indices`, as the encoder takes them for a batch padded to
    /// `seq` tokens (tagging rows padded with [`IGNORE_LABEL`]).
    pub fn batch(&self, indices: &[usize], seq: usize) -> super::OwnedTargets {
        match self {
            TaskTargets::Classes(c) => super::OwnedTargets::Classes(indices.iter().map(|&i| c[i]).collect()),
            TaskTargets::Values { per, values } => super::OwnedTargets::Values(
                indices.iter().flat_map(|&i| values[i * per..(i + 1) * per].iter().copied()).collect(),
            ),
            TaskTargets::Tokens(t) => super::OwnedTargets::Classes(
                indices
                    .iter()
                    .flat_map(|&i| t[i].iter().copied().chain(std::iter::repeat(IGNORE_LABEL)).take(seq))
                    .collect(),
            ),
        }
    }

    /// The targets as u32 words (class ids, or the values' bits): what the resume fingerprint
    /// hashes, so that a run resumes only on the same targets.
    pub fn fingerprint_words(&self) -> Vec<u32> {
        match self {
            TaskTargets::Classes(c) => c.clone(),
            TaskTargets::Values { values, .. } => values.iter().map(|v| v.to_bits()).collect(),
            TaskTargets::Tokens(t) => t.iter().flat_map(|r| r.iter().copied().chain([u32::MAX - 1])).collect(),
        }
    }
}

/// Where an example is, for errors: `source:line` or `source: example i`.
fn at(source: &str, e: &Example, i: usize) -> String {
    if e.line > 0 {
        format!("{source}:{}", e.line)
    } else {
        format!("{source}: example {}", i + 1)
    }
}

/// The label map of a sequence head's training examples: the names of the classes
/// (classification), the multi-label names (split at [`MULTI_LABEL_SEPARATOR`]), or the one
/// output of a regression head (named after the label column).
pub fn label_map(kind: HeadKind, examples: &[Example], label_column: &str) -> Result<LabelMap> {
    match kind {
        HeadKind::Classification => {
            let labels = LabelMap::from_examples(examples)?;
            if labels.len() < 2 {
                bail!("the training data has {} label(s); classification needs at least 2", labels.len());
            }
            Ok(labels)
        }
        HeadKind::Regression => LabelMap::new(vec![label_column.to_string()]),
        HeadKind::MultilabelClassification => {
            let names = examples.iter().filter_map(|e| e.label.as_deref()).flat_map(split_labels);
            let labels = LabelMap::from_labels(names);
            if labels.is_empty() {
                bail!("the training data has no labels");
            }
            Ok(labels)
        }
        HeadKind::Tagging => bail!("internal: tagging data is read as words and tags, not texts"),
    }
}

/// A multi-label cell's names.
fn split_labels(cell: &str) -> impl Iterator<Item = &str> {
    cell.split(MULTI_LABEL_SEPARATOR).map(str::trim).filter(|s| !s.is_empty())
}

/// The targets of a sequence head's `examples` (from `source`, named in errors).
pub fn encode(kind: HeadKind, examples: &[Example], labels: &LabelMap, source: &str) -> Result<TaskTargets> {
    match kind {
        HeadKind::Classification => Ok(TaskTargets::Classes(labels.encode(examples, source)?)),
        HeadKind::Regression => {
            let mut values = Vec::with_capacity(examples.len());
            for (i, e) in examples.iter().enumerate() {
                let l = e.label.as_deref().unwrap_or("");
                match l.trim().parse::<f32>() {
                    Ok(v) if v.is_finite() => values.push(v),
                    _ => bail!("{}: regression label {l:?} is not a finite number", at(source, e, i)),
                }
            }
            Ok(TaskTargets::Values { per: 1, values })
        }
        HeadKind::MultilabelClassification => {
            let per = labels.len();
            let mut values = vec![0.0f32; examples.len() * per];
            for (i, e) in examples.iter().enumerate() {
                for name in split_labels(e.label.as_deref().unwrap_or("")) {
                    let id = labels.id(name).map_err(|err| anyhow::anyhow!("{}: {err}", at(source, e, i)))?;
                    values[i * per + id as usize] = 1.0;
                }
            }
            Ok(TaskTargets::Values { per, values })
        }
        HeadKind::Tagging => bail!("internal: tagging data is read as words and tags, not texts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_targets_by_kind() {
        let ex = |l: &str| Example { text: "t".into(), pair: None, label: Some(l.into()), line: 2 };
        let data = [ex("b|a"), ex("c"), ex(" a | c ")];
        let labels = label_map(HeadKind::MultilabelClassification, &data, "label").unwrap();
        assert_eq!(labels.labels, ["a", "b", "c"]);
        let t = encode(HeadKind::MultilabelClassification, &data, &labels, "f.csv").unwrap();
        assert_eq!(t, TaskTargets::Values { per: 3, values: vec![1., 1., 0., 0., 0., 1., 1., 0., 1.] });
        assert_eq!(t.batch(&[2, 0], 9), crate::train::data::OwnedTargets::Values(vec![1., 0., 1., 1., 1., 0.]));
        let reg = [ex("0.5"), ex("-2e1")];
        let labels = label_map(HeadKind::Regression, &reg, "score").unwrap();
        assert_eq!(labels.labels, ["score"]);
        let t = encode(HeadKind::Regression, &reg, &labels, "f.csv").unwrap();
        assert_eq!(t, TaskTargets::Values { per: 1, values: vec![0.5, -20.0] });
        let e = encode(HeadKind::Regression, &[ex("high")], &labels, "f.csv").unwrap_err();
        assert!(format!("{e}").contains("f.csv:2") && format!("{e}").contains("\"high\""), "{e}");
        let tokens = TaskTargets::Tokens(vec![vec![IGNORE_LABEL, 3, IGNORE_LABEL], vec![IGNORE_LABEL, 1]]);
        assert_eq!(
            tokens.batch(&[1, 0], 3),
            crate::train::data::OwnedTargets::Classes(vec![
                IGNORE_LABEL,
                1,
                IGNORE_LABEL,
                IGNORE_LABEL,
                3,
                IGNORE_LABEL
            ])
        );
    }
}
