//! What the forward keeps for backward: per sub-layer (by kind, so that backward finds every
//! tensor it needs by construction), per layer, and per pass.

use super::super::adapters::{AdapterModule, Placement};
use super::super::fusion::{FusionLayerGpu, FusionModel};
use crate::gpu::GpuTensor;
use crate::kernels::fusion::FusionSaved;

/// The pretrained LayerNorms around an adapter (or AdapterFusion), as its placement has them.
pub(super) struct Around {
    /// `h + x_in`, fed to the pretrained LayerNorm before the adapter (`original_ln_before`).
    pub s1: Option<GpuTensor>,
    /// The adapter's input: `LN(s1)`, or the dense output `h` itself.
    pub hs: GpuTensor,
    /// Input of the final LayerNorm, `out + x_in` (`original_ln_after`).
    pub u: Option<GpuTensor>,
}

/// A sub-layer (attention or FFN output) with a trainable bottleneck adapter.
pub(super) struct AdapterActs<'a> {
    pub module: &'a AdapterModule,
    pub placement: Placement,
    pub around: Around,
    /// The adapter's saved pre-activation (on the matmul path its activation, `act(a)`).
    pub a: GpuTensor,
    /// The pre-activation beside `act(a)`, where the forward kept it (the matmul path of a plain
    /// adapter): the backward does not compute it again.
    pub pre: Option<GpuTensor>,
    /// What an adapter with options keeps besides (`None`: a plain bottleneck).
    pub options: Option<Box<OptionActs>>,
}

/// The inputs of an adapter's option steps, for their gradients (`encoder/adapter.rs`).
pub(super) struct OptionActs {
    /// `ln_before`: the bottleneck's input, `LN_a(hs)`.
    pub xb: Option<GpuTensor>,
    /// A trained scaling: the bottleneck's output before it.
    pub u: Option<GpuTensor>,
    /// `ln_after`: the input of the adapter's LayerNorm after.
    pub v: Option<GpuTensor>,
}

/// A sub-layer output (FFN, or attention) with AdapterFusion over frozen adapters.
pub(super) struct FusionActs<'a> {
    pub fusion: &'a FusionModel,
    pub layer: &'a FusionLayerGpu,
    /// The frozen adapters' modules at this layer, in the fusion's order.
    pub modules: Vec<&'a AdapterModule>,
    pub around: Around,
    pub query: GpuTensor,
    pub residual: GpuTensor,
    /// The adapters' scaled up-projections, `[adapters, tokens, hidden]`.
    pub z: GpuTensor,
    /// Each adapter's saved pre-activation.
    pub a: Vec<GpuTensor>,
    pub saved: FusionSaved,
}

/// Activations one sub-layer keeps for backward, by what sits on it.
pub(super) enum SubActs<'a> {
    /// No adapter: `u = h + x_in`, the input of the pretrained LayerNorm.
    Plain {
        u: GpuTensor,
        out: GpuTensor,
    },
    Adapter {
        acts: AdapterActs<'a>,
        out: GpuTensor,
    },
    Fusion {
        acts: Box<FusionActs<'a>>,
        out: GpuTensor,
    },
}

impl SubActs<'_> {
    /// The sub-layer's output.
    pub fn out(&self) -> &GpuTensor {
        match self {
            SubActs::Plain { out, .. } | SubActs::Adapter { out, .. } | SubActs::Fusion { out, .. } => out,
        }
    }
}

/// One layer's activations.
pub(super) struct LayerActs<'a> {
    /// Q, K and V side by side, `[tokens, 3·hidden]` (the fused projection's output).
    pub qkv: GpuTensor,
    pub probs: GpuTensor,
    pub attn: SubActs<'a>,
    /// The FFN's intermediate pre-activation.
    pub pre: GpuTensor,
    pub ffn: SubActs<'a>,
    /// Everything after the attention ran on the first token of each sequence only (the top
    /// layer under a sequence head): `attn`, `pre` and `ffn` hold `[batch, …]` rows.
    pub head_rows: bool,
}

/// What the forward keeps of every layer for backward.
pub(super) enum Saved<'a> {
    /// Every layer's activations.
    All(Vec<LayerActs<'a>>),
    /// `--recompute`: each layer's input only (its activations are recomputed just before its
    /// backward), and the top layer's activations, which backward needs first.
    /// With `keep_ffn_output`, also each layer's FFN output dense result (`ffn_out`, below the top).
    Inputs { inputs: Vec<GpuTensor>, ffn_out: Vec<GpuTensor>, top: Option<Box<LayerActs<'a>>> },
}
