//! The JSON shapes of requests and tickets, as clients, reviewers and
//! callback receivers see them.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::pipeline::{Execution, Verdict};
use crate::states::{JobStatus, RequestStatus, TicketState};
use crate::store::{RequestRecord, RequestState, Store, StoreError, Ticket};

/// The JSON a client sees for a request, fresh or looked up later.
/// `stages` is the record's trace: fresh from the run, or read back.
pub(crate) fn request_view(
    record: &RequestRecord,
    stages: Value,
    ticket: Option<&Ticket>,
) -> Value {
    let calls: Vec<&Value> = stages
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|stage| stage["model"].as_array())
        .flatten()
        .collect();
    let mut view = json!({
        "request_id": record.id,
        "pipeline": record.pipeline,
        "status": record.status,
        "generation": record.generation,
        "stage": record.stage,
        "layer": record.layer,
    });
    if !calls.is_empty() {
        let sum = |field: &str| calls.iter().filter_map(|c| c[field].as_u64()).sum::<u64>();
        let answered_by = calls.iter().rev().find(|c| c["ok"] == true);
        view["model"] = json!({
            "tier": answered_by.map(|c| c["tier"].clone()),
            "model": answered_by.map(|c| c["model"].clone()),
            "input_tokens": sum("input_tokens"),
            "output_tokens": sum("output_tokens"),
            "calls": calls.len(),
        });
    }
    view["cost_usd"] = json!(record.cost_usd);
    view["stages"] = stages;
    match record.status {
        RequestStatus::Answered => {
            view["output"] = json!(record.output);
            view["confidence"] = json!(record.confidence);
        }
        RequestStatus::Rejected => {
            view["rejection"] = json!({"code": record.code, "message": record.message});
        }
        RequestStatus::Failed => {
            view["error"] = json!({"code": record.code, "message": record.message});
        }
        RequestStatus::Escalated => {}
    }
    if let Some(ticket) = ticket {
        view["ticket"] = json!({
            "id": ticket.id,
            "state": ticket.state,
            "reason": ticket.reason,
        });
        if ticket.state == TicketState::Resolved {
            view["reviewer"] = json!(ticket.resolved_by);
        }
    }
    view
}

/// A request as `GET /v1/requests/{id}` shows it: its record (and ticket)
/// once it ran, its job's state while it waits or runs, and its callback's
/// deliveries when it named one.
pub async fn stored_view(store: &Store, id: &str) -> Result<Option<Value>, StoreError> {
    // The record first: a job's end and its record commit together, so a
    // record read before the job never shows a job still running.
    let mut record = store.request(id.to_owned()).await?;
    let job = store.job_state(id.to_owned()).await?;
    if record.is_none() && job.as_ref().is_some_and(|j| j.state.finished()) {
        // It completed between the two reads.
        record = store.request(id.to_owned()).await?;
    }
    let mut view = match (record, &job) {
        (
            Some(RequestState {
                record,
                completed_at,
                ticket,
            }),
            _,
        ) => {
            let stages = serde_json::from_str(&record.trace).unwrap_or(Value::Null);
            let mut view = request_view(&record, stages, ticket.as_ref());
            view["created_at"] = json!(timestamp(record.created_at));
            if let Some(at) = completed_at {
                view["completed_at"] = json!(timestamp(at));
            }
            view
        }
        (None, Some(job)) => json!({
            "request_id": id,
            "pipeline": job.pipeline,
            // "queued" until a worker takes it.
            "status": if job.state == JobStatus::Running { "running" } else { "accepted" },
            "created_at": timestamp(job.created_at),
        }),
        (None, None) => return Ok(None),
    };
    if let Some(job) = job {
        view["async"] = json!({"runs": job.runs, "state": job.state});
        if let Some(reason) = job.reason {
            view["async"]["reason"] = json!(reason);
        }
    }
    if let Some(callback) = store.callback(id.to_owned()).await? {
        let deliveries: Vec<Value> = callback
            .deliveries
            .iter()
            .map(|d| {
                json!({
                    "attempt": d.attempt,
                    "at": timestamp(d.at),
                    "status": d.status,
                    "error": d.error,
                    "ok": d.ok,
                })
            })
            .collect();
        view["callback"] = json!({
            "url": callback.url,
            "state": callback.state,
            "attempts": callback.attempts,
            "deliveries": deliveries,
        });
    }
    Ok(Some(view))
}

pub(crate) fn ticket_view(ticket: &Ticket) -> Value {
    let now = crate::store::now_millis();
    let mut view = serde_json::to_value(ticket).expect("a ticket serializes");
    view["created_at"] = json!(timestamp(ticket.created_at));
    view["claimed_at"] = json!(ticket.claimed_at.map(timestamp));
    view["resolved_at"] = json!(ticket.resolved_at.map(timestamp));
    // The age a reviewer's SLA is measured by: until resolution, or now.
    let end = ticket.resolved_at.unwrap_or(now);
    view["age_seconds"] = json!((end - ticket.created_at).max(0) / 1000);
    view
}

/// `millis` since the Unix epoch as RFC 3339 with milliseconds.
pub fn timestamp(millis: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(millis.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// The JSON of a pipeline run that was not served over HTTP (`strata run`):
/// the same shape as a response, plus what a rule writer wants to see and a
/// client is not shown: the input and attributes as the last stage left them,
/// and an escalation's reason and draft.
pub fn execution_view(execution: &Execution) -> Value {
    let trace = crate::complete::trace_of(execution);
    let record = crate::complete::record_of(execution, crate::store::now_millis());
    let mut view = request_view(&record, trace, None);
    view["input"] = json!(execution.request.input);
    view["attributes"] = json!(execution.request.attributes);
    if let Verdict::Escalated { reason, draft, .. } = &execution.verdict {
        view["escalation"] = json!({"reason": reason, "draft": draft});
    }
    view
}
