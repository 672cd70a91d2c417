//! The schedule of a pass over the layers: what is kept for backward (every layer's activations,
//! or with `--recompute` each layer's input, recomputed before its backward), layer chunks, and
//! when the recorded work is submitted (and waited for) so that memory is reused.

use super::super::store::LayerWeights;
use super::acts::{LayerActs, Saved};
use super::dropout::{PassDropout, RowsDropout};
use super::{t, Encoder, Setup};
use crate::gpu::{CommandRecorder, GpuTensor};
use crate::kernels::attention::AttentionShape;
use crate::kernels::elementwise;
use anyhow::{bail, Result};

/// A chunk of sequences: `(first, count)`.
type Chunk = (usize, usize);

impl Encoder {
    /// After a layer's work is recorded: with `--recompute` or streamed weights, submit and wait,
    /// so that the buffers the layer dropped are really free before the next layer allocates (and
    /// a streamed slot can be refilled). Fully resident without recompute: submit without waiting
    /// (the GPU runs layer l while the host records layer l + 1) and let wgpu reclaim what finished
    /// work dropped, so later layers reuse that memory instead of allocating more
    /// (the GPU's [`SubmitPolicy`](crate::gpu::SubmitPolicy); one submit for the whole pass on CPU
    /// drivers or with `PEFT_SUBMIT_PER_LAYER=0`).
    fn layer_done(&self, b: &mut CommandRecorder) -> Result<()> {
        if self.recompute || !self.store.is_resident() {
            self.reuse_point(b)?;
        } else if self.gpu.policy().submit_per_layer() {
            b.submit_and_poll()?;
        }
        Ok(())
    }

    /// Where the buffers dropped so far must serve what is allocated next (a layer, a chunk, a
    /// streamed slot's refill): with the buffer pool, a submit — the pool hands them only to work
    /// submitted later, which the queue orders after every use, and a slot's refill is a queue
    /// write, ordered the same way — so the host records on while the GPU runs (issue 15 item 5:
    /// no host wait per chunk); without the pool, a submit and a wait (a dropped buffer's memory
    /// is only free once the GPU is done with it).
    fn reuse_point(&self, b: &mut CommandRecorder) -> Result<()> {
        if self.gpu.policy().buffer_pool {
            b.submit_and_poll()
        } else {
            b.finish()
        }
    }

    /// The sequence ranges `(first, count)` a layer runs over at a time: the whole batch, or chunks
    /// of [`layer_chunk`](Self::layer_chunk) sequences with `--recompute`.
    fn chunks(&self, batch: usize) -> Vec<Chunk> {
        let c = if self.recompute && self.layer_chunk > 0 { self.layer_chunk.min(batch) } else { batch };
        (0..batch).step_by(c).map(|s0| (s0, c.min(batch - s0))).collect()
    }

    /// Rows `first..first + count` (sequences) of a `[batch·seq, …]` tensor, copied to a new one.
    fn rows_of(&self, b: &mut CommandRecorder, x: &GpuTensor, seq: usize, (first, count): Chunk) -> Result<GpuTensor> {
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
        (first, count): Chunk,
    ) -> Result<(GpuTensor, GpuTensor, AttentionShape)> {
        let xc = self.rows_of(b, x, s.seq, (first, count))?;
        let mc = t(&self.gpu, &[count, s.seq])?;
        elementwise::copy_range(b, mask, first * s.seq, &mc, 0, count * s.seq)?;
        Ok((xc, mc, AttentionShape { batch: count, ..s }))
    }

    /// Forward of every layer from the embeddings' output `x`: the last hidden state and what
    /// backward needs (see [`Saved`]), with the training pass's `dropout`. With `head_rows` the top
    /// layer computes, after its attention, only the first token of each sequence (the last
    /// hidden state is then `[batch, hidden]`), chunk by chunk too.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layers_forward<'s>(
        &mut self,
        b: &mut CommandRecorder,
        setup: &'s Setup,
        mut x: GpuTensor,
        mask: &GpuTensor,
        s: AttentionShape,
        dropout: Option<PassDropout>,
        head_rows: bool,
    ) -> Result<(GpuTensor, Saved<'s>)> {
        let n = self.dims.layers;
        let chunks = self.chunks(s.batch);
        if chunks.len() > 1 && setup.is_fusion() {
            bail!("layer chunks (--layer-chunk) apply to adapter training, not to AdapterFusion");
        }
        let mut saved = if self.recompute {
            Saved::Inputs { inputs: Vec::with_capacity(n), ffn_out: vec![], top: None }
        } else {
            Saved::All(Vec::with_capacity(n))
        };
        for l in 0..n {
            let w = self.store.layer(b, l)?;
            let top_rows = head_rows && l + 1 == n;
            if chunks.len() > 1 {
                let (y, h2) = self.layer_forward_chunked(b, &w, setup, l, &x, mask, s, &chunks, (dropout, top_rows))?;
                if let Saved::Inputs { inputs, ffn_out, .. } = &mut saved {
                    inputs.push(x);
                    ffn_out.extend(h2);
                }
                x = y;
                continue;
            }
            let whole = RowsDropout::whole(dropout);
            let (la, h2) = self.layer_forward(b, &w, setup, l, &x, mask, s, false, None, whole, top_rows)?;
            let y = la.ffn.out().clone();
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

    /// Forward of layer `l` chunk by chunk, each chunk's activations freed (a wait) before the
    /// next: the layer's output and, with `keep_ffn_output`, its FFN output dense result (with
    /// `head_rows`, one row a sequence).
    #[allow(clippy::too_many_arguments)]
    fn layer_forward_chunked(
        &self,
        b: &mut CommandRecorder,
        w: &LayerWeights,
        setup: &Setup,
        l: usize,
        x: &GpuTensor,
        mask: &GpuTensor,
        s: AttentionShape,
        chunks: &[Chunk],
        (dropout, head_rows): (Option<PassDropout>, bool),
    ) -> Result<(GpuTensor, Option<GpuTensor>)> {
        // Output rows a sequence: all, or the first (`head_rows`).
        let (out_seq, d) = (if head_rows { 1 } else { s.seq }, self.dims.hidden);
        let y = t(&self.gpu, &[s.batch * out_seq, d])?;
        let h2 = if self.keep_ffn_output { Some(t(&self.gpu, &[s.batch * out_seq, d])?) } else { None };
        for &(first, count) in chunks {
            let (xc, mc, sc) = self.chunk_of(b, x, mask, s, (first, count))?;
            let rows = dropout.map(|pass| RowsDropout::from_row(pass, first * s.seq));
            let (la, h2c) = self.layer_forward(b, w, setup, l, &xc, &mc, sc, false, None, rows, head_rows)?;
            let (at, n) = (first * out_seq * d, count * out_seq * d);
            elementwise::copy_range(b, la.ffn.out(), 0, &y, at, n)?;
            if let Some(h2) = &h2 {
                elementwise::copy_range(b, &h2c, 0, h2, at, n)?;
            }
            drop((la, h2c, xc, mc));
            self.reuse_point(b)?;
        }
        Ok((y, h2))
    }

    /// Backward of every layer, top first, from `dy` (the gradient of the last hidden state),
    /// with what the forward kept and its `dropout` and `head_rows` (as the forward's); it stops
    /// below the lowest layer where something trains.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layers_backward(
        &mut self,
        b: &mut CommandRecorder,
        setup: &Setup,
        saved: Saved,
        mask: &GpuTensor,
        s: AttentionShape,
        mut dy: GpuTensor,
        dropout: Option<PassDropout>,
        head_rows: bool,
    ) -> Result<()> {
        let whole = RowsDropout::whole(dropout);
        let chunks = self.chunks(s.batch);
        let (mut all, mut inputs, mut ffn_out, mut top) = match saved {
            Saved::All(acts) => (acts, vec![], vec![], None),
            Saved::Inputs { inputs, ffn_out, top } => (vec![], inputs, ffn_out, top),
        };
        for l in (0..self.dims.layers).rev() {
            let w = self.store.layer(b, l)?;
            if chunks.len() > 1 {
                let x = inputs.pop().ok_or_else(|| anyhow::anyhow!("internal: no input saved for layer {l}"))?;
                let h2 = ffn_out.pop();
                let dropout = (dropout, head_rows && l + 1 == self.dims.layers);
                match self.layer_backward_chunked(b, &w, setup, l, (x, h2), mask, s, dy, &chunks, dropout)? {
                    Some(dx) => dy = dx,
                    None => break,
                }
                continue;
            }
            // This layer's activations: kept, or recomputed from its input with the same kernels
            // on the same values (so bit-identical).
            let la: LayerActs = match (inputs.pop(), top.take()) {
                (Some(_), Some(la)) => *la,
                (Some(x), None) => {
                    let h2 = ffn_out.pop();
                    // (Not the top layer: its activations are kept, so `head_rows` never recomputes.)
                    let (la, _) = self.layer_forward(b, &w, setup, l, &x, mask, s, true, h2.as_ref(), whole, false)?;
                    // Free the forward's temporaries before backward allocates.
                    self.layer_done(b)?;
                    la
                }
                (None, _) => all.pop().ok_or_else(|| anyhow::anyhow!("internal: no activations for layer {l}"))?,
            };
            match self.layer_backward(b, &w, setup, l, &la, mask, s, &dy, false, whole)? {
                Some(dx) => dy = dx,
                None => break,
            }
            drop(la);
            self.layer_done(b)?;
        }
        Ok(())
    }

    /// Backward of layer `l` chunk by chunk: recompute the chunk's activations from its rows of
    /// the layer input `x` (and of the saved FFN output `h2`), back-propagate its rows of `dy`,
    /// sum the adapters' gradients over chunks. The gradient of the layer's input, or `None`
    /// when backward stops here. The input and the old `dy` are freed by the last chunk's wait.
    #[allow(clippy::too_many_arguments)]
    fn layer_backward_chunked(
        &self,
        b: &mut CommandRecorder,
        w: &LayerWeights,
        setup: &Setup,
        l: usize,
        (x, h2): (GpuTensor, Option<GpuTensor>),
        mask: &GpuTensor,
        s: AttentionShape,
        dy: GpuTensor,
        chunks: &[Chunk],
        (dropout, head_rows): (Option<PassDropout>, bool),
    ) -> Result<Option<GpuTensor>> {
        let d = self.dims.hidden;
        // Rows a sequence of `dy` and the saved `h2`: all, or the first (`head_rows`).
        let out_seq = if head_rows { 1 } else { s.seq };
        let (mut x, mut h2, mut dy) = (Some(x), h2, Some(dy));
        let dx = t(&self.gpu, &[s.batch * s.seq, d])?;
        let mut below = false;
        for (i, &(first, count)) in chunks.iter().enumerate() {
            let (Some(xl), Some(dyl)) = (&x, &dy) else {
                bail!("internal: layer {l}'s input was freed before its last chunk");
            };
            let (xc, mc, sc) = self.chunk_of(b, xl, mask, s, (first, count))?;
            let dyc = self.rows_of(b, dyl, out_seq, (first, count))?;
            let h2c = match &h2 {
                Some(h2) => Some(self.rows_of(b, h2, out_seq, (first, count))?),
                None => None,
            };
            let rows = dropout.map(|pass| RowsDropout::from_row(pass, first * s.seq));
            let (la, _) = self.layer_forward(b, w, setup, l, &xc, &mc, sc, true, h2c.as_ref(), rows, head_rows)?;
            drop((xc, h2c));
            self.reuse_point(b)?;
            let dxc = self.layer_backward(b, w, setup, l, &la, &mc, sc, &dyc, i > 0, rows)?;
            if let Some(dxc) = &dxc {
                elementwise::copy_range(b, dxc, 0, &dx, first * s.seq * d, count * s.seq * d)?;
            }
            below = dxc.is_some();
            drop((la, mc, dyc, dxc));
            if i + 1 == chunks.len() && below {
                // Done with the layer's input and the old dy: reusable after the reuse point below.
                (x, h2, dy) = (None, None, None);
            }
            self.reuse_point(b)?;
        }
        drop((x, h2, dy));
        Ok(below.then_some(dx))
    }
}
