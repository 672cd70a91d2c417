//! Plain types shared by several layers (kernels, formats, model), kept in the lowest layer so no
//! layer imports another sideways for them. No GPU, no I/O.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Element-wise non-linearity. Ids match `common.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Exact (erf) GELU, PyTorch `nn.GELU()`.
    #[default]
    Gelu,
    Relu,
    /// x·sigmoid(x) (AdapterHub calls it "swish").
    Silu,
    Identity,
    Tanh,
}

impl Activation {
    pub const ALL: [Activation; 5] =
        [Activation::Gelu, Activation::Relu, Activation::Silu, Activation::Identity, Activation::Tanh];

    pub fn id(self) -> f64 {
        match self {
            Activation::Gelu => 0.0,
            Activation::Relu => 1.0,
            Activation::Silu => 2.0,
            Activation::Identity => 3.0,
            Activation::Tanh => 4.0,
        }
    }

    /// Parses AdapterHub's `non_linearity` / HF's `hidden_act` names.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "gelu" | "gelu_orig" | "gelu_python" => Activation::Gelu,
            "relu" => Activation::Relu,
            "swish" | "silu" => Activation::Silu,
            "linear" | "identity" => Activation::Identity,
            "tanh" => Activation::Tanh,
            other => bail!("unsupported activation {other:?} (supported: gelu, relu, swish/silu, tanh, linear)"),
        })
    }

    /// The name AdapterHub writes in `non_linearity`.
    pub fn adapterhub_name(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::Relu => "relu",
            Activation::Silu => "swish",
            Activation::Identity => "linear",
            Activation::Tanh => "tanh",
        }
    }
}

/// How the frozen encoder's weight matrices are stored on the GPU (`--precision`). Products
/// always accumulate in f32 over f32 activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WeightPrecision {
    /// As the checkpoint holds them (f32).
    #[default]
    F32,
    /// The four matrices of each layer (Q|K|V, attention output, FFN in and out) rounded to f16
    /// (half the bytes on the GPU and half the bytes streamed), widened to f32 exactly just before
    /// the layer's products; biases, LayerNorms and embeddings stay f32.
    F16,
}

impl std::fmt::Display for WeightPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightPrecision::F32 => "f32",
            WeightPrecision::F16 => "f16",
        })
    }
}
