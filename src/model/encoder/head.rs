//! The prediction head: forward from the last hidden state, and backward to it. Sequence heads
//! (classification, regression, multi-label) read the `[CLS]` rows, tagging heads every row.
//! As AdapterHub's `PredictionHead` (an `nn.Sequential` of dropout, Linear, activation, dropout,
//! Linear for two layers; dropout, Linear for one): in training with dropout, each Linear's
//! input is dropped.

use super::super::adapters::{ClassificationHead, HeadLinearGpu};
use super::dropout::{PassDropout, RowsDropout};
use super::{t, Encoder};
use crate::gpu::{CommandRecorder, GpuTensor};
use crate::kernels::dropout::Site;
use crate::kernels::matmul::{linear, Matmul, View};
use crate::kernels::{elementwise, reduce};
use anyhow::Result;

/// The hidden Linear's activations of a two-layer head: before the activation, and after it
/// (dropped, with dropout: the last Linear's input).
pub(super) struct HiddenActs {
    pub pre: GpuTensor,
    pub act: GpuTensor,
}

/// The head's activations: `[rows, hidden]` each (rows: the batch's sequences, or its tokens for
/// tagging), and the logits `[rows, labels]`.
pub(super) struct HeadActs {
    /// The first Linear's input (dropped, with dropout).
    pub input: GpuTensor,
    /// Two layers: the hidden Linear's activations.
    pub hidden: Option<HiddenActs>,
    pub logits: GpuTensor,
    /// The training pass's dropout (over the head's rows), drawn again in backward.
    pub dropout: Option<RowsDropout>,
}

impl Encoder {
    /// The head's forward from the last hidden state (`seq` tokens per sequence), with the
    /// training pass's `dropout`.
    pub(super) fn head_forward(
        &self,
        b: &mut CommandRecorder,
        head: &ClassificationHead,
        hidden: &GpuTensor,
        seq: usize,
        dropout: Option<PassDropout>,
    ) -> Result<HeadActs> {
        let dropout = RowsDropout::whole(dropout);
        let gpu = &self.gpu;
        let d = self.dims.hidden;
        b.phase("head fwd");
        // Tagging heads read every row; sequence heads the first of each sequence (every row
        // when the hidden state holds one a sequence).
        let input = if head.kind().per_token() || seq == 1 {
            hidden.clone()
        } else {
            let cls = t(gpu, &[hidden.shape[0] / seq, d])?;
            elementwise::gather_rows(b, hidden, seq, &cls)?;
            cls
        };
        let rows = input.shape[0];
        let input = self.dropout_rows(b, dropout, 0, Site::HeadInput, input)?;
        let (last, hidden_acts) = match &head.linears[..] {
            [last] => (last, None),
            [first, last] => {
                let pre = t(gpu, &[rows, d])?;
                linear(b, &input, &first.w, first.b.as_ref(), &pre)?;
                let act = t(gpu, &[rows, d])?;
                Matmul::new(rows, d, d).act(head.activation()).run(
                    b,
                    View::rows(&input, d),
                    View::transposed(&first.w, d),
                    first.b.as_ref().map(|bias| (bias, 0)),
                    View::rows(&act, d),
                )?;
                let act = self.dropout_rows(b, dropout, 0, Site::HeadHidden, act)?;
                (last, Some(HiddenActs { pre, act }))
            }
            other => anyhow::bail!("head {:?}: {} Linear layers (1 or 2 supported)", head.name, other.len()),
        };
        let logits = t(gpu, &[rows, head.labels])?;
        let last_input = hidden_acts.as_ref().map_or(&input, |h| &h.act);
        linear(b, last_input, &last.w, last.b.as_ref(), &logits)?;
        Ok(HeadActs { input, hidden: hidden_acts, logits, dropout })
    }

    /// One Linear's backward: its weight (and bias) gradients written from `dy` `[rows, out]` and
    /// its input `x` `[rows, in]`; returns the input's gradient `[rows, in]`.
    fn head_linear_backward(
        &self,
        b: &mut CommandRecorder,
        lin: &HeadLinearGpu,
        x: &GpuTensor,
        dy: &GpuTensor,
    ) -> Result<GpuTensor> {
        let (out, inp) = (lin.w.shape[0], lin.w.shape[1]);
        let rows = x.shape[0];
        Matmul::new(out, inp, rows).run(
            b,
            View::transposed(dy, out),
            View::rows(x, inp),
            None,
            View::rows(&lin.g_w, inp),
        )?;
        if let Some(g_b) = &lin.g_b {
            reduce::col_sum(b, dy, rows, out, 1.0, 0.0, g_b)?;
        }
        let dx = t(&self.gpu, &[rows, inp])?;
        Matmul::new(rows, inp, out).run(b, View::rows(dy, out), View::rows(&lin.w, inp), None, View::rows(&dx, inp))?;
        Ok(dx)
    }

    /// The head's backward from `dlogits`: its gradients (written), and the gradient of the last
    /// hidden state (`[batch·seq, hidden]`; for sequence heads zero but at the `[CLS]` rows).
    pub(super) fn head_backward(
        &self,
        b: &mut CommandRecorder,
        head: &ClassificationHead,
        acts: &HeadActs,
        dlogits: &GpuTensor,
        seq: usize,
    ) -> Result<GpuTensor> {
        let HeadActs { input, hidden, dropout, .. } = acts;
        let gpu = &self.gpu;
        let d = self.dims.hidden;
        let rows = input.shape[0];
        b.phase("head bwd");
        let last = head.linears.last().expect("a head has a Linear");
        let dinput = match hidden {
            None => self.head_linear_backward(b, last, input, dlogits)?,
            Some(h) => {
                let dact = self.head_linear_backward(b, last, &h.act, dlogits)?;
                let dact = self.dropout_rows(b, *dropout, 0, Site::HeadHidden, dact)?;
                let dpre = t(gpu, &[rows, d])?;
                elementwise::act_backward(b, head.activation(), &h.pre, &dact, &dpre)?;
                self.head_linear_backward(b, &head.linears[0], input, &dpre)?
            }
        };
        let dinput = self.dropout_rows(b, *dropout, 0, Site::HeadInput, dinput)?;
        if head.kind().per_token() || seq == 1 {
            return Ok(dinput);
        }
        let dhidden = t(gpu, &[rows * seq, d])?;
        elementwise::scatter_rows(b, &dinput, seq, &dhidden, false)?;
        Ok(dhidden)
    }
}
