//! The label map: label names by id, and label counts.

use super::Example;
use anyhow::{anyhow, bail, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Label names by id. Built from training data in a fixed order (integers numerically, so label
/// `"0"` is id 0 and `"1"` id 1; otherwise strings sorted), or taken from a saved head's
/// `label2id` for evaluation and prediction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelMap {
    /// `labels[id]` is the label's name.
    pub labels: Vec<String>,
}

impl LabelMap {
    /// The given names in the given order (id = position): e.g. a saved head's `id2label`.
    /// Names must be unique and non-empty.
    pub fn new(labels: Vec<String>) -> Result<Self> {
        if labels.is_empty() {
            bail!("a label map needs at least one label");
        }
        let mut seen = BTreeSet::new();
        for l in &labels {
            if !seen.insert(l.as_str()) {
                bail!("label {l:?} appears twice in the label map");
            }
        }
        Ok(Self { labels })
    }

    /// Distinct labels in our canonical order: when every label parses as an integer, sorted
    /// numerically (`"2" < "10"`); otherwise sorted as strings.
    pub fn from_labels<I, S>(labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let set: BTreeSet<String> = labels.into_iter().map(|s| s.as_ref().to_string()).collect();
        let mut labels: Vec<String> = set.into_iter().collect();
        let numeric: Option<Vec<i64>> = labels.iter().map(|l| l.parse::<i64>().ok()).collect();
        if let Some(nums) = numeric {
            let mut keyed: Vec<(i64, String)> = nums.into_iter().zip(labels).collect();
            keyed.sort();
            labels = keyed.into_iter().map(|(_, l)| l).collect();
        }
        Self { labels }
    }

    /// The labels of `examples` (see [`LabelMap::from_labels`]). Every example needs a label, and
    /// there must be at least two distinct ones.
    pub fn from_examples(examples: &[Example]) -> Result<Self> {
        let mut names = Vec::with_capacity(examples.len());
        for (i, e) in examples.iter().enumerate() {
            match &e.label {
                Some(l) => names.push(l.as_str()),
                None => bail!("{} has no label", describe(e, i)),
            }
        }
        let map = Self::from_labels(names);
        match map.labels.len() {
            0 => bail!("no examples to build a label map from"),
            1 => bail!(
                "every example has the label {:?}: a classifier needs at least two (is the file sorted by label and cut short? shuffle before taking a subset)",
                map.labels[0]
            ),
            _ => Ok(map),
        }
    }

    /// From a `label2id` object (AdapterHub's `head_config.json`, Hugging Face's config): the ids
    /// must be exactly `0..n`, each once.
    pub fn from_label2id<I, S>(label2id: I) -> Result<Self>
    where
        I: IntoIterator<Item = (S, usize)>,
        S: Into<String>,
    {
        let mut by_id: BTreeMap<usize, String> = BTreeMap::new();
        for (label, id) in label2id {
            let label = label.into();
            if let Some(prev) = by_id.insert(id, label.clone()) {
                bail!("label2id: {prev:?} and {label:?} share id {id}");
            }
        }
        for (want, (&id, label)) in by_id.iter().enumerate() {
            if id != want {
                bail!("label2id: ids must be 0..{} without gaps; {label:?} has id {id}", by_id.len());
            }
        }
        Self::new(by_id.into_values().collect())
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The id of `label`. Labels are compared as written (after trimming); when the map's names
    /// are Hugging Face's placeholders `LABEL_0 .. LABEL_{n-1}`, integer labels `0 .. n-1` map to
    /// those ids too.
    pub fn id(&self, label: &str) -> Result<u32> {
        let label = label.trim();
        if let Some(i) = self.labels.iter().position(|l| l == label) {
            return Ok(i as u32);
        }
        if let Ok(i) = label.parse::<usize>() {
            let placeholders = self.labels.iter().enumerate().all(|(j, l)| *l == format!("LABEL_{j}"));
            if placeholders && i < self.labels.len() {
                return Ok(i as u32);
            }
        }
        bail!("label {label:?} is not one of the model's labels ({})", self.names_list())
    }

    /// The name of id `id`.
    pub fn name(&self, id: u32) -> Option<&str> {
        self.labels.get(id as usize).map(String::as_str)
    }

    /// `{label: id}`, as AdapterHub's head config stores it.
    pub fn label2id(&self) -> BTreeMap<String, usize> {
        self.labels.iter().enumerate().map(|(i, l)| (l.clone(), i)).collect()
    }

    /// The ids of every example's label; errors name `source` (the file) and the example's line.
    pub fn encode(&self, examples: &[Example], source: &str) -> Result<Vec<u32>> {
        let index: HashMap<&str, u32> = self.labels.iter().enumerate().map(|(i, l)| (l.as_str(), i as u32)).collect();
        examples
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let label = e.label.as_deref().ok_or_else(|| anyhow!("{source}: {} has no label", describe(e, i)))?;
                match index.get(label) {
                    Some(&id) => Ok(id),
                    None => self.id(label).map_err(|err| anyhow!("{source}: {}: {err}", describe(e, i))),
                }
            })
            .collect()
    }

    fn names_list(&self) -> String {
        const SHOWN: usize = 20;
        let mut s: Vec<String> = self.labels.iter().take(SHOWN).map(|l| format!("{l:?}")).collect();
        if self.labels.len() > SHOWN {
            s.push(format!("… {} in all", self.labels.len()));
        }
        s.join(", ")
    }
}

fn describe(e: &Example, index: usize) -> String {
    if e.line > 0 {
        format!("line {}", e.line)
    } else {
        format!("example {}", index + 1)
    }
}

/// Counts of each label, in label-map order (for reports such as "4265 / 4265").
pub fn label_counts(labels: &[u32], num_labels: usize) -> Vec<usize> {
    let mut counts = vec![0usize; num_labels];
    for &l in labels {
        if let Some(c) = counts.get_mut(l as usize) {
            *c += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_labels_sort_numerically() {
        let m = LabelMap::from_labels(["10", "2", "1", "0"]);
        assert_eq!(m.labels, ["0", "1", "2", "10"]);
        assert_eq!(m.id("2").unwrap(), 2);
        let m = LabelMap::from_labels(["pos", "neg", "10"]);
        assert_eq!(m.labels, ["10", "neg", "pos"]);
        let m = LabelMap::from_labels(["-1", "1"]);
        assert_eq!(m.labels, ["-1", "1"]);
    }

    #[test]
    fn placeholder_names_accept_integers() {
        let m = LabelMap::new(vec!["LABEL_0".into(), "LABEL_1".into()]).unwrap();
        assert_eq!(m.id("1").unwrap(), 1);
        assert!(m.id("2").is_err());
        let m = LabelMap::new(vec!["neg".into(), "pos".into()]).unwrap();
        assert!(m.id("1").is_err());
    }

    #[test]
    fn label2id_must_be_dense() {
        let m = LabelMap::from_label2id([("pos", 1), ("neg", 0)]).unwrap();
        assert_eq!(m.labels, ["neg", "pos"]);
        assert_eq!(m.label2id(), BTreeMap::from([("neg".to_string(), 0), ("pos".to_string(), 1)]));
        assert!(LabelMap::from_label2id([("a", 0), ("b", 2)]).is_err());
        assert!(LabelMap::from_label2id([("a", 0), ("b", 0)]).is_err());
    }
}
