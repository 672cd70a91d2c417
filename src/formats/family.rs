//! The encoder families that share BERT's post-LayerNorm layer and differ in names and embeddings:
//! BERT, RoBERTa, XLM-RoBERTa, DistilBERT and ELECTRA (the discriminator's encoder).
//!
//! The engine names every tensor as BERT does (`encoder.layer.L.attention.self.query.weight`,
//! `bert.encoder.layer.L.output.adapters.<name>.adapter_up.weight`); [`Family::file_name`] turns
//! such a name into the one a family's files use, as `transformers` (base checkpoints) and the
//! `adapters` library (adapters, fusions) write them:
//!
//! | family | prefix | layer | attention adapter | FFN adapter |
//! |---|---|---|---|---|
//! | BERT | `bert.` | `encoder.layer.L` | `attention.output` | `output` |
//! | RoBERTa, XLM-R | `roberta.` | `encoder.layer.L` | `attention.output` | `output` |
//! | ELECTRA | `electra.` | `encoder.layer.L` | `attention.output` | `output` |
//! | DistilBERT | `distilbert.` | `transformer.layer.L` | `attention_adapters` | `output_adapters` |
//!
//! DistilBERT also renames the layer's tensors (`attention.q_lin`, `k_lin`, `v_lin`, `out_lin`,
//! `sa_layer_norm`, `ffn.lin1`, `ffn.lin2`, `output_layer_norm`).

use serde::{Deserialize, Serialize};

/// One family of BERT-architecture encoders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Family {
    #[default]
    Bert,
    Roberta,
    XlmRoberta,
    DistilBert,
    Electra,
}

/// DistilBERT's names of BERT's per-layer modules (suffix after `encoder.layer.L.` → after
/// `transformer.layer.L.`); the longest BERT suffixes first, as they are matched by prefix.
const DISTILBERT_LAYER: &[(&str, &str)] = &[
    ("attention.self.query.", "attention.q_lin."),
    ("attention.self.key.", "attention.k_lin."),
    ("attention.self.value.", "attention.v_lin."),
    ("attention.output.dense.", "attention.out_lin."),
    ("attention.output.LayerNorm.", "sa_layer_norm."),
    ("attention.output.adapters.", "attention_adapters.adapters."),
    ("attention.output.adapter_fusion_layer.", "attention_adapters.adapter_fusion_layer."),
    ("intermediate.dense.", "ffn.lin1."),
    ("output.dense.", "ffn.lin2."),
    ("output.LayerNorm.", "output_layer_norm."),
    ("output.adapters.", "output_adapters.adapters."),
    ("output.adapter_fusion_layer.", "output_adapters.adapter_fusion_layer."),
];

impl Family {
    pub const ALL: [Family; 5] =
        [Family::Bert, Family::Roberta, Family::XlmRoberta, Family::DistilBert, Family::Electra];

    /// The family of a `config.json` `model_type`.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.model_type() == model_type)
    }

    /// `model_type` as `transformers` writes it.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
            Family::XlmRoberta => "xlm-roberta",
            Family::DistilBert => "distilbert",
            Family::Electra => "electra",
        }
    }

    /// The flexible-head model class of the `adapters` library (`model_class` in saved configs).
    pub fn adapter_model_class(self) -> &'static str {
        match self {
            Family::Bert => "BertAdapterModel",
            Family::Roberta => "RobertaAdapterModel",
            Family::XlmRoberta => "XLMRobertaAdapterModel",
            Family::DistilBert => "DistilBertAdapterModel",
            Family::Electra => "ElectraAdapterModel",
        }
    }

    /// The base model's attribute in task and adapter models (`bert.`, `roberta.`, ...), with the dot.
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert.",
            Family::Roberta | Family::XlmRoberta => "roberta.",
            Family::DistilBert => "distilbert.",
            Family::Electra => "electra.",
        }
    }

    /// The family's name for a tensor the engine names as BERT does. A leading `bert.` becomes
    /// this family's prefix; a name without it stays without one (as `<Family>Model.save_pretrained`
    /// writes base checkpoints). Names the family does not rename come back unchanged.
    pub fn file_name(self, bert_name: &str) -> String {
        let (prefixed, bare) = match bert_name.strip_prefix("bert.") {
            Some(rest) => (true, rest),
            None => (false, bert_name),
        };
        let renamed = match self {
            Family::DistilBert => distilbert_name(bare),
            _ => bare.to_string(),
        };
        if prefixed {
            format!("{}{renamed}", self.prefix())
        } else {
            renamed
        }
    }
}

/// `encoder.layer.L.<bert suffix>` → `transformer.layer.L.<distilbert suffix>`; anything else as is.
fn distilbert_name(bare: &str) -> String {
    let Some(rest) = bare.strip_prefix("encoder.layer.") else {
        return bare.to_string();
    };
    let Some((layer, suffix)) = rest.split_once('.') else {
        return bare.to_string();
    };
    for (bert, distil) in DISTILBERT_LAYER {
        if let Some(tail) = suffix.strip_prefix(bert) {
            return format!("transformer.layer.{layer}.{distil}{tail}");
        }
    }
    format!("transformer.layer.{layer}.{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_each_library_writes_them() {
        let q = "encoder.layer.3.attention.self.query.weight";
        assert_eq!(Family::Bert.file_name(q), q);
        assert_eq!(Family::Roberta.file_name(q), q);
        assert_eq!(Family::DistilBert.file_name(q), "transformer.layer.3.attention.q_lin.weight");
        let a = "bert.encoder.layer.0.attention.output.adapters.task.adapter_up.weight";
        assert_eq!(
            Family::XlmRoberta.file_name(a),
            "roberta.encoder.layer.0.attention.output.adapters.task.adapter_up.weight"
        );
        assert_eq!(
            Family::Electra.file_name(a),
            "electra.encoder.layer.0.attention.output.adapters.task.adapter_up.weight"
        );
        assert_eq!(
            Family::DistilBert.file_name(a),
            "distilbert.transformer.layer.0.attention_adapters.adapters.task.adapter_up.weight"
        );
        let o = "bert.encoder.layer.1.output.adapters.t.adapter_down.0.bias";
        assert_eq!(
            Family::DistilBert.file_name(o),
            "distilbert.transformer.layer.1.output_adapters.adapters.t.adapter_down.0.bias"
        );
        let f = "bert.encoder.layer.1.output.adapter_fusion_layer.a,b.query.weight";
        assert_eq!(
            Family::DistilBert.file_name(f),
            "distilbert.transformer.layer.1.output_adapters.adapter_fusion_layer.a,b.query.weight"
        );
        // (as `DistilBertAdapterModel` names a fusion over Houlsby adapters at the attention output)
        let f = "bert.encoder.layer.0.attention.output.adapter_fusion_layer.a,b.query.weight";
        assert_eq!(
            Family::DistilBert.file_name(f),
            "distilbert.transformer.layer.0.attention_adapters.adapter_fusion_layer.a,b.query.weight"
        );
        for (bert, distil) in [
            ("output.LayerNorm.bias", "output_layer_norm.bias"),
            ("output.dense.weight", "ffn.lin2.weight"),
            ("intermediate.dense.bias", "ffn.lin1.bias"),
            ("attention.output.LayerNorm.weight", "sa_layer_norm.weight"),
            ("attention.output.dense.bias", "attention.out_lin.bias"),
        ] {
            assert_eq!(
                Family::DistilBert.file_name(&format!("encoder.layer.0.{bert}")),
                format!("transformer.layer.0.{distil}")
            );
        }
        assert_eq!(
            Family::DistilBert.file_name("embeddings.word_embeddings.weight"),
            "embeddings.word_embeddings.weight"
        );
        assert_eq!(Family::DistilBert.file_name("heads.x.1.weight"), "heads.x.1.weight");
    }

    #[test]
    fn model_types_round_trip() {
        for f in Family::ALL {
            assert_eq!(Family::from_model_type(f.model_type()), Some(f));
        }
        assert_eq!(Family::from_model_type("deberta"), None);
    }
}
