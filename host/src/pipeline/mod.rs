//! Pipelines and generations: the chaining semantics the host guarantees.
//!
//! A [`Generation`] is every pipeline of one manifest, loaded and ready. It is
//! built aside, in full, before anything serves from it, and a request runs
//! start to finish on the generation it started on.
//!
//! [`Pipeline::run`] takes a request through the stages in manifest order
//! (the first stage sees the request first):
//!
//! - `next` passes the rewritten request to the following stage;
//! - `respond` answers, unless its confidence is below the pipeline's
//!   `min_confidence`, in which case the request is escalated with the answer
//!   as the draft;
//! - `escalate` hands the request to a human; `reject` refuses it;
//! - a failed stage follows its `on_error`: `skip` goes on with the request
//!   unchanged, `escalate` hands it to a human, `fail` stops with an error;
//! - a request that passes every stage follows the pipeline's fallthrough.
//!
//! A stage with a candidate version rolls it out: a canary serves the share
//! of requests whose id hashes below its percentage (so a retried request
//! with the same id sees the same version), and a shadow runs on a copy of
//! the request after the live version, off the request's path, its outcome
//! compared and recorded but never returned.

mod run;

pub use self::run::RunContext;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::manifest::{
    AnswerBankSpec, Digest, Fallthrough, Manifest, ManifestError, Name, RecordSpec, RolloutMode,
    SloSpec,
};
use crate::model::{ModelCall, ModelRouter};
use crate::request::Request;
use crate::request::{FNV_OFFSET, fnv1a};
use crate::runtime::{LoadedStage, Runtime, StageFailure};
use crate::states::RequestStatus;

/// Every pipeline of one manifest, loaded and ready to serve.
pub struct Generation {
    /// Counts up by one with every generation published in this process.
    pub number: u64,
    /// The pipelines, by name.
    pub pipelines: BTreeMap<Name, Arc<Pipeline>>,
    /// The manifest it was built from.
    pub manifest: Arc<Manifest>,
    /// When it was built.
    pub loaded_at: SystemTime,
}

impl Generation {
    /// Mark every stage version of this generation served or not (see
    /// [`LoadedStage::set_serving`]).
    pub fn set_serving(&self, serving: bool) {
        for pipeline in self.pipelines.values() {
            for stage in &pipeline.stages {
                stage.live.set_serving(serving);
                if let Some(candidate) = &stage.candidate {
                    candidate.stage.set_serving(serving);
                }
            }
        }
    }

    /// Idle reused instances the generation holds, each with a pool slot.
    pub fn idle_instances(&self) -> usize {
        self.pipelines
            .values()
            .flat_map(|p| p.stages.iter())
            .map(|s| {
                s.live.idle_instances()
                    + s.candidate.as_ref().map_or(0, |c| c.stage.idle_instances())
            })
            .sum()
    }
    /// Load every stage of `manifest` into `runtime`. Nothing is published:
    /// on error the caller still has whatever generation it had.
    pub fn load(
        manifest: Arc<Manifest>,
        runtime: &Runtime,
        number: u64,
    ) -> Result<Generation, ManifestError> {
        let models = Arc::new(
            ModelRouter::new(
                &manifest.models,
                runtime.http().clone(),
                runtime.tasks().clone(),
            )
            .map_err(|message| ManifestError {
                file: manifest.path.clone(),
                location: Box::new(crate::manifest::Location {
                    key: Some("models".to_owned()),
                    ..Default::default()
                }),
                kind: Box::new(crate::manifest::ManifestErrorKind::Invalid(message)),
            })?,
        );
        let mut pipelines = BTreeMap::new();
        for (name, spec) in &manifest.pipelines {
            let mut stages = Vec::with_capacity(spec.stages.len());
            for stage in &spec.stages {
                let live = runtime.load_stage(&manifest.path, name, stage, "plugin")?;
                let candidate = match &stage.candidate {
                    None => None,
                    Some(candidate) => {
                        let mut version = stage.clone();
                        version.plugin = candidate.plugin.clone();
                        version.grants = candidate.grants.clone();
                        version.config = candidate.config.clone();
                        version.candidate = None;
                        Some(Candidate {
                            stage: Arc::new(runtime.load_stage(
                                &manifest.path,
                                name,
                                &version,
                                "candidate.plugin",
                            )?),
                            mode: candidate.mode,
                            percent: candidate.percent,
                            max_burn_rate: candidate.max_burn_rate,
                        })
                    }
                };
                stages.push(Stage {
                    live: Arc::new(live),
                    candidate,
                });
            }
            pipelines.insert(
                name.clone(),
                Arc::new(Pipeline {
                    name: name.clone(),
                    min_confidence: spec.min_confidence,
                    fallthrough: spec.fallthrough,
                    slo: spec.slo.clone(),
                    answer_bank: spec.answer_bank.clone(),
                    record: spec.record.clone(),
                    models: models.clone(),
                    stages,
                }),
            );
        }
        Ok(Generation {
            number,
            pipelines,
            manifest,
            loaded_at: SystemTime::now(),
        })
    }

    /// The same pipelines under a new number: what a rollback to an earlier
    /// generation publishes, so that numbers only ever go up.
    pub fn renumbered(&self, number: u64) -> Generation {
        Generation {
            number,
            pipelines: self.pipelines.clone(),
            manifest: self.manifest.clone(),
            loaded_at: SystemTime::now(),
        }
    }
}

/// A loaded pipeline.
pub struct Pipeline {
    /// Its name.
    pub name: Name,
    /// Answers below this confidence are escalated.
    pub min_confidence: f64,
    /// What happens when no stage answers.
    pub fallthrough: Fallthrough,
    /// Its objective.
    pub slo: SloSpec,
    /// Its answer bank's settings.
    pub answer_bank: AnswerBankSpec,
    /// Traffic recording, when on.
    pub record: Option<RecordSpec>,
    /// The generation's model tiers.
    pub models: Arc<ModelRouter>,
    /// The stages in order.
    pub stages: Vec<Stage>,
}

/// One stage: its live version and, during a rollout, a candidate.
pub struct Stage {
    /// The version serving traffic.
    pub live: Arc<LoadedStage>,
    /// The version being rolled out.
    pub candidate: Option<Candidate>,
}

impl Stage {
    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.live.spec.name
    }
}

/// A candidate version of a stage and how it is rolled out.
pub struct Candidate {
    /// The loaded candidate.
    pub stage: Arc<LoadedStage>,
    /// Canary or shadow.
    pub mode: RolloutMode,
    /// Its share of requests, in percent.
    pub percent: f64,
    /// The burn rate at which a canary is rolled back.
    pub max_burn_rate: f64,
}

impl Candidate {
    /// Whether request `id` is in this candidate's share. The choice depends
    /// only on the id and the stage, so a retried request is routed alike.
    pub fn selects(&self, request_id: &str) -> bool {
        let stage = &self.stage.spec.name;
        let hash = fnv1a(request_id.as_bytes(), fnv1a(stage.as_bytes(), FNV_OFFSET));
        (hash % 10_000) < (self.percent * 100.0).round() as u64
    }
}

/// The stage (and its layer) that decided a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidedBy {
    /// The stage's name.
    pub stage: Name,
    /// The stage's layer.
    pub layer: Name,
}

/// How a request ended.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// A stage answered with enough confidence.
    Answered {
        /// The answer.
        output: String,
        /// Its confidence.
        confidence: f64,
        /// Who answered.
        by: DecidedBy,
    },
    /// A human must answer.
    Escalated {
        /// Why, for the reviewer.
        reason: String,
        /// A proposed answer, if any.
        draft: Option<String>,
        /// The stage that escalated, or `None` for the fallthrough.
        by: Option<DecidedBy>,
    },
    /// The input was refused.
    Rejected {
        /// Machine-readable code.
        code: String,
        /// Explanation for the caller.
        message: String,
        /// The stage that refused, or `None` for the fallthrough.
        by: Option<DecidedBy>,
    },
    /// A stage with `on_error = "fail"` failed.
    Failed {
        /// The stage.
        by: DecidedBy,
        /// What went wrong.
        failure: StageFailure,
    },
}

impl Verdict {
    /// How the request ended, as the API and the store name it.
    pub fn status(&self) -> RequestStatus {
        match self {
            Verdict::Answered { .. } => RequestStatus::Answered,
            Verdict::Escalated { .. } => RequestStatus::Escalated,
            Verdict::Rejected { .. } => RequestStatus::Rejected,
            Verdict::Failed { .. } => RequestStatus::Failed,
        }
    }

    /// The answer, the escalation's reason, the rejection's message, or
    /// what failed.
    pub fn text(&self) -> String {
        match self {
            Verdict::Answered { output, .. } => output.clone(),
            Verdict::Escalated { reason, .. } => reason.clone(),
            Verdict::Rejected { message, .. } => message.clone(),
            Verdict::Failed { by, failure } => format!("stage \"{}\" {failure}", by.stage),
        }
    }

    /// The stage that decided, or `None` when the pipeline's fallthrough
    /// did.
    pub fn decided_by(&self) -> Option<&DecidedBy> {
        match self {
            Verdict::Answered { by, .. } | Verdict::Failed { by, .. } => Some(by),
            Verdict::Escalated { by, .. } | Verdict::Rejected { by, .. } => by.as_ref(),
        }
    }
}

/// What one stage did with one request.
#[derive(Debug, Clone)]
pub struct StageRun {
    /// The stage.
    pub stage: Name,
    /// Its layer.
    pub layer: Name,
    /// The digest of the version that ran.
    pub digest: Digest,
    /// `live`, or `candidate` when a canary served the request.
    pub version: &'static str,
    /// `next`, `respond`, `escalate`, `reject`, or `failed`.
    pub result: &'static str,
    /// The failure kind when `result` is `failed`.
    pub failure: Option<&'static str>,
    /// Wall-clock time of the invocation.
    pub elapsed: Duration,
    /// Model calls the stage made.
    pub model_calls: Vec<ModelCall>,
    /// Answer-bank lookups that found an answer.
    pub cache_hits: u32,
    /// Answer-bank lookups that found nothing.
    pub cache_misses: u32,
    /// The answer-bank pattern a lookup in this stage matched, if any.
    pub pattern: Option<i64>,
    /// Its answer-bank lookups: trusted, untrusted, no match.
    pub pattern_lookups: [u32; 3],
    /// Its answer-bank lookups by the model that matched them.
    pub pattern_features: crate::patterns::PatternFeatures,
}

/// The result of running a pipeline on a request.
#[derive(Debug, Clone)]
pub struct Execution {
    /// The request as the last stage that ran left it. When escalated, this
    /// is what the reviewer sees (after redaction stages have run).
    pub request: Request,
    /// How it ended.
    pub verdict: Verdict,
    /// Every stage that ran, in order.
    pub trace: Vec<StageRun>,
    /// The generation that served it.
    pub generation: u64,
    /// The answer-bank key a stage named for this request's answer.
    pub remember_key: Option<String>,
    /// The request as it left the pipeline's recording point, when the
    /// pipeline records traffic and the request got that far.
    pub recorded: Option<Request>,
}

impl Execution {
    /// What the request's model calls cost, in US dollars.
    pub fn cost_usd(&self) -> f64 {
        self.trace
            .iter()
            .flat_map(|run| &run.model_calls)
            .fold(0.0, |total, call| total + call.cost_usd)
    }

    /// The answer-bank pattern whose answer the request got, if the stage
    /// that answered found it by lookup.
    pub fn pattern(&self) -> Option<i64> {
        let Verdict::Answered { by, .. } = &self.verdict else {
            return None;
        };
        self.trace
            .iter()
            .rev()
            .find(|run| run.stage == by.stage)
            .and_then(|run| run.pattern)
    }

    /// Whether any stage failed on this request (even if the failure was
    /// skipped or escalated).
    pub fn had_failure(&self) -> bool {
        self.trace.iter().any(|run| run.failure.is_some())
    }
}

/// A shadow candidate's outcome next to the live version's.
#[derive(Debug, Clone)]
pub struct ShadowComparison {
    /// The request.
    pub request_id: String,
    /// The pipeline.
    pub pipeline: String,
    /// The stage.
    pub stage: String,
    /// The live version's digest.
    pub live_digest: String,
    /// The candidate's digest.
    pub candidate_digest: String,
    /// The live outcome, summarised.
    pub live: crate::store::ShadowOutcome,
    /// The candidate's outcome, summarised.
    pub candidate: crate::store::ShadowOutcome,
}

impl ShadowComparison {
    /// Whether both versions decided the same thing.
    pub fn same(&self) -> bool {
        self.live == self.candidate
    }
}

/// What a pipeline run reports as it goes: error budgets, canary health and
/// shadow comparisons are kept by whoever implements this.
pub trait Observer: Send + Sync {
    /// A canary candidate served a request, and failed or not.
    fn candidate_served(&self, pipeline: &Pipeline, candidate: &Candidate, failed: bool);
    /// A shadow candidate ran on a copy of a request.
    fn shadow_compared(&self, comparison: ShadowComparison);
    /// A request finished, after `elapsed`; `background` for an
    /// asynchronous one.
    fn request_finished(
        &self,
        pipeline: &Pipeline,
        execution: &Execution,
        elapsed: Duration,
        background: bool,
    );
}

/// An observer that keeps nothing (`strata run`).
pub struct Unobserved;

impl Observer for Unobserved {
    fn candidate_served(&self, _: &Pipeline, _: &Candidate, _: bool) {}
    fn shadow_compared(&self, _: ShadowComparison) {}
    fn request_finished(&self, _: &Pipeline, _: &Execution, _: Duration, _: bool) {}
}
