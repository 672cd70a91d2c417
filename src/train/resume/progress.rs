//! The loop's counters in the state file (serde; the layout of format 1).

use crate::train::TrainSummary;
use serde::{Deserialize, Serialize};

/// Where a run is and what it has seen: everything besides the tensors that the loop needs to
/// continue exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps done.
    pub step: usize,
    /// The epoch to run next (1-based), and the batch of it to start at.
    pub epoch: usize,
    pub batch: usize,
    /// Every epoch ran (or early stopping ended the run).
    pub finished: bool,
    /// `null` in the file while no epoch was evaluated (minus infinity here).
    #[serde(with = "finite_or_null", default = "neg_infinity")]
    pub best_accuracy: f64,
    pub best_epoch: usize,
    pub since_best: usize,
    pub dev_accuracy: Vec<f64>,
    pub dev_macro_f1: Vec<f64>,
    pub train_losses: Vec<f32>,
    pub real_tokens: usize,
    #[serde(default)]
    pub train_secs: f64,
    /// Length of `metrics.jsonl` when the state was saved (a resumed run cuts what came after).
    pub metrics_bytes: u64,
}

fn neg_infinity() -> f64 {
    f64::NEG_INFINITY
}

/// A float that may be minus infinity, as `null`.
mod finite_or_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_some(x)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NEG_INFINITY))
    }
}

impl Progress {
    pub fn new() -> Self {
        Self {
            step: 0,
            epoch: 1,
            batch: 0,
            finished: false,
            best_accuracy: f64::NEG_INFINITY,
            best_epoch: 0,
            since_best: 0,
            dev_accuracy: vec![],
            dev_macro_f1: vec![],
            train_losses: vec![],
            real_tokens: 0,
            train_secs: 0.0,
            metrics_bytes: 0,
        }
    }

    /// The loop's counters after `s.steps` steps, continuing at `epoch` / `batch`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn snapshot(
        s: &TrainSummary,
        epoch: usize,
        batch: usize,
        finished: bool,
        since_best: usize,
        real_tokens: usize,
        train_secs: f64,
        metrics_bytes: u64,
    ) -> Self {
        Self {
            step: s.steps,
            epoch,
            batch,
            finished,
            best_accuracy: s.best_accuracy,
            best_epoch: s.best_epoch,
            since_best,
            dev_accuracy: s.dev_accuracy.clone(),
            dev_macro_f1: s.dev_macro_f1.clone(),
            train_losses: s.train_losses.clone(),
            real_tokens,
            train_secs,
            metrics_bytes,
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn progress_round_trips_exactly() {
        let p = Progress {
            step: 9,
            epoch: 2,
            batch: 3,
            best_accuracy: 0.1 + 0.2,
            best_epoch: 1,
            dev_accuracy: vec![0.1 + 0.2],
            dev_macro_f1: vec![1.0 / 3.0],
            train_losses: vec![1.0986123, f32::MIN_POSITIVE, 1e-30],
            train_secs: 0.125,
            metrics_bytes: 77,
            ..Progress::new()
        };
        let v: Value = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(serde_json::from_value::<Progress>(v).unwrap(), p);
        let fresh = serde_json::to_string(&Progress::new()).unwrap();
        assert!(fresh.contains("\"best_accuracy\":null"), "{fresh}");
        assert_eq!(serde_json::from_str::<Progress>(&fresh).unwrap(), Progress::new());
    }
}
