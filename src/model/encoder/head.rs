//! The classification head on the `[CLS]` rows: forward, and backward to the last hidden state.
//! In training with dropout, as AdapterHub's `ClassificationHead` (dropout, Linear, tanh, dropout,
//! Linear): the `[CLS]` row and the hidden activation are dropped before their Linear.

use super::super::adapters::ClassificationHead;
use super::dropout::{PassDropout, RowsDropout};
use super::{t, Encoder};
use crate::gpu::{CommandRecorder, GpuTensor};
use crate::kernels::dropout::Site;
use crate::kernels::matmul::{linear, Matmul, View};
use crate::kernels::{elementwise, reduce};
use crate::types::Activation;
use anyhow::Result;

/// The head's activations: `[batch, hidden]` each, and the logits `[batch, labels]`. With dropout,
/// `cls` and `hact` are the dropped inputs of the two Linear layers.
pub(super) struct HeadActs {
    pub cls: GpuTensor,
    pub hpre: GpuTensor,
    pub hact: GpuTensor,
    pub logits: GpuTensor,
    /// The training pass's dropout (over the batch's sequences), drawn again in backward.
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
        let bsz = hidden.shape[0] / seq;
        b.phase("head fwd");
        let cls = t(gpu, &[bsz, d])?;
        elementwise::gather_rows(b, hidden, seq, &cls)?;
        let cls = self.dropout_rows(b, dropout, 0, Site::HeadInput, cls)?;
        let hpre = t(gpu, &[bsz, d])?;
        linear(b, &cls, &head.w1, Some(&head.b1), &hpre)?;
        let hact = t(gpu, &[bsz, d])?;
        Matmul::new(bsz, d, d).act(Activation::Tanh).run(
            b,
            View::rows(&cls, d),
            View::transposed(&head.w1, d),
            Some((&head.b1, 0)),
            View::rows(&hact, d),
        )?;
        let hact = self.dropout_rows(b, dropout, 0, Site::HeadHidden, hact)?;
        let logits = t(gpu, &[bsz, head.labels])?;
        linear(b, &hact, &head.w4, Some(&head.b4), &logits)?;
        Ok(HeadActs { cls, hpre, hact, logits, dropout })
    }

    /// The head's backward from `dlogits`: its gradients (written), and the gradient of the last
    /// hidden state (`[batch·seq, hidden]`, zero but at the `[CLS]` rows).
    pub(super) fn head_backward(
        &self,
        b: &mut CommandRecorder,
        head: &ClassificationHead,
        acts: &HeadActs,
        dlogits: &GpuTensor,
        seq: usize,
    ) -> Result<GpuTensor> {
        let HeadActs { cls, hpre, hact, dropout, .. } = acts;
        let gpu = &self.gpu;
        let d = self.dims.hidden;
        let (bsz, c) = (cls.shape[0], head.labels);
        b.phase("head bwd");
        // logits = hact·W4ᵀ + b4
        Matmul::new(c, d, bsz).run(
            b,
            View::transposed(dlogits, c),
            View::rows(hact, d),
            None,
            View::rows(&head.g_w4, d),
        )?;
        reduce::col_sum(b, dlogits, bsz, c, 1.0, 0.0, &head.g_b4)?;
        let dhact = t(gpu, &[bsz, d])?;
        Matmul::new(bsz, d, c).run(b, View::rows(dlogits, c), View::rows(&head.w4, d), None, View::rows(&dhact, d))?;
        let dhact = self.dropout_rows(b, *dropout, 0, Site::HeadHidden, dhact)?;
        let dhpre = t(gpu, &[bsz, d])?;
        elementwise::act_backward(b, Activation::Tanh, hpre, &dhact, &dhpre)?;
        // hpre = cls·W1ᵀ + b1
        Matmul::new(d, d, bsz).run(
            b,
            View::transposed(&dhpre, d),
            View::rows(cls, d),
            None,
            View::rows(&head.g_w1, d),
        )?;
        reduce::col_sum(b, &dhpre, bsz, d, 1.0, 0.0, &head.g_b1)?;
        let dcls = t(gpu, &[bsz, d])?;
        Matmul::new(bsz, d, d).run(b, View::rows(&dhpre, d), View::rows(&head.w1, d), None, View::rows(&dcls, d))?;
        let dcls = self.dropout_rows(b, *dropout, 0, Site::HeadInput, dcls)?;
        let dhidden = t(gpu, &[bsz * seq, d])?;
        elementwise::scatter_rows(b, &dcls, seq, &dhidden, false)?;
        Ok(dhidden)
    }
}
