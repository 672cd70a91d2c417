//! AdapterHub's tensor names: where an adapter sits in a layer, the tensors of a bottleneck, a
//! head and a fusion, and the full names they are saved under.

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

    pub fn shape(self, hidden: usize, bottleneck: usize) -> Vec<usize> {
        match self {
            BottleneckParam::DownWeight => vec![bottleneck, hidden],
            BottleneckParam::DownBias => vec![bottleneck],
            BottleneckParam::UpWeight => vec![hidden, bottleneck],
            BottleneckParam::UpBias => vec![hidden],
        }
    }
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

/// `bert.encoder.layer.L.output.adapter_fusion_layer.<fusion name>.<param>`; the fusion name is
/// the adapter names joined by commas (`src1,src2,src3`).
pub fn fusion_param_name(fusion: &str, layer: usize, param: FusionParam) -> String {
    format!("{BASE_PREFIX}encoder.layer.{layer}.output.adapter_fusion_layer.{fusion}.{}", param.suffix())
}
