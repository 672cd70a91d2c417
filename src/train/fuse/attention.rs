//! The fusion-attention insight: the mean softmax weight per adapter per fusion layer over the real
//! tokens of a data set, summed on the GPU by the encoder's fusion forward
//! ([`FusionModel::record_weights`]).

use crate::gpu::Gpu;
use crate::model::adapters::Location;
use crate::model::fusion::FusionModel;
use crate::train::metrics;
use anyhow::{Context, Result};
use std::path::Path;

/// Mean fusion softmax weight per adapter per layer over the real tokens of a data set: which
/// source adapter the target task leans on, layer by layer.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FusionAttention {
    pub adapter_names: Vec<String>,
    /// Encoder layers with a fusion layer at the FFN output.
    pub layers: Vec<usize>,
    /// `[layer][adapter]`; each row sums to 1 (softmax weights averaged over tokens).
    pub mean: Vec<Vec<f64>>,
    /// Encoder layers with a fusion layer at the attention output (over Houlsby adapters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attention_layers: Vec<usize>,
    /// `[layer][adapter]` of those.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attention_mean: Vec<Vec<f64>>,
    /// Real (unpadded) tokens averaged over.
    pub tokens: usize,
}

impl FusionAttention {
    /// Reads the sums the fusion recorded (see [`FusionModel::start_recording`]) over `tokens`
    /// real tokens.
    pub fn from_recorded(gpu: &Gpu, fusion: &FusionModel, tokens: usize) -> Result<Self> {
        let rows = fusion.recorded_means(gpu, tokens, Location::Output)?;
        let attention = fusion.recorded_means(gpu, tokens, Location::Attention)?;
        Ok(Self {
            adapter_names: fusion.adapter_names.clone(),
            layers: rows.iter().map(|r| r.0).collect(),
            mean: rows.into_iter().map(|r| r.1).collect(),
            attention_layers: attention.iter().map(|r| r.0).collect(),
            attention_mean: attention.into_iter().map(|r| r.1).collect(),
            tokens,
        })
    }

    /// Every row with its label, layer by layer (the attention output's first): `"3"` over
    /// adapters at the FFN output only, else `"3 attn"` / `"3 ffn"`.
    pub fn rows(&self) -> Vec<(String, &[f64])> {
        let both = !self.attention_layers.is_empty();
        let attn = self.attention_layers.iter().zip(&self.attention_mean).map(|(l, v)| (*l, 0, format!("{l} attn"), v));
        let out = self
            .layers
            .iter()
            .zip(&self.mean)
            .map(|(l, v)| (*l, 1, if both { format!("{l} ffn") } else { l.to_string() }, v));
        let mut rows: Vec<_> = attn.chain(out).collect();
        rows.sort_by_key(|r| (r.0, r.1));
        rows.into_iter().map(|(_, _, label, v)| (label, v.as_slice())).collect()
    }

    /// The mean over fusion layers, per adapter.
    pub fn overall(&self) -> Vec<f64> {
        let n = self.adapter_names.len();
        let rows = self.rows();
        let mut m = vec![0.0; n];
        for (_, row) in &rows {
            for (a, v) in m.iter_mut().zip(*row) {
                *a += v / rows.len().max(1) as f64;
            }
        }
        m
    }

    /// A text table: one row per layer (and their mean), one column per adapter.
    pub fn table(&self) -> String {
        let w = self.adapter_names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(6);
        let mut s =
            format!("fusion attention: mean softmax weight per adapter ({} real tokens)\n{:<8}", self.tokens, "layer");
        for n in &self.adapter_names {
            s.push_str(&format!(" {n:>w$}"));
        }
        s.push('\n');
        let mut row = |label: String, vals: &[f64]| {
            s.push_str(&format!("{label:<8}"));
            for v in vals {
                s.push_str(&format!(" {v:>w$.4}"));
            }
            s.push('\n');
        };
        for (label, vals) in self.rows() {
            row(label, vals);
        }
        row("mean".into(), &self.overall());
        s
    }

    /// A PNG heat map (fusion layers × adapters), written atomically.
    pub fn plot(&self, path: &Path) -> Result<()> {
        let rows = self.rows();
        let labels: Vec<String> = rows.iter().map(|r| format!("LAYER {}", r.0.to_uppercase())).collect();
        let values: Vec<Vec<f64>> = rows.iter().map(|r| r.1.to_vec()).collect();
        metrics::plot_heatmap(
            path,
            &format!("FUSION ATTENTION: MEAN SOFTMAX WEIGHT ({} TOKENS)", self.tokens),
            &self.adapter_names,
            &labels,
            &values,
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

#[cfg(test)]
mod tests {
    use super::FusionAttention;

    /// The JSON file gives back the table's means bit for bit (serde_json's `float_roundtrip`:
    /// its default parser was one ulp off for values like this one, from a real run).
    #[test]
    fn json_round_trip_is_exact() {
        let t = FusionAttention {
            adapter_names: vec!["a".into(), "b".into()],
            layers: vec![0],
            mean: vec![vec![0.5014217745873236, 0.49857825617636403]],
            attention_layers: vec![],
            attention_mean: vec![],
            tokens: 62,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attention.json");
        t.save_json(&path).unwrap();
        assert_eq!(FusionAttention::load_json(&path).unwrap(), t);
    }
}
