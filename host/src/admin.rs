//! The admin API, on its own listener (loopback by default), for operators.
//! Every route needs the admin role (see [`crate::auth`]). Every POST must
//! say `Content-Type: application/json` or carry `X-Strata-Admin: 1`: a web
//! page can send neither across origins without the browser asking first
//! (a CORS preflight this API never grants), so a page the operator opens
//! cannot forge an admin call (CSRF).
//!
//! | route | method | what |
//! | --- | --- | --- |
//! | `/admin/pipelines` | GET | the serving generation: stages, digests, grants, limits, candidates, the last operation |
//! | `/admin/reload` | POST | load the manifest again; 200 with what changed, or 422 and nothing changed |
//! | `/admin/rollback` | POST | serve the previous generation again (as a new generation number) |
//! | `/admin/pipelines/{p}/slo` | GET | error budget burn rates of the pipeline and its canaries |
//! | `/admin/pipelines/{p}/shadow` | GET | shadow comparisons per stage, with differing examples |
//! | `/admin/pipelines/{p}/stages/{s}/promote` | POST | make the candidate live (edits the manifest) |
//! | `/admin/pipelines/{p}/stages/{s}/rollback` | POST | drop the candidate (edits the manifest) |
//! | `/admin/audit?limit=N` | GET | the reload audit log, newest first |
//! | `/metrics` | GET | Prometheus metrics (see [`crate::metrics`]) |

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::api::{ApiError, Response, authorize, json_response, timestamp};
use crate::auth::Role;
use crate::pipeline::Stage;
use crate::reload::{CandidateError, Report, Trigger};
use crate::runtime::capabilities::ImportRule;
use crate::server::App;
use crate::slo::SeriesKey;

/// Answer one admin request from `peer`.
pub async fn handle(app: Arc<App>, request: http::Request<Incoming>, peer: SocketAddr) -> Response {
    match dispatch(&app, request, peer).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn dispatch(
    app: &Arc<App>,
    request: http::Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response, ApiError> {
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let (allow, method) = match segments.as_slice() {
        ["admin", "pipelines"] | ["admin", "audit"] | ["metrics"] => ("GET", Method::GET),
        ["admin", "pipelines", _, "slo"] | ["admin", "pipelines", _, "shadow"] => {
            ("GET", Method::GET)
        }
        ["admin", "reload"] | ["admin", "rollback"] => ("POST", Method::POST),
        ["admin", "pipelines", _, "stages", _, "promote" | "rollback"] => ("POST", Method::POST),
        _ => {
            return Err(ApiError::not_found(
                "no_route",
                format!("no admin route for {path}"),
            ));
        }
    };
    if request.method() != method {
        return Err(ApiError::method_not_allowed(request.method(), &path, allow));
    }
    let caller = authorize(app, &request, Role::Admin, peer)?;
    if method == Method::POST && !deliberate(&request) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "admin POSTs must send Content-Type: application/json (or X-Strata-Admin: 1), so \
             that a web page cannot forge them",
        ));
    }
    let trigger = Trigger {
        source: "admin",
        actor: caller.id,
    };
    match segments.as_slice() {
        ["admin", "pipelines"] => Ok(json_response(StatusCode::OK, &pipelines(app))),
        ["metrics"] => Ok(metrics(app)),
        ["admin", "audit"] => audit(app, request.uri().query()).await,
        ["admin", "pipelines", name, "slo"] => slo(app, name),
        ["admin", "pipelines", name, "shadow"] => {
            known_pipeline(app, name)?;
            let summary = app.store.shadow_summary((*name).to_owned(), 10).await?;
            Ok(json_response(StatusCode::OK, &summary))
        }
        ["admin", "reload"] => Ok(report_response(crate::reload::reload(app, trigger).await)),
        ["admin", "rollback"] => Ok(report_response(crate::reload::rollback(app, trigger).await)),
        ["admin", "pipelines", pipeline, "stages", stage, action] => {
            let promote = *action == "promote";
            match crate::reload::settle_candidate(app, pipeline, stage, promote, trigger).await {
                Ok(report) => Ok(report_response(report)),
                Err(CandidateError::NotFound(message)) => {
                    Err(ApiError::not_found("not_found", message))
                }
                Err(CandidateError::NoCandidate(message)) => {
                    Err(ApiError::new(StatusCode::CONFLICT, "no_candidate", message))
                }
            }
        }
        _ => unreachable!("every route above was matched when checking the method"),
    }
}

/// Whether a POST carries a header a cross-origin web page cannot set
/// without a preflight: a JSON content type or `X-Strata-Admin: 1`.
fn deliberate<B>(request: &http::Request<B>) -> bool {
    let headers = request.headers();
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    json || headers
        .get("x-strata-admin")
        .is_some_and(|v| v.as_bytes() == b"1")
}

fn metrics(app: &App) -> Response {
    // Burn rates are computed now, so a scrape sees them as of now.
    let generation = app.current.load_full();
    for (name, pipeline) in &generation.pipelines {
        let bank = app.run.banks.bank(name, &pipeline.answer_bank);
        app.metrics.answer_bank(name, &bank.patterns().stats());
        let series = app
            .ops
            .budgets
            .series(SeriesKey::Pipeline(name.clone()), &pipeline.slo);
        let alerts = series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .alerts(None);
        for alert in alerts {
            let windows = format!("{}s/{}s", alert.long_s, alert.short_s);
            let metrics = &app.metrics;
            metrics.burn_rate(
                name,
                format!("long:{}s", alert.long_s),
                alert.long.burn_rate,
            );
            metrics.burn_rate(
                name,
                format!("short:{}s", alert.short_s),
                alert.short.burn_rate,
            );
            metrics.alert_firing(name, windows, alert.firing);
        }
    }
    app.metrics.async_pending(app.jobs.pending());
    let mut response = http::Response::new(http_body_util::BodyExt::boxed(
        http_body_util::Full::new(bytes::Bytes::from(app.metrics.encode())),
    ));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}

fn report_response(report: Report) -> Response {
    if report.failed() {
        let message = report.error.clone().unwrap_or_default();
        json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "error": {"code": format!("{}_failed", report.action), "message": message},
                "report": report,
            }),
        )
    } else {
        json_response(StatusCode::OK, &json!(report))
    }
}

fn known_pipeline(app: &App, name: &str) -> Result<(), ApiError> {
    if app.current.load().pipelines.contains_key(name) {
        Ok(())
    } else {
        Err(ApiError::not_found(
            "unknown_pipeline",
            format!("no pipeline named \"{name}\""),
        ))
    }
}

fn pipelines(app: &App) -> Value {
    let generation = app.current.load_full();
    let millis = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    json!({
        "generation": generation.number,
        "loaded_at": timestamp(millis(generation.loaded_at)),
        "manifest": {
            "path": generation.manifest.path,
            "sha256": generation.manifest.sha256,
        },
        "last_operation": app.ops.last_report(),
        "pipelines": generation.pipelines.values().map(|p| json!({
            "name": p.name,
            "min_confidence": p.min_confidence,
            "fallthrough": p.fallthrough.as_str(),
            "slo": {"target": p.slo.target, "latency_ms": p.slo.latency_ms},
            "stages": p.stages.iter().map(stage_view).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn stage_view(stage: &Stage) -> Value {
    let live = &stage.live;
    let spec = &live.spec;
    let imports = |loaded: &crate::runtime::LoadedStage| -> Vec<String> {
        loaded
            .imports
            .iter()
            .filter(|i| i.rule != ImportRule::Baseline)
            .map(|i| i.name.clone())
            .collect()
    };
    json!({
        "name": spec.name,
        "layer": spec.layer.as_str(),
        "digest": live.digest,
        "pinned": spec.plugin.pinned,
        "plugin": spec.plugin.path,
        "grants": spec.grants.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        "imports": imports(live),
        "limits": {
            "timeout_ms": spec.limits.timeout_ms,
            "memory_mib": spec.limits.memory_mib,
            "fuel": spec.limits.fuel,
            "output_kib": spec.limits.output_kib,
        },
        "on_error": spec.on_error.as_str(),
        "candidate": stage.candidate.as_ref().map(|c| json!({
            "digest": c.stage.digest,
            "plugin": c.stage.spec.plugin.path,
            "mode": c.mode.as_str(),
            "percent": c.percent,
            "max_burn_rate": c.max_burn_rate,
            "grants": c.stage.spec.grants.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
            "imports": imports(&c.stage),
        })),
    })
}

fn slo(app: &App, name: &str) -> Result<Response, ApiError> {
    let generation = app.current.load_full();
    let Some(pipeline) = generation.pipelines.get(name) else {
        return Err(ApiError::not_found(
            "unknown_pipeline",
            format!("no pipeline named \"{name}\""),
        ));
    };
    let series = app
        .ops
        .budgets
        .series(SeriesKey::Pipeline(name.to_owned()), &pipeline.slo);
    let alerts = series
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .alerts(None);
    let candidates: Vec<Value> = pipeline
        .stages
        .iter()
        .filter_map(|stage| {
            let candidate = stage.candidate.as_ref()?;
            let key = SeriesKey::Candidate {
                pipeline: name.to_owned(),
                stage: stage.name().to_owned(),
                digest: candidate.stage.digest.clone(),
            };
            let alerts = app
                .ops
                .budgets
                .existing(&key)
                .map(|s| {
                    s.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .alerts(Some(candidate.max_burn_rate))
                })
                .unwrap_or_default();
            Some(json!({
                "stage": stage.name(),
                "digest": candidate.stage.digest,
                "mode": candidate.mode.as_str(),
                "max_burn_rate": candidate.max_burn_rate,
                "alerts": alerts,
            }))
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "pipeline": name,
            "target": pipeline.slo.target,
            "latency_ms": pipeline.slo.latency_ms,
            "error_budget": 1.0 - pipeline.slo.target,
            "alerts": alerts,
            "candidates": candidates,
        }),
    ))
}

async fn audit(app: &App, query: Option<&str>) -> Result<Response, ApiError> {
    let mut limit = 100;
    for (key, value) in query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
    {
        match key {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit \"{value}\" is not a number in 1..=1000"
                        ))
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter \"{other}\"; use limit"
                )));
            }
        }
    }
    let entries = app.store.audit_log(limit).await?;
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|entry| {
            let mut view = json!(entry);
            view["at"] = json!(timestamp(entry.at));
            view
        })
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"entries": entries})))
}
