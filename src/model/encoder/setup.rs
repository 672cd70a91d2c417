//! [`Setup`]: what trains on top of the frozen base, and what it puts at each site of a layer.

use super::super::adapters::{AdapterModule, AdapterSet, Location, Placement};
use super::super::fusion::{FusionLayerGpu, FusionModel};

/// What trains on top of the frozen base.
pub enum Setup<'a> {
    /// The base alone.
    None,
    /// One adapter set (trainable).
    Adapter(&'a AdapterSet),
    /// AdapterFusion over frozen adapters at the FFN output, and at the attention output where the
    /// adapters have modules there (fusion trains).
    Fusion { adapters: Vec<&'a AdapterSet>, fusion: &'a FusionModel },
}

impl<'a> Setup<'a> {
    /// The trainable adapter at `loc` of layer `l`, with its set's placement.
    pub(super) fn adapter(&self, l: usize, loc: Location) -> Option<(&'a AdapterModule, Placement)> {
        match self {
            Setup::Adapter(a) => a.at(l, loc).map(|m| (m, a.placement)),
            _ => None,
        }
    }

    /// AdapterFusion at `loc` of layer `l`: the frozen adapter sets, the fusion and its layer.
    pub(super) fn fusion_at(
        &self,
        l: usize,
        loc: Location,
    ) -> Option<(&[&'a AdapterSet], &'a FusionModel, &'a FusionLayerGpu)> {
        match self {
            Setup::Fusion { adapters, fusion } => fusion.at(l, loc).map(|fl| (adapters.as_slice(), *fusion, fl)),
            _ => None,
        }
    }

    pub(super) fn is_fusion(&self) -> bool {
        matches!(self, Setup::Fusion { .. })
    }

    /// A fusion recording its softmax weights over every real token (evaluation's heat map).
    pub(super) fn records_fusion_weights(&self) -> bool {
        matches!(self, Setup::Fusion { fusion, .. } if fusion.weight_sums.is_some())
    }

    /// Something trains at `loc` of layer `l`.
    pub(super) fn trains(&self, l: usize, loc: Location) -> bool {
        match self {
            Setup::None => false,
            Setup::Adapter(a) => a.at(l, loc).is_some(),
            Setup::Fusion { fusion, .. } => fusion.at(l, loc).is_some(),
        }
    }

    /// Something trains in a layer below `l`.
    pub(super) fn trains_below(&self, l: usize) -> bool {
        (0..l).any(|k| self.trains(k, Location::Attention) || self.trains(k, Location::Output))
    }
}
