//! Dropout in training passes, where the `adapters` library (AdapterHub) has it with the model in
//! train mode: the embeddings' output (after their LayerNorm), the attention probabilities (after
//! the softmax), the attention output dense and the FFN output dense (before the adapter, or the
//! residual + LayerNorm), and the classification head's input to each Linear. The masks come from
//! [`crate::kernels::dropout`], keyed by (seed, optimizer step, layer, site, global token row,
//! column): never stored, drawn again in backward and in a recompute, and the same for a layer chunk
//! as for the whole batch.

use super::super::config::{BertConfig, Family};
use super::super::plan::DropoutSites;
use super::{t, Encoder};
use crate::gpu::{CommandRecorder, GpuTensor};
use crate::kernels::attention::{AttentionShape, ProbsDropout};
use crate::kernels::dropout::{self, MaskKey, MaskLayout, Rate, Site};
use anyhow::Result;

/// The dropout rates of a training pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutRates {
    /// `hidden_dropout_prob`: embeddings' output and FFN output.
    pub hidden: Rate,
    /// The attention output dense's: `hidden_dropout_prob`, except for DistilBERT, whose
    /// attention output (`out_lin`) has no dropout in transformers.
    pub attention_output: Rate,
    /// `attention_probs_dropout_prob`: the attention probabilities.
    pub attention: Rate,
    /// The classification head's, before each of its Linear layers.
    pub head: Rate,
}

impl DropoutRates {
    /// The rates of `cfg`, with the head's as AdapterHub's `PredictionHead` picks it: the head
    /// config's `dropout_prob`, else the model's `classifier_dropout`, else `hidden_dropout_prob`.
    pub fn from_config(cfg: &BertConfig, head_dropout_prob: Option<f64>) -> Result<Self> {
        let head = head_dropout_prob.or(cfg.classifier_dropout).unwrap_or(cfg.hidden_dropout_prob);
        let attention_output = match cfg.layout.family {
            Family::DistilBert => 0.0,
            _ => cfg.hidden_dropout_prob,
        };
        Ok(Self {
            hidden: Rate::new(cfg.hidden_dropout_prob)?,
            attention_output: Rate::new(attention_output)?,
            attention: Rate::new(cfg.attention_probs_dropout_prob)?,
            head: Rate::new(head)?,
        })
    }

    /// The sites whose rate is not 0 (what the memory planner counts).
    pub fn sites(&self) -> DropoutSites {
        DropoutSites {
            hidden: self.hidden.p > 0.0,
            attention_output: self.attention_output.p > 0.0,
            probs: self.attention.p > 0.0,
            head: self.head.p > 0.0,
        }
    }

    /// The same rate everywhere (tests).
    pub fn uniform(p: f64) -> Result<Self> {
        let r = Rate::new(p)?;
        Ok(Self { hidden: r, attention_output: r, attention: r, head: r })
    }
}

/// Dropout of one training pass: the rates and the masks' seed and step (the optimizer step, so
/// that a resumed run draws the masks the uninterrupted run would).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PassDropout {
    pub rates: DropoutRates,
    pub seed: u64,
    pub step: u32,
}

impl PassDropout {
    fn key(&self, layer: usize, site: Site) -> MaskKey {
        MaskKey { seed: self.seed, step: self.step, layer: layer as u32, site }
    }
}

/// A pass's dropout over some rows of the batch: `row0` is the global token row of the first
/// (non-zero in a layer chunk), `every` the global rows from one row to the next (1; a
/// sequence's length where a tensor holds one row a sequence, the top layer's `[CLS]` rows).
#[derive(Clone, Copy, Debug)]
pub(super) struct RowsDropout {
    pub pass: PassDropout,
    pub row0: usize,
    pub every: usize,
}

impl RowsDropout {
    pub fn whole(pass: Option<PassDropout>) -> Option<Self> {
        pass.map(|pass| Self::from_row(pass, 0))
    }

    /// Consecutive rows from global row `row0`.
    pub fn from_row(pass: PassDropout, row0: usize) -> Self {
        Self { pass, row0, every: 1 }
    }

    /// The same pass over one row of every `seq` (the first token of each sequence).
    pub fn first_tokens(self, seq: usize) -> Self {
        Self { every: self.every * seq, ..self }
    }
}

impl Encoder {
    /// `x` (`[rows, cols]`) with the mask of `site` of layer `l` applied (a new tensor), or `x`
    /// itself when there is no dropout or its rate is 0. The forward on activations and, with the
    /// same arguments, the backward on their gradient.
    pub(super) fn dropout_rows(
        &self,
        b: &mut CommandRecorder,
        drop: Option<RowsDropout>,
        l: usize,
        site: Site,
        x: GpuTensor,
    ) -> Result<GpuTensor> {
        let Some(d) = drop else { return Ok(x) };
        let rate = match site {
            Site::Embeddings | Site::FfnOutput => d.pass.rates.hidden,
            Site::AttentionOutput => d.pass.rates.attention_output,
            Site::AttentionProbs => d.pass.rates.attention,
            Site::HeadInput | Site::HeadHidden => d.pass.rates.head,
        };
        if rate.p == 0.0 {
            return Ok(x);
        }
        let cols = *x.shape.last().unwrap_or(&1);
        let out = t(&self.gpu, &x.shape)?;
        let layout = match d.every {
            1 => MaskLayout::Rows { cols, row0: d.row0 },
            every => MaskLayout::RowsEvery { cols, row0: d.row0, every },
        };
        dropout::apply(b, d.pass.key(l, site), rate, layout, &x, &out)?;
        Ok(out)
    }

    /// The attention probabilities' dropout of layer `l` (with a new work tensor), when on.
    pub(super) fn probs_dropout<'w>(
        &self,
        drop: Option<RowsDropout>,
        l: usize,
        s: AttentionShape,
        work: &'w mut Option<GpuTensor>,
    ) -> Result<Option<ProbsDropout<'w>>> {
        let Some(d) = drop.filter(|d| d.pass.rates.attention.p > 0.0) else { return Ok(None) };
        let w = work.insert(t(&self.gpu, &[s.batch, s.heads, s.seq, s.seq])?);
        Ok(Some(ProbsDropout {
            key: d.pass.key(l, Site::AttentionProbs),
            rate: d.pass.rates.attention,
            row0: d.row0,
            work: w,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rates each site gets, as transformers + the `adapters` library give them: BERT's
    /// `hidden_dropout_prob` on the attention output and (no `classifier_dropout`) the head;
    /// DistilBERT's `dropout` / `attention_dropout`, no attention-output dropout and a head at 0
    /// (its config has neither `classifier_dropout` nor `hidden_dropout_prob`).
    #[test]
    fn rates_per_family() {
        let bert = r#"{"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 16, "vocab_size": 30, "hidden_dropout_prob": 0.15, "attention_probs_dropout_prob": 0.05}"#;
        let r = DropoutRates::from_config(&BertConfig::from_json_str(bert, "bert").unwrap(), None).unwrap();
        assert_eq!((r.hidden.p, r.attention_output.p, r.attention.p, r.head.p), (0.15, 0.15, 0.05, 0.15));
        let r = DropoutRates::from_config(&BertConfig::from_json_str(bert, "bert").unwrap(), Some(0.3)).unwrap();
        assert_eq!(r.head.p, 0.3, "the head config's dropout_prob comes first");
        let distil = r#"{"model_type": "distilbert", "dim": 8, "n_layers": 1, "n_heads": 2, "hidden_dim": 16,
            "vocab_size": 30, "dropout": 0.2, "attention_dropout": 0.25}"#;
        let r = DropoutRates::from_config(&BertConfig::from_json_str(distil, "distilbert").unwrap(), None).unwrap();
        assert_eq!((r.hidden.p, r.attention_output.p, r.attention.p, r.head.p), (0.2, 0.0, 0.25, 0.0));
    }
}
