//! Calling a `wasi:http/incoming-handler` component as a stage.
//!
//! The request reaches the handler as `POST /` (host `strata`) with the
//! JSON body `{"id", "pipeline", "input", "attributes"}` and the headers
//! `strata-stage`, `strata-pipeline` and `strata-request-id`. Its response
//! becomes the stage's outcome ([`outcome_of`]):
//!
//! | response | outcome |
//! | --- | --- |
//! | 200 `{"output", "confidence"?}` | answer (confidence 1 if absent) |
//! | 200 `{"next": {"input"?, "attributes"?}}` | pass on (what is absent is kept) |
//! | 204 | pass on, unchanged |
//! | 202 `{"reason"?, "draft"?}` | escalate |
//! | 4xx `{"code"?, "message"?}` | reject (`http_<status>` and the body's text if absent) |
//! | 5xx, an error code, or a trap | the stage failed: its `on_error` applies |
//! | anything else | the stage failed: an invalid outcome |
//!
//! `docs/plugin-guide.md` documents the same table for stage authors.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::Proxy;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::request::{Outcome, Request};
use crate::runtime::{StageFailure, StageState};

/// The body an HTTP stage receives.
#[derive(serde::Serialize)]
struct Incoming<'a> {
    id: &'a str,
    pipeline: &'a str,
    input: &'a str,
    attributes: &'a BTreeMap<String, String>,
}

/// Call `proxy`'s handler on `request`. The outer error is the call itself
/// failing (a trap, a limit); the inner one a response that is no outcome.
pub(super) async fn handle(
    proxy: &Proxy,
    store: &mut Store<StageState>,
    request: &Request,
    stage: &str,
    output_limit: usize,
) -> wasmtime::Result<Result<Outcome, StageFailure>> {
    let body = serde_json::to_vec(&Incoming {
        id: &request.id,
        pipeline: &request.pipeline,
        input: &request.input,
        attributes: &request.attributes,
    })
    .expect("strings and a string map serialise");
    let hyper_request = http::Request::post("http://strata/")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("strata-stage", stage)
        .header("strata-pipeline", &request.pipeline)
        .header("strata-request-id", &request.id)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| wasmtime::Error::msg(format!("cannot build the stage's request: {e}")))?;

    let (sender, receiver) = tokio::sync::oneshot::channel();
    let (incoming, out) = {
        let mut view = store.data_mut().http();
        let incoming = view.new_incoming_request(Scheme::Http, hyper_request)?;
        (incoming, view.new_response_outparam(sender)?)
    };

    // The handler may write its body while it runs, so the body is read as
    // the call goes; a call that fails stops the reading (a trapped guest
    // never finishes its response).
    let stop = CancellationToken::new();
    let call = async {
        let called = proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut *store, incoming, out)
            .await;
        if called.is_err() {
            stop.cancel();
        }
        called
    };
    let read = async {
        tokio::select! {
            response = read_response(receiver, output_limit) => Some(response),
            () = stop.cancelled() => None,
        }
    };
    let (called, response) = tokio::join!(call, read);
    called?;
    Ok(
        match response.expect("reading stops only when the call fails") {
            Ok((status, body)) => outcome_of(status, &body, request),
            Err(failure) => Err(failure),
        },
    )
}

/// The response's status and whole body, at most `limit` bytes of it.
async fn read_response(
    receiver: tokio::sync::oneshot::Receiver<Result<http::Response<HyperOutgoingBody>, ErrorCode>>,
    limit: usize,
) -> Result<(u16, Vec<u8>), StageFailure> {
    let response = match receiver.await {
        Ok(Ok(response)) => response,
        Ok(Err(code)) => {
            return Err(StageFailure::Http {
                status: None,
                detail: format!("the handler answered with the error code {code:?}"),
            });
        }
        Err(_) => {
            return Err(StageFailure::InvalidOutcome(
                "the HTTP handler returned without setting a response".to_owned(),
            ));
        }
    };
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            StageFailure::InvalidOutcome(format!("the response body broke off: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
            if bytes.len() > limit {
                return Err(StageFailure::OutputTooLarge {
                    bytes: bytes.len(),
                    limit,
                });
            }
        }
    }
    Ok((status, bytes))
}

#[derive(Deserialize)]
struct Answer {
    output: String,
    confidence: Option<f64>,
}

#[derive(Deserialize)]
struct Pass {
    next: PassOn,
}

#[derive(Deserialize)]
struct PassOn {
    input: Option<String>,
    attributes: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
struct Escalation {
    reason: Option<String>,
    draft: Option<String>,
}

#[derive(Deserialize, Default)]
struct Rejection {
    code: Option<String>,
    message: Option<String>,
}

/// The outcome an HTTP stage's response stands for (see the module's
/// table).
pub(crate) fn outcome_of(
    status: u16,
    body: &[u8],
    request: &Request,
) -> Result<Outcome, StageFailure> {
    let invalid = StageFailure::InvalidOutcome;
    match status {
        200 => {
            let value: serde_json::Value = match serde_json::from_slice(body) {
                Ok(value) => value,
                Err(e) => {
                    return Err(invalid(format!(
                        "the body of its 200 response is not JSON ({e}): {}",
                        snippet(body)
                    )));
                }
            };
            if value.get("next").is_some() {
                let pass: Pass = serde_json::from_value(value).map_err(|e| {
                    invalid(format!(
                        "\"next\" must be {{\"input\": string, \"attributes\": {{string: string}}}}: {e}"
                    ))
                })?;
                Ok(Outcome::Next {
                    input: pass.next.input.unwrap_or_else(|| request.input.clone()),
                    attributes: pass
                        .next
                        .attributes
                        .unwrap_or_else(|| request.attributes.clone()),
                })
            } else if value.get("output").is_some() {
                let answer: Answer = serde_json::from_value(value).map_err(|e| {
                    invalid(format!(
                        "an answer must be {{\"output\": string, \"confidence\": number}}: {e}"
                    ))
                })?;
                Ok(Outcome::Respond {
                    output: answer.output,
                    confidence: answer.confidence.unwrap_or(1.0),
                })
            } else {
                Err(invalid(format!(
                    "its 200 response has neither \"output\" (an answer) nor \"next\" (pass on): {}",
                    snippet(body)
                )))
            }
        }
        204 => Ok(Outcome::Next {
            input: request.input.clone(),
            attributes: request.attributes.clone(),
        }),
        202 => {
            let escalation: Escalation = if body.iter().all(u8::is_ascii_whitespace) {
                Escalation::default()
            } else {
                serde_json::from_slice(body).map_err(|e| {
                    invalid(format!(
                        "the body of its 202 response must be {{\"reason\": string, \"draft\": string}}: {e}"
                    ))
                })?
            };
            Ok(Outcome::Escalate {
                reason: escalation
                    .reason
                    .unwrap_or_else(|| "the HTTP stage asked for a person (202)".to_owned()),
                draft: escalation.draft,
            })
        }
        400..=499 => {
            // A handler's own error body (JSON with other fields, or text)
            // still rejects; its text becomes the message.
            let rejection: Rejection = serde_json::from_slice(body).unwrap_or_default();
            let reason = http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("client error");
            let text = String::from_utf8_lossy(body);
            Ok(Outcome::Reject {
                code: rejection.code.unwrap_or_else(|| format!("http_{status}")),
                message: rejection.message.unwrap_or_else(|| {
                    if text.trim().is_empty() || text.trim_start().starts_with('{') {
                        reason.to_owned()
                    } else {
                        crate::runtime::imports::log::truncate(text.trim(), 1024).to_owned()
                    }
                }),
            })
        }
        500..=599 => Err(StageFailure::Http {
            status: Some(status),
            detail: snippet(body),
        }),
        _ => Err(invalid(format!(
            "it answered HTTP {status}, which stands for no outcome (200, 202, 204, 4xx or 5xx)"
        ))),
    }
}

/// The start of a body, for messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let cut = crate::runtime::imports::log::truncate(text, 200);
    if cut.len() < text.len() {
        format!("{cut}…")
    } else {
        cut.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            id: "r1".to_owned(),
            pipeline: "support".to_owned(),
            input: "What is my PIN?".to_owned(),
            attributes: [("lang".to_owned(), "en".to_owned())].into(),
        }
    }

    #[test]
    fn responses_map_to_outcomes() {
        let r = request();
        assert_eq!(
            outcome_of(200, br#"{"output": "hi", "confidence": 0.5}"#, &r).unwrap(),
            Outcome::Respond {
                output: "hi".to_owned(),
                confidence: 0.5
            }
        );
        assert_eq!(
            outcome_of(200, br#"{"output": "hi"}"#, &r).unwrap(),
            Outcome::Respond {
                output: "hi".to_owned(),
                confidence: 1.0
            }
        );
        assert_eq!(
            outcome_of(200, br#"{"next": {"input": "x"}}"#, &r).unwrap(),
            Outcome::Next {
                input: "x".to_owned(),
                attributes: r.attributes.clone()
            }
        );
        assert_eq!(
            outcome_of(204, b"", &r).unwrap(),
            Outcome::Next {
                input: r.input.clone(),
                attributes: r.attributes.clone()
            }
        );
        assert_eq!(
            outcome_of(202, br#"{"reason": "card stolen", "draft": "d"}"#, &r).unwrap(),
            Outcome::Escalate {
                reason: "card stolen".to_owned(),
                draft: Some("d".to_owned())
            }
        );
        assert!(matches!(
            outcome_of(202, b"", &r).unwrap(),
            Outcome::Escalate { draft: None, .. }
        ));
        assert_eq!(
            outcome_of(422, br#"{"code": "too_long", "message": "shorter"}"#, &r).unwrap(),
            Outcome::Reject {
                code: "too_long".to_owned(),
                message: "shorter".to_owned()
            }
        );
        assert_eq!(
            outcome_of(403, b"no entry", &r).unwrap(),
            Outcome::Reject {
                code: "http_403".to_owned(),
                message: "no entry".to_owned()
            }
        );
        assert_eq!(
            outcome_of(400, b"", &r).unwrap(),
            Outcome::Reject {
                code: "http_400".to_owned(),
                message: "Bad Request".to_owned()
            }
        );
    }

    #[test]
    fn responses_that_are_no_outcome_fail_the_stage_and_say_why() {
        let r = request();
        let cases: [(u16, &[u8], &str, &str); 6] = [
            (500, b"oops", "http", "answered HTTP 500"),
            (200, b"hello", "invalid_outcome", "not JSON"),
            (
                200,
                br#"{"answer": "x"}"#,
                "invalid_outcome",
                "neither \"output\"",
            ),
            (
                200,
                br#"{"output": 3}"#,
                "invalid_outcome",
                "an answer must be",
            ),
            (202, b"[1]", "invalid_outcome", "202 response must be"),
            (301, b"", "invalid_outcome", "HTTP 301"),
        ];
        for (status, body, kind, says) in cases {
            let failure = outcome_of(status, body, &r).expect_err("no outcome");
            assert_eq!(failure.kind(), kind, "{status}");
            let text = match &failure {
                StageFailure::InvalidOutcome(m) => m.clone(),
                other => other.to_string(),
            };
            assert!(text.contains(says), "{status}: {text}");
        }
    }
}
