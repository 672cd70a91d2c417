//! The frozen BERT-family encoder on the GPU: forward, and backward of activation gradients to the
//! trainable adapters and head (no gradients for frozen weights), with the base's layer weights
//! resident or streamed ([`LayerStore`]).
//!
//! By concern: `embeddings` (tables and lookup), `forward` and `backward` (one layer), `fusion`
//! (AdapterFusion at a sub-layer output), `head` (the prediction head), `schedule` (the pass over the
//! layers: recompute, layer chunks, submits), `acts` (what forward keeps for backward),
//! `dropout` (training passes' dropout) and `setup` (what trains).

mod acts;
mod adapter;
mod backward;
mod dropout;
mod embeddings;
mod forward;
mod fusion;
mod head;
mod schedule;
mod setup;

pub use dropout::{DropoutRates, PassDropout};
pub use embeddings::{EmbeddingLayout, EmbeddingTables, Embeddings};
pub use setup::Setup;

use super::adapters::ClassificationHead;
use super::store::{LayerStore, TensorSource};
use crate::formats::adapterhub::HeadKind;
use crate::gpu::{CommandRecorder, Gpu, GpuTensor};
use crate::kernels::attention::AttentionShape;
use crate::kernels::dropout::Site;
use crate::kernels::loss;
use crate::types::{Activation, WeightPrecision};
use anyhow::{bail, Result};
use std::sync::Arc;

/// The encoder's dimensions and options (from `config.json`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dims {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub act: Activation,
    pub eps: f32,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub vocab: usize,
}

/// A tokenized batch: `[batch, seq]` ids, token types and mask (1 real, 0 padding).
#[derive(Clone, Debug)]
pub struct Inputs {
    pub batch: usize,
    pub seq: usize,
    pub ids: Vec<u32>,
    pub token_types: Vec<u32>,
    pub mask: Vec<f32>,
}

/// What a pass is trained against, by head kind: class ids for classification (`[batch]`) and
/// tagging (`[batch·seq]`, [`IGNORE_LABEL`](crate::kernels::loss::IGNORE_LABEL) for tokens left
/// out; padding is left out whatever its label), float values for regression (`[batch]`) and
/// multi-label classification (`[batch, labels]`, 0 / 1 per label).
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    Classes(&'a [u32]),
    Values(&'a [f32]),
}

/// Tensors of a recorded pass, valid once the batch that holds it has run.
pub struct Recorded {
    /// `[batch, labels]` (tagging: `[batch·seq, labels]`)
    pub logits: GpuTensor,
    /// The head's mean loss `[1]`, when targets were given.
    pub loss: Option<GpuTensor>,
    /// `[batch·seq, hidden]`, or the first token of each sequence, `[batch, hidden]`, where only
    /// those rows were computed ([`Encoder::head_rows_only`]).
    pub last_hidden_state: GpuTensor,
}

/// Results of one pass.
pub struct PassOutput {
    pub logits: Vec<f32>,
    pub loss: Option<f32>,
    /// `[batch·seq, hidden]` when asked for.
    pub last_hidden_state: Option<Vec<f32>>,
    /// Bytes uploaded for streamed weights during the pass.
    pub uploaded_bytes: u64,
    /// Peak GPU bytes held by the project's buffers during the pass (weights included).
    pub peak_bytes: u64,
}

/// The frozen encoder on one GPU.
pub struct Encoder {
    pub gpu: Arc<Gpu>,
    pub dims: Dims,
    pub embeddings: Embeddings,
    pub store: LayerStore,
    /// Keep only each layer's input during forward and recompute the layer's activations just
    /// before its backward (bit-identical results); the pass then submits and waits per layer so
    /// that only one layer's activations are ever on the GPU.
    pub recompute: bool,
    /// With `recompute`: run each layer's forward and backward over this many sequences at a time
    /// (0 or ≥ batch: the whole batch), so one layer's working set shrinks with the chunk. Values
    /// and activation gradients are the same as unchunked; the adapters' weight gradients are
    /// summed chunk by chunk (f32 rounding differs from one sum over the batch).
    pub layer_chunk: usize,
    /// With `recompute`: also keep each layer's FFN output dense result (one more `[tokens,
    /// hidden]` per layer), so that recomputing skips the FFN's second matmul and activation
    /// (about a third of the layer's matmul work). Same bits either way.
    pub keep_ffn_output: bool,
    /// Under a sequence head (classification, regression, multi-label), which reads the first
    /// token of each sequence, the top layer computes only those rows after its attention (the
    /// rest of its rows are unread forward and carry zero gradients backward): the same loss,
    /// logits and gradients, bit for bit, for about three quarters of the top layer's work less.
    /// Not while an AdapterFusion records its weights (they average every token: evaluation's
    /// heat map) or when the whole last hidden state is asked for. On by default; off in tests that compare.
    pub head_rows_only: bool,
}

fn t(gpu: &Gpu, shape: &[usize]) -> Result<GpuTensor> {
    GpuTensor::zeros(gpu, shape)
}

impl Encoder {
    /// Loads the embeddings and the layer store from `source`. With `resident_layers < layers`
    /// the layers stream, and so do the embedding tables (uploaded for each pass, dropped after
    /// the lookup: the frozen base then needs no more than one layer slot between passes).
    pub fn new(gpu: Arc<Gpu>, dims: Dims, source: Arc<dyn TensorSource>, resident_layers: usize) -> Result<Self> {
        Self::with_layout(gpu, dims, EmbeddingLayout::bert(&dims), source, resident_layers, WeightPrecision::F32)
    }

    /// Keeps activations as `plan` says: recompute, layer chunks, FFN outputs kept. (Its resident
    /// layers are chosen when loading: [`load_encoder`](super::load::load_encoder).)
    pub fn follow(&mut self, plan: &super::plan::MemoryPlan) {
        self.recompute = plan.recompute;
        self.layer_chunk = plan.encoder_chunk();
        self.keep_ffn_output = plan.keep_ffn_output;
    }

    fn check_inputs(&self, inp: &Inputs) -> Result<()> {
        let n = inp.batch * inp.seq;
        if inp.batch == 0 || inp.seq == 0 {
            bail!("empty batch");
        }
        if inp.ids.len() != n || inp.token_types.len() != n || inp.mask.len() != n {
            bail!("inputs: ids/token_types/mask must each have batch·seq = {n} values");
        }
        if inp.seq > self.dims.max_positions {
            bail!("sequence length {} exceeds the model's {} positions", inp.seq, self.dims.max_positions);
        }
        if let Some(&id) = inp.ids.iter().find(|&&id| id as usize >= self.dims.vocab) {
            bail!("token id {id} is outside the vocabulary ({} entries)", self.dims.vocab);
        }
        if let Some(&tt) = inp.token_types.iter().find(|&&tt| tt as usize >= self.dims.type_vocab) {
            bail!("token type {tt} is outside the model's {} token types", self.dims.type_vocab);
        }
        for b in 0..inp.batch {
            if inp.mask[b * inp.seq] < 0.5 {
                bail!("sequence {b} has a masked first token (the [CLS] position must be a real token)");
            }
        }
        Ok(())
    }

    /// The targets fit the batch and the head's kind; backward has targets.
    fn check_labels(inp: &Inputs, head: &ClassificationHead, targets: Option<Targets>, backward: bool) -> Result<()> {
        let kind = head.kind();
        match (kind, targets) {
            (_, None) if backward => bail!("backward needs labels"),
            (_, None) => {}
            (HeadKind::Classification | HeadKind::Tagging, Some(Targets::Classes(l))) => {
                let (want, what) =
                    if kind.per_token() { (inp.batch * inp.seq, "tokens") } else { (inp.batch, "sequences") };
                if l.len() != want {
                    bail!("{} labels for {want} {what} (a batch of {})", l.len(), inp.batch);
                }
                let ignorable = |x: u32| kind.per_token() && x == loss::IGNORE_LABEL;
                if let Some(&bad) = l.iter().find(|&&x| x as usize >= head.labels && !ignorable(x)) {
                    bail!("label {bad} is outside the head's {} labels", head.labels);
                }
            }
            (HeadKind::Regression | HeadKind::MultilabelClassification, Some(Targets::Values(v))) => {
                let want = inp.batch * head.labels;
                if v.len() != want {
                    bail!("{} target values for a batch of {} with {} labels", v.len(), inp.batch, head.labels);
                }
                if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                    bail!("target value {bad} is not finite");
                }
                if kind == HeadKind::MultilabelClassification {
                    if let Some(bad) = v.iter().find(|x| !(0.0..=1.0).contains(*x)) {
                        bail!("multi-label target {bad} is outside [0, 1]");
                    }
                }
            }
            (_, Some(Targets::Classes(_))) => bail!("a {kind} head trains on float targets, not class ids"),
            (_, Some(Targets::Values(_))) => bail!("a {kind} head trains on class ids, not float targets"),
        }
        Ok(())
    }

    /// Records the head's loss over `logits` against `targets` (checked) into `b`: returns the loss
    /// `[1]` and its gradient with respect to the logits. A tagging head leaves padded tokens out.
    fn record_loss(
        &self,
        b: &mut CommandRecorder,
        head: &ClassificationHead,
        inp: &Inputs,
        logits: &GpuTensor,
        targets: Targets,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let gpu = &self.gpu;
        let loss_t = t(gpu, &[1])?;
        let dlogits = t(gpu, &logits.shape)?;
        b.phase("loss");
        match targets {
            Targets::Classes(l) if head.kind().per_token() => {
                let l: Vec<u32> =
                    l.iter().zip(&inp.mask).map(|(&x, &m)| if m < 0.5 { loss::IGNORE_LABEL } else { x }).collect();
                let lab = GpuTensor::from_u32(gpu, &[l.len()], &l)?;
                loss::softmax_cross_entropy(b, logits, &lab, &loss_t, &dlogits)?;
            }
            Targets::Classes(l) => {
                let lab = GpuTensor::from_u32(gpu, &[l.len()], l)?;
                loss::softmax_cross_entropy(b, logits, &lab, &loss_t, &dlogits)?;
            }
            Targets::Values(v) => {
                let y = GpuTensor::from_slice(gpu, &logits.shape, v)?;
                if head.kind() == HeadKind::Regression {
                    loss::mse(b, logits, &y, &loss_t, &dlogits)?;
                } else {
                    loss::bce_with_logits(b, logits, &y, &loss_t, &dlogits)?;
                }
            }
        }
        Ok((loss_t, dlogits))
    }

    /// Records the forward (and, with `labels` and `backward`, backward) of the encoder + head into
    /// `b` without waiting; gradients are written into the adapters' and the head's gradient tensors
    /// (overwritten, not accumulated). With streamed weights or `--recompute` it submits per layer.
    /// The caller submits the rest (e.g. with an optimizer step in the same command buffer).
    /// `dropout`: a training pass's (AdapterHub's train mode), `None` for evaluation.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        b: &mut CommandRecorder,
        setup: &Setup,
        head: &ClassificationHead,
        inp: &Inputs,
        labels: Option<&[u32]>,
        backward: bool,
        dropout: Option<PassDropout>,
    ) -> Result<Recorded> {
        self.record_targets(b, setup, head, inp, labels.map(Targets::Classes), backward, dropout)
    }

    /// [`record`](Self::record) against any head kind's [`Targets`].
    #[allow(clippy::too_many_arguments)]
    pub fn record_targets(
        &mut self,
        b: &mut CommandRecorder,
        setup: &Setup,
        head: &ClassificationHead,
        inp: &Inputs,
        targets: Option<Targets>,
        backward: bool,
        dropout: Option<PassDropout>,
    ) -> Result<Recorded> {
        self.record_pass(b, setup, head, inp, targets, backward, dropout, false)
    }

    /// [`record_targets`](Self::record_targets); with `whole_hidden` every row of the last hidden
    /// state is computed.
    #[allow(clippy::too_many_arguments)]
    fn record_pass(
        &mut self,
        b: &mut CommandRecorder,
        setup: &Setup,
        head: &ClassificationHead,
        inp: &Inputs,
        targets: Option<Targets>,
        backward: bool,
        dropout: Option<PassDropout>,
        whole_hidden: bool,
    ) -> Result<Recorded> {
        self.check_inputs(inp)?;
        Self::check_labels(inp, head, targets, backward)?;
        let gpu = self.gpu.clone();
        let dims = self.dims;
        let (d, tok) = (dims.hidden, inp.batch * inp.seq);
        let ids = GpuTensor::from_u32(&gpu, &[tok], &inp.ids)?;
        let types = GpuTensor::from_u32(&gpu, &[tok], &inp.token_types)?;
        let mask = GpuTensor::from_slice(&gpu, &[inp.batch, inp.seq], &inp.mask)?;
        let ashape = AttentionShape { batch: inp.batch, seq: inp.seq, heads: dims.heads, head_dim: d / dims.heads };
        let x = self.embed(b, &ids, &types, inp)?;
        let x = self.dropout_rows(b, dropout::RowsDropout::whole(dropout), 0, Site::Embeddings, x)?;
        let head_rows =
            self.head_rows_only && !whole_hidden && !head.kind().per_token() && !setup.records_fusion_weights();
        let (hidden, acts) = self.layers_forward(b, setup, x, &mask, ashape, dropout, head_rows)?;
        // Rows of the last hidden state a sequence: all, or the first alone (`head_rows`).
        let seq = if head_rows { 1 } else { inp.seq };
        let h = self.head_forward(b, head, &hidden, seq, dropout)?;
        let mut loss = None;
        if let Some(targets) = targets {
            let (loss_t, dlogits) = self.record_loss(b, head, inp, &h.logits, targets)?;
            if backward {
                let dhidden = self.head_backward(b, head, &h, &dlogits, seq)?;
                self.layers_backward(b, setup, acts, &mask, ashape, dhidden, dropout, head_rows)?;
            }
            loss = Some(loss_t);
        }
        Ok(Recorded { logits: h.logits, loss, last_hidden_state: hidden })
    }
    /// One pass with its results read back: [`record`](Self::record) into a batch of its own, then
    /// a full sync. No dropout
    /// (evaluation; see [`pass_with_dropout`](Self::pass_with_dropout)).
    pub fn pass(
        &mut self,
        setup: &Setup,
        head: &ClassificationHead,
        inp: &Inputs,
        labels: Option<&[u32]>,
        backward: bool,
        want_hidden: bool,
    ) -> Result<PassOutput> {
        self.pass_with_dropout(setup, head, inp, labels, backward, want_hidden, None)
    }

    /// [`pass`](Self::pass) as a training pass with `dropout`.
    #[allow(clippy::too_many_arguments)]
    pub fn pass_with_dropout(
        &mut self,
        setup: &Setup,
        head: &ClassificationHead,
        inp: &Inputs,
        labels: Option<&[u32]>,
        backward: bool,
        want_hidden: bool,
        dropout: Option<PassDropout>,
    ) -> Result<PassOutput> {
        self.pass_targets(setup, head, inp, labels.map(Targets::Classes), backward, want_hidden, dropout)
    }

    /// [`pass_with_dropout`](Self::pass_with_dropout) against any head kind's [`Targets`].
    #[allow(clippy::too_many_arguments)]
    pub fn pass_targets(
        &mut self,
        setup: &Setup,
        head: &ClassificationHead,
        inp: &Inputs,
        targets: Option<Targets>,
        backward: bool,
        want_hidden: bool,
        dropout: Option<PassDropout>,
    ) -> Result<PassOutput> {
        let gpu = self.gpu.clone();
        gpu.memory.reset_peak();
        let mut b = gpu.batch();
        let r = self.record_pass(&mut b, setup, head, inp, targets, backward, dropout, want_hidden)?;
        b.finish()?;
        Ok(PassOutput {
            logits: r.logits.to_vec(&gpu)?,
            loss: match &r.loss {
                Some(l) => Some(l.to_vec(&gpu)?[0]),
                None => None,
            },
            last_hidden_state: if want_hidden { Some(r.last_hidden_state.to_vec(&gpu)?) } else { None },
            uploaded_bytes: self.store.take_uploaded() + self.embeddings.take_uploaded(),
            peak_bytes: gpu.memory.peak(),
        })
    }
}
