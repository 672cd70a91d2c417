//! AdapterHub's tensor names: where an adapter sits in a layer, the tensors of a bottleneck, a
//! head and a fusion, and the full names they are saved under.

use super::bottleneck::{BottleneckConfig, TrainedScaling};
use super::fusion::FusionConfig;
use super::BASE_PREFIX;

/// Where in a layer a bottleneck adapter sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AdapterSite {
    /// After the attention output dense (`mh_adapter`): module `attention.output`.
    Attention,
    /// After the FFN output dense (`output_adapter`): module `output`.
    Output,
}

impl AdapterSite {
    /// The module path inside `encoder.layer.L`.
    pub fn module(self) -> &'static str {
        match self {
            AdapterSite::Attention => "attention.output",
            AdapterSite::Output => "output",
        }
    }
}

/// The four tensors of one bottleneck.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BottleneckParam {
    /// `adapter_down.0.weight`, `[bottleneck, hidden]`
    DownWeight,
    /// `adapter_down.0.bias`, `[bottleneck]`
    DownBias,
    /// `adapter_up.weight`, `[hidden, bottleneck]`
    UpWeight,
    /// `adapter_up.bias`, `[hidden]`
    UpBias,
}

impl BottleneckParam {
    pub const ALL: [BottleneckParam; 4] =
        [BottleneckParam::DownWeight, BottleneckParam::DownBias, BottleneckParam::UpWeight, BottleneckParam::UpBias];

    pub fn suffix(self) -> &'static str {
        match self {
            BottleneckParam::DownWeight => "adapter_down.0.weight",
            BottleneckParam::DownBias => "adapter_down.0.bias",
            BottleneckParam::UpWeight => "adapter_up.weight",
            BottleneckParam::UpBias => "adapter_up.bias",
        }
    }

    /// The suffix in an adapter with `ln_before`, whose LayerNorm is `adapter_down.0` (the
    /// library's `nn.Sequential`), moving the down-projection to `adapter_down.1`.
    pub fn suffix_in(self, ln_before: bool) -> &'static str {
        match (self, ln_before) {
            (BottleneckParam::DownWeight, true) => "adapter_down.1.weight",
            (BottleneckParam::DownBias, true) => "adapter_down.1.bias",
            _ => self.suffix(),
        }
    }

    pub fn shape(self, hidden: usize, bottleneck: usize) -> Vec<usize> {
        match self {
            BottleneckParam::DownWeight => vec![bottleneck, hidden],
            BottleneckParam::DownBias => vec![bottleneck],
            BottleneckParam::UpWeight => vec![hidden, bottleneck],
            BottleneckParam::UpBias => vec![hidden],
        }
    }
}

/// The tensors an adapter module has beyond its bottleneck, by its options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptionParam {
    /// `ln_before`: `adapter_norm_before.weight`, `[hidden]` (the library saves the same tensor
    /// again as `adapter_down.0.weight`: [`Self::alias`]).
    NormBeforeWeight,
    NormBeforeBias,
    /// `ln_after`: `adapter_norm_after.weight`, `[hidden]`.
    NormAfterWeight,
    NormAfterBias,
    /// `scaling: "learned"` (`[1]`) or `"channel"` (`[hidden]`): `scaling`.
    Scaling,
}

impl OptionParam {
    pub fn suffix(self) -> &'static str {
        match self {
            OptionParam::NormBeforeWeight => "adapter_norm_before.weight",
            OptionParam::NormBeforeBias => "adapter_norm_before.bias",
            OptionParam::NormAfterWeight => "adapter_norm_after.weight",
            OptionParam::NormAfterBias => "adapter_norm_after.bias",
            OptionParam::Scaling => "scaling",
        }
    }

    /// The second name the library saves the tensor under (the LayerNorm before the adapter is
    /// also `adapter_down.0`).
    pub fn alias(self) -> Option<&'static str> {
        match self {
            OptionParam::NormBeforeWeight => Some("adapter_down.0.weight"),
            OptionParam::NormBeforeBias => Some("adapter_down.0.bias"),
            _ => None,
        }
    }

    /// The tensors a config's options imply, in a fixed order.
    pub fn for_config(c: &BottleneckConfig) -> Vec<OptionParam> {
        let mut v = vec![];
        if c.ln_before {
            v.extend([OptionParam::NormBeforeWeight, OptionParam::NormBeforeBias]);
        }
        if c.ln_after {
            v.extend([OptionParam::NormAfterWeight, OptionParam::NormAfterBias]);
        }
        if c.trained_scaling.is_some() {
            v.push(OptionParam::Scaling);
        }
        v
    }

    pub fn shape(self, hidden: usize, c: &BottleneckConfig) -> Vec<usize> {
        match (self, c.trained_scaling) {
            (OptionParam::Scaling, Some(TrainedScaling::Learned)) => vec![1],
            _ => vec![hidden],
        }
    }
}

/// AdapterHub's name of a tensor of an adapter module with this `suffix`.
pub fn adapter_tensor_name(adapter: &str, layer: usize, site: AdapterSite, suffix: &str) -> String {
    format!("{BASE_PREFIX}encoder.layer.{layer}.{}.adapters.{adapter}.{suffix}", site.module())
}

/// AdapterHub's name of one adapter tensor, e.g.
/// `bert.encoder.layer.0.output.adapters.task.adapter_down.0.weight`.
pub fn adapter_param_name(adapter: &str, layer: usize, site: AdapterSite, param: BottleneckParam) -> String {
    format!("{BASE_PREFIX}encoder.layer.{layer}.{}.adapters.{adapter}.{}", site.module(), param.suffix())
}

/// `heads.<name>.<index>.<weight|bias>`.
pub fn head_param_name(head: &str, index: usize, param: &str) -> String {
    format!("heads.{head}.{index}.{param}")
}

/// The tensors of one fusion projection kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FusionParam {
    QueryWeight,
    QueryBias,
    KeyWeight,
    KeyBias,
    /// The value projection has no bias in AdapterHub (`nn.Linear(h, h, bias=False)`).
    ValueWeight,
}

impl FusionParam {
    pub fn suffix(self) -> &'static str {
        match self {
            FusionParam::QueryWeight => "query.weight",
            FusionParam::QueryBias => "query.bias",
            FusionParam::KeyWeight => "key.weight",
            FusionParam::KeyBias => "key.bias",
            FusionParam::ValueWeight => "value.weight",
        }
    }

    pub fn shape(self, hidden: usize) -> Vec<usize> {
        match self {
            FusionParam::QueryBias | FusionParam::KeyBias => vec![hidden],
            _ => vec![hidden, hidden],
        }
    }

    /// The params a config implies, in a fixed order.
    pub fn for_config(c: &FusionConfig) -> Vec<FusionParam> {
        let mut v = vec![];
        if c.query {
            v.extend([FusionParam::QueryWeight, FusionParam::QueryBias]);
        }
        if c.key {
            v.extend([FusionParam::KeyWeight, FusionParam::KeyBias]);
        }
        if c.value {
            v.push(FusionParam::ValueWeight);
        }
        v
    }
}

/// `bert.encoder.layer.L.output.adapter_fusion_layer.<fusion name>.<param>` (the fusion layer at
/// the FFN output); the fusion name is the adapter names joined by commas (`src1,src2,src3`).
pub fn fusion_param_name(fusion: &str, layer: usize, param: FusionParam) -> String {
    fusion_site_param_name(fusion, layer, AdapterSite::Output, param)
}

/// A fusion tensor at `site`: the library puts a fusion layer wherever all fused adapters have a
/// module (`attention.output.adapter_fusion_layer.…` too, over Houlsby / `double_seq_bn` ones).
pub fn fusion_site_param_name(fusion: &str, layer: usize, site: AdapterSite, param: FusionParam) -> String {
    format!("{BASE_PREFIX}encoder.layer.{layer}.{}.adapter_fusion_layer.{fusion}.{}", site.module(), param.suffix())
}
