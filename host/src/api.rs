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
//! | `/v1/tickets/{id}/resolve` | POST | reviewer | `{"reviewer": "...", "answer": "..."}` |
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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Caller, Denied, Role};
use crate::jobs::SubmitError;
use crate::pipeline::{Execution, Verdict};
use crate::request::Request;
use crate::runtime::StageFailure;
use crate::server::App;
use crate::store::{
    Job, NewTicket, RequestRecord, RequestState, StoreError, Ticket, TicketFilter, TicketKind,
};

/// The response type of every route.
pub type Response = http::Response<BoxBody<Bytes, std::convert::Infallible>>;

/// Default and largest page of `GET /v1/tickets`.
const DEFAULT_TICKET_PAGE: u32 = 100;
const MAX_TICKET_PAGE: u32 = 1_000;

/// A failed API call: a status and a typed body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    allow: Option<&'static str>,
    retry_after: Option<u32>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub(crate) fn method_not_allowed(method: &Method, path: &str, allow: &'static str) -> Self {
        let mut error = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}; use {allow}"),
        );
        error.allow = Some(allow);
        error
    }

    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub(crate) fn into_response(self) -> Response {
        let mut response = json_response(
            self.status,
            &json!({"error": {"code": self.code, "message": self.message}}),
        );
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(ALLOW, http::HeaderValue::from_static(allow));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Unauthenticated(message) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
            }
            Denied::Forbidden(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
        }
    }
}

/// Check that the caller of `request` may act as `role`.
pub(crate) fn authorize<B>(
    app: &App,
    request: &http::Request<B>,
    role: Role,
    peer: SocketAddr,
) -> Result<crate::auth::Caller, ApiError> {
    let header = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    // The name the caller used for this host, which same-machine trust
    // needs to be a loopback one (HTTP/1.1 always sends Host; an absolute
    // request target carries it instead).
    let host = request
        .headers()
        .get(http::header::HOST)
        .map(|v| v.as_bytes())
        .or_else(|| request.uri().authority().map(|a| a.as_str().as_bytes()));
    Ok(app.tokens.authorize(role, header, peer.ip(), host)?)
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(what) => {
                ApiError::not_found("not_found", format!("{what} does not exist"))
            }
            StoreError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            StoreError::Closed | StoreError::Database(_) => {
                tracing::error!(%error, "store operation failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store cannot be reached; retry later",
                )
            }
        }
    }
}

enum Route<'a> {
    Health,
    Pipelines,
    Pipeline(&'a str),
    Request(&'a str),
    Tickets,
    Ticket(&'a str),
    Claim(&'a str),
    Resolve(&'a str),
    Reject(&'a str),
    Feedback,
    FeedbackExport,
}

impl<'a> Route<'a> {
    fn parse(path: &'a str) -> Option<Route<'a>> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        Some(match segments.as_slice() {
            ["healthz"] => Route::Health,
            ["v1", "pipelines"] => Route::Pipelines,
            ["v1", "pipelines", name] => Route::Pipeline(name),
            ["v1", "requests", id] => Route::Request(id),
            ["v1", "tickets"] => Route::Tickets,
            ["v1", "tickets", id] => Route::Ticket(id),
            ["v1", "tickets", id, "claim"] => Route::Claim(id),
            ["v1", "tickets", id, "resolve"] => Route::Resolve(id),
            ["v1", "tickets", id, "reject"] => Route::Reject(id),
            ["v1", "feedback"] => Route::Feedback,
            ["v1", "feedback", "export"] => Route::FeedbackExport,
            _ => return None,
        })
    }

    fn method(&self) -> (Method, &'static str) {
        match self {
            Route::Pipeline(_)
            | Route::Claim(_)
            | Route::Resolve(_)
            | Route::Reject(_)
            | Route::Feedback => (Method::POST, "POST"),
            _ => (Method::GET, "GET"),
        }
    }

    fn role(&self) -> Option<Role> {
        match self {
            Route::Health => None,
            Route::Pipelines | Route::Pipeline(_) | Route::Request(_) | Route::Feedback => {
                Some(Role::Client)
            }
            Route::FeedbackExport => Some(Role::Reviewer),
            Route::Tickets
            | Route::Ticket(_)
            | Route::Claim(_)
            | Route::Resolve(_)
            | Route::Reject(_) => Some(Role::Reviewer),
        }
    }
}

/// Answer one HTTP request from `peer`. Never fails: every error becomes a
/// typed body.
pub async fn handle(app: Arc<App>, request: http::Request<Incoming>, peer: SocketAddr) -> Response {
    match dispatch(&app, request, peer).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn dispatch(
    app: &App,
    request: http::Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response, ApiError> {
    let path = request.uri().path().to_owned();
    let Some(route) = Route::parse(&path) else {
        return Err(ApiError::not_found(
            "no_route",
            format!("no route for {path}"),
        ));
    };
    let (method, allow) = route.method();
    if request.method() != method {
        return Err(ApiError::method_not_allowed(request.method(), &path, allow));
    }
    let caller = match (&route, route.role()) {
        (Route::Feedback, _) => authorize_feedback(app, &request, peer)?,
        (_, Some(role)) => authorize(app, &request, role, peer)?,
        (_, None) => Caller::anonymous(),
    };
    match route {
        Route::Health => Ok(health(app)),
        Route::Pipelines => Ok(pipelines(app)),
        Route::Pipeline(name) => run_pipeline(app, name, request).await,
        Route::Request(id) => get_request(app, id).await,
        Route::Tickets => list_tickets(app, request.uri().query()).await,
        Route::Ticket(id) => get_ticket(app, parse_ticket_id(id)?).await,
        Route::Claim(id) => {
            let id = parse_ticket_id(id)?;
            let body: ClaimBody = read_json(app, request).await?;
            let ticket = app
                .store
                .claim(id, reviewer_of(&caller, body.reviewer)?)
                .await?;
            Ok(json_response(StatusCode::OK, &ticket_view(&ticket)))
        }
        Route::Reject(id) => {
            let id = parse_ticket_id(id)?;
            let body: RejectBody = read_json(app, request).await?;
            let reviewer = reviewer_of(&caller, body.reviewer)?;
            let ticket = app.store.reject_correction(id, reviewer, body.note).await?;
            Ok(json_response(StatusCode::OK, &ticket_view(&ticket)))
        }
        Route::Feedback => feedback(app, request, caller).await,
        Route::FeedbackExport => Ok(export_feedback(app)),
        Route::Resolve(id) => {
            let id = parse_ticket_id(id)?;
            let body: ResolveBody = read_json(app, request).await?;
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
                bank_of(app, &ticket.pipeline).approve(key.clone(), answer.clone(), source);
            }
            // The question becomes an example of the approved answer, so
            // the next question like it gets the answer, not only this one.
            if let Some(answer) = &ticket.resolution {
                learn(app, &ticket.pipeline, &ticket.input, answer, source).await;
            }
            if let (TicketKind::Escalation, Some(resolved_at)) = (ticket.kind, ticket.resolved_at) {
                let waited = (resolved_at - ticket.created_at).max(0) as f64 / 1000.0;
                app.metrics.answered(&ticket.pipeline, "human", waited);
            }
            Ok(json_response(StatusCode::OK, &ticket_view(&ticket)))
        }
    }
}

fn health(app: &App) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"status": "ok", "generation": app.current.load().number}),
    )
}

fn pipelines(app: &App) -> Response {
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

async fn run_pipeline(
    app: &App,
    name: &str,
    request: http::Request<Incoming>,
) -> Result<Response, ApiError> {
    // Load the generation once: this request runs on it from start to end.
    let generation = app.current.load_full();
    let Some(pipeline) = generation.pipelines.get(name).cloned() else {
        let known: Vec<&str> = generation.pipelines.keys().map(String::as_str).collect();
        return Err(ApiError::not_found(
            "unknown_pipeline",
            format!(
                "no pipeline named \"{name}\"; this host serves: {}",
                known.join(", ")
            ),
        ));
    };
    let client_id = request_id_header(&request)?;
    let client_id_given = client_id.is_some();
    let prefer_async = prefers_async(&request);
    let body: RunBody = read_json(app, request).await?;
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
    let mut record = record_of(&execution, created_at);
    record.callback = body.callback;

    let (status, ticket) = match &execution.verdict {
        Verdict::Escalated { reason, draft, .. } => {
            // The client hears "escalated" only once the ticket is durable.
            let ticket = NewTicket {
                reason: reason.clone(),
                draft: draft.clone(),
            };
            let id = app
                .store
                .escalate(record.clone(), ticket)
                .await
                .map_err(|e| {
                    tracing::error!(request_id = %record.id, error = %e, "cannot save a ticket");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        "the request needs a human reviewer but its ticket could not be saved; \
                     retry later",
                    )
                })?;
            (StatusCode::ACCEPTED, Some(id))
        }
        verdict if record.callback.is_some() => {
            // The client is told its callback will come only once the
            // callback is durable: a crash after this response loses nothing.
            app.store
                .record_durably(record.clone())
                .await
                .map_err(|e| {
                    tracing::error!(request_id = %record.id, error = %e, "cannot save a callback");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        "the request ran but its callback could not be saved; retry later",
                    )
                })?;
            (final_status(verdict), None)
        }
        verdict => {
            if let Err(error) = app.store.record(record.clone()).await {
                tracing::error!(request_id = %record.id, %error, "cannot queue the request record");
            }
            (final_status(verdict), None)
        }
    };
    let mut view = request_view(&record, None);
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

/// Whether the client asked for an asynchronous answer with
/// `Prefer: respond-async` (RFC 7240).
fn prefers_async<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|preference| {
            preference
                .split(';')
                .next()
                .is_some_and(|token| token.trim().eq_ignore_ascii_case("respond-async"))
        })
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
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!(
                    "the queue of asynchronous requests is full ({} waiting or running); \
                     retry later",
                    app.jobs.pending()
                ),
            );
            error.retry_after = Some(1);
            Err(error)
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

/// A pipeline's answer bank, with the settings of the serving generation
/// (or the defaults, for a pipeline no longer served).
pub(crate) fn bank_of(app: &App, pipeline: &str) -> Arc<crate::bank::Bank> {
    let generation = app.current.load();
    let spec = generation
        .pipelines
        .get(pipeline)
        .map(|p| p.answer_bank.clone())
        .unwrap_or_default();
    app.run.banks.bank(pipeline, &spec)
}

/// Rate an answer, optionally correcting it. A correction becomes the
/// approved answer under the request's answer-bank key, so the next
/// identical request gets it; a bad rating without one drops the
/// unapproved answer there, so the next one is answered afresh.
async fn feedback(
    app: &App,
    request: http::Request<Incoming>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let body: FeedbackBody = read_json(app, request).await?;
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
        let patterns = bank_of(app, &record.pipeline).patterns().clone();
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
            bank_of(app, &record.pipeline).approve(key.clone(), text.clone(), "correction");
            "corrected: the next identical request gets the correction"
        }
        (Some(key), None) if rating == "bad" => {
            if bank_of(app, &record.pipeline).forget_unapproved(key) {
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
            bank_of(app, pipeline).patterns().learn(&stored);
            Some(stored.id)
        }
        Err(error) => {
            tracing::error!(%error, pipeline, "cannot learn an approved answer");
            None
        }
    }
}

/// The feedback dataset as JSON lines, streamed.
fn export_feedback(app: &App) -> Response {
    let (lines, receiver) = tokio::sync::mpsc::channel::<String>(64);
    app.store.export_feedback(lines);
    let stream = futures_stream(receiver);
    let mut response = http::Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// A receiver of lines as a stream of body frames.
fn futures_stream(
    mut receiver: tokio::sync::mpsc::Receiver<String>,
) -> impl futures_core::Stream<Item = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> {
    futures_util::stream::poll_fn(move |cx| {
        receiver
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(hyper::body::Frame::data(Bytes::from(l)))))
    })
}

/// The client's own request id, if it sent one.
fn request_id_header<B>(request: &http::Request<B>) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get("x-request-id") else {
        return Ok(None);
    };
    let valid = value.to_str().ok().filter(|id| {
        (1..=128).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    });
    match valid {
        Some(id) => Ok(Some(id.to_owned())),
        None => Err(ApiError::bad_request(
            "X-Request-Id must be 1 to 128 letters, digits, '-', '_', '.' or ':'",
        )),
    }
}

/// The durable record of a finished pipeline run.
pub(crate) fn record_of(execution: &Execution, created_at: i64) -> RequestRecord {
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

/// The JSON a client sees for a request, fresh or looked up later.
fn request_view(record: &RequestRecord, ticket: Option<&Ticket>) -> Value {
    let stages = serde_json::from_str::<Value>(&record.trace).unwrap_or(Value::Null);
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
        "answered" => {
            view["output"] = json!(record.output);
            view["confidence"] = json!(record.confidence);
        }
        "rejected" => {
            view["rejection"] = json!({"code": record.code, "message": record.message});
        }
        "failed" => {
            view["error"] = json!({"code": record.code, "message": record.message});
        }
        _ => {}
    }
    if let Some(ticket) = ticket {
        view["ticket"] = json!({
            "id": ticket.id,
            "state": ticket.state,
            "reason": ticket.reason,
        });
        if ticket.state == "resolved" {
            view["reviewer"] = json!(ticket.resolved_by);
        }
    }
    view
}

async fn get_request(app: &App, id: &str) -> Result<Response, ApiError> {
    match stored_view(app, id).await? {
        Some(view) => Ok(json_response(StatusCode::OK, &view)),
        None => Err(ApiError::not_found(
            "unknown_request",
            format!("no request with id \"{id}\""),
        )),
    }
}

/// A request as `GET /v1/requests/{id}` shows it: its record (and ticket)
/// once it ran, its job's state while it waits or runs, and its callback's
/// deliveries when it named one.
pub(crate) async fn stored_view(app: &App, id: &str) -> Result<Option<Value>, StoreError> {
    // The record first: a job's end and its record commit together, so a
    // record read before the job never shows a job still running.
    let mut record = app.store.request(id.to_owned()).await?;
    let job = app.store.job_state(id.to_owned()).await?;
    if record.is_none()
        && job
            .as_ref()
            .is_some_and(|j| matches!(j.state.as_str(), "done" | "dead"))
    {
        // It completed between the two reads.
        record = app.store.request(id.to_owned()).await?;
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
            let mut view = request_view(&record, ticket.as_ref());
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
            "status": if job.state == "running" { "running" } else { "accepted" },
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
    if let Some(mut callback) = app.store.callback(id.to_owned()).await? {
        for delivery in callback["deliveries"].as_array_mut().into_iter().flatten() {
            if let Some(at) = delivery["at"].as_i64() {
                delivery["at"] = json!(timestamp(at));
            }
        }
        view["callback"] = callback;
    }
    Ok(Some(view))
}

/// The record of an asynchronous request whose pipeline a reload removed
/// before it ran.
pub(crate) fn unknown_pipeline_record(job: &Job, generation: u64) -> RequestRecord {
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

async fn list_tickets(app: &App, query: Option<&str>) -> Result<Response, ApiError> {
    let mut filter = TicketFilter::Pending;
    let mut limit = DEFAULT_TICKET_PAGE;
    for (key, value) in query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
    {
        match key {
            "state" => {
                filter = match value {
                    "pending" => TicketFilter::Pending,
                    "open" => TicketFilter::State("open"),
                    "claimed" => TicketFilter::State("claimed"),
                    "resolved" => TicketFilter::State("resolved"),
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "state \"{other}\" is not one of pending, open, claimed, resolved"
                        )));
                    }
                }
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_TICKET_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit \"{value}\" is not a number in 1..={MAX_TICKET_PAGE}"
                        ))
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter \"{other}\"; use state and limit"
                )));
            }
        }
    }
    let tickets = app.store.tickets(filter, limit).await?;
    let views: Vec<Value> = tickets.iter().map(ticket_view).collect();
    Ok(json_response(StatusCode::OK, &json!({"tickets": views})))
}

async fn get_ticket(app: &App, id: i64) -> Result<Response, ApiError> {
    match app.store.ticket(id).await? {
        Some(ticket) => Ok(json_response(StatusCode::OK, &ticket_view(&ticket))),
        None => Err(ApiError::not_found(
            "unknown_ticket",
            format!("no ticket {id}"),
        )),
    }
}

fn ticket_view(ticket: &Ticket) -> Value {
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

/// The caller of `POST /v1/feedback`: a reviewer (or admin) when the
/// request carries such a token, whose corrections apply at once; otherwise
/// a client, whose corrections are proposals.
fn authorize_feedback<B>(
    app: &App,
    request: &http::Request<B>,
    peer: SocketAddr,
) -> Result<Caller, ApiError> {
    if request.headers().contains_key(http::header::AUTHORIZATION)
        && let Ok(caller) = authorize(app, request, Role::Reviewer, peer)
        && caller.is_reviewer()
    {
        return Ok(caller);
    }
    authorize(app, request, Role::Client, peer)
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

/// Read a JSON body of at most the configured size.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    app: &App,
    request: http::Request<Incoming>,
) -> Result<T, ApiError> {
    let limit = app.max_body;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    };
    // Refuse early when the client says how much it will send.
    if let Some(length) = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > limit as u64
    {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(
        app.body_timeout,
        Limited::new(request.into_body(), limit).collect(),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} ms",
                app.body_timeout.as_millis()
            ),
        )
    })?;
    let body = collected
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            }
        })?
        .to_bytes();
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body must be a JSON object, not an array",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the request body is not valid: {e}"),
        )
    })
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = http::Response::new(
        Full::new(Bytes::from(
            serde_json::to_vec(body).expect("a JSON value serializes"),
        ))
        .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn timestamp(millis: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(millis.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// The JSON of a pipeline run that was not served over HTTP (`strata run`):
/// the same shape as a response, plus what a rule writer wants to see and a
/// client is not shown: the input and attributes as the last stage left them,
/// and an escalation's reason and draft.
pub fn execution_view(execution: &Execution) -> Value {
    let record = record_of(execution, crate::store::now_millis());
    let mut view = request_view(&record, None);
    view["input"] = json!(execution.request.input);
    view["attributes"] = json!(execution.request.attributes);
    if let Verdict::Escalated { reason, draft, .. } = &execution.verdict {
        view["escalation"] = json!({"reason": reason, "draft": draft});
    }
    view
}
