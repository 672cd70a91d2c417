//! [`plan`]: the peak of one training step, replayed phase by phase as the encoder allocates:
//! what is resident before the step, the embeddings, each layer's forward, the head and loss,
//! each layer's backward.

use super::super::adapters::Location;
use super::super::store::{ffn_row_stride, LayerWeights};
use super::sim::{b4, fusion_bwd, fusion_fwd, sublayer_bwd, sublayer_fwd, when, Cat, Sim, SiteAdapter, Sizes};
use super::{DropoutSites, MemoryPlan, PlanInput};
use anyhow::{bail, Result};

/// The planned peak of one training step.
pub fn plan(p: &PlanInput) -> Result<MemoryPlan> {
    let mut r = Replay::new(p)?;
    r.resident_before_step();
    // With gradient accumulation, a later micro-batch's pass runs beside the earlier ones' sums.
    let sums = r.gradient_sum_bytes();
    if sums > 0 {
        r.s.alloc(Cat::Trainable, sums);
    }
    r.embeddings();
    for l in 0..r.n_layers {
        r.layer_forward(l);
    }
    r.head_and_loss();
    // Backward, top layer first; it stops below the lowest trainable site.
    for l in (0..r.n_layers).rev() {
        if r.layer_backward(l) {
            break;
        }
    }
    // Then its gradients go into new sums before the pass's buffers are freed (the next wait).
    if sums > 0 {
        r.s.alloc(Cat::Trainable, sums);
    }
    Ok(r.finish())
}

/// One step's shapes and options, and the allocations replayed so far.
struct Replay<'p> {
    p: &'p PlanInput<'p>,
    s: Sim,
    /// Sequences per layer chunk, and the chunks' sizes (one chunk: the whole batch).
    chunk: usize,
    chunks: Vec<usize>,
    chunked: bool,
    d: usize,
    f: usize,
    n_layers: usize,
    heads: usize,
    /// The adapters' bottleneck width.
    m: u64,
    /// Sizes of the whole batch's activations.
    all: Sizes,
    /// The top layer computes only the first token of each sequence after its attention
    /// (`Encoder::head_rows_only`: a sequence head; a training step records no fusion weights).
    head_rows: bool,
    resident: bool,
    slots: usize,
    layer_bytes: u64,
    /// The f32 matrices f16 slots are widened into (one layer's; 0 with f32 weights).
    widened_bytes: u64,
    /// A wait after each layer (streaming or recompute).
    syncs: bool,
    /// One adapter's parameters (its gradients, and their running sum over chunks).
    adapter_bytes: u64,
    /// Recompute keeps each layer's FFN output dense result `h2`.
    keep_h2: bool,
    /// The dropout sites that allocate.
    drops: DropoutSites,
    /// Elements of the word, position and token type tables.
    tables: [u64; 3],
    /// Elements of the embeddings' resident tensors beside them (LayerNorm, ELECTRA's projection).
    embedding_resident: Vec<u64>,
}

impl<'p> Replay<'p> {
    fn new(p: &'p PlanInput<'p>) -> Result<Self> {
        let cfg = p.cfg;
        if p.batch == 0 || p.seq == 0 {
            bail!("the batch size and the sequence length must be at least 1");
        }
        if p.adapter.sites.len() != cfg.num_hidden_layers {
            bail!("adapter spec has {} layers, the model {}", p.adapter.sites.len(), cfg.num_hidden_layers);
        }
        let chunk = if p.recompute && p.layer_chunk > 0 { p.layer_chunk.min(p.batch) } else { p.batch };
        let chunks: Vec<usize> = (0..p.batch).step_by(chunk).map(|s0| chunk.min(p.batch - s0)).collect();
        let (d, f, n_layers, heads) =
            (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads);
        let m = p.adapter.bottleneck as u64;
        let resident = p.resident_layers >= n_layers;
        let ud = d as u64;
        let layout = crate::model::embedding_layout::EmbeddingLayout::from_config(cfg);
        let tables = layout.table_elements(cfg.vocab_size);
        let embedding_resident = layout.resident_elements(d);
        let mut r = Self {
            p,
            s: Sim::new(),
            chunk,
            chunked: chunks.len() > 1,
            chunks,
            d,
            f,
            n_layers,
            heads,
            m,
            all: Sizes { tok4: 0, td: 0, tf: 0, probs: 0, tm: 0 },
            head_rows: !p.per_token_head,
            resident,
            slots: if resident { n_layers } else { p.resident_layers.max(1) },
            layer_bytes: LayerWeights::bytes(d, f, p.precision),
            widened_bytes: LayerWeights::widened_bytes(d, f, p.precision),
            syncs: p.recompute || !resident,
            adapter_bytes: b4(2 * m * ud + m + ud),
            keep_h2: p.recompute && p.keep_ffn_output,
            drops: p.dropout,
            tables,
            embedding_resident,
        };
        r.all = r.sizes(p.batch);
        Ok(r)
    }

    /// Bytes of the activations of `seqs` sequences.
    fn sizes(&self, seqs: usize) -> Sizes {
        let p = self.p;
        self.sizes_of((seqs * p.seq) as u64, (seqs * self.heads * p.seq * p.seq) as u64)
    }

    /// Bytes of the activations of `tok` rows with `probs` attention probabilities.
    fn sizes_of(&self, tok: u64, probs: u64) -> Sizes {
        Sizes {
            tok4: b4(tok),
            td: b4(tok * self.d as u64),
            // The intermediate's padded rows (`store::ffn_row_stride`).
            tf: b4(tok * ffn_row_stride(self.f) as u64),
            probs: b4(probs),
            tm: b4(tok * self.m),
        }
    }

    /// Sizes of layer `l`'s rows after its attention: the whole batch's, or at the top layer
    /// with `head_rows` one row a sequence.
    fn after_attention(&self, l: usize) -> Sizes {
        self.after_attention_of(l, self.p.batch)
    }

    /// Layer `l` runs only the head's rows after its attention (the top one, with `head_rows`).
    fn head_rows_at(&self, l: usize) -> bool {
        self.head_rows && l + 1 == self.n_layers
    }

    /// [`after_attention`](Self::after_attention) for a chunk of `seqs` sequences.
    fn after_attention_of(&self, l: usize, seqs: usize) -> Sizes {
        if self.head_rows_at(l) {
            self.sizes_of(seqs as u64, 0)
        } else {
            self.sizes(seqs)
        }
    }

    fn adapter_at(&self, l: usize, loc: Location) -> Option<SiteAdapter> {
        self.p.adapter.at(l, loc).then_some((self.p.adapter.placement, self.p.adapter.options))
    }

    /// [`sublayer_fwd`], or [`fusion_fwd`] at a fused site.
    fn site_fwd(&self, l: usize, loc: Location, z: &Sizes) -> (u64, u64, bool) {
        match (&self.p.adapter.fusion, self.p.adapter.at(l, loc)) {
            (Some(f), true) => fusion_fwd(self.p.adapter.placement, f.adapters as u64, z.td, z.tm, z.tok4),
            _ => sublayer_fwd(self.adapter_at(l, loc), z.td, z.tm),
        }
    }

    /// [`sublayer_bwd`], or [`fusion_bwd`] at a fused site.
    fn site_bwd(&self, l: usize, loc: Location, z: &Sizes) -> u64 {
        match (&self.p.adapter.fusion, self.p.adapter.at(l, loc)) {
            (Some(f), true) => fusion_bwd(self.p.adapter.placement, f.adapters as u64, z.td, z.tm, self.adapter_bytes),
            _ => sublayer_bwd(self.adapter_at(l, loc), z.td, z.tm),
        }
    }

    /// The trainable tensors' elements and copies on the GPU: the adapters' (weights, gradients,
    /// AdamW moments), or with a fusion the frozen adapters' (weights and their unused gradients)
    /// and the fusion layers' (four copies).
    fn trainable_tensors(&self) -> Vec<(u64, u64)> {
        let (ud, m, a) = (self.d as u64, self.m, self.p.adapter);
        let mut v = vec![];
        for l in 0..self.n_layers {
            for loc in [Location::Attention, Location::Output] {
                if !a.at(l, loc) {
                    continue;
                }
                let Some(f) = a.fusion else {
                    let options = a.options.tensor_sizes(self.d).into_iter().map(|n| n as u64);
                    v.extend([m * ud, m, ud * m, ud].into_iter().chain(options).map(|n| (n, 4)));
                    continue;
                };
                for _ in 0..f.adapters {
                    v.extend([m * ud, m, ud * m, ud].map(|n| (n, 2)));
                }
                v.extend([ud * ud, ud, ud * ud, ud].map(|n| (n, 4)));
                if f.value {
                    v.push((ud * ud, 4));
                }
            }
        }
        v
    }

    /// Bytes of one set of gradient sums (`--gradient-accumulation` above 1; else 0): one buffer
    /// per trained tensor of the adapters or fusion and the head (`train_step_accumulated`).
    fn gradient_sum_bytes(&self) -> u64 {
        if self.p.gradient_accumulation <= 1 {
            return 0;
        }
        let (ud, c) = (self.d as u64, self.p.labels.max(1) as u64);
        // Trained tensors have four copies (frozen adapters under a fusion two: not trained).
        let trained = self.trainable_tensors().into_iter().filter(|&(_, copies)| copies == 4);
        trained.map(|(n, _)| n).chain([ud * ud, ud, c * ud, c]).map(|n| b4(n).max(4)).sum()
    }

    /// Resident before the step: embeddings (tables only when the layers are resident too),
    /// layer slots, adapters + head (weights, gradients, AdamW moments), the dummy bindings,
    /// the optimizer's two scalars.
    fn resident_before_step(&mut self) {
        let (ud, uf) = (self.d as u64, self.f as u64);
        let c = self.p.labels.max(1) as u64;
        let s = &mut self.s;
        if self.resident {
            for n in self.tables {
                s.alloc(Cat::Embeddings, b4(n));
            }
        }
        for &n in &self.embedding_resident {
            s.alloc(Cat::Embeddings, b4(n));
        }
        for _ in 0..self.slots {
            // Q|K|V weights and biases (concatenated), attention output, LayerNorm, FFN, LayerNorm.
            for bytes in LayerWeights::field_bytes(self.d, self.f, self.p.precision) {
                s.alloc(Cat::Weights, bytes);
            }
        }
        if self.widened_bytes > 0 {
            // The f32 matrices f16 slots widen into.
            for n in [3 * ud * ud, ud * ud, uf * ud, ud * ffn_row_stride(self.f) as u64] {
                s.alloc(Cat::Weights, b4(n));
            }
        }
        debug_assert_eq!(s.live[1], self.slots as u64 * self.layer_bytes + self.widened_bytes);
        for l in 0..self.n_layers {
            for loc in [Location::Attention, Location::Output] {
                if self.p.adapter.at(l, loc) && self.p.adapter.fusion.is_none() {
                    // Each adapter LayerNorm's unit gamma and zero beta.
                    let norms = self.p.adapter.options.ln_before as u64 + self.p.adapter.options.ln_after as u64;
                    for _ in 0..2 * norms {
                        s.alloc(Cat::Trainable, b4(ud));
                    }
                }
            }
        }
        let head_tensors = [ud * ud, ud, c * ud, c].map(|n| (n, 4));
        let tensors = self.trainable_tensors();
        for copy in 0..4 {
            // weights, gradients, AdamW m and v (frozen adapters: weights and gradients)
            for &(n, copies) in tensors.iter().chain(&head_tensors) {
                if copy < copies {
                    self.s.alloc(Cat::Trainable, b4(n));
                }
            }
        }
        let s = &mut self.s;
        s.alloc(Cat::Trainable, 4); // optimizer: sum of squares
        s.alloc(Cat::Trainable, 4); // optimizer: clip scale
        for _ in 0..crate::gpu::DUMMY_BINDINGS {
            s.alloc(Cat::Working, 16); // dummy bindings
        }
    }

    /// Inputs, layer 0 input, then the lookup (streamed tables uploaded for it) into `emb`.
    fn embeddings(&mut self) {
        let (all, s) = (self.all, &mut self.s);
        let td = all.td;
        s.alloc(Cat::Working, 3 * all.tok4);
        s.alloc(Cat::Working, td); // x0
        if !self.resident {
            for n in self.tables {
                s.alloc(Cat::Embeddings, b4(n));
                s.free(Cat::Embeddings, b4(n));
            }
        }
        s.alloc(Cat::Working, td); // emb
        s.free(Cat::Working, td);
        if !self.resident {
            s.sync();
        }
        if self.drops.hidden {
            // The dropped output replaces x0 (freed by the next wait).
            s.alloc(Cat::Working, td);
            s.free(Cat::Working, td);
        }
        if self.p.recompute {
            s.recat(Cat::Working, Cat::Saved, td);
        }
    }

    /// One layer's forward (`Encoder::layer_forward`) over sizes `z`, excluding the FFN output
    /// dense `h2` (`[tokens, hidden]`): (kept bytes, temporary bytes, `h2` kept by the FFN
    /// sub-layer as the adapter's input). Recomputing from a saved `h2` skips `inter` too.
    /// Past the attention, the sizes are `za`'s ([`after_attention`](Self::after_attention)).
    fn layer_fwd_h2(&self, l: usize, z: &Sizes, za: &Sizes, from_saved_h2: bool) -> (u64, u64, bool) {
        let drops = self.drops;
        // Kept: q|k|v (one tensor), probs (before their dropout). Temporary: ctx; with dropout the dropped
        // probabilities' work tensor, and the attention output dense before its dropout (the
        // dropped one is `h` below); with fewer rows after the attention, the gathered residual.
        let mut kept = 3 * z.td + z.probs;
        let mut temp = z.td + when(drops.probs, z.probs) + when(drops.attention_output, za.td);
        if self.head_rows_at(l) {
            temp += za.td;
        }
        let z = za;
        let (k1, t1, h1_kept) = self.site_fwd(l, Location::Attention, z);
        kept += k1 + z.tf; // attention sub-layer, pre
        temp += t1 + z.tf; // inter
        if h1_kept {
            kept += z.td;
        } else {
            temp += z.td;
        }
        let (k2, t2, h2_kept) = self.site_fwd(l, Location::Output, z);
        kept += k2;
        temp += t2;
        if from_saved_h2 {
            temp -= z.tf; // no inter (and the saved h2 is the dropped one)
        } else {
            temp += when(drops.hidden, z.td); // h2 before its dropout
        }
        (kept, temp, h2_kept)
    }

    /// [`layer_fwd_h2`](Self::layer_fwd_h2) with `h2` in kept or temp (computed, not saved).
    fn layer_fwd(&self, l: usize, z: &Sizes, za: &Sizes) -> (u64, u64) {
        let (kept, temp, h2_kept) = self.layer_fwd_h2(l, z, za, false);
        if h2_kept {
            (kept + za.td, temp)
        } else {
            (kept, temp + za.td)
        }
    }

    /// The forward of layer `l` (`Encoder::layers_forward`).
    fn layer_forward(&mut self, l: usize) {
        if self.chunked {
            let td = self.after_attention(l).td; // the layer's output rows
            self.s.alloc(Cat::Working, td); // y
            if self.keep_h2 {
                self.s.alloc(Cat::Saved, td);
            }
            for i in 0..self.chunks.len() {
                let z = self.sizes(self.chunks[i]);
                let za = self.after_attention_of(l, self.chunks[i]);
                let (kept, temp) = self.layer_fwd(l, &z, &za);
                let chunk_in = z.td + z.tok4; // its rows of x, its mask
                self.s.alloc(Cat::Working, chunk_in + kept + temp);
                self.s.free(Cat::Working, chunk_in + kept + temp);
                self.s.sync();
            }
            if l + 1 < self.n_layers {
                self.s.recat(Cat::Working, Cat::Saved, td);
            }
            return;
        }
        let za = self.after_attention(l);
        let (kept, temp, h2_kept) = self.layer_fwd_h2(l, &self.all, &za, false);
        // The layer's output (`za` rows; h2 the same).
        let td = za.td;
        let s = &mut self.s;
        s.alloc(Cat::Working, kept + temp + td);
        s.free(Cat::Working, temp);
        if self.p.recompute && l + 1 < self.n_layers {
            // Only the output (the next layer's input) stays, and h2 with --keep-ffn-output.
            s.free(Cat::Working, kept - td);
            s.recat(Cat::Working, Cat::Saved, td);
            if self.keep_h2 {
                s.recat(Cat::Working, Cat::Saved, td);
            } else {
                s.free(Cat::Working, td);
            }
        } else if self.p.recompute {
            if !h2_kept {
                s.free(Cat::Working, td);
            }
        } else {
            if !h2_kept {
                s.free(Cat::Working, td);
            }
            let kept = kept + if h2_kept { td } else { 0 };
            s.recat(Cat::Working, Cat::Saved, kept);
        }
        if self.syncs {
            s.sync();
        }
    }

    /// Head forward, loss and head backward (over `batch · seq` rows for a tagging head; counted
    /// as a two-layer head, an upper bound for one layer).
    fn head_and_loss(&mut self) {
        let rows = if self.p.per_token_head { self.p.batch * self.p.seq } else { self.p.batch };
        let (bsz, c) = (rows as u64, self.p.labels.max(1) as u64);
        let bd = b4(bsz * self.d as u64);
        // With dropout: cls and hact dropped (new tensors), and dhact and dcls in backward.
        let head_drop = when(self.drops.head, 2 * bd);
        // With `head_rows` the last hidden state is the head's rows: no cls gathered, and its
        // gradient (dcls) is the top layer's dy.
        let dy = self.after_attention(self.n_layers.saturating_sub(1)).td;
        let cls = if self.head_rows { 0 } else { bd };
        let s = &mut self.s;
        for n in [cls, bd, bd, b4(bsz * c), b4(bsz), 4, b4(bsz * c)] {
            s.alloc(Cat::Working, n); // cls, hpre, hact, logits, labels, loss, dlogits
        }
        if head_drop > 0 {
            s.alloc(Cat::Working, head_drop);
        }
        s.alloc(Cat::Working, 3 * bd + head_drop); // dhact, dhpre, dcls
        s.free(Cat::Working, 3 * bd + head_drop);
        s.alloc(Cat::Working, dy); // dhidden = dy
    }

    fn trainable(&self, l: usize) -> bool {
        self.p.adapter.at(l, Location::Attention) || self.p.adapter.at(l, Location::Output)
    }

    /// The backward of one layer (or chunk) allocates this (see `Encoder::layer_backward`):
    /// (bytes, backward stops here). Past the attention, the sizes are `za`'s.
    fn bwd_work(&self, l: usize, z: &Sizes, za: &Sizes, accumulate: bool) -> (u64, bool) {
        let a = self.p.adapter;
        let sums = |loc| if accumulate && a.at(l, loc) { 2 * self.adapter_bytes } else { 0 };
        let (all, z) = (z, za);
        let mut work = 2 * z.td + self.site_bwd(l, Location::Output, z); // dh2, dy1
        work += sums(Location::Output);
        let below = (0..l).any(|k| self.trainable(k));
        if !below && !a.at(l, Location::Attention) {
            return (work, true);
        }
        // dpre (the product's epilogue multiplies by act'), dh1, dx, and dh2 dropped
        work += z.tf + 2 * z.td + self.site_bwd(l, Location::Attention, z);
        work += when(self.drops.hidden, z.td);
        work += sums(Location::Attention);
        if !below {
            return (work, true);
        }
        // dctx, dq|dk|dv (one tensor), scratch; with dropout dh1 dropped and the probabilities' work
        // tensor; with fewer rows, dctx and dx scattered to every row.
        let drops = self.drops;
        work += when(drops.attention_output, z.td) + when(drops.probs, all.probs);
        work += when(self.head_rows_at(l), 2 * all.td);
        (work + z.td + 3 * all.td + all.probs, false)
    }

    /// The backward of layer `l` (`Encoder::layers_backward`): true when backward stops here.
    fn layer_backward(&mut self, l: usize) -> bool {
        if self.chunked {
            return self.layer_backward_chunked(l);
        }
        let (td, keep_h2, recompute, top) = (self.all.td, self.keep_h2, self.p.recompute, l + 1 == self.n_layers);
        let za = self.after_attention(l);
        let (kept, temp) = if keep_h2 && !top {
            let (kept, temp, _) = self.layer_fwd_h2(l, &self.all, &za, true); // h2 is the saved one
            (kept, temp)
        } else {
            self.layer_fwd(l, &self.all, &za)
        };
        let (work, stop) = self.bwd_work(l, &self.all, &za, false);
        let s = &mut self.s;
        let acts = if recompute && !top {
            s.alloc(Cat::Working, kept + temp); // recomputed, then a wait frees the temporaries
            s.free(Cat::Working, temp);
            s.sync();
            kept
        } else {
            if !recompute {
                s.recat(Cat::Saved, Cat::Working, kept);
            }
            kept
        };
        s.alloc(Cat::Working, work);
        if stop {
            return true;
        }
        // Done with this layer: its activations and temporaries, the old dy (`za` rows; dx, the
        // new one, is `td` of `work`) and, with recompute, its input.
        s.free(Cat::Working, acts + work - td + za.td);
        if recompute {
            s.free(Cat::Saved, td);
            if keep_h2 && !top {
                s.free(Cat::Saved, td);
            }
        }
        if self.syncs {
            s.sync();
        }
        false
    }

    /// The backward of layer `l` chunk by chunk: true when backward stops here.
    fn layer_backward_chunked(&mut self, l: usize) -> bool {
        let (td, keep_h2) = (self.all.td, self.keep_h2);
        // The layer's output (dy, and the saved h2) rows: the head's at the top with `head_rows`.
        let out_td = self.after_attention(l).td;
        self.s.alloc(Cat::Working, td); // dx
        let mut stop = false;
        for i in 0..self.chunks.len() {
            let z = self.sizes(self.chunks[i]);
            let za = self.after_attention_of(l, self.chunks[i]);
            // Its rows of x and dy, its mask.
            self.s.alloc(Cat::Working, z.td + za.td + z.tok4);
            // Recomputed; with --keep-ffn-output from its rows of the saved h2 (copied here, then
            // counted as h2 is: kept by the adapter, or a temporary).
            let (kept, temp) = if keep_h2 {
                let (kept, temp, h2_kept) = self.layer_fwd_h2(l, &z, &za, true);
                self.s.alloc(Cat::Working, za.td);
                let (kept, temp) = if h2_kept { (kept + za.td, temp) } else { (kept, temp + za.td) };
                self.s.alloc(Cat::Working, kept + temp - za.td);
                (kept, temp)
            } else {
                let (kept, temp) = self.layer_fwd(l, &z, &za);
                self.s.alloc(Cat::Working, kept + temp);
                (kept, temp)
            };
            self.s.free(Cat::Working, temp + z.td);
            self.s.sync();
            let (work, stops) = self.bwd_work(l, &z, &za, i > 0);
            self.s.alloc(Cat::Working, work);
            stop = stops;
            self.s.free(Cat::Working, kept + work + za.td + z.tok4);
            if i + 1 == self.chunks.len() && !stop {
                // The layer's input (and saved h2) and the old dy, dropped before the last wait.
                self.s.free(Cat::Saved, if keep_h2 { td + out_td } else { td });
                self.s.free(Cat::Working, out_td);
            }
            self.s.sync();
        }
        stop
    }

    /// The plan from what was replayed.
    fn finish(self) -> MemoryPlan {
        let (n_layers, ud, p) = (self.n_layers, self.d as u64, self.p);
        let streamed = if self.resident {
            0
        } else {
            2 * n_layers as u64 * self.layer_bytes + b4(self.tables.iter().sum::<u64>())
        };
        let position_tables = self.tables[1].max(self.tables[2]);
        MemoryPlan {
            precision: p.precision,
            slots: self.slots,
            layers: n_layers,
            recompute: p.recompute,
            keep_ffn_output: self.keep_h2,
            layer_chunk: self.chunk,
            batch: p.batch,
            peak: self.s.peak,
            streamed_per_step: streamed,
            // The largest single tensors: a position table, an FFN activation, attention
            // probabilities, an FFN weight; not the word table, which is uploaded in blocks that
            // each fit one binding (`encoder::EmbeddingTables`).
            largest_tensor: [b4(position_tables), self.all.tf, self.all.probs, b4(ud * ffn_row_stride(self.f) as u64)]
                .into_iter()
                .max()
                .unwrap_or(0),
            largest_weight: b4(position_tables).max(b4(ud * ffn_row_stride(self.f) as u64)),
        }
    }
}
