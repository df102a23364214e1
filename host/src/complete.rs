//! Completing a request: what is kept of a finished run, and when it is
//! durable. Real-time and asynchronous requests both end in [`complete`],
//! so a request reads back the same whichever way it ran.

use serde::Serialize;

use crate::metrics::{Metrics, Text};
use crate::model::ModelCall;
use crate::pipeline::{Execution, StageRun, Verdict};
use crate::runtime::StageFailure;
use crate::states::RequestStatus;
use crate::store::{Job, NewTicket, RequestRecord, Store, StoreError};

/// How a finished run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A client is waiting for the response.
    RealTime,
    /// An accepted asynchronous request: its job ends with its record.
    Job,
}

/// A finished run that was kept.
#[derive(Debug)]
pub struct Completed {
    /// What was kept; its `trace` is the stages' trace as JSON.
    pub record: RequestRecord,
    /// The review ticket opened for an escalation.
    pub ticket: Option<i64>,
}

/// Why a finished run could not be kept. The client of a real-time
/// request is told to retry; an asynchronous request stays unfinished and
/// runs again at the next start.
#[derive(Debug, thiserror::Error)]
pub enum NotKept {
    /// The run needs a reviewer and its ticket could not be saved.
    #[error("the request needs a human reviewer but its ticket could not be saved: {0}")]
    Ticket(StoreError),
    /// The run names a callback that could not be saved.
    #[error("the request ran but its callback could not be saved: {0}")]
    Callback(StoreError),
    /// The job and its record could not be committed.
    #[error("the asynchronous request could not be completed: {0}")]
    Job(StoreError),
}

impl NotKept {
    /// What the client of a real-time request is told (store internals
    /// stay in the log).
    pub fn client_message(&self) -> &'static str {
        match self {
            NotKept::Ticket(_) => {
                "the request needs a human reviewer but its ticket could not be saved; retry later"
            }
            NotKept::Callback(_) => {
                "the request ran but its callback could not be saved; retry later"
            }
            NotKept::Job(_) => "the request could not be completed; retry later",
        }
    }
}

/// Keep a finished run: its record, its ticket if it escalated, its
/// callback if it names one. Durable before this returns whenever someone
/// is promised something: an escalation (its ticket), a callback, an
/// asynchronous request (its job ends in the same commit). A plain
/// real-time record is queued for the writer: losing it in a crash loses no
/// promise, and waiting for it would cost every response a commit.
pub async fn complete(
    store: &Store,
    metrics: &Metrics,
    execution: &Execution,
    created_at: i64,
    callback: Option<String>,
    team: Option<String>,
    mode: Mode,
) -> Result<Completed, NotKept> {
    let mut record = record_with_trace(execution, created_at, trace_of(execution));
    record.callback = callback;
    record.team = team;
    let new_ticket = match &execution.verdict {
        Verdict::Escalated { reason, draft, .. } => Some(NewTicket {
            reason: reason.clone(),
            draft: draft.clone(),
        }),
        _ => None,
    };
    if mode == Mode::Job {
        let ticket = store
            .complete_job(record.clone(), new_ticket)
            .await
            .map_err(NotKept::Job)?;
        if let Verdict::Answered { by, .. } = &execution.verdict {
            // Time to value runs from acceptance, the wait in the queue
            // included.
            let waited = (crate::store::now_millis() - created_at).max(0) as f64 / 1000.0;
            metrics.answered(
                Text::copied(&record.pipeline),
                Text::from(&by.layer),
                waited,
            );
        }
        return Ok(Completed { record, ticket });
    }
    let ticket = match new_ticket {
        Some(ticket) => Some(
            store
                .escalate(record.clone(), ticket)
                .await
                .map_err(NotKept::Ticket)?,
        ),
        None if record.callback.is_some() => {
            store
                .record_durably(record.clone())
                .await
                .map_err(NotKept::Callback)?;
            None
        }
        None => {
            if let Err(error) = store.record(record.clone()).await {
                tracing::error!(request_id = %record.id, %error, "cannot queue the request record");
            }
            None
        }
    };
    Ok(Completed { record, ticket })
}

/// The durable record of a finished pipeline run.
pub fn record_of(execution: &Execution, created_at: i64) -> RequestRecord {
    record_with_trace(execution, created_at, trace_of(execution))
}

/// What each stage did, as clients see it in `"stages"`: one JSON array,
/// serialised once and kept as the record's `trace`.
pub fn trace_of(execution: &Execution) -> String {
    let entries: Vec<TraceEntry<'_>> = execution.trace.iter().map(TraceEntry::of).collect();
    serde_json::to_string(&entries).expect("a trace serializes")
}

/// One stage run in `"stages"`, borrowed from the run.
#[derive(Serialize)]
struct TraceEntry<'a> {
    stage: &'a str,
    layer: &'a str,
    digest: &'a str,
    version: &'a str,
    result: &'a str,
    micros: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<CacheEntry>,
    #[serde(skip_serializing_if = "<[ModelCall]>::is_empty")]
    model: &'a [ModelCall],
}

/// A stage's answer-bank lookups in `"stages"`.
#[derive(Serialize)]
struct CacheEntry {
    hits: u32,
    misses: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pattern: Option<i64>,
}

impl<'a> TraceEntry<'a> {
    fn of(run: &'a StageRun) -> TraceEntry<'a> {
        TraceEntry {
            stage: &run.stage,
            layer: &run.layer,
            digest: run.digest.as_str(),
            version: run.version,
            result: run.result,
            micros: run.elapsed.as_micros() as u64,
            failure: run.failure,
            cache: (run.cache_hits + run.cache_misses > 0).then_some(CacheEntry {
                hits: run.cache_hits,
                misses: run.cache_misses,
                pattern: run.pattern,
            }),
            model: &run.model_calls,
        }
    }
}

/// [`record_of`], given the trace already serialised.
fn record_with_trace(execution: &Execution, created_at: i64, trace: String) -> RequestRecord {
    let request = &execution.request;
    let mut record = RequestRecord {
        id: request.id.clone(),
        pipeline: request.pipeline.clone(),
        generation: execution.generation,
        status: execution.verdict.status(),
        input: request.input.clone(),
        attributes: serde_json::to_string(&request.attributes).expect("a string map serializes"),
        output: None,
        confidence: None,
        stage: None,
        layer: None,
        code: None,
        message: None,
        trace,
        created_at,
        remember_key: execution.remember_key.clone(),
        pattern: execution.pattern(),
        cost_usd: execution.cost_usd(),
        callback: None,
        team: None,
    };
    match &execution.verdict {
        Verdict::Answered {
            output, confidence, ..
        } => {
            record.output = Some(output.clone());
            record.confidence = Some(*confidence);
        }
        Verdict::Escalated { reason, .. } => record.message = Some(reason.clone()),
        Verdict::Rejected { code, message, .. } => {
            record.code = Some(code.clone());
            record.message = Some(message.clone());
        }
        Verdict::Failed {
            by,
            failure: failure @ StageFailure::Overloaded { .. },
        } => {
            record.code = Some("overloaded".to_owned());
            record.message = Some(format!(
                "the host is overloaded: stage \"{}\" {failure}; retry later",
                by.stage
            ));
        }
        failed @ Verdict::Failed { .. } => {
            record.code = Some("stage_failed".to_owned());
            record.message = Some(failed.text());
        }
    }
    if let Some(by) = execution.verdict.decided_by() {
        record.stage = Some(by.stage.to_string());
        record.layer = Some(by.layer.to_string());
    }
    record
}

/// The record of an asynchronous request whose pipeline a reload removed
/// before it ran.
pub fn unknown_pipeline_record(job: &Job, generation: u64) -> RequestRecord {
    RequestRecord {
        id: job.id.clone(),
        pipeline: job.pipeline.clone(),
        generation,
        status: RequestStatus::Failed,
        input: job.input.clone(),
        attributes: job.attributes.clone(),
        output: None,
        confidence: None,
        stage: None,
        layer: None,
        code: Some("unknown_pipeline".to_owned()),
        message: Some(format!(
            "pipeline \"{}\" is no longer served: a reload removed it after the request \
             was accepted",
            job.pipeline
        )),
        trace: "[]".to_owned(),
        created_at: job.created_at,
        remember_key: None,
        cost_usd: 0.0,
        callback: job.callback.clone(),
        pattern: None,
        team: job.team.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::TraceEntry;
    use crate::manifest::{Digest, Name};
    use crate::pipeline::StageRun;

    #[test]
    fn a_trace_entry_shows_cache_and_model_only_when_used() {
        let mut run = StageRun {
            stage: Name::parse("bank").unwrap(),
            layer: Name::parse("cache").unwrap(),
            digest: Digest::of(b"x"),
            version: "live",
            result: "next",
            failure: None,
            elapsed: Duration::from_micros(42),
            model_calls: Vec::new(),
            cache_hits: 0,
            cache_misses: 0,
            pattern: None,
            pattern_lookups: [0; 3],
            pattern_features: Default::default(),
        };
        let plain = serde_json::to_value(TraceEntry::of(&run)).unwrap();
        assert_eq!(plain["micros"], 42);
        assert_eq!(plain["digest"], Digest::of(b"x").as_str());
        assert!(plain.get("cache").is_none() && plain.get("model").is_none());
        assert!(plain.get("failure").is_none());
        run.cache_hits = 1;
        run.pattern = Some(7);
        let hit = serde_json::to_value(TraceEntry::of(&run)).unwrap();
        assert_eq!(
            hit["cache"],
            serde_json::json!({"hits": 1, "misses": 0, "pattern": 7})
        );
    }
}
