//! The fusion-attention insight: the mean softmax weight per adapter per layer over the real
//! tokens of a data set, summed on the GPU by the encoder's fusion forward
//! ([`FusionModel::record_weights`]).

use crate::gpu::Gpu;
use crate::model::fusion::FusionModel;
use crate::train::metrics;
use anyhow::{Context, Result};
use std::path::Path;

/// Mean fusion softmax weight per adapter per layer over the real tokens of a data set: which
/// source adapter the target task leans on, layer by layer.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FusionAttention {
    pub adapter_names: Vec<String>,
    /// Encoder layers with a fusion layer.
    pub layers: Vec<usize>,
    /// `[layer][adapter]`; each row sums to 1 (softmax weights averaged over tokens).
    pub mean: Vec<Vec<f64>>,
    /// Real (unpadded) tokens averaged over.
    pub tokens: usize,
}

impl FusionAttention {
    /// Reads the sums the fusion recorded (see [`FusionModel::start_recording`]) over `tokens`
    /// real tokens.
    pub fn from_recorded(gpu: &Gpu, fusion: &FusionModel, tokens: usize) -> Result<Self> {
        let rows = fusion.recorded_means(gpu, tokens)?;
        Ok(Self {
            adapter_names: fusion.adapter_names.clone(),
            layers: rows.iter().map(|r| r.0).collect(),
            mean: rows.into_iter().map(|r| r.1).collect(),
            tokens,
        })
    }

    /// The mean over layers, per adapter.
    pub fn overall(&self) -> Vec<f64> {
        let n = self.adapter_names.len();
        let mut m = vec![0.0; n];
        for row in &self.mean {
            for (a, v) in m.iter_mut().zip(row) {
                *a += v / self.mean.len().max(1) as f64;
            }
        }
        m
    }

    /// A text table: one row per layer (and their mean), one column per adapter.
    pub fn table(&self) -> String {
        let w = self.adapter_names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(6);
        let mut s =
            format!("fusion attention: mean softmax weight per adapter ({} real tokens)\n{:<7}", self.tokens, "layer");
        for n in &self.adapter_names {
            s.push_str(&format!(" {n:>w$}"));
        }
        s.push('\n');
        let mut row = |label: String, vals: &[f64]| {
            s.push_str(&format!("{label:<7}"));
            for v in vals {
                s.push_str(&format!(" {v:>w$.4}"));
            }
            s.push('\n');
        };
        for (l, vals) in self.layers.iter().zip(&self.mean) {
            row(l.to_string(), vals);
        }
        row("mean".into(), &self.overall());
        s
    }

    /// A PNG heat map (layers × adapters), written atomically.
    pub fn plot(&self, path: &Path) -> Result<()> {
        let rows: Vec<String> = self.layers.iter().map(|l| format!("LAYER {l}")).collect();
        metrics::plot_heatmap(
            path,
            &format!("FUSION ATTENTION: MEAN SOFTMAX WEIGHT ({} TOKENS)", self.tokens),
            &self.adapter_names,
            &rows,
            &self.mean,
        )
    }

    /// Reads a table written by [`save_json`](Self::save_json).
    pub fn load_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: invalid fusion attention", path.display()))
    }

    /// Writes the table as JSON (atomically).
    pub fn save_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        crate::formats::write_atomic(path, text.as_bytes())
    }
}
