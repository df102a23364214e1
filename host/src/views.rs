//! The JSON shapes of requests and tickets, as clients, reviewers and
//! callback receivers see them.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::pipeline::{Execution, Verdict};
use crate::states::{JobStatus, RequestStatus, TicketState};
use crate::store::{RequestRecord, RequestState, Store, StoreError, Ticket};

/// The JSON a client sees for a request, fresh or looked up later: built
/// from its record, whose trace is embedded as it was serialised, without
/// being parsed and written again.
#[derive(Debug, Serialize)]
pub(crate) struct RequestView {
    pub request_id: String,
    pub pipeline: String,
    pub status: RequestStatus,
    pub generation: u64,
    pub stage: Option<String>,
    pub layer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSummary>,
    pub cost_usd: f64,
    pub stages: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejection: Option<Problem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketBrief>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviewer: Option<Option<String>>,
}

/// The model calls of a request, summed over its stages.
#[derive(Debug, Serialize)]
pub(crate) struct ModelSummary {
    /// The tier that answered, if one did.
    pub tier: Option<String>,
    pub model: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub calls: usize,
}

/// A rejection's or a failure's code and message.
#[derive(Debug, Serialize)]
pub(crate) struct Problem {
    pub code: Option<String>,
    pub message: Option<String>,
}

/// The ticket a request escalated to.
#[derive(Debug, Serialize)]
pub(crate) struct TicketBrief {
    pub id: i64,
    pub state: TicketState,
    pub reason: Option<String>,
}

/// What the summary needs of one model call in a stored trace.
#[derive(Deserialize)]
struct CallBrief {
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

/// What the summary needs of one stage in a stored trace.
#[derive(Deserialize)]
struct StageCalls {
    #[serde(default)]
    model: Vec<CallBrief>,
}

/// The model calls in a serialised trace, summed; `None` without any.
fn model_summary(trace: &str) -> Option<ModelSummary> {
    // Most requests make no model call: skip the parse when the trace
    // cannot hold one.
    if !trace.contains("\"model\"") {
        return None;
    }
    let stages: Vec<StageCalls> = serde_json::from_str(trace).ok()?;
    let calls: Vec<CallBrief> = stages.into_iter().flat_map(|s| s.model).collect();
    if calls.is_empty() {
        return None;
    }
    let answered_by = calls.iter().rev().find(|c| c.ok);
    Some(ModelSummary {
        tier: answered_by.and_then(|c| c.tier.clone()),
        model: answered_by.and_then(|c| c.model.clone()),
        input_tokens: calls.iter().map(|c| c.input_tokens).sum(),
        output_tokens: calls.iter().map(|c| c.output_tokens).sum(),
        calls: calls.len(),
    })
}

impl RequestView {
    /// The view of `record`, and of the ticket it escalated to.
    pub(crate) fn of(record: RequestRecord, ticket: Option<&Ticket>) -> RequestView {
        let model = model_summary(&record.trace);
        let stages = RawValue::from_string(record.trace)
            .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON"));
        let problem = || Problem {
            code: record.code.clone(),
            message: record.message.clone(),
        };
        let (mut output, mut confidence, mut rejection, mut error) = (None, None, None, None);
        match record.status {
            RequestStatus::Answered => {
                output = Some(record.output.clone());
                confidence = Some(record.confidence);
            }
            RequestStatus::Rejected => rejection = Some(problem()),
            RequestStatus::Failed => error = Some(problem()),
            RequestStatus::Escalated => {}
        }
        RequestView {
            request_id: record.id,
            pipeline: record.pipeline,
            status: record.status,
            generation: record.generation,
            stage: record.stage,
            layer: record.layer,
            model,
            cost_usd: record.cost_usd,
            stages,
            output,
            confidence,
            rejection,
            error,
            ticket: ticket.map(|t| TicketBrief {
                id: t.id,
                state: t.state,
                reason: Some(t.reason.clone()),
            }),
            reviewer: ticket
                .filter(|t| t.state == TicketState::Resolved)
                .map(|t| t.resolved_by.clone()),
        }
    }

    /// The same as a JSON value, for views that add to it.
    pub(crate) fn into_value(self) -> Value {
        serde_json::to_value(self).expect("a request view serializes")
    }
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
            let created_at = record.created_at;
            let mut view = RequestView::of(record, ticket.as_ref()).into_value();
            view["created_at"] = json!(timestamp(created_at));
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
    let record = crate::complete::record_of(execution, crate::store::now_millis());
    let mut view = RequestView::of(record, None).into_value();
    view["input"] = json!(execution.request.input);
    view["attributes"] = json!(execution.request.attributes);
    if let Verdict::Escalated { reason, draft, .. } = &execution.verdict {
        view["escalation"] = json!({"reason": reason, "draft": draft});
    }
    view
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::RequestView;
    use crate::states::RequestStatus;
    use crate::store::RequestRecord;

    fn record(status: RequestStatus, trace: &str) -> RequestRecord {
        RequestRecord {
            id: "r1".to_owned(),
            pipeline: "desk".to_owned(),
            generation: 3,
            status,
            input: "hi".to_owned(),
            attributes: "{}".to_owned(),
            output: Some("hello".to_owned()),
            confidence: Some(0.9),
            stage: Some("faq".to_owned()),
            layer: Some("rules".to_owned()),
            code: Some("bad_input".to_owned()),
            message: Some("no".to_owned()),
            trace: trace.to_owned(),
            created_at: 0,
            remember_key: None,
            cost_usd: 0.25,
            team: None,
            callback: None,
            pattern: None,
        }
    }

    #[test]
    fn an_answer_embeds_its_trace_and_sums_its_model_calls() {
        let trace = r#"[{"stage":"faq","micros":5},{"stage":"gen","model":[
            {"tier":"small","model":"m1","ok":false,"input_tokens":3,"output_tokens":0},
            {"tier":"large","model":"m2","ok":true,"input_tokens":10,"output_tokens":7}]}]"#;
        let view = RequestView::of(record(RequestStatus::Answered, trace), None);
        let text = serde_json::to_string(&view).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "request_id",
                "pipeline",
                "status",
                "generation",
                "stage",
                "layer",
                "model",
                "cost_usd",
                "stages",
                "output",
                "confidence"
            ]
        );
        assert_eq!(
            value["model"],
            json!({"tier": "large", "model": "m2", "input_tokens": 13, "output_tokens": 7, "calls": 2})
        );
        assert_eq!(value["stages"][1]["model"][1]["tier"], "large");
        assert_eq!(view.into_value(), value, "the value form matches the text");
    }

    #[test]
    fn a_rejection_names_its_code_and_a_bad_trace_reads_as_null() {
        let view = RequestView::of(record(RequestStatus::Rejected, "not json"), None);
        let value = view.into_value();
        assert_eq!(value["stages"], serde_json::Value::Null);
        assert_eq!(
            value["rejection"],
            json!({"code": "bad_input", "message": "no"})
        );
        assert!(value.get("model").is_none() && value.get("output").is_none());
    }
}
