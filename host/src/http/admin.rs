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
//! | `/admin/pipelines/{p}/traffic?hours=24` | GET | answers by layer per bucket of time, completion rate, time to value p50/p99, cost per answered request (the console's dashboard) |
//! | `/admin/pipelines/{p}/stages/{s}/promote` | POST | make the candidate live (edits the manifest) |
//! | `/admin/pipelines/{p}/stages/{s}/rollback` | POST | drop the candidate (edits the manifest) |
//! | `/admin/audit?limit=N` | GET | the reload audit log, newest first |
//! | `/admin/teams` | GET | each team's limits, and its spend today and this month against its budgets |
//! | `/metrics` | GET | Prometheus metrics (see [`crate::metrics`]) |

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, json_response};
use super::extract::{Admin, Deliberate, QueryOf, RequireRole, bounded_query};
use super::only;
use crate::app::App;
use crate::ops::{CandidateError, Report, Trigger};
use crate::pipeline::Stage;
use crate::runtime::capabilities::ImportRule;
use crate::slo::SeriesKey;
use crate::views::timestamp;

/// The admin API's routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/admin/pipelines", only(get(pipelines), "GET"))
        .route("/admin/audit", only(get(audit), "GET"))
        .route("/admin/teams", only(get(teams), "GET"))
        .route("/metrics", only(get(metrics), "GET"))
        .route("/admin/pipelines/{pipeline}/slo", only(get(slo), "GET"))
        .route(
            "/admin/pipelines/{pipeline}/shadow",
            only(get(shadow), "GET"),
        )
        .route(
            "/admin/pipelines/{pipeline}/traffic",
            only(get(traffic), "GET"),
        )
        .route("/admin/cluster", only(get(cluster), "GET"))
        .route("/admin/reload", only(post(reload), "POST"))
        .route("/admin/rollback", only(post(rollback), "POST"))
        .route(
            "/admin/pipelines/{pipeline}/stages/{stage}/{action}",
            only(post(settle), "POST"),
        )
        .fallback(|uri: http::Uri| async move {
            ApiError::not_found("no_route", format!("no admin route for {}", uri.path()))
        })
        .with_state(app)
}

/// Who acted, for the audit log.
fn trigger(caller: crate::auth::Caller) -> Trigger {
    Trigger {
        source: "admin",
        actor: caller.id,
    }
}

async fn pipelines(State(app): State<Arc<App>>, _: RequireRole<Admin>) -> Response {
    json_response(StatusCode::OK, &pipelines_view(&app))
}

/// The hosts serving as one with this host (`[shared]`), from Redis now.
async fn cluster(State(app): State<Arc<App>>, _: RequireRole<Admin>) -> Result<Response, ApiError> {
    let Some(cluster) = &app.cluster else {
        return Err(ApiError::not_found(
            "no_cluster",
            "this host serves alone: its manifest has no [shared] redis",
        ));
    };
    match cluster.view().await {
        Ok(view) => Ok(json_response(StatusCode::OK, &view)),
        Err(error) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shared_unavailable",
            error,
        )),
    }
}

async fn shadow(
    State(app): State<Arc<App>>,
    _: RequireRole<Admin>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    known_pipeline(&app, &name)?;
    let summary = app.store.shadow_summary(name, 10).await?;
    Ok(json_response(StatusCode::OK, &summary))
}

/// The query of `GET /admin/pipelines/{p}/traffic`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrafficQuery {
    #[serde(default)]
    hours: Option<String>,
}

/// The longest window `traffic` looks back over: 30 days.
const MAX_TRAFFIC_HOURS: i64 = 24 * 30;

async fn traffic(
    State(app): State<Arc<App>>,
    _: RequireRole<Admin>,
    Path(name): Path<String>,
    QueryOf(query): QueryOf<TrafficQuery>,
) -> Result<Response, ApiError> {
    known_pipeline(&app, &name)?;
    let hours = bounded_query("hours", query.hours, 24, MAX_TRAFFIC_HOURS)?;
    let hour = 3_600_000;
    // Buckets on whole hours, a day of them or fewer (a bucket per hour up
    // to two days, wider beyond).
    let bucket = hour * (hours / 48).max(1);
    let now = crate::store::now_millis();
    let since = (now - hours * hour) / bucket * bucket;
    let stats = app.store.traffic(name, since, bucket).await?;
    Ok(json_response(StatusCode::OK, &stats))
}

/// Every team with its limits, and its spend against its budgets.
async fn teams(State(app): State<Arc<App>>, _: RequireRole<Admin>) -> Result<Response, ApiError> {
    let generation = app.current.load_full();
    let mut views = Vec::new();
    for team in generation.manifest.teams.values() {
        let spend = crate::teams::spend(&app.store, &team.name).await?;
        let over = team.usd_per_day.is_some_and(|b| spend.today_usd >= b)
            || team.usd_per_month.is_some_and(|b| spend.month_usd >= b);
        views.push(json!({
            "name": team.name,
            "token_env": team.token_env,
            "pipelines": team.pipelines,
            "requests_per_minute": team.requests_per_minute,
            "budget": {"usd_per_day": team.usd_per_day, "usd_per_month": team.usd_per_month},
            "over_budget": team.over_budget.as_str(),
            "spend": {"today_usd": spend.today_usd, "month_usd": spend.month_usd},
            "other_hosts": other_hosts(&app, &team.name),
            "month": {
                "requests": spend.month_requests,
                "answered": spend.month_answered,
                "cost_per_answered_usd": (spend.month_answered > 0)
                    .then(|| spend.month_usd / spend.month_answered as f64),
            },
            "over_budget_now": over,
        }));
    }
    Ok(json_response(StatusCode::OK, &json!({"teams": views})))
}

/// What the other hosts of the cluster count against `team` (and this
/// host adds to its own), or null when the host serves alone.
fn other_hosts(app: &App, team: &str) -> Value {
    if app.cluster.is_none() {
        return Value::Null;
    }
    let others = app.teams.others(team);
    json!({
        "last_minute": others.last_minute,
        "today_usd": others.today_usd,
        "month_usd": others.month_usd,
    })
}

async fn reload(
    State(app): State<Arc<App>>,
    RequireRole(caller, _): RequireRole<Admin>,
    _: Deliberate,
) -> Response {
    report_response(crate::control::reload(&app, trigger(caller)).await)
}

async fn rollback(
    State(app): State<Arc<App>>,
    RequireRole(caller, _): RequireRole<Admin>,
    _: Deliberate,
) -> Response {
    report_response(crate::control::rollback(&app, trigger(caller)).await)
}

/// Promote a stage's candidate, or roll it back.
async fn settle(
    State(app): State<Arc<App>>,
    RequireRole(caller, _): RequireRole<Admin>,
    _: Deliberate,
    Path((pipeline, stage, action)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let promote = match action.as_str() {
        "promote" => true,
        "rollback" => false,
        _ => {
            return Err(ApiError::not_found(
                "no_route",
                format!("no admin route for /admin/pipelines/{pipeline}/stages/{stage}/{action}"),
            ));
        }
    };
    match crate::control::settle_candidate(&app, &pipeline, &stage, promote, trigger(caller)).await
    {
        Ok(report) => Ok(report_response(report)),
        Err(CandidateError::NotFound(message)) => Err(ApiError::not_found("not_found", message)),
        Err(CandidateError::NoCandidate(message)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "no_candidate", message))
        }
    }
}

async fn metrics(State(app): State<Arc<App>>, _: RequireRole<Admin>) -> Response {
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
    let mut response = Response::new(Body::from(app.metrics.encode()));
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

fn pipelines_view(app: &App) -> Value {
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
        // What its `init` left, when kept: fresh instances start from it.
        "snapshot": live.snapshot.as_ref().map(|s| json!({
            "digest": s.digest,
            "bytes": s.bytes,
        })),
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

async fn slo(
    State(app): State<Arc<App>>,
    _: RequireRole<Admin>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = name.as_str();
    let generation = app.current.load_full();
    let Some((name, pipeline)) = generation.pipelines.get_key_value(name) else {
        return Err(ApiError::not_found(
            "unknown_pipeline",
            format!("no pipeline named \"{name}\""),
        ));
    };
    let series = app
        .ops
        .budgets
        .series(SeriesKey::Pipeline(name.clone()), &pipeline.slo);
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
                pipeline: name.to_string(),
                stage: stage.name().to_owned(),
                digest: candidate.stage.digest.to_string(),
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

/// The query of `GET /admin/audit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    limit: Option<String>,
}

async fn audit(
    State(app): State<Arc<App>>,
    _: RequireRole<Admin>,
    QueryOf(query): QueryOf<AuditQuery>,
) -> Result<Response, ApiError> {
    let limit = bounded_query("limit", query.limit, 100, 1000)?;
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
