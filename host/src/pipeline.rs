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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::manifest::{Fallthrough, Manifest, ManifestError, OnError};
use crate::request::{Outcome, Request};
use crate::runtime::{LoadedStage, LogTag, Runtime, StageFailure};

/// Every pipeline of one manifest, loaded and ready to serve.
pub struct Generation {
    /// Counts up from 1 with every successful load in this process.
    pub number: u64,
    /// The pipelines, by name.
    pub pipelines: BTreeMap<String, Arc<Pipeline>>,
}

impl Generation {
    /// Load every stage of `manifest` into `runtime`. Nothing is published:
    /// on error the caller still has whatever generation it had.
    pub fn load(
        manifest: &Manifest,
        runtime: &Runtime,
        number: u64,
    ) -> Result<Generation, ManifestError> {
        let mut pipelines = BTreeMap::new();
        for (name, spec) in &manifest.pipelines {
            let stages = spec
                .stages
                .iter()
                .map(|stage| runtime.load_stage(&manifest.path, name, stage))
                .collect::<Result<Vec<_>, _>>()?;
            pipelines.insert(
                name.clone(),
                Arc::new(Pipeline {
                    name: name.clone(),
                    min_confidence: spec.min_confidence,
                    fallthrough: spec.fallthrough,
                    stages,
                }),
            );
        }
        Ok(Generation { number, pipelines })
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
    /// The stages in order.
    pub stages: Vec<LoadedStage>,
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
    /// Its component digest.
    pub digest: String,
    /// `next`, `respond`, `escalate`, `reject`, or `failed`.
    pub result: &'static str,
    /// The failure kind when `result` is `failed`.
    pub failure: Option<&'static str>,
    /// Wall-clock time of the invocation.
    pub elapsed: Duration,
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
}

impl Pipeline {
    /// Run `request` through every stage, as the module documentation says.
    pub async fn run(&self, runtime: &Runtime, generation: u64, request: Request) -> Execution {
        let span = tracing::info_span!(
            "request",
            request_id = %request.id,
            pipeline = %self.name,
            generation,
        );
        self.run_stages(runtime, generation, request)
            .instrument(span)
            .await
    }

    async fn run_stages(&self, runtime: &Runtime, generation: u64, request: Request) -> Execution {
        let mut request = request;
        let mut trace = Vec::with_capacity(self.stages.len());
        let request_id: Arc<str> = request.id.as_str().into();
        let pipeline: Arc<str> = self.name.as_str().into();

        for stage in &self.stages {
            let by = DecidedBy {
                stage: stage.spec.name.clone(),
                layer: stage.spec.layer.to_string(),
            };
            let tag = LogTag {
                request_id: request_id.clone(),
                pipeline: pipeline.clone(),
                stage: stage.spec.name.as_str().into(),
            };
            let started = Instant::now();
            let result = runtime.invoke(stage, &request, &tag).await;
            let elapsed = started.elapsed();
            trace.push(StageRun {
                stage: by.stage.clone(),
                layer: by.layer.clone(),
                digest: stage.digest.clone(),
                result: match &result {
                    Ok(outcome) => outcome.kind(),
                    Err(_) => "failed",
                },
                failure: result.as_ref().err().map(StageFailure::kind),
                elapsed,
            });

            let verdict = match result {
                Ok(Outcome::Next { input, attributes }) => {
                    request.input = input;
                    request.attributes = attributes;
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
                        digest = %stage.digest,
                        kind = failure.kind(),
                        detail = failure.detail().unwrap_or(""),
                        on_error = stage.spec.on_error.as_str(),
                        "stage {} {failure}",
                        by.stage
                    );
                    match stage.spec.on_error {
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
            return Execution {
                request,
                verdict,
                trace,
                generation,
            };
        }

        let verdict = match self.fallthrough {
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
        };
        Execution {
            request,
            verdict,
            trace,
            generation,
        }
    }
}
