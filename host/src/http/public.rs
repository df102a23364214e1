//! The HTTP API: routes, request bodies, response bodies and error mapping.
//!
//! | route | method | role | what |
//! | --- | --- | --- | --- |
//! | `/healthz` | GET | none | liveness and the serving generation |
//! | `/v1/pipelines` | GET | client | the pipelines of the serving generation |
//! | `/v1/pipelines/{name}` | POST | client | run a request: `{"input": "...", "attributes": {...}}`, optionally `"async": true` and `"callback": "https://..."` |
//! | `/v1/requests/{id}` | GET | client | a request's state (an escalated one changes when resolved) |
//! | `/v1/tickets?state=&limit=` | GET | reviewer | review tickets, oldest first (default: open and claimed) |
//! | `/v1/tickets/{id}` | GET | reviewer | one ticket |
//! | `/v1/tickets/{id}/claim` | POST | reviewer | `{"reviewer": "..."}` |
//! | `/v1/tickets/{id}/resolve` | POST | reviewer | `{"answer": "..."}`: answer the ticket (or accept a correction, edited or not) |
//! | `/v1/tickets/{id}/reject` | POST | reviewer | `{"note": "..."}`: turn a proposed correction down |
//! | `/v1/feedback` | POST | client | `{"request_id", "rating": "good"\|"bad", "correction"}` |
//! | `/v1/feedback/export` | GET | reviewer | rated and corrected requests as JSON lines |
//!
//! A client may name its request with an `X-Request-Id` header (1 to 128
//! letters, digits, `-`, `_`, `.` or `:`): canary routing hashes the id, so a
//! retry with the same id meets the same versions, and an escalated retry
//! gets the ticket it already has. See [`crate::auth`] for roles.
//!
//! An asynchronous request (`"async": true`, or a `Prefer: respond-async`
//! header) is answered 202 with its id once it is durable, and runs in the
//! background (see [`crate::jobs`]); 429 with `Retry-After` when the queue
//! is full. Any request may name a `callback` URL on a host the manifest
//! allows; its result is POSTed there when final (see [`crate::callbacks`]).
//!
//! Every error is a JSON body `{"error": {"code": "...", "message": "..."}}`
//! with a 4xx or 5xx status; guest and engine internals stay in the log.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::StatusCode;
use http::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, json_response};
use super::extract::{
    Client, ClientRequestId, FeedbackCaller, JsonBody, PreferAsync, QueryOf, RequireRole, Reviewer,
    Target,
};
use super::only;
use super::views::{request_view, stored_view, ticket_view};
use crate::app::App;
use crate::auth::Caller;
use crate::complete::{self, Mode};
use crate::jobs::SubmitError;
use crate::pipeline::Verdict;
use crate::request::Request;
use crate::runtime::StageFailure;
use crate::states::TicketState;
use crate::store::{Job, StoreError, TicketFilter, TicketKind};

/// Default and largest page of `GET /v1/tickets`.
const DEFAULT_TICKET_PAGE: u32 = 100;
const MAX_TICKET_PAGE: u32 = 1_000;

/// The API's routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", only(get(health), "GET"))
        .route("/v1/pipelines", only(get(pipelines), "GET"))
        .route("/v1/pipelines/{name}", only(post(run_pipeline), "POST"))
        .route("/v1/requests/{id}", only(get(get_request), "GET"))
        .route("/v1/tickets", only(get(list_tickets), "GET"))
        .route("/v1/tickets/{id}", only(get(get_ticket), "GET"))
        .route("/v1/tickets/{id}/claim", only(post(claim), "POST"))
        .route("/v1/tickets/{id}/resolve", only(post(resolve), "POST"))
        .route("/v1/tickets/{id}/reject", only(post(reject), "POST"))
        .route("/v1/feedback", only(post(feedback), "POST"))
        .route("/v1/feedback/export", only(get(export_feedback), "GET"))
        .fallback(|uri: http::Uri| async move {
            ApiError::not_found("no_route", format!("no route for {}", uri.path()))
        })
        .with_state(app)
}

/// The body of `POST /v1/pipelines/{name}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    input: String,
    #[serde(default)]
    attributes: serde_json::Map<String, Value>,
    /// Accept now, run in the background.
    #[serde(default, rename = "async")]
    background: bool,
    /// Where to POST the result when it is final.
    #[serde(default)]
    callback: Option<String>,
}

/// The body of a claim. `reviewer` names the reviewer only where no
/// token does (the loopback fallback); with a token it must match it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    #[serde(default)]
    reviewer: Option<String>,
}

/// The body of `POST /v1/tickets/{id}/reject`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectBody {
    #[serde(default)]
    reviewer: Option<String>,
    /// Why, for the record.
    #[serde(default)]
    note: Option<String>,
}

/// The body of `POST /v1/feedback`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    request_id: String,
    rating: Rating,
    #[serde(default)]
    correction: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Rating {
    Good,
    Bad,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    #[serde(default)]
    reviewer: Option<String>,
    answer: String,
}

/// The query of `GET /v1/tickets`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TicketQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<String>,
}

async fn health(State(app): State<Arc<App>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"status": "ok", "generation": app.current.load().number}),
    )
}

async fn pipelines(State(app): State<Arc<App>>, _: RequireRole<Client>) -> Response {
    let generation = app.current.load_full();
    let pipelines: Vec<Value> = generation
        .pipelines
        .values()
        .map(|p| {
            json!({
                "name": p.name,
                "min_confidence": p.min_confidence,
                "fallthrough": p.fallthrough.as_str(),
                "stages": p.stages.iter().map(|s| json!({
                    "name": s.name(),
                    "layer": s.live.spec.layer.as_str(),
                    "digest": s.live.digest,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"generation": generation.number, "pipelines": pipelines}),
    )
}

async fn run_pipeline(
    State(app): State<Arc<App>>,
    RequireRole(_, _): RequireRole<Client>,
    Target {
        generation,
        pipeline,
    }: Target,
    ClientRequestId(client_id): ClientRequestId,
    PreferAsync(prefer_async): PreferAsync,
    JsonBody(body): JsonBody<RunBody>,
) -> Result<Response, ApiError> {
    let app = &*app;
    let client_id_given = client_id.is_some();
    if let Some(url) = &body.callback {
        app.callbacks
            .check(url)
            .map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, "callback_refused", why))?;
    }
    let attributes = body
        .attributes
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (key, text)
        })
        .collect::<BTreeMap<_, _>>();

    let created_at = crate::store::now_millis();
    let request = Request {
        id: client_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        pipeline: pipeline.name.clone(),
        input: body.input,
        attributes,
    };
    if body.background || prefer_async {
        return accept(app, request, body.callback, created_at).await;
    }
    if client_id_given && app.store.job_state(request.id.clone()).await?.is_some() {
        // Running it now would record an answer the accepted job then could
        // not complete: it would complete twice, or never.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "duplicate_request",
            format!(
                "request \"{0}\" was already accepted as an asynchronous request; \
                 GET /v1/requests/{0} for its state",
                request.id
            ),
        ));
    }
    let execution = pipeline.run(&app.run, generation.number, request).await;
    let completed = complete::complete(app, &execution, created_at, body.callback, Mode::RealTime)
        .await
        .map_err(|error| {
            tracing::error!(request_id = %execution.request.id, %error, "cannot keep a request");
            ApiError::store_unavailable(error.client_message())
        })?;
    let (record, ticket) = (completed.record, completed.ticket);
    let status = match (&execution.verdict, ticket) {
        (_, Some(_)) => StatusCode::ACCEPTED,
        (verdict, None) => final_status(verdict),
    };
    let mut view = request_view(&record, completed.trace, None);
    if let Some(id) = ticket {
        view["ticket"] = json!({"id": id, "state": "open", "reason": record.message});
    }
    let mut response = json_response(status, &view);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(1));
    }
    Ok(response)
}

/// The status of a response to a run that ended without a ticket.
fn final_status(verdict: &Verdict) -> StatusCode {
    match verdict {
        Verdict::Answered { .. } => StatusCode::OK,
        Verdict::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Verdict::Failed {
            failure: StageFailure::Overloaded { .. },
            ..
        } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// Accept an asynchronous request: 202 once it is durable.
async fn accept(
    app: &App,
    request: Request,
    callback: Option<String>,
    created_at: i64,
) -> Result<Response, ApiError> {
    let job = Job {
        id: request.id.clone(),
        pipeline: request.pipeline.clone(),
        input: request.input,
        attributes: serde_json::to_string(&request.attributes).expect("a string map serializes"),
        callback,
        created_at,
    };
    match crate::jobs::submit(app, job).await {
        Ok(()) => {
            let link = format!("/v1/requests/{}", request.id);
            let mut response = json_response(
                StatusCode::ACCEPTED,
                &json!({
                    "request_id": request.id,
                    "pipeline": request.pipeline,
                    "status": "accepted",
                    "links": {"self": link},
                }),
            );
            if let Ok(location) = http::HeaderValue::from_str(&link) {
                response
                    .headers_mut()
                    .insert(http::header::LOCATION, location);
            }
            Ok(response)
        }
        Err(SubmitError::Full) => {
            app.metrics.async_refused(&request.pipeline);
            let error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!(
                    "the queue of asynchronous requests is full ({} waiting or running); \
                     retry later",
                    app.jobs.pending()
                ),
            );
            Err(error.retry_after(1))
        }
        Err(SubmitError::Store(StoreError::Conflict(_))) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "duplicate_request",
            format!(
                "request \"{0}\" was already accepted; GET /v1/requests/{0} for its state",
                request.id
            ),
        )),
        Err(SubmitError::Store(error)) => Err(error.into()),
    }
}

/// Rate an answer, optionally correcting it. A correction becomes the
/// approved answer under the request's answer-bank key, so the next
/// identical request gets it; a bad rating without one drops the
/// unapproved answer there, so the next one is answered afresh.
async fn feedback(
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
async fn export_feedback(State(app): State<Arc<App>>, _: RequireRole<Reviewer>) -> Response {
    let (lines, mut receiver) = tokio::sync::mpsc::channel::<String>(64);
    app.store.export_feedback(lines);
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

async fn get_request(
    State(app): State<Arc<App>>,
    _: RequireRole<Client>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match stored_view(&app, &id).await? {
        Some(view) => Ok(json_response(StatusCode::OK, &view)),
        None => Err(ApiError::not_found(
            "unknown_request",
            format!("no request with id \"{id}\""),
        )),
    }
}

async fn list_tickets(
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
    let limit = match query.limit {
        None => DEFAULT_TICKET_PAGE,
        Some(value) => value
            .parse()
            .ok()
            .filter(|n| (1..=MAX_TICKET_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit \"{value}\" is not a number in 1..={MAX_TICKET_PAGE}"
                ))
            })?,
    };
    let tickets = app.store.tickets(filter, limit).await?;
    let views: Vec<Value> = tickets.iter().map(ticket_view).collect();
    Ok(json_response(StatusCode::OK, &json!({"tickets": views})))
}

async fn get_ticket(
    State(app): State<Arc<App>>,
    _: RequireRole<Reviewer>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_ticket_id(&id)?;
    match app.store.ticket(id).await? {
        Some(ticket) => Ok(json_response(StatusCode::OK, &ticket_view(&ticket))),
        None => Err(ApiError::not_found(
            "unknown_ticket",
            format!("no ticket {id}"),
        )),
    }
}

async fn claim(
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

async fn reject(
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

async fn resolve(
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
        app.metrics.answered(&ticket.pipeline, "human", waited);
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
