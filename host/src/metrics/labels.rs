//! The label sets of the metrics, one type per family shape.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::manifest::Name;

/// A label value that costs no allocation to make: a fixed text, or a name
/// shared with the manifest. The label sets every request touches use it,
/// so counting a request copies no strings.
#[derive(Clone, Debug)]
pub enum Text {
    /// A text known at compile time (a status, a result).
    Fixed(&'static str),
    /// A pipeline's, stage's or layer's name, or a copied text.
    Shared(Arc<str>),
}

impl Text {
    /// A copy of `text`, for label values read from elsewhere (the store).
    pub fn copied(text: &str) -> Text {
        Text::Shared(text.into())
    }

    fn as_str(&self) -> &str {
        match self {
            Text::Fixed(text) => text,
            Text::Shared(text) => text,
        }
    }
}

impl From<&'static str> for Text {
    fn from(text: &'static str) -> Text {
        Text::Fixed(text)
    }
}

impl From<&Name> for Text {
    fn from(name: &Name) -> Text {
        Text::Shared(name.shared())
    }
}

// Equal texts are one series whichever way they were made.
impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EncodeLabelValue for Text {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of `strata_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The pipeline.
    pub pipeline: Text,
    /// answered, escalated, rejected or failed.
    pub status: Text,
    /// The deciding stage's layer.
    pub layer: Text,
    /// The deciding stage.
    pub stage: Text,
}

/// Labels with a pipeline and a layer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LayerLabels {
    /// The pipeline.
    pub pipeline: Text,
    /// The layer.
    pub layer: Text,
}

/// Labels with a pipeline and a status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// The pipeline.
    pub pipeline: Text,
    /// The status.
    pub status: Text,
}

/// Labels of a stage.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// The pipeline.
    pub pipeline: Text,
    /// The stage.
    pub stage: Text,
    /// Its layer.
    pub layer: Text,
}

/// Labels of a stage failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The pipeline.
    pub pipeline: String,
    /// The stage.
    pub stage: String,
    /// The kind of failure.
    pub kind: String,
}

/// Labels of a stage-level result (canary, shadow).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageResultLabels {
    /// The pipeline.
    pub pipeline: String,
    /// The stage.
    pub stage: String,
    /// The result.
    pub result: String,
}

/// Labels of a rating.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RatingLabels {
    /// The pipeline.
    pub pipeline: String,
    /// good or bad.
    pub rating: String,
}

/// Labels of a team alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TeamLabels {
    /// The team.
    pub team: String,
}

/// Labels of a pipeline alone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    /// The pipeline.
    pub pipeline: String,
}

/// Labels of a callback delivery attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// delivered, retrying or failed.
    pub result: String,
}

/// Labels of a model tier.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    /// The pipeline.
    pub pipeline: String,
    /// The tier.
    pub tier: String,
}

/// Labels of token counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// The pipeline.
    pub pipeline: String,
    /// The tier.
    pub tier: String,
    /// input or output.
    pub direction: String,
}

/// Labels of a model call's result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The pipeline.
    pub pipeline: String,
    /// The tier.
    pub tier: String,
    /// ok or failed.
    pub result: String,
}

/// Labels of an answer-bank lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// The pipeline.
    pub pipeline: String,
    /// hit or miss.
    pub result: String,
}

/// Labels of a lookup by the model that matched it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeaturesLabels {
    /// The pipeline.
    pub pipeline: String,
    /// embeddings, lexical or lexical_fallback.
    pub features: String,
}

/// Labels of a failure of the embeddings endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The pipeline.
    pub pipeline: String,
    /// timeout, unavailable, rejected or invalid.
    pub reason: String,
}

/// Labels of the cost of requests by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    /// The pipeline.
    pub pipeline: Text,
    /// The deciding layer.
    pub layer: Text,
    /// The outcome.
    pub status: Text,
}

/// Labels of an operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// reload, rollback, promote, rollback_stage, start.
    pub action: String,
    /// applied, unchanged, failed.
    pub result: String,
}

/// Labels of what a host exchanged with its cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// `operation` or `bank_change`.
    pub kind: String,
    /// `published` (this host's, sent) or `received` (another host's, to apply).
    pub direction: String,
}

/// Labels of a burn-rate window.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabels {
    /// The pipeline.
    pub pipeline: String,
    /// The window, e.g. `long:3600s`.
    pub window: String,
}
