//! The products the matmul benchmark times: the encoder's (per model shape group) and 4096³, with
//! each operand's layout.

use crate::gpu::GpuTensor;
use crate::kernels::matmul::View;
use serde::Serialize;

/// One operand layout: element (outer, inner, r, c) at `outer·sb + inner·si + r·sr + c·sc`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Layout {
    pub sr: usize,
    pub sc: usize,
    pub sb: usize,
    pub si: usize,
}

impl Layout {
    /// Row-major `[rows, cols]`.
    pub fn rows(cols: usize) -> Self {
        Self { sr: cols, sc: 1, sb: 0, si: 0 }
    }
    /// The transpose of a row-major `[cols, rows]` matrix.
    pub fn transposed(rows: usize) -> Self {
        Self { sr: 1, sc: rows, sb: 0, si: 0 }
    }
    pub(super) fn at(&self, o: usize, h: usize, r: usize, c: usize) -> usize {
        o * self.sb + h * self.si + r * self.sr + c * self.sc
    }
    pub(super) fn len(&self, outer: usize, inner: usize, rows: usize, cols: usize) -> usize {
        self.at(outer - 1, inner - 1, rows - 1, cols - 1) + 1
    }
    pub(super) fn view<'a>(&self, t: &'a GpuTensor) -> View<'a> {
        View { t, off: 0, s_row: self.sr, s_col: self.sc, s_batch: self.sb }
    }
}

/// One product to time: C (m×n) = A (m×k) · B (k×n) over `outer × inner` matrices.
#[derive(Clone, Debug, Serialize)]
pub struct Shape {
    pub name: String,
    /// `minilm`, `bert` or `square`.
    pub group: &'static str,
    /// How often one encoder layer's forward + activation backward runs this product (0: not an
    /// encoder product).
    pub per_layer: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub outer: usize,
    pub inner: usize,
    pub a: Layout,
    pub b: Layout,
    pub c: Layout,
}

impl Shape {
    pub fn flop(&self) -> f64 {
        2.0 * (self.m * self.n * self.k * self.outer * self.inner) as f64
    }
}

/// Encoder dimensions: tokens `batch × seq`, hidden `d`, FFN `ffn`, `heads` of `d / heads`,
/// adapter bottleneck `bottleneck`.
fn encoder(group: &'static str, batch: usize, seq: usize, d: usize, ffn: usize, heads: usize) -> Vec<Shape> {
    let t = batch * seq;
    let hd = d / heads;
    let bottleneck = 64;
    let shape = |name: String, per_layer, (m, n, k), [a, b, c]: [Layout; 3], (outer, inner)| Shape {
        name,
        group,
        per_layer,
        m,
        n,
        k,
        outer,
        inner,
        a,
        b,
        c,
    };
    let plain = |name, per_layer, mnk, layouts| shape(name, per_layer, mnk, layouts, (1, 1));
    let attn = |name, per_layer, mnk, layouts| shape(name, per_layer, mnk, layouts, (batch, heads));
    let (rows, tr) = (Layout::rows, Layout::transposed);
    // Attention operands: activations [batch·seq, heads·hd] (head h at column h·hd),
    // probabilities [batch, heads, seq, seq].
    let act = Layout { sr: d, sc: 1, sb: seq * d, si: hd };
    let act_t = Layout { sr: 1, sc: d, sb: seq * d, si: hd };
    let probs = Layout { sr: seq, sc: 1, sb: heads * seq * seq, si: seq * seq };
    let probs_t = Layout { sr: 1, sc: seq, sb: heads * seq * seq, si: seq * seq };
    vec![
        // nn.Linear forward: y = x·Wᵀ, W [out, in] read transposed (K contiguous in both).
        plain(format!("{group} x·Wᵀ {d}→{d} (q k v out)"), 4, (t, d, d), [rows(d), tr(d), rows(d)]),
        plain(format!("{group} x·Wᵀ {d}→{ffn} (ffn in)"), 1, (t, ffn, d), [rows(d), tr(d), rows(ffn)]),
        plain(format!("{group} x·Wᵀ {ffn}→{d} (ffn out)"), 1, (t, d, ffn), [rows(ffn), tr(ffn), rows(d)]),
        // Activation backward: dX = dY·W, W row-major (B contiguous along j).
        plain(format!("{group} dY·W {d}→{d}"), 4, (t, d, d), [rows(d), rows(d), rows(d)]),
        plain(format!("{group} dY·W {d}→{ffn} (dinter)"), 1, (t, ffn, d), [rows(d), rows(ffn), rows(ffn)]),
        plain(format!("{group} dY·W {ffn}→{d} (dy1)"), 1, (t, d, ffn), [rows(ffn), rows(d), rows(d)]),
        // Adapter weight gradients: dW = Aᵀ·B over the tokens.
        plain(
            format!("{group} Aᵀ·B {d}×{bottleneck} K={t}"),
            1,
            (d, bottleneck, t),
            [tr(d), rows(bottleneck), rows(bottleneck)],
        ),
        plain(
            format!("{group} Aᵀ·B {bottleneck}×{d} K={t}"),
            1,
            (bottleneck, d, t),
            [tr(bottleneck), rows(d), rows(d)],
        ),
        // Attention, per (batch, head).
        attn(format!("{group} attn Q·Kᵀ (also dP)"), 2, (seq, seq, hd), [act, act_t, probs]),
        attn(format!("{group} attn P·V (also dQ)"), 2, (seq, hd, seq), [probs, act, act]),
        attn(format!("{group} attn dSᵀ·Q (dK, dV)"), 2, (seq, hd, seq), [probs_t, act, act]),
    ]
}

/// The benchmark's products: `minilm` (all-MiniLM-L6-v2 step, 32 × 32 tokens, d 384, FFN 1536, 12
/// heads), `bert` (BERT-base step, 32 × 128 tokens, d 768, FFN 3072, 12 heads), `square`
/// (4096³ as A·B and as x·Wᵀ). `groups` empty or containing `all`: every group.
pub fn shapes(groups: &[String]) -> Vec<Shape> {
    let want = |g: &str| groups.is_empty() || groups.iter().any(|x| x == g || x == "all");
    let mut v = vec![];
    if want("minilm") {
        v.extend(encoder("minilm", 32, 32, 384, 1536, 12));
    }
    if want("bert") {
        v.extend(encoder("bert", 32, 128, 768, 3072, 12));
    }
    if want("square") {
        let n = 4096;
        let sq = |name: &str, b| Shape {
            name: name.to_string(),
            group: "square",
            per_layer: 0,
            m: n,
            n,
            k: n,
            outer: 1,
            inner: 1,
            a: Layout::rows(n),
            b,
            c: Layout::rows(n),
        };
        v.push(sq("square 4096³ A·B", Layout::rows(n)));
        v.push(sq("square 4096³ x·Wᵀ", Layout::transposed(n)));
    }
    v
}
