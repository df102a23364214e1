//! Running a request through a pipeline: the chaining semantics
//! (confidence gate, `on_error`, fallthrough), canary routing, shadow runs
//! and the per-stage trace, in the context a run needs ([`RunContext`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::Instrument;

use super::{
    Candidate, DecidedBy, Execution, Observer, Pipeline, ShadowComparison, StageRun, Verdict,
};
use crate::bank::Banks;
use crate::manifest::{Fallthrough, OnError, RolloutMode};
use crate::request::{Outcome, Request};
use crate::runtime::{Access, BankAccess, LoadedStage, LogTag, ModelAccess, Runtime, StageFailure};
use crate::store::{FailedTag, ShadowOutcome};

/// Where a run through some stages got to.
pub(super) struct Progress {
    pub(super) request: Request,
    pub(super) trace: Vec<StageRun>,
    pub(super) remember_key: Option<String>,
    pub(super) recorded: Option<Request>,
    /// `None` when the request passed through every stage run.
    pub(super) verdict: Option<Verdict>,
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
    /// Where shadow runs are spawned, so shutdown waits for them.
    pub tasks: tokio_util::task::TaskTracker,
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
            tasks: tokio_util::task::TaskTracker::new(),
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
        let (progress, access) = self
            .advance(ctx, generation, request, 0..self.stages.len())
            .await;
        let verdict = progress
            .verdict
            .unwrap_or_else(|| self.fallthrough_verdict());
        self.finish(
            &access,
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
    ) -> (Progress, Access) {
        let mut request = request;
        let mut trace = Vec::with_capacity(self.stages.len());
        let request_id: Arc<str> = request.id.as_str().into();
        let pipeline: Arc<str> = self.name.shared();
        let access = Access {
            bank: BankAccess {
                bank: Some(ctx.banks.bank(&self.name, &self.answer_bank)),
                read_only: false,
            },
            models: ModelAccess {
                router: ctx.models.then(|| self.models.clone()),
                batch: ctx.background,
            },
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
                layer: spec.layer.name().clone(),
            };
            let tag = LogTag {
                request_id: request_id.clone(),
                pipeline: pipeline.clone(),
                stage: spec.name.shared(),
                generation,
                digest: version.digest.shared(),
            };
            // The shadow sees exactly what the live version saw.
            let shadow_input = shadow.map(|_| request.clone());

            let started = Instant::now();
            let invocation = ctx.runtime.invoke(version, &request, &tag, &access).await;
            let elapsed = started.elapsed();
            let result = invocation.outcome;
            let effects = invocation.effects;
            if effects.cache.remember_key.is_some() {
                remember_key = effects.cache.remember_key;
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
                cache_hits: effects.cache.hits,
                cache_misses: effects.cache.misses,
                pattern: effects.cache.pattern,
                pattern_lookups: effects.cache.pattern_lookups,
                pattern_features: effects.cache.pattern_features,
            });
            if let Some(candidate) = canary {
                ctx.observer
                    .candidate_served(self, candidate, result.is_err());
            }
            if let (Some(candidate), Some(input)) = (shadow, shadow_input) {
                // The shadow reads the bank but leaves it as it was.
                let mut access = access.clone();
                access.bank.read_only = true;
                let live = summarize(&result);
                self.spawn_shadow(ctx, candidate, &stage.live, input, live, tag, access);
            }

            let verdict = match result {
                Ok(Outcome::Next { input, attributes }) => {
                    request.input = input;
                    request.attributes = attributes;
                    if self.record.as_ref().is_some_and(|r| by.stage == r.after) {
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
                access,
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
            access,
        )
    }

    /// Remember the answer in the bank when a stage asked for it and the
    /// answering layer is one the pipeline remembers.
    fn finish(
        &self,
        access: &Access,
        request: Request,
        verdict: Verdict,
        trace: Vec<StageRun>,
        generation: u64,
        (remember_key, recorded): (Option<String>, Option<Request>),
    ) -> Execution {
        if let (Some(bank), Some(key), Verdict::Answered { output, by, .. }) =
            (&access.bank.bank, &remember_key, &verdict)
            && self.answer_bank.remember.iter().any(|l| by.layer == *l)
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
        live_outcome: ShadowOutcome,
        tag: LogTag,
        access: Access,
    ) {
        let Ok(permit) = ctx.shadow_slots.clone().try_acquire_owned() else {
            tracing::debug!(stage = %tag.stage, "no shadow slot free; shadow run skipped");
            return;
        };
        let runtime = ctx.runtime.clone();
        let observer = ctx.observer.clone();
        let shadow = candidate.stage.clone();
        let pipeline = self.name.to_string();
        let live_digest = live.digest.to_string();
        ctx.tasks.spawn(async move {
            let result = runtime.invoke(&shadow, &input, &tag, &access).await.outcome;
            drop(permit);
            observer.shadow_compared(ShadowComparison {
                request_id: input.id,
                pipeline,
                stage: shadow.spec.name.to_string(),
                live_digest,
                candidate_digest: shadow.digest.to_string(),
                live: live_outcome,
                candidate: summarize(&result),
            });
        });
    }
}

/// An outcome as a shadow comparison keeps it.
pub(super) fn summarize(result: &Result<Outcome, StageFailure>) -> ShadowOutcome {
    match result {
        Ok(outcome) => ShadowOutcome::Decided(outcome.clone()),
        Err(failure) => ShadowOutcome::Failed {
            kind: FailedTag::Failed,
            failure: failure.kind().to_owned(),
        },
    }
}
