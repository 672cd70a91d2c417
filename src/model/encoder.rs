//! The frozen BERT-family encoder on the GPU: forward, and backward of activation gradients to the
//! trainable adapters and head (no gradients for frozen weights), with the base's layer weights
//! resident or streamed ([`LayerStore`]).

use super::adapters::{AdapterModule, AdapterSet, ClassificationHead, Location, Placement};
use super::fusion::FusionModel;
use super::store::{LayerStore, LayerWeights, TensorSource};
use crate::gpu::{CommandRecorder, Gpu, GpuTensor};
use crate::kernels::adapter::AdapterWeights;
use crate::kernels::adapter::{AdapterScratch, Residual};
use crate::kernels::attention::{self, AttentionShape};
use crate::kernels::fusion::{FusionSaved, FusionScratch};
use crate::kernels::matmul::{linear, Matmul, View};
use crate::kernels::{elementwise, layernorm, loss, reduce};
use crate::types::Activation;
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

/// The three embedding tables.
#[derive(Clone)]
pub struct EmbeddingTables {
    pub word: GpuTensor,
    pub position: GpuTensor,
    pub token_type: GpuTensor,
}

/// Embedding tables (resident, or uploaded for each pass and dropped once looked up, when the
/// layers stream too) and their LayerNorm (resident).
pub struct Embeddings {
    tables: Option<EmbeddingTables>,
    source: Arc<dyn TensorSource>,
    dims: Dims,
    pub ln_g: GpuTensor,
    pub ln_b: GpuTensor,
    /// Bytes uploaded for streamed tables since the last [`take_uploaded`](Self::take_uploaded).
    uploaded: u64,
}

impl Embeddings {
    /// Names and shapes of the three tables.
    fn table_shapes(dims: &Dims) -> [(&'static str, [usize; 2]); 3] {
        [
            ("embeddings.word_embeddings.weight", [dims.vocab, dims.hidden]),
            ("embeddings.position_embeddings.weight", [dims.max_positions, dims.hidden]),
            ("embeddings.token_type_embeddings.weight", [dims.type_vocab, dims.hidden]),
        ]
    }

    fn upload(gpu: &Gpu, source: &dyn TensorSource, name: &str, shape: &[usize]) -> Result<GpuTensor> {
        let bytes = source.bytes(name, shape)?;
        let v: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
        GpuTensor::from_slice(gpu, shape, &v)
    }

    fn load(gpu: &Gpu, dims: Dims, source: Arc<dyn TensorSource>, resident: bool) -> Result<Self> {
        let d = dims.hidden;
        let tables = if resident { Some(Self::upload_tables(gpu, &*source, &dims)?) } else { None };
        Ok(Self {
            tables,
            ln_g: Self::upload(gpu, &*source, "embeddings.LayerNorm.weight", &[d])?,
            ln_b: Self::upload(gpu, &*source, "embeddings.LayerNorm.bias", &[d])?,
            source,
            dims,
            uploaded: 0,
        })
    }

    fn upload_tables(gpu: &Gpu, source: &dyn TensorSource, dims: &Dims) -> Result<EmbeddingTables> {
        let [w, p, t] = Self::table_shapes(dims).map(|(name, shape)| Self::upload(gpu, source, name, &shape));
        Ok(EmbeddingTables { word: w?, position: p?, token_type: t? })
    }

    /// True when the tables stay on the GPU.
    pub fn is_resident(&self) -> bool {
        self.tables.is_some()
    }

    /// The tables: the resident ones, or freshly uploaded ones (dropped by the caller after use).
    pub fn tables(&mut self, gpu: &Gpu) -> Result<EmbeddingTables> {
        match &self.tables {
            Some(t) => Ok(t.clone()),
            None => {
                let t = Self::upload_tables(gpu, &*self.source, &self.dims)?;
                self.uploaded += t.word.bytes() + t.position.bytes() + t.token_type.bytes();
                Ok(t)
            }
        }
    }

    pub fn take_uploaded(&mut self) -> u64 {
        std::mem::take(&mut self.uploaded)
    }
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

/// What trains on top of the frozen base.
pub enum Setup<'a> {
    /// The base alone.
    None,
    /// One adapter set (trainable).
    Adapter(&'a AdapterSet),
    /// AdapterFusion over frozen adapters at the FFN output (fusion trains).
    Fusion { adapters: Vec<&'a AdapterSet>, fusion: &'a FusionModel },
}

/// Tensors of a recorded pass, valid once the batch that holds it has run.
pub struct Recorded {
    /// `[batch, labels]`
    pub logits: GpuTensor,
    /// Mean cross-entropy `[1]`, when labels were given.
    pub loss: Option<GpuTensor>,
    /// `[batch·seq, hidden]`
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

/// Activations one sub-layer (attention or FFN output) keeps for backward.
struct SubActs {
    fusion: Option<FusionActs>,
    /// `h + x_in` fed to the pretrained LayerNorm before the adapter (original_ln_before).
    s1: Option<GpuTensor>,
    /// The adapter's input.
    hs: Option<GpuTensor>,
    /// The adapter's saved pre-activation.
    a: Option<GpuTensor>,
    /// Input of the final LayerNorm (`out + x_in`).
    u: Option<GpuTensor>,
    out: GpuTensor,
}

struct FusionActs {
    query: GpuTensor,
    residual: GpuTensor,
    z: GpuTensor,
    a: Vec<GpuTensor>,
    saved: FusionSaved,
}

/// What the forward keeps of every layer for backward.
enum Saved {
    /// Every layer's activations.
    All(Vec<LayerActs>),
    /// `--recompute`: each layer's input only (its activations are recomputed just before its
    /// backward), and the top layer's activations, which backward needs first.
    /// With `keep_ffn_output`, also each layer's FFN output dense result (`ffn_out`, below the top).
    Inputs { inputs: Vec<GpuTensor>, ffn_out: Vec<GpuTensor>, top: Option<Box<LayerActs>> },
}

struct LayerActs {
    q: GpuTensor,
    k: GpuTensor,
    v: GpuTensor,
    probs: GpuTensor,
    attn: SubActs,
    pre: GpuTensor,
    ffn: SubActs,
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
}

fn t(gpu: &Gpu, shape: &[usize]) -> Result<GpuTensor> {
    GpuTensor::zeros(gpu, shape)
}

impl Encoder {
    /// Loads the embeddings and the layer store from `source`. With `resident_layers < layers`
    /// the layers stream, and so do the embedding tables (uploaded for each pass, dropped after
    /// the lookup: the frozen base then needs no more than one layer slot between passes).
    pub fn new(gpu: Arc<Gpu>, dims: Dims, source: Arc<dyn TensorSource>, resident_layers: usize) -> Result<Self> {
        let resident = resident_layers >= dims.layers;
        let embeddings = Embeddings::load(&gpu, dims, source.clone(), resident)?;
        let store = LayerStore::new(gpu.clone(), source, dims.hidden, dims.ffn, dims.layers, resident_layers)?;
        Ok(Self { gpu, dims, embeddings, store, recompute: false, layer_chunk: 0, keep_ffn_output: false })
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

    /// Records the forward (and, with `labels` and `backward`, backward) of the encoder + head into
    /// `b` without waiting; gradients are written into the adapters' and the head's gradient tensors
    /// (overwritten, not accumulated). With streamed weights or `--recompute` it submits per layer.
    /// The caller submits the rest (e.g. with an optimizer step in the same command buffer).
    pub fn record(
        &mut self,
        b: &mut CommandRecorder,
        setup: &Setup,
        head: &ClassificationHead,
        inp: &Inputs,
        labels: Option<&[u32]>,
        backward: bool,
    ) -> Result<Recorded> {
        self.check_inputs(inp)?;
        if let Some(l) = labels {
            if l.len() != inp.batch {
                bail!("{} labels for a batch of {}", l.len(), inp.batch);
            }
            if let Some(&bad) = l.iter().find(|&&x| x as usize >= head.labels) {
                bail!("label {bad} is outside the head's {} labels", head.labels);
            }
        }
        if backward && labels.is_none() {
            bail!("backward needs labels");
        }
        let gpu = self.gpu.clone();
        let dims = self.dims;
        let (d, tok) = (dims.hidden, inp.batch * inp.seq);
        let ids = GpuTensor::from_u32(&gpu, &[tok], &inp.ids)?;
        let types = GpuTensor::from_u32(&gpu, &[tok], &inp.token_types)?;
        let mask = GpuTensor::from_slice(&gpu, &[inp.batch, inp.seq], &inp.mask)?;
        let ashape = AttentionShape { batch: inp.batch, seq: inp.seq, heads: dims.heads, head_dim: d / dims.heads };

        // Embeddings + LayerNorm.
        let x = t(&gpu, &[tok, d])?;
        {
            let tables = self.embeddings.tables(&gpu)?;
            let emb = t(&gpu, &[tok, d])?;
            elementwise::embeddings(
                b,
                &ids,
                &types,
                inp.seq,
                &tables.word,
                &tables.position,
                &tables.token_type,
                &emb,
            )?;
            layernorm::layer_norm(b, &emb, None, &self.embeddings.ln_g, &self.embeddings.ln_b, dims.eps, None, &x)?;
        }
        if !self.embeddings.is_resident() {
            // Free the streamed tables before the first layer allocates.
            b.finish()?;
        }

        let (hidden, acts) = self.layers_forward(b, setup, x, &mask, ashape)?;

        // Head.
        let bsz = inp.batch;
        let cls = t(&gpu, &[bsz, d])?;
        elementwise::gather_rows(b, &hidden, inp.seq, &cls)?;
        let hpre = t(&gpu, &[bsz, d])?;
        linear(b, &cls, &head.w1, Some(&head.b1), &hpre)?;
        let hact = t(&gpu, &[bsz, d])?;
        Matmul::new(bsz, d, d).act(Activation::Tanh).run(
            b,
            View::rows(&cls, d),
            View::transposed(&head.w1, d),
            Some((&head.b1, 0)),
            View::rows(&hact, d),
        )?;
        let logits = t(&gpu, &[bsz, head.labels])?;
        linear(b, &hact, &head.w4, Some(&head.b4), &logits)?;

        let mut loss = None;
        if let Some(labels) = labels {
            let lab = GpuTensor::from_u32(&gpu, &[bsz], labels)?;
            let loss_t = t(&gpu, &[1])?;
            let dlogits = t(&gpu, &[bsz, head.labels])?;
            loss::softmax_cross_entropy(b, &logits, &lab, &loss_t, &dlogits)?;
            if backward {
                let dhidden = self.head_backward(b, head, &cls, &hpre, &hact, &dlogits, inp.seq, tok)?;
                self.layers_backward(b, setup, acts, &mask, ashape, dhidden)?;
            }
            loss = Some(loss_t);
        }
        Ok(Recorded { logits, loss, last_hidden_state: hidden })
    }

    /// Forward (and, with `labels` and `backward`, backward) of the encoder + head, submitted and
    /// read back: [`record`](Self::record) into a batch of its own, then a full sync.
    pub fn pass(
        &mut self,
        setup: &Setup,
        head: &ClassificationHead,
        inp: &Inputs,
        labels: Option<&[u32]>,
        backward: bool,
        want_hidden: bool,
    ) -> Result<PassOutput> {
        let gpu = self.gpu.clone();
        gpu.memory.reset_peak();
        let mut b = gpu.batch();
        let r = self.record(&mut b, setup, head, inp, labels, backward)?;
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

    /// After a layer's work is recorded: with `--recompute` or streamed weights, submit and wait,
    /// so that the buffers the layer dropped are really free before the next layer allocates (and
    /// a streamed slot can be refilled). Fully resident without recompute: submit without waiting
    /// (the GPU runs layer l while the host records layer l + 1) and let wgpu reclaim what finished
    /// work dropped, so later layers reuse that memory instead of allocating more
    /// (the GPU's [`SubmitPolicy`](crate::gpu::SubmitPolicy); one submit for the whole pass on CPU
    /// drivers or with `PEFT_SUBMIT_PER_LAYER=0`).
    fn layer_done(&self, b: &mut CommandRecorder) -> Result<()> {
        if self.recompute || !self.store.is_resident() {
            b.finish()?;
        } else if self.gpu.policy().submit_per_layer() {
            b.submit();
            self.gpu.device.poll(wgpu::PollType::Poll).map_err(|e| anyhow::anyhow!("GPU poll failed: {e}"))?;
        }
        Ok(())
    }

    /// The sequence ranges `(first, count)` a layer runs over at a time: the whole batch, or chunks
    /// of [`layer_chunk`](Self::layer_chunk) sequences with `--recompute`.
    fn chunks(&self, batch: usize) -> Vec<(usize, usize)> {
        let c = if self.recompute && self.layer_chunk > 0 { self.layer_chunk.min(batch) } else { batch };
        (0..batch).step_by(c).map(|s0| (s0, c.min(batch - s0))).collect()
    }

    /// Rows `first..first + count` (sequences) of a `[batch·seq, …]` tensor, copied to a new one.
    fn rows_of(
        &self,
        b: &mut CommandRecorder,
        x: &GpuTensor,
        seq: usize,
        first: usize,
        count: usize,
    ) -> Result<GpuTensor> {
        let width = x.numel() / x.shape[0];
        let shape: Vec<usize> = std::iter::once(count * seq).chain(x.shape[1..].iter().copied()).collect();
        let out = t(&self.gpu, &shape)?;
        elementwise::copy_range(b, x, first * seq * width, &out, 0, count * seq * width)?;
        Ok(out)
    }

    /// A chunk's layer input, mask and attention shape.
    fn chunk_of(
        &self,
        b: &mut CommandRecorder,
        x: &GpuTensor,
        mask: &GpuTensor,
        s: AttentionShape,
        (first, count): (usize, usize),
    ) -> Result<(GpuTensor, GpuTensor, AttentionShape)> {
        let xc = self.rows_of(b, x, s.seq, first, count)?;
        let mc = t(&self.gpu, &[count, s.seq])?;
        elementwise::copy_range(b, mask, first * s.seq, &mc, 0, count * s.seq)?;
        Ok((xc, mc, AttentionShape { batch: count, ..s }))
    }

    /// Forward of every layer from the embeddings' output `x`: the last hidden state and what
    /// backward needs (see [`Saved`]).
    fn layers_forward(
        &mut self,
        b: &mut CommandRecorder,
        setup: &Setup,
        mut x: GpuTensor,
        mask: &GpuTensor,
        s: AttentionShape,
    ) -> Result<(GpuTensor, Saved)> {
        let n = self.dims.layers;
        let chunks = self.chunks(s.batch);
        if chunks.len() > 1 && matches!(setup, Setup::Fusion { .. }) {
            bail!("layer chunks (--layer-chunk) apply to adapter training, not to AdapterFusion");
        }
        let mut saved = if self.recompute {
            Saved::Inputs { inputs: Vec::with_capacity(n), ffn_out: vec![], top: None }
        } else {
            Saved::All(Vec::with_capacity(n))
        };
        for l in 0..n {
            let w = self.store.layer(l)?;
            if chunks.len() > 1 {
                // Chunk by chunk, each chunk's activations freed (a wait) before the next.
                let (tok, d) = (s.batch * s.seq, self.dims.hidden);
                let y = t(&self.gpu, &[tok, d])?;
                let h2 = if self.keep_ffn_output { Some(t(&self.gpu, &[tok, d])?) } else { None };
                for &(first, count) in &chunks {
                    let (xc, mc, sc) = self.chunk_of(b, &x, mask, s, (first, count))?;
                    let (la, h2c) = self.layer_forward(b, &w, setup, l, &xc, &mc, sc, false, None)?;
                    let (at, n) = (first * s.seq * d, count * s.seq * d);
                    elementwise::copy_range(b, &la.ffn.out, 0, &y, at, n)?;
                    if let Some(h2) = &h2 {
                        elementwise::copy_range(b, &h2c, 0, h2, at, n)?;
                    }
                    drop((la, h2c, xc, mc));
                    b.finish()?;
                }
                if let Saved::Inputs { inputs, ffn_out, .. } = &mut saved {
                    inputs.push(x);
                    ffn_out.extend(h2);
                }
                x = y;
                continue;
            }
            let (la, h2) = self.layer_forward(b, &w, setup, l, &x, mask, s, false, None)?;
            let y = la.ffn.out.clone();
            match &mut saved {
                Saved::All(acts) => acts.push(la),
                Saved::Inputs { inputs, ffn_out, top } => {
                    inputs.push(x);
                    if l + 1 == n {
                        *top = Some(Box::new(la));
                    } else if self.keep_ffn_output {
                        ffn_out.push(h2);
                    }
                }
            }
            x = y;
            self.layer_done(b)?;
        }
        Ok((x, saved))
    }

    /// One layer's forward; `recomputing` when it runs again for backward (`--recompute`), where
    /// nothing but the activations may change (no fusion weights are recorded twice).
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        b: &mut CommandRecorder,
        w: &LayerWeights,
        setup: &Setup,
        l: usize,
        x: &GpuTensor,
        mask: &GpuTensor,
        s: AttentionShape,
        recomputing: bool,
        ffn_out: Option<&GpuTensor>,
    ) -> Result<(LayerActs, GpuTensor)> {
        let gpu = &self.gpu;
        let (d, tok) = (self.dims.hidden, s.batch * s.seq);
        let q = t(gpu, &[tok, d])?;
        let k = t(gpu, &[tok, d])?;
        let v = t(gpu, &[tok, d])?;
        linear(b, x, &w.q_w, Some(&w.q_b), &q)?;
        linear(b, x, &w.k_w, Some(&w.k_b), &k)?;
        linear(b, x, &w.v_w, Some(&w.v_b), &v)?;
        let probs = t(gpu, &[s.batch, s.heads, s.seq, s.seq])?;
        let ctx = t(gpu, &[tok, d])?;
        attention::attention_forward(b, s, &q, &k, &v, mask, &probs, &ctx)?;
        let h1 = t(gpu, &[tok, d])?;
        linear(b, &ctx, &w.ao_w, Some(&w.ao_b), &h1)?;
        let adapter = |loc| match setup {
            Setup::Adapter(a) => a.at(l, loc).map(|m| (m, a.placement)),
            _ => None,
        };
        let attn = self.sublayer_forward(b, h1, x, &w.ln1_g, &w.ln1_b, adapter(Location::Attention))?;
        let y1 = attn.out.clone();
        let ffn_dim = self.dims.ffn;
        let pre = t(gpu, &[tok, ffn_dim])?;
        linear(b, &y1, &w.i_w, Some(&w.i_b), &pre)?;
        // The FFN's output dense: computed, or (recomputing with --keep-ffn-output) the saved one.
        let h2 = match ffn_out {
            Some(h2) => h2.clone(),
            None => {
                let inter = t(gpu, &[tok, ffn_dim])?;
                elementwise::activate(b, self.dims.act, &pre, &inter)?;
                let h2 = t(gpu, &[tok, d])?;
                linear(b, &inter, &w.o_w, Some(&w.o_b), &h2)?;
                h2
            }
        };
        let h2_out = h2.clone();
        let ffn = match setup {
            Setup::Fusion { adapters, fusion } if fusion.at(l).is_some() => {
                let acts = self.fusion_forward(b, h2, &y1, &w.ln2_g, &w.ln2_b, adapters, fusion, l)?;
                if let (Some(fa), false) = (&acts.fusion, recomputing) {
                    // Softmax weights summed over real tokens, when the caller records them.
                    fusion.record_weights(b, &fa.saved.p, mask, l)?;
                }
                acts
            }
            _ => self.sublayer_forward(b, h2, &y1, &w.ln2_g, &w.ln2_b, adapter(Location::Output))?,
        };
        Ok((LayerActs { q, k, v, probs, attn, pre, ffn }, h2_out))
    }

    /// `LN(x + x_in)` with the pretrained LayerNorm, keeping the sum for backward: `(sum, out)`.
    fn add_layer_norm(
        &self,
        b: &mut CommandRecorder,
        x: &GpuTensor,
        x_in: &GpuTensor,
        ln_g: &GpuTensor,
        ln_b: &GpuTensor,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let sum = t(&self.gpu, &x.shape)?;
        let out = t(&self.gpu, &x.shape)?;
        layernorm::layer_norm(b, x, Some(x_in), ln_g, ln_b, self.dims.eps, Some(&sum), &out)?;
        Ok((sum, out))
    }

    /// Gradient through the final `LN(out + x_in)` when there is one (`u` is its saved input).
    fn final_ln_backward(
        &self,
        b: &mut CommandRecorder,
        u: Option<&GpuTensor>,
        ln_g: &GpuTensor,
        dfinal: &GpuTensor,
    ) -> Result<Option<GpuTensor>> {
        let Some(u) = u else { return Ok(None) };
        let du = t(&self.gpu, &dfinal.shape)?;
        layernorm::layer_norm_backward(b, u, ln_g, self.dims.eps, dfinal, &du, false)?;
        Ok(Some(du))
    }

    /// Dense output `h` of a sub-layer → its final output, with an optional adapter placed as
    /// AdapterHub places it (see [`Placement`]).
    fn sublayer_forward(
        &self,
        b: &mut CommandRecorder,
        h: GpuTensor,
        x_in: &GpuTensor,
        ln_g: &GpuTensor,
        ln_b: &GpuTensor,
        adapter: Option<(&AdapterModule, Placement)>,
    ) -> Result<SubActs> {
        let gpu = &self.gpu;
        let shape = h.shape.clone();
        let Some((ad, pl)) = adapter else {
            let (u, out) = self.add_layer_norm(b, &h, x_in, ln_g, ln_b)?;
            return Ok(SubActs { fusion: None, s1: None, hs: None, a: None, u: Some(u), out });
        };
        let (s1, hs) = if pl.original_ln_before {
            let (s1, hs) = self.add_layer_norm(b, &h, x_in, ln_g, ln_b)?;
            (Some(s1), hs)
        } else {
            (None, h.clone())
        };
        let a = t(gpu, &[shape[0], ad.shape.m])?;
        let adapted = t(gpu, &shape)?;
        let residual = if pl.separate_residual() { Residual::Tensor(&h) } else { Residual::Input };
        ad.shape.forward_residual(b, &ad.w, &hs, residual, &adapted, &a)?;
        let (u, out) = if pl.original_ln_after {
            let (u, out) = self.add_layer_norm(b, &adapted, x_in, ln_g, ln_b)?;
            (Some(u), out)
        } else {
            (None, adapted)
        };
        Ok(SubActs { fusion: None, s1, hs: Some(hs), a: Some(a), u, out })
    }

    /// Gradient of a sub-layer: from `dfinal` to `dh` (its dense output) and `dx_in` (written).
    fn sublayer_backward(
        &self,
        b: &mut CommandRecorder,
        acts: &SubActs,
        ln_g: &GpuTensor,
        adapter: Option<(&AdapterModule, Placement)>,
        dfinal: &GpuTensor,
        dh: &GpuTensor,
        dx_in: &GpuTensor,
        accumulate: bool,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let eps = self.dims.eps;
        let shape = dfinal.shape.clone();
        let Some((ad, pl)) = adapter else {
            let u = acts.u.as_ref().expect("saved LN input");
            layernorm::layer_norm_backward(b, u, ln_g, eps, dfinal, dh, false)?;
            elementwise::copy(b, dh, dx_in)?;
            return Ok(());
        };
        let du = self.final_ln_backward(b, acts.u.as_ref(), ln_g, dfinal)?;
        let dout = du.as_ref().unwrap_or(dfinal);
        let hs = acts.hs.as_ref().expect("saved adapter input");
        let a = acts.a.as_ref().expect("saved adapter activations");
        let dhs = t(gpu, &shape)?;
        let scratch = AdapterScratch::new(gpu, shape[0], ad.shape.m)?;
        let separate = pl.separate_residual();
        let grads = if accumulate { AdapterWeights::zeros(gpu, ad.shape.d, ad.shape.m)? } else { ad.grad.clone() };
        ad.shape.backward_residual(b, &ad.w, hs, separate, a, dout, &dhs, &grads, &scratch)?;
        if accumulate {
            // ad.grad += this chunk's gradients.
            for (sum, part) in [
                (&ad.grad.w_down, &grads.w_down),
                (&ad.grad.b_down, &grads.b_down),
                (&ad.grad.w_up, &grads.w_up),
                (&ad.grad.b_up, &grads.b_up),
            ] {
                let next = t(gpu, &sum.shape)?;
                elementwise::add(b, sum, part, &next)?;
                elementwise::copy(b, &next, sum)?;
            }
        }
        // The gradient reaching the adapter's input flows to h (directly, or through the
        // pretrained LayerNorm before the adapter, which also feeds x_in).
        let (to_h, to_x) = match &acts.s1 {
            Some(s1) => {
                let ds1 = t(gpu, &shape)?;
                layernorm::layer_norm_backward(b, s1, ln_g, eps, &dhs, &ds1, false)?;
                (ds1.clone(), Some(ds1))
            }
            None => (dhs, None),
        };
        if separate {
            elementwise::add(b, dout, &to_h, dh)?;
        } else {
            elementwise::copy(b, &to_h, dh)?;
        }
        match (&du, &to_x) {
            (Some(du), Some(dx)) => elementwise::add(b, du, dx, dx_in)?,
            (Some(du), None) => elementwise::copy(b, du, dx_in)?,
            (None, Some(dx)) => elementwise::copy(b, dx, dx_in)?,
            (None, None) => elementwise::fill(b, dx_in, 0.0)?,
        }
        Ok(())
    }

    /// FFN output with AdapterFusion: the last adapter's placement decides the LayerNorms and the
    /// residual (AdapterHub's `compose_fuse`); each frozen adapter's scaled up-projection `z_n`
    /// is mixed by the fusion attention.
    fn fusion_forward(
        &self,
        b: &mut CommandRecorder,
        h: GpuTensor,
        x_in: &GpuTensor,
        ln_g: &GpuTensor,
        ln_b: &GpuTensor,
        adapters: &[&AdapterSet],
        fusion: &FusionModel,
        l: usize,
    ) -> Result<SubActs> {
        let gpu = &self.gpu;
        let shape = h.shape.clone();
        let tok = shape[0];
        let d = self.dims.hidden;
        let fl = fusion.at(l).expect("checked");
        let last = adapters.last().ok_or_else(|| anyhow::anyhow!("fusion without adapters"))?;
        let pl = last.placement;
        let (s1, hs) = if pl.original_ln_before {
            let (s1, hs) = self.add_layer_norm(b, &h, x_in, ln_g, ln_b)?;
            (Some(s1), hs)
        } else {
            (None, h.clone())
        };
        let residual = if pl.residual_before_ln { h.clone() } else { hs.clone() };
        let query = if fusion.query_before_ln { h.clone() } else { hs.clone() };
        let z = t(gpu, &[adapters.len(), tok, d])?;
        let mut a_saved = vec![];
        for (n, set) in adapters.iter().enumerate() {
            let ad = set.at(l, Location::Output).ok_or_else(|| {
                anyhow::anyhow!("fusion: adapter {:?} has no FFN-output adapter in layer {l}", set.name)
            })?;
            let a = t(gpu, &[tok, ad.shape.m])?;
            let zn = t(gpu, &shape)?;
            ad.shape.forward_residual(b, &ad.w, &hs, Residual::None, &zn, &a)?;
            elementwise::copy_range(b, &zn, 0, &z, n * tok * d, tok * d)?;
            a_saved.push(a);
        }
        let saved = FusionSaved::new(gpu, &fusion.shape, tok)?;
        let o = t(gpu, &shape)?;
        fusion.shape.forward(b, &fl.w, &query, &z, &residual, fusion.temperature, &o, &saved)?;
        let (u, out) = if pl.original_ln_after {
            let (u, out) = self.add_layer_norm(b, &o, x_in, ln_g, ln_b)?;
            (Some(u), out)
        } else {
            (None, o)
        };
        let fusion_acts = FusionActs { query, residual, z, a: a_saved, saved };
        Ok(SubActs { fusion: Some(fusion_acts), s1, hs: Some(hs), a: None, u, out })
    }

    #[allow(clippy::too_many_arguments)]
    fn fusion_backward(
        &self,
        b: &mut CommandRecorder,
        acts: &SubActs,
        ln_g: &GpuTensor,
        adapters: &[&AdapterSet],
        fusion: &FusionModel,
        l: usize,
        dfinal: &GpuTensor,
        dh: &GpuTensor,
        dx_in: &GpuTensor,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let eps = self.dims.eps;
        let shape = dfinal.shape.clone();
        let (tok, d) = (shape[0], self.dims.hidden);
        let fl = fusion.at(l).expect("checked");
        let fa = acts.fusion.as_ref().expect("fusion activations");
        let hs = acts.hs.as_ref().expect("adapter input");
        let du = self.final_ln_backward(b, acts.u.as_ref(), ln_g, dfinal)?;
        let d_o = du.as_ref().unwrap_or(dfinal);
        let (dquery, dz, dr) = (t(gpu, &shape)?, t(gpu, &[adapters.len(), tok, d])?, t(gpu, &shape)?);
        let scratch = FusionScratch::new(gpu, &fusion.shape, tok)?;
        fusion.shape.backward(
            b,
            &fl.w,
            &fa.query,
            &fa.z,
            &fa.saved,
            fusion.temperature,
            d_o,
            &dquery,
            &dz,
            &dr,
            &fl.grad,
            &scratch,
        )?;
        // Gradients reaching the adapters' common input hs, and the dense output h.
        let same = |x: &GpuTensor, y: &GpuTensor| Arc::ptr_eq(&x.buffer, &y.buffer);
        let mut to_hs: Vec<GpuTensor> = vec![];
        let mut to_h: Vec<GpuTensor> = vec![];
        for (g, src) in [(&dquery, &fa.query), (&dr, &fa.residual)] {
            if same(src, hs) {
                to_hs.push(g.clone());
            } else {
                to_h.push(g.clone());
            }
        }
        for (n, set) in adapters.iter().enumerate() {
            let ad = set.at(l, Location::Output).expect("checked in forward");
            let dzn = t(gpu, &shape)?;
            elementwise::copy_range(b, &dz, n * tok * d, &dzn, 0, tok * d)?;
            let dxn = t(gpu, &shape)?;
            let frozen_grads = AdapterWeights::zeros(gpu, d, ad.shape.m)?;
            let sc = AdapterScratch::new(gpu, tok, ad.shape.m)?;
            ad.shape.backward_residual(b, &ad.w, hs, true, &fa.a[n], &dzn, &dxn, &frozen_grads, &sc)?;
            to_hs.push(dxn);
        }
        let dhs = self.sum(b, &to_hs)?;
        match &acts.s1 {
            Some(s1) => {
                let ds1 = t(gpu, &shape)?;
                layernorm::layer_norm_backward(b, s1, ln_g, eps, &dhs, &ds1, false)?;
                to_h.push(ds1.clone());
                let mut to_x = vec![ds1];
                if let Some(du) = &du {
                    to_x.push(du.clone());
                }
                let sx = self.sum(b, &to_x)?;
                elementwise::copy(b, &sx, dx_in)?;
            }
            None => {
                to_h.push(dhs);
                match &du {
                    Some(du) => elementwise::copy(b, du, dx_in)?,
                    None => elementwise::fill(b, dx_in, 0.0)?,
                }
            }
        }
        let sh = self.sum(b, &to_h)?;
        elementwise::copy(b, &sh, dh)?;
        Ok(())
    }

    /// Sum of same-shaped tensors (fixed order) into a new tensor.
    fn sum(&self, b: &mut CommandRecorder, xs: &[GpuTensor]) -> Result<GpuTensor> {
        let mut acc = xs.first().ok_or_else(|| anyhow::anyhow!("empty sum"))?.clone();
        for x in &xs[1..] {
            let next = t(&self.gpu, &acc.shape)?;
            elementwise::add(b, &acc, x, &next)?;
            acc = next;
        }
        Ok(acc)
    }

    #[allow(clippy::too_many_arguments)]
    fn head_backward(
        &self,
        b: &mut CommandRecorder,
        head: &ClassificationHead,
        cls: &GpuTensor,
        hpre: &GpuTensor,
        hact: &GpuTensor,
        dlogits: &GpuTensor,
        seq: usize,
        tok: usize,
    ) -> Result<GpuTensor> {
        let gpu = &self.gpu;
        let d = self.dims.hidden;
        let (bsz, c) = (cls.shape[0], head.labels);
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
        let dhidden = t(gpu, &[tok, d])?;
        elementwise::scatter_rows(b, &dcls, seq, &dhidden, false)?;
        Ok(dhidden)
    }

    fn layers_backward(
        &mut self,
        b: &mut CommandRecorder,
        setup: &Setup,
        saved: Saved,
        mask: &GpuTensor,
        s: AttentionShape,
        mut dy: GpuTensor,
    ) -> Result<()> {
        let gpu = self.gpu.clone();
        let (d, tok) = (self.dims.hidden, s.batch * s.seq);
        let chunks = self.chunks(s.batch);
        let (mut all, mut inputs, mut ffn_out, mut top) = match saved {
            Saved::All(acts) => (acts, vec![], vec![], None),
            Saved::Inputs { inputs, ffn_out, top } => (vec![], inputs, ffn_out, top),
        };
        for l in (0..self.dims.layers).rev() {
            let w = self.store.layer(l)?;
            if chunks.len() > 1 {
                // Chunk by chunk: recompute the chunk's activations from its rows of the layer
                // input, back-propagate its rows of dy, sum the adapters' gradients over chunks.
                let mut x =
                    Some(inputs.pop().ok_or_else(|| anyhow::anyhow!("internal: no input saved for layer {l}"))?);
                let mut h2 = ffn_out.pop();
                let dx = t(&gpu, &[tok, d])?;
                let mut below = false;
                for (i, &(first, count)) in chunks.iter().enumerate() {
                    let xl = x.as_ref().expect("taken after the last chunk");
                    let (xc, mc, sc) = self.chunk_of(b, xl, mask, s, (first, count))?;
                    let dyc = self.rows_of(b, &dy, s.seq, first, count)?;
                    let h2c = match &h2 {
                        Some(h2) => Some(self.rows_of(b, h2, s.seq, first, count)?),
                        None => None,
                    };
                    let (la, _) = self.layer_forward(b, &w, setup, l, &xc, &mc, sc, true, h2c.as_ref())?;
                    drop((xc, h2c));
                    b.finish()?;
                    let dxc = self.layer_backward(b, &w, setup, l, &la, &mc, sc, &dyc, i > 0)?;
                    if let Some(dxc) = &dxc {
                        elementwise::copy_range(b, dxc, 0, &dx, first * s.seq * d, count * s.seq * d)?;
                    }
                    below = dxc.is_some();
                    drop((la, mc, dyc, dxc));
                    if i + 1 == chunks.len() && below {
                        // Done with the layer's input and the old dy: freed by the wait below.
                        x = None;
                        h2 = None;
                        dy = dx.clone();
                    }
                    b.finish()?;
                }
                drop((x, h2));
                if !below {
                    break;
                }
                continue;
            }
            // This layer's activations: kept, or recomputed from its input with the same kernels
            // on the same values (so bit-identical).
            let la = match (inputs.pop(), top.take()) {
                (Some(_), Some(la)) => *la,
                (Some(x), None) => {
                    let h2 = ffn_out.pop();
                    let (la, _) = self.layer_forward(b, &w, setup, l, &x, mask, s, true, h2.as_ref())?;
                    // Free the forward's temporaries before backward allocates.
                    self.layer_done(b)?;
                    la
                }
                (None, _) => all.pop().ok_or_else(|| anyhow::anyhow!("internal: no activations for layer {l}"))?,
            };
            match self.layer_backward(b, &w, setup, l, &la, mask, s, &dy, false)? {
                Some(dx) => dy = dx,
                None => break,
            }
            drop(la);
            self.layer_done(b)?;
        }
        Ok(())
    }

    /// Backward of layer `l` from `dy` (the gradient of its output) with its activations `la`:
    /// the trainable gradients (added to what is there with `accumulate`) and the gradient of the
    /// layer's input, or `None` when nothing trainable is below this layer (backward stops here).
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        b: &mut CommandRecorder,
        w: &LayerWeights,
        setup: &Setup,
        l: usize,
        la: &LayerActs,
        mask: &GpuTensor,
        s: AttentionShape,
        dy: &GpuTensor,
        accumulate: bool,
    ) -> Result<Option<GpuTensor>> {
        let gpu = &self.gpu;
        let (d, tok, ffn) = (self.dims.hidden, s.batch * s.seq, self.dims.ffn);
        let trainable = |l: usize, loc: Location| match setup {
            Setup::None => false,
            Setup::Adapter(a) => a.at(l, loc).is_some(),
            Setup::Fusion { fusion, .. } => loc == Location::Output && fusion.at(l).is_some(),
        };
        if accumulate && matches!(setup, Setup::Fusion { .. }) {
            bail!("internal: fusion gradients are not accumulated over chunks");
        }
        let adapter = |loc| match setup {
            Setup::Adapter(a) => a.at(l, loc).map(|m| (m, a.placement)),
            _ => None,
        };
        // FFN sub-layer.
        let dh2 = t(gpu, &[tok, d])?;
        let dy1 = t(gpu, &[tok, d])?;
        match setup {
            Setup::Fusion { adapters, fusion } if fusion.at(l).is_some() => {
                self.fusion_backward(b, &la.ffn, &w.ln2_g, adapters, fusion, l, dy, &dh2, &dy1)?
            }
            _ => self.sublayer_backward(b, &la.ffn, &w.ln2_g, adapter(Location::Output), dy, &dh2, &dy1, accumulate)?,
        }
        // Nothing trainable below this point: the rest of the backward would be wasted work.
        let below = (0..l).any(|k| trainable(k, Location::Attention) || trainable(k, Location::Output));
        if !below && !trainable(l, Location::Attention) {
            return Ok(None);
        }
        let dinter = t(gpu, &[tok, ffn])?;
        Matmul::new(tok, ffn, d).run(
            b,
            View::rows(&dh2, d),
            View::rows(&w.o_w, ffn),
            None,
            View::rows(&dinter, ffn),
        )?;
        let dpre = t(gpu, &[tok, ffn])?;
        elementwise::act_backward(b, self.dims.act, &la.pre, &dinter, &dpre)?;
        Matmul::new(tok, d, ffn).beta(1.0).run(
            b,
            View::rows(&dpre, ffn),
            View::rows(&w.i_w, d),
            None,
            View::rows(&dy1, d),
        )?;
        // Attention sub-layer.
        let dh1 = t(gpu, &[tok, d])?;
        let dx = t(gpu, &[tok, d])?;
        self.sublayer_backward(b, &la.attn, &w.ln1_g, adapter(Location::Attention), &dy1, &dh1, &dx, accumulate)?;
        if !below {
            return Ok(None);
        }
        let dctx = t(gpu, &[tok, d])?;
        Matmul::new(tok, d, d).run(b, View::rows(&dh1, d), View::rows(&w.ao_w, d), None, View::rows(&dctx, d))?;
        let (dq, dk, dv) = (t(gpu, &[tok, d])?, t(gpu, &[tok, d])?, t(gpu, &[tok, d])?);
        let scratch = t(gpu, &[s.batch, s.heads, s.seq, s.seq])?;
        attention::attention_backward(b, s, &la.q, &la.k, &la.v, mask, &la.probs, &dctx, &dq, &dk, &dv, &scratch)?;
        for (g, wt) in [(&dq, &w.q_w), (&dk, &w.k_w), (&dv, &w.v_w)] {
            Matmul::new(tok, d, d).beta(1.0).run(b, View::rows(g, d), View::rows(wt, d), None, View::rows(&dx, d))?;
        }
        Ok(Some(dx))
    }
}
