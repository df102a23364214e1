//! Prometheus metrics, served at `GET /metrics` on the admin listener.
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `strata_requests_total` | pipeline, status, layer, stage | finished pipeline runs, by outcome and the stage and layer that decided (`-` for the fallthrough) |
//! | `strata_answers_total` | pipeline, layer | requests that reached a final answer, human resolutions included: divided by requests, the completion rate |
//! | `strata_time_to_value_seconds` | pipeline, layer | from request to final answer, a human's included |
//! | `strata_request_duration_seconds` | pipeline, status | time to respond to the client |
//! | `strata_stage_duration_seconds` | pipeline, stage, layer | one stage invocation |
//! | `strata_request_phase_seconds` | phase | a real-time request's time inside the host: receive, handoff, run, keep, respond ([`phases`]) |
//! | `strata_stage_failures_total` | pipeline, stage, kind | trap, timeout, memory, fuel, output_too_large, invalid_outcome, refused_import |
//! | `strata_canary_requests_total` | pipeline, stage, result | requests a canary served, ok or failed |
//! | `strata_shadow_runs_total` | pipeline, stage, same | shadow comparisons, agreeing or not |
//! | `strata_operations_total` | action, result | reloads, rollbacks, promotions, by result |
//! | `strata_generation` | | the serving generation |
//! | `strata_slo_burn_rate` | pipeline, window | error-budget burn rate per alert window (`long:3600s`, `short:300s`, ...) |
//! | `strata_slo_alert_firing` | pipeline, window | 1 when both windows of an alert burn past its threshold |
//! | `strata_cache_lookups_total` | pipeline, result | answer-bank hits and misses |
//! | `strata_pattern_lookups_total` | pipeline, result | `lookup` by similarity: trusted, untrusted (refused: under its calibrated threshold), no_match |
//! | `strata_pattern_lookup_features_total` | pipeline, features | `lookup` by the model that matched: embeddings, lexical (no embedded model), lexical_fallback (embedding the question failed) |
//! | `strata_embeddings_failures_total` | pipeline, reason | questions the embeddings endpoint failed to embed at lookup: timeout, unavailable, rejected, invalid |
//! | `strata_answer_bank_estimated_precision` | pipeline | precision of trusted matches, estimated by cross-validation on the approved examples |
//! | `strata_answer_bank_estimated_coverage` | pipeline | share of held-out examples the calibrated threshold trusts |
//! | `strata_answer_bank_examples` | pipeline | approved example questions |
//! | `strata_model_calls_total` | pipeline, tier, result | provider attempts |
//! | `strata_model_tokens_total` | pipeline, tier, direction | tokens providers reported, input and output |
//! | `strata_model_cost_usd_total` | pipeline, tier | cost from reported usage and tier prices |
//! | `strata_request_cost_usd_total` | pipeline, layer, status | cost of finished requests: over `strata_answers_total`, the cost per answered request |
//! | `strata_ratings_total` | pipeline, rating | feedback ratings |
//! | `strata_rated_cost_usd_total` | pipeline, rating | cost of rated requests: over good ratings, the cost per good outcome |

mod labels;
mod phases;
mod stages;

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

pub use self::labels::Text;
use self::labels::{
    CallLabels, ClusterLabels, CostLabels, DeliveryLabels, FailureLabels, FeaturesLabels,
    LayerLabels, LookupLabels, OperationLabels, PipelineLabels, RatingLabels, ReasonLabels,
    RequestLabels, StageLabels, StageResultLabels, StatusLabels, TeamLabels, TierLabels,
    TokenLabels, WindowLabels,
};
use self::phases::Phases;
pub use self::phases::{Laps, Phase};
use crate::manifest::Name;
use crate::pipeline::Execution;

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs to about 100 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 22))
}

fn time_to_value_histogram() -> Histogram {
    // 1 ms to about 2.3 days: human answers take hours.
    Histogram::new(exponential_buckets(0.001, 3.0, 20))
}

/// Every metric the host keeps.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    answers: Family<LayerLabels, Counter>,
    time_to_value: Histograms<LayerLabels>,
    request_duration: Histograms<StatusLabels>,
    stage_duration: Histograms<StageLabels>,
    phases: Phases,
    stage_failures: Family<FailureLabels, Counter>,
    canary: Family<StageResultLabels, Counter>,
    shadow: Family<StageResultLabels, Counter>,
    operations: Family<OperationLabels, Counter>,
    generation: Gauge,
    shared_connected: Gauge,
    cluster: Family<ClusterLabels, Counter>,
    burn_rate: Family<WindowLabels, Gauge<f64, AtomicU64>>,
    alert_firing: Family<WindowLabels, Gauge>,
    ratings: Family<RatingLabels, Counter>,
    rated_cost: Family<RatingLabels, Counter<f64, AtomicU64>>,
    model_calls: Family<CallLabels, Counter>,
    model_tokens: Family<TokenLabels, Counter>,
    model_cost: Family<TierLabels, Counter<f64, AtomicU64>>,
    request_cost: Family<CostLabels, Counter<f64, AtomicU64>>,
    cache_lookups: Family<LookupLabels, Counter>,
    pattern_lookups: Family<LookupLabels, Counter>,
    pattern_features: Family<FeaturesLabels, Counter>,
    embedding_failures: Family<ReasonLabels, Counter>,
    bank_precision: Family<PipelineLabels, Gauge<f64, AtomicU64>>,
    bank_coverage: Family<PipelineLabels, Gauge<f64, AtomicU64>>,
    bank_examples: Family<PipelineLabels, Gauge>,
    async_pending: Gauge,
    async_refused: Family<PipelineLabels, Counter>,
    team_requests: Family<TeamLabels, Counter>,
    team_cost: Family<TeamLabels, Counter<f64, AtomicU64>>,
    callback_deliveries: Family<DeliveryLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("strata");
        let requests = Family::default();
        registry.register("requests", "Finished pipeline runs", requests.clone());
        let answers = Family::default();
        registry.register(
            "answers",
            "Requests that reached a final answer, human resolutions included",
            answers.clone(),
        );
        let time_to_value: Histograms<LayerLabels> =
            Family::new_with_constructor(time_to_value_histogram);
        registry.register_with_unit(
            "time_to_value",
            "From request to final answer, a human's included",
            Unit::Seconds,
            time_to_value.clone(),
        );
        let request_duration: Histograms<StatusLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time to respond to the client",
            Unit::Seconds,
            request_duration.clone(),
        );
        let stage_duration: Histograms<StageLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "stage_duration",
            "One stage invocation, instantiation included",
            Unit::Seconds,
            stage_duration.clone(),
        );
        let phases = Phases::register(&mut registry);
        let stage_failures = Family::default();
        registry.register(
            "stage_failures",
            "Stage failures by kind",
            stage_failures.clone(),
        );
        let canary = Family::default();
        registry.register(
            "canary_requests",
            "Requests served by canaries",
            canary.clone(),
        );
        let shadow = Family::default();
        registry.register("shadow_runs", "Shadow comparisons", shadow.clone());
        let operations = Family::default();
        registry.register(
            "operations",
            "Reloads, rollbacks and rollouts, by result",
            operations.clone(),
        );
        let generation = Gauge::default();
        registry.register("generation", "The serving generation", generation.clone());
        let cluster = Family::default();
        registry.register(
            "cluster_messages",
            "Operations and answer-bank changes this host published to its cluster or received from it",
            cluster.clone(),
        );
        let shared_connected = Gauge::default();
        registry.register(
            "shared_connected",
            "1 while the host reaches the Redis server of [shared], 0 while it does not",
            shared_connected.clone(),
        );
        let burn_rate = Family::default();
        registry.register(
            "slo_burn_rate",
            "Error-budget burn rate per alert window",
            burn_rate.clone(),
        );
        let alert_firing = Family::default();
        registry.register(
            "slo_alert_firing",
            "1 when both windows of a burn-rate alert are past its threshold",
            alert_firing.clone(),
        );
        let ratings = Family::default();
        registry.register("ratings", "Feedback ratings", ratings.clone());
        let rated_cost = Family::default();
        registry.register_with_unit(
            "rated_cost",
            "Model cost of rated requests, by rating: divided by the good ratings, the cost per good outcome",
            Unit::Other("usd".to_owned()),
            rated_cost.clone(),
        );
        let model_calls = Family::default();
        registry.register(
            "model_calls",
            "Model tier calls (retries included)",
            model_calls.clone(),
        );
        let model_tokens = Family::default();
        registry.register(
            "model_tokens",
            "Tokens reported by providers",
            model_tokens.clone(),
        );
        let model_cost = Family::default();
        registry.register_with_unit(
            "model_cost",
            "Model cost from reported usage and tier prices",
            Unit::Other("usd".to_owned()),
            model_cost.clone(),
        );
        let request_cost = Family::default();
        registry.register_with_unit(
            "request_cost",
            "Model cost of finished requests, by deciding layer and outcome: divided by the answers, the cost per answered request",
            Unit::Other("usd".to_owned()),
            request_cost.clone(),
        );
        let cache_lookups = Family::default();
        registry.register(
            "cache_lookups",
            "Answer-bank lookups",
            cache_lookups.clone(),
        );
        let pattern_lookups = Family::default();
        registry.register(
            "pattern_lookups",
            "Answer-bank lookups by similarity, by result",
            pattern_lookups.clone(),
        );
        let pattern_features = Family::default();
        registry.register(
            "pattern_lookup_features",
            "Answer-bank lookups by similarity, by the model that matched them",
            pattern_features.clone(),
        );
        let embedding_failures = Family::default();
        registry.register(
            "embeddings_failures",
            "Questions the embeddings endpoint failed to embed at lookup, by reason",
            embedding_failures.clone(),
        );
        let bank_precision = Family::default();
        registry.register(
            "answer_bank_estimated_precision",
            "Estimated precision of trusted answer-bank matches",
            bank_precision.clone(),
        );
        let bank_coverage = Family::default();
        registry.register(
            "answer_bank_estimated_coverage",
            "Estimated share of questions the answer bank trusts",
            bank_coverage.clone(),
        );
        let bank_examples = Family::default();
        registry.register(
            "answer_bank_examples",
            "Approved example questions in the answer bank",
            bank_examples.clone(),
        );
        let async_pending = Gauge::default();
        registry.register(
            "async_pending",
            "Asynchronous requests accepted and not yet completed",
            async_pending.clone(),
        );
        let async_refused = Family::default();
        registry.register(
            "async_refused",
            "Asynchronous requests refused with 429 because the queue was full",
            async_refused.clone(),
        );
        let team_requests = Family::default();
        registry.register(
            "team_requests",
            "Requests completed for each team (`[teams.NAME]`)",
            team_requests.clone(),
        );
        let team_cost: Family<TeamLabels, Counter<f64, AtomicU64>> = Family::default();
        registry.register_with_unit(
            "team_cost",
            "Model spend of each team's requests",
            Unit::Other("usd".to_owned()),
            team_cost.clone(),
        );
        let callback_deliveries = Family::default();
        registry.register(
            "callback_deliveries",
            "Callback delivery attempts, by what came of them",
            callback_deliveries.clone(),
        );
        Metrics {
            async_pending,
            async_refused,
            team_requests,
            team_cost,
            callback_deliveries,
            ratings,
            rated_cost,
            model_calls,
            model_tokens,
            model_cost,
            request_cost,
            cache_lookups,
            pattern_lookups,
            pattern_features,
            embedding_failures,
            bank_precision,
            bank_coverage,
            bank_examples,
            registry,
            requests,
            answers,
            time_to_value,
            request_duration,
            stage_duration,
            phases,
            stage_failures,
            canary,
            shadow,
            operations,
            generation,
            shared_connected,
            cluster,
            burn_rate,
            alert_firing,
        }
    }

    /// Set the answer bank's calibrated estimates for `pipeline`.
    pub fn answer_bank(&self, pipeline: &str, stats: &strata_patterns::Stats) {
        let labels = PipelineLabels {
            pipeline: pipeline.to_owned(),
        };
        self.bank_precision
            .get_or_create(&labels)
            .set(stats.classifier.precision);
        self.bank_coverage
            .get_or_create(&labels)
            .set(stats.classifier.coverage);
        self.bank_examples
            .get_or_create(&labels)
            .set(stats.examples as i64);
    }

    /// Count a finished pipeline run that took `seconds`. For a
    /// `background` (asynchronous) run the client did not wait: no response
    /// time is observed, and its time to value, which includes its wait in
    /// the queue, is counted by [`Metrics::answered`] when it completes.
    pub fn request_finished(
        &self,
        pipeline: &Name,
        execution: &Execution,
        seconds: f64,
        background: bool,
    ) {
        let name = Text::from(pipeline);
        let status = Text::from(execution.verdict.status().as_str());
        let by = execution.verdict.decided_by();
        let (stage, layer) = by.map_or((Text::from("-"), Text::from("-")), |b| {
            (Text::from(&b.stage), Text::from(&b.layer))
        });
        self.requests
            .get_or_create(&RequestLabels {
                pipeline: name.clone(),
                status: status.clone(),
                layer: layer.clone(),
                stage,
            })
            .inc();
        if !background {
            self.request_duration
                .get_or_create(&StatusLabels {
                    pipeline: name.clone(),
                    status: status.clone(),
                })
                .observe(seconds);
            if matches!(execution.verdict, crate::pipeline::Verdict::Answered { .. }) {
                self.answered(name.clone(), layer.clone(), seconds);
            }
        }
        let cost = execution.cost_usd();
        self.request_cost
            .get_or_create(&CostLabels {
                pipeline: name.clone(),
                layer,
                status,
            })
            .inc_by(cost);
        for run in &execution.trace {
            self.stage_ran(pipeline, &name, run);
        }
    }

    /// Observe a real-time request's `phase` (see [`phases`]).
    pub fn phase(&self, phase: Phase, elapsed: std::time::Duration) {
        self.phases.observe(phase, elapsed);
    }

    /// Observe the phases a real-time request's run timed: from `handed` to
    /// its start and from its end to `resumed` (the handler), the run and
    /// the keeping.
    pub fn laps(&self, handed: std::time::Instant, laps: Laps, resumed: std::time::Instant) {
        let handoff = laps.started.saturating_duration_since(handed)
            + resumed.saturating_duration_since(laps.kept);
        self.phases.observe(Phase::Handoff, handoff);
        self.phases
            .observe(Phase::Run, laps.ran.saturating_duration_since(laps.started));
        self.phases
            .observe(Phase::Keep, laps.kept.saturating_duration_since(laps.ran));
    }

    /// Count a final answer `seconds` after its request arrived.
    pub fn answered(&self, pipeline: Text, layer: Text, seconds: f64) {
        let labels = LayerLabels { pipeline, layer };
        self.answers.get_or_create(&labels).inc();
        self.time_to_value.get_or_create(&labels).observe(seconds);
    }

    /// Count a stage failure of `kind`.
    pub fn stage_failure(&self, pipeline: &str, stage: &str, kind: &str) {
        self.stage_failures
            .get_or_create(&FailureLabels {
                pipeline: pipeline.to_owned(),
                stage: stage.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Count a request a canary served.
    pub fn canary_served(&self, pipeline: &str, stage: &str, failed: bool) {
        self.canary
            .get_or_create(&StageResultLabels {
                pipeline: pipeline.to_owned(),
                stage: stage.to_owned(),
                result: if failed { "failed" } else { "ok" }.to_owned(),
            })
            .inc();
    }

    /// Count a shadow comparison.
    pub fn shadow_compared(&self, pipeline: &str, stage: &str, same: bool) {
        self.shadow
            .get_or_create(&StageResultLabels {
                pipeline: pipeline.to_owned(),
                stage: stage.to_owned(),
                result: if same { "same" } else { "different" }.to_owned(),
            })
            .inc();
    }

    /// Count an operation and note the serving generation.
    pub fn operation(&self, action: &str, result: &str, generation: u64) {
        self.operations
            .get_or_create(&OperationLabels {
                action: action.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        self.generation.set(generation as i64);
    }

    /// Note whether the host reaches `[shared] redis`.
    pub fn shared_connected(&self, connected: bool) {
        self.shared_connected.set(i64::from(connected));
    }

    /// Count `count` cluster messages of `kind` in `direction`.
    pub fn cluster_messages(&self, kind: &str, direction: &str, count: u64) {
        self.cluster
            .get_or_create(&ClusterLabels {
                kind: kind.to_owned(),
                direction: direction.to_owned(),
            })
            .inc_by(count);
    }

    /// Set a burn-rate window's gauges (done just before each scrape).
    pub fn burn_rate(&self, pipeline: &str, window: String, rate: f64) {
        self.burn_rate
            .get_or_create(&WindowLabels {
                pipeline: pipeline.to_owned(),
                window,
            })
            .set(rate);
    }

    /// Set whether an alert is firing.
    pub fn alert_firing(&self, pipeline: &str, window: String, firing: bool) {
        self.alert_firing
            .get_or_create(&WindowLabels {
                pipeline: pipeline.to_owned(),
                window,
            })
            .set(i64::from(firing));
    }

    /// Count a rating, with the cost of the rated request.
    pub fn rated(&self, pipeline: &str, rating: &str, cost_usd: f64) {
        let labels = RatingLabels {
            pipeline: pipeline.to_owned(),
            rating: rating.to_owned(),
        };
        self.ratings.get_or_create(&labels).inc();
        self.rated_cost.get_or_create(&labels).inc_by(cost_usd);
    }

    /// Note how many asynchronous requests are pending (just before each
    /// scrape).
    pub fn async_pending(&self, pending: usize) {
        self.async_pending.set(pending as i64);
    }

    /// Count a completed request of `team`, and its model spend.
    pub fn team_request(&self, team: &str, cost_usd: f64) {
        let labels = TeamLabels {
            team: team.to_owned(),
        };
        self.team_requests.get_or_create(&labels).inc();
        self.team_cost.get_or_create(&labels).inc_by(cost_usd);
    }

    /// Count an asynchronous request refused for a full queue.
    pub fn async_refused(&self, pipeline: &str) {
        self.async_refused
            .get_or_create(&PipelineLabels {
                pipeline: pipeline.to_owned(),
            })
            .inc();
    }

    /// Count a callback delivery attempt: `delivered`, `retrying` or `failed`.
    pub fn callback_delivery(&self, result: &str) {
        self.callback_deliveries
            .get_or_create(&DeliveryLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
