//! The label sets of the metrics, one type per family shape.

use prometheus_client::encoding::EncodeLabelSet;

/// Labels of `strata_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The pipeline.
    pub pipeline: String,
    /// answered, escalated, rejected or failed.
    pub status: String,
    /// The deciding stage's layer.
    pub layer: String,
    /// The deciding stage.
    pub stage: String,
}

/// Labels with a pipeline and a layer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LayerLabels {
    /// The pipeline.
    pub pipeline: String,
    /// The layer.
    pub layer: String,
}

/// Labels with a pipeline and a status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// The pipeline.
    pub pipeline: String,
    /// The status.
    pub status: String,
}

/// Labels of a stage.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// The pipeline.
    pub pipeline: String,
    /// The stage.
    pub stage: String,
    /// Its layer.
    pub layer: String,
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
    pub pipeline: String,
    /// The deciding layer.
    pub layer: String,
    /// The outcome.
    pub status: String,
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
