//! The reviewer's side of the API and the feedback loop: tickets (list,
//! claim, resolve, reject a proposed correction), ratings and corrections
//! of answers, and the feedback export. What a reviewer approves becomes an
//! example of its answer in the pipeline's bank.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use http::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, json_response};
use super::extract::{FeedbackCaller, JsonBody, QueryOf, RequireRole, Reviewer, bounded_query};
use crate::app::App;
use crate::auth::Caller;
use crate::metrics::Text;
use crate::states::TicketState;
use crate::store::{StoreError, TicketFilter, TicketKind};
use crate::views::ticket_view;

/// Default and largest page of `GET /v1/tickets`.
const DEFAULT_TICKET_PAGE: u32 = 100;

const MAX_TICKET_PAGE: u32 = 1_000;

/// The body of a claim. `reviewer` names the reviewer only where no
/// token does (the loopback fallback); with a token it must match it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClaimBody {
    #[serde(default)]
    reviewer: Option<String>,
}

/// The body of `POST /v1/tickets/{id}/reject`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RejectBody {
    #[serde(default)]
    reviewer: Option<String>,
    /// Why, for the record.
    #[serde(default)]
    note: Option<String>,
}

/// The body of `POST /v1/feedback`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeedbackBody {
    request_id: String,
    rating: Rating,
    #[serde(default)]
    correction: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum Rating {
    Good,
    Bad,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResolveBody {
    #[serde(default)]
    reviewer: Option<String>,
    answer: String,
}

/// The query of `GET /v1/tickets`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TicketQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<String>,
}

/// Rate an answer, optionally correcting it. A correction becomes the
/// approved answer under the request's answer-bank key, so the next
/// identical request gets it; a bad rating without one drops the
/// unapproved answer there, so the next one is answered afresh.
pub(super) async fn feedback(
    State(app): State<Arc<App>>,
    FeedbackCaller(caller): FeedbackCaller,
    JsonBody(body): JsonBody<FeedbackBody>,
) -> Result<Response, ApiError> {
    let app = &*app;
    let correction = match body.correction {
        Some(text) if text.trim().is_empty() => {
            return Err(ApiError::bad_request("\"correction\" must not be empty"));
        }
        other => other,
    };
    if correction.is_some() && body.rating == Rating::Good {
        return Err(ApiError::bad_request(
            "a correction comes with \"rating\": \"bad\"",
        ));
    }
    let rating = match body.rating {
        Rating::Good => "good",
        Rating::Bad => "bad",
    };
    let unknown = |e: StoreError| match e {
        StoreError::NotFound(_) => ApiError::not_found(
            "unknown_request",
            format!("no request with id \"{}\"", body.request_id),
        ),
        other => other.into(),
    };
    if let Some(text) = correction.clone().filter(|_| !caller.is_reviewer()) {
        // A client's correction is a proposal: it opens a review item and
        // changes no answer until a reviewer accepts it.
        let (ticket, record) = app
            .store
            .propose_correction(body.request_id.clone(), text, caller.id)
            .await
            .map_err(unknown)?;
        app.metrics.rated(&record.pipeline, rating, record.cost_usd);
        return Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({
                "request_id": record.id,
                "rating": rating,
                "answer_bank": "unchanged: the correction waits for a reviewer",
                "ticket": {"id": ticket.id, "kind": ticket.kind, "state": ticket.state},
            }),
        ));
    }
    let record = app
        .store
        .feedback(
            body.request_id.clone(),
            Some(rating.to_owned()),
            correction.clone(),
            caller.id,
        )
        .await
        .map_err(unknown)?;
    app.metrics.rated(&record.pipeline, rating, record.cost_usd);
    let mut view = json!({"request_id": record.id, "rating": rating});
    if let Some(text) = &correction
        && let Some(pattern) = learn(app, &record.pipeline, &record.input, text, "correction").await
    {
        view["pattern"] = json!({"id": pattern, "learned": record.input});
    }
    // A rating of an answer the bank found by similarity counts for or
    // against the pattern that gave it: a bad one raises its threshold.
    if let Some(pattern) = record.pattern {
        let patterns = app.bank(&record.pipeline).patterns().clone();
        if let Some(strictness) = patterns.rate(pattern, rating == "good") {
            if let Err(error) = app.store.set_strictness(pattern, strictness).await {
                tracing::error!(%error, pattern, "cannot keep a pattern's strictness");
            }
            view["pattern_rated"] = json!({"id": pattern, "strictness": strictness});
        }
    }
    let bank = match (&record.remember_key, &correction) {
        (None, _) => "unchanged: the request has no answer-bank key",
        (Some(key), Some(text)) => {
            app.bank(&record.pipeline)
                .approve(key.clone(), text.clone(), "correction");
            "corrected: the next identical request gets the correction"
        }
        (Some(key), None) if rating == "bad" => {
            if app.bank(&record.pipeline).forget_unapproved(key) {
                "dropped: the next identical request is answered afresh"
            } else {
                "unchanged: nothing unapproved was stored under the key"
            }
        }
        (Some(_), None) => "unchanged",
    };
    view["answer_bank"] = json!(bank);
    Ok(json_response(StatusCode::OK, &view))
}

/// Teach `pipeline`'s bank that `question` is answered by `answer`: durable
/// first, then served. Returns the pattern that learned it.
async fn learn(
    app: &App,
    pipeline: &str,
    question: &str,
    answer: &str,
    source: &str,
) -> Option<i64> {
    let stored = app
        .store
        .learn_example(
            pipeline.to_owned(),
            question.to_owned(),
            answer.to_owned(),
            source.to_owned(),
        )
        .await;
    match stored {
        Ok(stored) => {
            app.bank(pipeline).patterns().learn(&stored);
            Some(stored.id)
        }
        Err(error) => {
            tracing::error!(%error, pipeline, "cannot learn an approved answer");
            None
        }
    }
}

/// The feedback dataset as JSON lines, streamed.
pub(super) async fn export_feedback(
    State(app): State<Arc<App>>,
    _: RequireRole<Reviewer>,
) -> Response {
    let (lines, mut receiver) = tokio::sync::mpsc::channel::<String>(64);
    // A host task, so shutdown waits for the page in hand before the store
    // closes.
    app.lifecycle.spawn(app.store.export_feedback(lines));
    let stream = futures_util::stream::poll_fn(move |cx| {
        receiver
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok::<_, std::convert::Infallible>(Bytes::from(l))))
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

pub(super) async fn list_tickets(
    State(app): State<Arc<App>>,
    _: RequireRole<Reviewer>,
    QueryOf(query): QueryOf<TicketQuery>,
) -> Result<Response, ApiError> {
    let filter = match query.state.as_deref() {
        None | Some("pending") => TicketFilter::Pending,
        Some("open") => TicketFilter::State(TicketState::Open),
        Some("claimed") => TicketFilter::State(TicketState::Claimed),
        Some("resolved") => TicketFilter::State(TicketState::Resolved),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "state \"{other}\" is not one of pending, open, claimed, resolved"
            )));
        }
    };
    let limit = bounded_query("limit", query.limit, DEFAULT_TICKET_PAGE, MAX_TICKET_PAGE)?;
    let tickets = app.store.tickets(filter, limit).await?;
    let views: Vec<Value> = tickets.iter().map(ticket_view).collect();
    Ok(json_response(StatusCode::OK, &json!({"tickets": views})))
}

pub(super) async fn get_ticket(
    State(app): State<Arc<App>>,
    _: RequireRole<Reviewer>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ticket = known_ticket(&app, &id).await?;
    Ok(json_response(StatusCode::OK, &ticket_view(&ticket)))
}

/// The ticket a path names, or a 404 saying so.
async fn known_ticket(app: &App, id: &str) -> Result<crate::store::Ticket, ApiError> {
    let id = parse_ticket_id(id)?;
    app.store
        .ticket(id)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_ticket", format!("no ticket {id}")))
}

pub(super) async fn claim(
    State(app): State<Arc<App>>,
    RequireRole(caller, _): RequireRole<Reviewer>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ClaimBody>,
) -> Result<Response, ApiError> {
    let id = parse_ticket_id(&id)?;
    let ticket = app
        .store
        .claim(id, reviewer_of(&caller, body.reviewer)?)
        .await?;
    Ok(json_response(StatusCode::OK, &ticket_view(&ticket)))
}

pub(super) async fn release(
    State(app): State<Arc<App>>,
    RequireRole(caller, _): RequireRole<Reviewer>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ClaimBody>,
) -> Result<Response, ApiError> {
    let id = parse_ticket_id(&id)?;
    let anyone = caller.token == Some(crate::auth::Role::Admin);
    let ticket = app
        .store
        .release(id, reviewer_of(&caller, body.reviewer)?, anyone)
        .await?;
    Ok(json_response(StatusCode::OK, &ticket_view(&ticket)))
}

/// Approved answers of the ticket's pipeline that fit its question: the
/// bank's best match (lexical), for the reviewer to use or adapt.
pub(super) async fn similar(
    State(app): State<Arc<App>>,
    _: RequireRole<Reviewer>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ticket = known_ticket(&app, &id).await?;
    let bank = app.bank(&ticket.pipeline);
    let matches: Vec<Value> = bank
        .patterns()
        .lookup_lexical(&ticket.input)
        .into_iter()
        .map(|m| json!({"answer": m.answer, "score": m.score, "label": m.label, "trusted": m.trusted}))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"similar": matches})))
}

pub(super) async fn reject(
    State(app): State<Arc<App>>,
    RequireRole(caller, _): RequireRole<Reviewer>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RejectBody>,
) -> Result<Response, ApiError> {
    let id = parse_ticket_id(&id)?;
    let reviewer = reviewer_of(&caller, body.reviewer)?;
    let ticket = app.store.reject_correction(id, reviewer, body.note).await?;
    Ok(json_response(StatusCode::OK, &ticket_view(&ticket)))
}

pub(super) async fn resolve(
    State(app): State<Arc<App>>,
    RequireRole(caller, _): RequireRole<Reviewer>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ResolveBody>,
) -> Result<Response, ApiError> {
    let app = &*app;
    let id = parse_ticket_id(&id)?;
    let reviewer = reviewer_of(&caller, body.reviewer)?;
    if body.answer.trim().is_empty() {
        return Err(ApiError::bad_request("\"answer\" must not be empty"));
    }
    let ticket = app.store.resolve(id, reviewer, body.answer).await?;
    let source = match ticket.kind {
        TicketKind::Escalation => "human",
        TicketKind::Correction => "correction",
    };
    // The store made it durable; the bank serves it from now on.
    if let (Some(key), Some(answer)) = (&ticket.remember_key, &ticket.resolution) {
        app.bank(&ticket.pipeline)
            .approve(key.clone(), answer.clone(), source);
    }
    // The question becomes an example of the approved answer, so the next
    // question like it gets the answer, not only this one.
    if let Some(answer) = &ticket.resolution {
        learn(app, &ticket.pipeline, &ticket.input, answer, source).await;
    }
    if let (TicketKind::Escalation, Some(resolved_at)) = (ticket.kind, ticket.resolved_at) {
        let waited = (resolved_at - ticket.created_at).max(0) as f64 / 1000.0;
        app.metrics
            .answered(Text::copied(&ticket.pipeline), Text::from("human"), waited);
    }
    Ok(json_response(StatusCode::OK, &ticket_view(&ticket)))
}

fn parse_ticket_id(text: &str) -> Result<i64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::not_found(
            "unknown_ticket",
            format!("\"{text}\" is not a ticket number"),
        )
    })
}

/// Who acts on a ticket: the caller's token says so. Only a caller let in
/// without a token (the loopback fallback) may name itself in the body; a
/// body naming someone other than the token's holder is refused, so nobody
/// acts on a ticket another reviewer claimed by sending their name.
fn reviewer_of(caller: &Caller, named: Option<String>) -> Result<String, ApiError> {
    if caller.token.is_none() {
        return match named {
            Some(name) => check_reviewer(name),
            None => Ok(caller.id.clone()),
        };
    }
    match named {
        Some(name)
            if name.trim() != caller.id
                && caller.id.strip_prefix("reviewer:") != Some(name.trim()) =>
        {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this token acts as {}; it cannot act for \"{}\" (leave \"reviewer\" out)",
                    caller.id,
                    name.trim()
                ),
            ))
        }
        _ => Ok(caller.id.clone()),
    }
}

fn check_reviewer(reviewer: String) -> Result<String, ApiError> {
    let reviewer = reviewer.trim().to_owned();
    if reviewer.is_empty() || reviewer.len() > 128 {
        return Err(ApiError::bad_request(
            "\"reviewer\" must be a name of 1 to 128 characters",
        ));
    }
    Ok(reviewer)
}
