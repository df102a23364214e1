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
//! | `/v1/tickets/{id}/release` | POST | reviewer | `{}`: put a ticket one holds back in the queue (an admin: any claimed ticket) |
//! | `/v1/tickets/{id}/similar` | GET | reviewer | approved answers of the pipeline's bank that fit the ticket's question |
//! | `/v1/feedback` | POST | client | `{"request_id", "rating": "good"\|"bad", "correction"}` |
//! | `/v1/feedback/export` | GET | reviewer | rated and corrected requests as JSON lines |
//! | `/v1/chat/completions`, `/v1/completions`, `/v1/models` | POST, POST, GET | client | the OpenAI-compatible front door (see [`super::openai`]) |
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
//! A real-time request still running after `[server] request_timeout_ms`
//! is answered 504 `still_running` with its id; it goes on, and is kept.
//!
//! Every error is a JSON body `{"error": {"code": "...", "message": "..."}}`
//! with a 4xx or 5xx status; guest and engine internals stay in the log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, json_response};
use super::extract::{
    Arrived, Client, ClientRequestId, JsonBody, PreferAsync, RequireRole, Target,
};
use super::only;
use super::review::{
    claim, export_feedback, feedback, get_ticket, list_tickets, reject, release, resolve, similar,
};
use crate::app::App;
use crate::complete::{self, Mode};
use crate::metrics::{Laps, Phase};
use crate::pipeline::{Generation, Pipeline, RunContext, Verdict};
use crate::queue::SubmitError;
use crate::request::Request;
use crate::runtime::StageFailure;
use crate::states::TicketState;
use crate::store::{Job, StoreError};
use crate::teams::Admission;
use crate::views::{RequestView, TicketBrief, stored_view};

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
        .route("/v1/tickets/{id}/release", only(post(release), "POST"))
        .route("/v1/tickets/{id}/similar", only(get(similar), "GET"))
        .route("/v1/feedback", only(post(feedback), "POST"))
        .route("/v1/feedback/export", only(get(export_feedback), "GET"))
        .route(
            "/v1/chat/completions",
            only(post(super::openai::chat_completions), "POST"),
        )
        .route(
            "/v1/completions",
            only(post(super::openai::completions), "POST"),
        )
        .route("/v1/models", only(get(super::openai::models), "GET"))
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
    Arrived(arrived): Arrived,
    RequireRole(caller, _): RequireRole<Client>,
    Target {
        generation,
        pipeline,
    }: Target,

    ClientRequestId(client_id): ClientRequestId,
    PreferAsync(prefer_async): PreferAsync,
    JsonBody(body): JsonBody<RunBody>,
) -> Result<Response, ApiError> {
    let shared = app.clone();
    let app = &*app;
    let admission = app
        .teams
        .admit(
            &app.store,
            &generation.manifest,
            &caller,
            pipeline.name.as_str(),
        )
        .await?;
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
        pipeline: pipeline.name.to_string(),
        input: body.input,
        attributes,
    };
    if body.background || prefer_async {
        if admission.cheap_only {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "budget_exhausted",
                "the team is over its budget: asynchronous requests are refused until it \
                 resets; real-time requests are served by the cheap layers",
            ));
        }
        return accept(app, request, body.callback, admission.team, created_at).await;
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
    app.metrics.phase(Phase::Receive, arrived.elapsed());
    let ran = run_real_time(
        shared,
        generation,
        pipeline,
        request,
        created_at,
        body.callback,
        admission,
    )
    .await?;
    let resumed = Instant::now();
    let response = ran.into_response();
    app.metrics.phase(Phase::Respond, resumed.elapsed());
    Ok(response)
}

/// A real-time run's outcome: the status and the request's JSON view.
pub(super) struct Ran {
    pub(super) status: StatusCode,
    pub(super) view: RequestView,
    /// When it started, ran the pipeline and kept the request.
    laps: Laps,
}

impl Ran {
    fn into_response(self) -> Response {
        let mut response = json_response(self.status, &self.view);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(1));
        }
        response
    }
}

/// Run `request` now and wait for it, within `[server] request_timeout_ms`.
///
/// The run and its record go on to their end whatever the client does: a
/// client that hangs up, or one not answered in time, stops only the
/// waiting, and what is left of the run becomes one of the host's tasks
/// ([`crate::app::Lifecycle::finish`]). What the run did (a model call is
/// paid for) is kept either way, and shutdown waits for it. While the
/// client waits the run is polled in the request's own task, with no
/// hand-off to another. The hand-off phase (what lies between the handler
/// and the run), the run and the keeping are observed as the request's
/// phases; the caller observes the rest.
pub(super) async fn run_real_time(
    app: Arc<App>,
    generation: Arc<Generation>,
    pipeline: Arc<Pipeline>,
    request: Request,
    created_at: i64,
    callback: Option<String>,
    admission: Admission,
) -> Result<Ran, ApiError> {
    let id = request.id.clone();
    let handed = Instant::now();
    let run = app.lifecycle.finish(run_and_keep(
        app.clone(),
        generation,
        pipeline,
        request,
        created_at,
        callback,
        admission,
    ));
    match tokio::time::timeout(app.request_timeout, run).await {
        Ok(Ok(Ok(ran))) => {
            app.metrics.laps(handed, ran.laps, Instant::now());
            Ok(ran)
        }
        Ok(Ok(Err(refused))) => Err(refused),
        Ok(Err(panicked)) => {
            tracing::error!(request_id = %id, error = %panicked, "a request's run panicked");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the host failed while running the request; it is in the log",
            ))
        }
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "still_running",
            format!(
                "request \"{id}\" is still running after {} ms; it goes on and its answer \
                 is kept: GET /v1/requests/{id}",
                app.request_timeout.as_millis()
            ),
        )),
    }
}

/// Run a real-time request and keep what it did: its record, a ticket for
/// an escalation, a callback to deliver.
async fn run_and_keep(
    app: Arc<App>,
    generation: Arc<Generation>,
    pipeline: Arc<Pipeline>,
    request: Request,
    created_at: i64,
    callback: Option<String>,
    admission: Admission,
) -> Result<Ran, ApiError> {
    let started = Instant::now();
    // A team over its budget with `over_budget = "cheap_layers"`: the same
    // stages, with model calls off.
    let cheap;
    let ctx = if admission.cheap_only {
        cheap = RunContext {
            models: false,
            ..app.run.clone()
        };
        &cheap
    } else {
        &app.run
    };
    let execution = pipeline.run(ctx, generation.number, request).await;
    let ran = Instant::now();
    let completed = complete::complete(
        &app.store,
        &app.metrics,
        &execution,
        created_at,
        callback,
        admission.team.clone(),
        Mode::RealTime,
    )
    .await
    .map_err(|error| {
        tracing::error!(request_id = %execution.request.id, %error, "cannot keep a request");
        ApiError::store_unavailable(error.client_message())
    })?;
    if let Some(team) = &admission.team {
        app.teams.charge(team, completed.record.cost_usd).await;
        app.metrics.team_request(team, completed.record.cost_usd);
    }
    if let Some(telemetry) = &app.telemetry {
        telemetry.request(&completed.record, &execution.trace, created_at);
    }
    let (record, ticket) = (completed.record, completed.ticket);
    let status = match (&execution.verdict, ticket) {
        (_, Some(_)) => StatusCode::ACCEPTED,
        (verdict, None) => final_status(verdict),
    };
    let reason = record.message.clone();
    let mut view = RequestView::of(record, None);
    view.ticket = ticket.map(|id| TicketBrief {
        id,
        state: TicketState::Open,
        reason,
    });
    let laps = Laps {
        started,
        ran,
        kept: Instant::now(),
    };
    Ok(Ran { status, view, laps })
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
    team: Option<String>,
    created_at: i64,
) -> Result<Response, ApiError> {
    let job = Job {
        id: request.id.clone(),
        pipeline: request.pipeline.clone(),
        input: request.input,
        attributes: serde_json::to_string(&request.attributes).expect("a string map serializes"),
        callback,
        created_at,
        team,
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

async fn get_request(
    State(app): State<Arc<App>>,
    _: RequireRole<Client>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match stored_view(&app.store, &id).await? {
        Some(view) => Ok(json_response(StatusCode::OK, &view)),
        None => Err(ApiError::not_found(
            "unknown_request",
            format!("no request with id \"{id}\""),
        )),
    }
}
