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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::bank::Banks;
use crate::manifest::{
    AnswerBankSpec, Fallthrough, Manifest, ManifestError, OnError, RecordSpec, RolloutMode, SloSpec,
};
use crate::model::{ModelCall, ModelRouter};
use crate::request::{Outcome, Request};
use crate::runtime::{LoadedStage, LogTag, Runtime, Services, StageFailure};

/// Every pipeline of one manifest, loaded and ready to serve.
pub struct Generation {
    /// Counts up by one with every generation published in this process.
    pub number: u64,
    /// The pipelines, by name.
    pub pipelines: BTreeMap<String, Arc<Pipeline>>,
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
            ModelRouter::new(&manifest.models, runtime.http().clone()).map_err(|message| {
                ManifestError {
                    file: manifest.path.clone(),
                    location: Box::new(crate::manifest::Location {
                        key: Some("models".to_owned()),
                        ..Default::default()
                    }),
                    kind: Box::new(crate::manifest::ManifestErrorKind::Invalid(message)),
                }
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
    pub name: String,
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

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// 64-bit FNV-1a: stable across builds and platforms, unlike std's hasher.
pub(crate) fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The stage (and its layer) that decided a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidedBy {
    /// The stage's name.
    pub stage: String,
    /// The stage's layer.
    pub layer: String,
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
    /// The short status name used by the API and the store.
    pub fn status(&self) -> &'static str {
        match self {
            Verdict::Answered { .. } => "answered",
            Verdict::Escalated { .. } => "escalated",
            Verdict::Rejected { .. } => "rejected",
            Verdict::Failed { .. } => "failed",
        }
    }
}

/// What one stage did with one request.
#[derive(Debug, Clone)]
pub struct StageRun {
    /// The stage.
    pub stage: String,
    /// Its layer.
    pub layer: String,
    /// The digest of the version that ran.
    pub digest: String,
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

/// Where a run through some stages got to.
struct Progress {
    request: Request,
    trace: Vec<StageRun>,
    remember_key: Option<String>,
    recorded: Option<Request>,
    /// `None` when the request passed through every stage run.
    verdict: Option<Verdict>,
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
    pub live: Value,
    /// The candidate's outcome, summarised.
    pub candidate: Value,
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

/// What a run needs besides the pipeline.
#[derive(Clone)]
pub struct RunContext {
    /// The engine.
    pub runtime: Arc<Runtime>,
    /// Who is told about budgets, canaries and shadows.
    pub observer: Arc<dyn Observer>,
    /// Bounds shadow runs in flight; a shadow run that finds no permit is
    /// skipped, so shadows never queue up behind live traffic.
    pub shadow_slots: Arc<Semaphore>,
    /// Every pipeline's answer bank.
    pub banks: Arc<Banks>,
    /// Whether stages may call models (off for golden cases and replays).
    pub models: bool,
    /// Asynchronous requests: model calls may join batches, and runs are
    /// not real-time traffic (no response time, no latency objective).
    pub background: bool,
}

impl RunContext {
    /// A context with shadow runs bounded to `shadow_slots` at a time; 0
    /// runs none (tools that run a pipeline once and exit: nothing would
    /// observe the comparisons).
    pub fn new(
        runtime: Arc<Runtime>,
        observer: Arc<dyn Observer>,
        shadow_slots: usize,
    ) -> RunContext {
        RunContext {
            runtime,
            observer,
            shadow_slots: Arc::new(Semaphore::new(shadow_slots)),
            banks: Arc::new(Banks::default()),
            models: true,
            background: false,
        }
    }

    /// The same context for asynchronous requests: model calls to tiers
    /// that batch may wait to join a batch.
    pub fn batched(mut self) -> RunContext {
        self.background = true;
        self
    }

    /// The same context with model calls turned off: a stage asking for a
    /// model gets "unavailable".
    pub fn without_models(mut self) -> RunContext {
        self.models = false;
        self
    }
}

impl Pipeline {
    /// Run `request` through every stage, as the module documentation says.
    pub async fn run(&self, ctx: &RunContext, generation: u64, request: Request) -> Execution {
        let span = tracing::info_span!(
            "request",
            request_id = %request.id,
            pipeline = %self.name,
            generation,
        );
        let started = Instant::now();
        let execution = self
            .run_stages(ctx, generation, request)
            .instrument(span)
            .await;
        ctx.observer
            .request_finished(self, &execution, started.elapsed(), ctx.background);
        execution
    }

    async fn run_stages(&self, ctx: &RunContext, generation: u64, request: Request) -> Execution {
        let (progress, services) = self
            .advance(ctx, generation, request, 0..self.stages.len())
            .await;
        let verdict = progress
            .verdict
            .unwrap_or_else(|| self.fallthrough_verdict());
        self.finish(
            &services,
            progress.request,
            verdict,
            progress.trace,
            generation,
            (progress.remember_key, progress.recorded),
        )
    }

    /// Run only the stages in `range`, as `strata replay` does: the verdict
    /// one of them reached, or `None` when the request passed through them
    /// all (past the end of the pipeline, the fallthrough applies).
    pub async fn run_range(
        &self,
        ctx: &RunContext,
        generation: u64,
        request: Request,
        range: std::ops::Range<usize>,
    ) -> Option<Verdict> {
        let reaches_end = range.end >= self.stages.len();
        let (progress, _) = self.advance(ctx, generation, request, range).await;
        progress
            .verdict
            .or_else(|| reaches_end.then(|| self.fallthrough_verdict()))
    }

    fn fallthrough_verdict(&self) -> Verdict {
        match self.fallthrough {
            Fallthrough::Escalate => Verdict::Escalated {
                reason: "no stage answered this request".to_owned(),
                draft: None,
                by: None,
            },
            Fallthrough::Reject => Verdict::Rejected {
                code: "unanswered".to_owned(),
                message: "no stage could answer this request".to_owned(),
                by: None,
            },
        }
    }

    async fn advance(
        &self,
        ctx: &RunContext,
        generation: u64,
        request: Request,
        range: std::ops::Range<usize>,
    ) -> (Progress, Services) {
        let mut request = request;
        let mut trace = Vec::with_capacity(self.stages.len());
        let request_id: Arc<str> = request.id.as_str().into();
        let pipeline: Arc<str> = self.name.as_str().into();
        let services = Services {
            bank: Some(ctx.banks.bank(&self.name, &self.answer_bank)),
            models: ctx.models.then(|| self.models.clone()),
            read_only_bank: false,
            batch: ctx.background,
        };
        let mut remember_key = None;
        let mut recorded = None;

        for stage in &self.stages[range] {
            let canary = stage
                .candidate
                .as_ref()
                .filter(|c| c.mode == RolloutMode::Canary && c.selects(&request.id));
            let shadow = stage
                .candidate
                .as_ref()
                .filter(|c| c.mode == RolloutMode::Shadow && c.selects(&request.id));
            let version = canary.map_or(&stage.live, |c| &c.stage);
            let spec = &version.spec;
            let by = DecidedBy {
                stage: spec.name.clone(),
                layer: spec.layer.to_string(),
            };
            let tag = LogTag {
                request_id: request_id.clone(),
                pipeline: pipeline.clone(),
                stage: spec.name.as_str().into(),
                generation,
                digest: version.digest.as_str().into(),
            };
            // The shadow sees exactly what the live version saw.
            let shadow_input = shadow.map(|_| request.clone());

            let started = Instant::now();
            let invocation = ctx.runtime.invoke(version, &request, &tag, &services).await;
            let elapsed = started.elapsed();
            let result = invocation.outcome;
            let effects = invocation.effects;
            if effects.remember_key.is_some() {
                remember_key = effects.remember_key;
            }
            trace.push(StageRun {
                stage: by.stage.clone(),
                layer: by.layer.clone(),
                digest: version.digest.clone(),
                version: if canary.is_some() {
                    "candidate"
                } else {
                    "live"
                },
                result: match &result {
                    Ok(outcome) => outcome.kind(),
                    Err(_) => "failed",
                },
                failure: result.as_ref().err().map(StageFailure::kind),
                elapsed,
                model_calls: effects.model_calls,
                cache_hits: effects.cache_hits,
                cache_misses: effects.cache_misses,
                pattern: effects.pattern,
                pattern_lookups: effects.pattern_lookups,
                pattern_features: effects.pattern_features,
            });
            if let Some(candidate) = canary {
                ctx.observer
                    .candidate_served(self, candidate, result.is_err());
            }
            if let (Some(candidate), Some(input)) = (shadow, shadow_input) {
                let services = Services {
                    read_only_bank: true,
                    ..services.clone()
                };
                let live = summarize(&result);
                self.spawn_shadow(ctx, candidate, &stage.live, input, live, tag, services);
            }

            let verdict = match result {
                Ok(Outcome::Next { input, attributes }) => {
                    request.input = input;
                    request.attributes = attributes;
                    if self.record.as_ref().is_some_and(|r| r.after == by.stage) {
                        recorded = Some(request.clone());
                    }
                    continue;
                }
                Ok(Outcome::Respond { output, confidence }) => {
                    if confidence < self.min_confidence {
                        Verdict::Escalated {
                            reason: format!(
                                "answer confidence {confidence:.2} is below the pipeline's \
                                 minimum of {:.2}",
                                self.min_confidence
                            ),
                            draft: Some(output),
                            by: Some(by),
                        }
                    } else {
                        Verdict::Answered {
                            output,
                            confidence,
                            by,
                        }
                    }
                }
                Ok(Outcome::Escalate { reason, draft }) => Verdict::Escalated {
                    reason,
                    draft,
                    by: Some(by),
                },
                Ok(Outcome::Reject { code, message }) => Verdict::Rejected {
                    code,
                    message,
                    by: Some(by),
                },
                Err(failure) => {
                    tracing::warn!(
                        stage = %by.stage,
                        digest = %version.digest,
                        kind = failure.kind(),
                        detail = failure.detail().unwrap_or(""),
                        on_error = spec.on_error.as_str(),
                        "stage {} {failure}",
                        by.stage
                    );
                    match spec.on_error {
                        // An overloaded host is no fault of the stage's:
                        // skipping it would change the answer, escalating
                        // would flood reviewers. The client retries.
                        _ if matches!(failure, StageFailure::Overloaded { .. }) => {
                            Verdict::Failed { by, failure }
                        }
                        OnError::Skip => continue,
                        OnError::Escalate => Verdict::Escalated {
                            reason: format!("stage \"{}\" {failure}", by.stage),
                            draft: None,
                            by: Some(by),
                        },
                        OnError::Fail => Verdict::Failed { by, failure },
                    }
                }
            };
            return (
                Progress {
                    request,
                    trace,
                    remember_key,
                    recorded,
                    verdict: Some(verdict),
                },
                services,
            );
        }
        (
            Progress {
                request,
                trace,
                remember_key,
                recorded,
                verdict: None,
            },
            services,
        )
    }

    /// Remember the answer in the bank when a stage asked for it and the
    /// answering layer is one the pipeline remembers.
    fn finish(
        &self,
        services: &Services,
        request: Request,
        verdict: Verdict,
        trace: Vec<StageRun>,
        generation: u64,
        (remember_key, recorded): (Option<String>, Option<Request>),
    ) -> Execution {
        if let (Some(bank), Some(key), Verdict::Answered { output, by, .. }) =
            (&services.bank, &remember_key, &verdict)
            && self.answer_bank.remember.contains(&by.layer)
        {
            let answering = trace.iter().rev().find(|run| run.stage == by.stage);
            let source = if answering.is_some_and(|run| !run.model_calls.is_empty()) {
                "model"
            } else {
                "stage"
            };
            bank.put(key.clone(), output.clone(), source, Duration::ZERO);
        }
        Execution {
            request,
            verdict,
            trace,
            generation,
            remember_key,
            recorded,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_shadow(
        &self,
        ctx: &RunContext,
        candidate: &Candidate,
        live: &LoadedStage,
        input: Request,
        live_outcome: Value,
        tag: LogTag,
        services: Services,
    ) {
        let Ok(permit) = ctx.shadow_slots.clone().try_acquire_owned() else {
            tracing::debug!(stage = %tag.stage, "no shadow slot free; shadow run skipped");
            return;
        };
        let runtime = ctx.runtime.clone();
        let observer = ctx.observer.clone();
        let shadow = candidate.stage.clone();
        let pipeline = self.name.clone();
        let live_digest = live.digest.clone();
        tokio::spawn(async move {
            let result = runtime
                .invoke(&shadow, &input, &tag, &services)
                .await
                .outcome;
            drop(permit);
            observer.shadow_compared(ShadowComparison {
                request_id: input.id,
                pipeline,
                stage: shadow.spec.name.clone(),
                live_digest,
                candidate_digest: shadow.digest.clone(),
                live: live_outcome,
                candidate: summarize(&result),
            });
        });
    }
}

/// An outcome as JSON, for shadow comparisons.
fn summarize(result: &Result<Outcome, StageFailure>) -> Value {
    match result {
        Ok(Outcome::Next { input, attributes }) => {
            json!({"kind": "next", "input": input, "attributes": attributes})
        }
        Ok(Outcome::Respond { output, confidence }) => {
            json!({"kind": "respond", "output": output, "confidence": confidence})
        }
        Ok(Outcome::Escalate { reason, draft }) => {
            json!({"kind": "escalate", "reason": reason, "draft": draft})
        }
        Ok(Outcome::Reject { code, message }) => {
            json!({"kind": "reject", "code": code, "message": message})
        }
        Err(failure) => json!({"kind": "failed", "failure": failure.kind()}),
    }
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a(b"", super::FNV_OFFSET), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a", super::FNV_OFFSET), 0xaf63_dc4c_8601_ec8c);
    }
}
