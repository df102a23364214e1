//! Completing a request: what is kept of a finished run. Real-time and
//! asynchronous requests share it, so a request reads back the same
//! whichever way it ran.

use serde_json::{Value, json};

use crate::pipeline::{Execution, Verdict};
use crate::runtime::StageFailure;
use crate::store::{Job, RequestRecord};

/// The durable record of a finished pipeline run.
pub fn record_of(execution: &Execution, created_at: i64) -> RequestRecord {
    let request = &execution.request;
    let trace: Vec<Value> = execution
        .trace
        .iter()
        .map(|run| {
            let mut entry = json!({
                "stage": run.stage,
                "layer": run.layer,
                "digest": run.digest,
                "version": run.version,
                "result": run.result,
                "micros": run.elapsed.as_micros() as u64,
            });
            if let Some(kind) = run.failure {
                entry["failure"] = json!(kind);
            }
            if run.cache_hits + run.cache_misses > 0 {
                entry["cache"] = json!({"hits": run.cache_hits, "misses": run.cache_misses});
                if let Some(pattern) = run.pattern {
                    entry["cache"]["pattern"] = json!(pattern);
                }
            }
            if !run.model_calls.is_empty() {
                entry["model"] = json!(run.model_calls);
            }
            entry
        })
        .collect();
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
        trace: Value::Array(trace).to_string(),
        created_at,
        remember_key: execution.remember_key.clone(),
        pattern: execution.pattern(),
        cost_usd: execution.cost_usd(),
        callback: None,
    };
    let by = match &execution.verdict {
        Verdict::Answered {
            output,
            confidence,
            by,
        } => {
            record.output = Some(output.clone());
            record.confidence = Some(*confidence);
            Some(by)
        }
        Verdict::Escalated { reason, by, .. } => {
            record.message = Some(reason.clone());
            by.as_ref()
        }
        Verdict::Rejected { code, message, by } => {
            record.code = Some(code.clone());
            record.message = Some(message.clone());
            by.as_ref()
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
            Some(by)
        }
        Verdict::Failed { by, failure } => {
            record.code = Some("stage_failed".to_owned());
            record.message = Some(format!("stage \"{}\" {failure}", by.stage));
            Some(by)
        }
    };
    if let Some(by) = by {
        record.stage = Some(by.stage.clone());
        record.layer = Some(by.layer.clone());
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
        status: "failed",
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
    }
}
