//! What handlers take from a request, each check in one place: the
//! authenticated caller ([`RequireRole`], [`FeedbackCaller`]), the JSON
//! body ([`JsonBody`]), query strings ([`QueryOf`]), the client's request
//! id, `Prefer: respond-async`, and the admin API's CSRF guard
//! ([`Deliberate`]). Each refusal is an [`ApiError`].

use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use http::StatusCode;
use http::request::Parts;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::app::App;
use crate::auth::{Caller, Role};
use crate::console::session::{self, Refused, Session};
use crate::pipeline::{Generation, Pipeline};

/// The address of the connection a request came on, which the accept loop
/// puts on every request.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// When hyper handed the request's parsed head to the host, which the
/// accept loop puts on every request: where the request's phases
/// (`strata_request_phase_seconds`) start.
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub Instant);

impl<S: Sync> FromRequestParts<S> for Arrived {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // A request that did not come through the accept loop (a test's
        // router) starts now.
        Ok(parts
            .extensions
            .get::<Arrived>()
            .copied()
            .unwrap_or_else(|| Arrived(Instant::now())))
    }
}

/// The peer's address; an unspecified one (never trusted as this machine)
/// if the request did not come through the accept loop.
fn peer_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<Peer>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |peer| peer.0.ip())
}

/// Check that the caller may act as `role` (see [`crate::auth`]): by its
/// bearer token, or else by its console session.
fn authorize(app: &App, parts: &Parts, role: Role) -> Result<Caller, ApiError> {
    let header = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if header.is_none()
        && let Some(sealed) = session::cookie_value(&parts.headers)
    {
        return session_caller(sealed, parts, role);
    }
    // A team's token is a client's credential, naming the team.
    if role == Role::Client
        && let Some(header) = header
        && let Some(team) = crate::teams::team_of_token(&app.current.load().manifest, header)
    {
        return Ok(crate::teams::caller(team));
    }
    // The name the caller used for this host, which same-machine trust
    // needs to be a loopback one (HTTP/1.1 always sends Host; an absolute
    // request target carries it instead).
    let host = parts
        .headers
        .get(http::header::HOST)
        .map(|v| v.as_bytes())
        .or_else(|| parts.uri.authority().map(|a| a.as_str().as_bytes()));
    Ok(app.tokens.authorize(role, header, peer_ip(parts), host)?)
}

/// The caller a console session stands for (see [`crate::console::session`]):
/// a valid, unexpired session of a role that may call the route, and for a
/// request that changes anything, the session's CSRF token in
/// `X-CSRF-Token`.
fn session_caller(sealed: &str, parts: &Parts, role: Role) -> Result<Caller, ApiError> {
    let session = Session::open_sealed(sealed, crate::store::now_millis()).map_err(|refused| {
        let message = match refused {
            Refused::Expired => "the console session has expired; sign in again",
            Refused::Invalid => {
                "the console session is not valid (the host may have restarted); sign in again"
            }
        };
        ApiError::new(StatusCode::UNAUTHORIZED, "session_expired", message)
    })?;
    if !matches!(parts.method, http::Method::GET | http::Method::HEAD) {
        use subtle::ConstantTimeEq;
        let sent = parts
            .headers
            .get(session::CSRF_HEADER)
            .map(|v| v.as_bytes());
        let matches = sent.is_some_and(|sent| bool::from(sent.ct_eq(session.csrf.as_bytes())));
        if !matches {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                "a console request that changes something must carry the page's X-CSRF-Token",
            ));
        }
    }
    session
        .caller_for(role)
        .map_err(|message| ApiError::new(StatusCode::FORBIDDEN, "forbidden", message))
}

/// A role a route requires, as a type.
pub trait RoleMarker {
    /// The role.
    const ROLE: Role;
}

/// The client role.
pub struct Client;
/// The reviewer role.
pub struct Reviewer;
/// The admin role.
pub struct Admin;

impl RoleMarker for Client {
    const ROLE: Role = Role::Client;
}
impl RoleMarker for Reviewer {
    const ROLE: Role = Role::Reviewer;
}
impl RoleMarker for Admin {
    const ROLE: Role = Role::Admin;
}

/// The caller, authenticated for role `R`: a handler that takes one runs
/// only for callers that may act as `R`.
pub struct RequireRole<R>(pub Caller, pub PhantomData<R>);

impl<R: RoleMarker> FromRequestParts<Arc<App>> for RequireRole<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        authorize(app, parts, R::ROLE).map(|caller| RequireRole(caller, PhantomData))
    }
}

/// The caller of `POST /v1/feedback`: a reviewer (or admin) when the
/// request carries such a token, whose corrections apply at once;
/// otherwise a client, whose corrections are proposals.
pub struct FeedbackCaller(pub Caller);

impl FromRequestParts<Arc<App>> for FeedbackCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let credentials = parts.headers.contains_key(http::header::AUTHORIZATION)
            || session::cookie_value(&parts.headers).is_some();
        if credentials
            && let Ok(caller) = authorize(app, parts, Role::Reviewer)
            && caller.is_reviewer()
        {
            return Ok(FeedbackCaller(caller));
        }
        authorize(app, parts, Role::Client).map(FeedbackCaller)
    }
}

/// The pipeline a `POST /v1/pipelines/{name}` names, on the generation
/// serving when the request arrived: the request runs on that generation
/// from start to end, however long its body takes and whatever reloads
/// happen meanwhile.
pub struct Target {
    /// The generation taken on arrival.
    pub generation: Arc<Generation>,
    /// The named pipeline in it.
    pub pipeline: Arc<Pipeline>,
}

impl FromRequestParts<Arc<App>> for Target {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let generation = app.current.load_full();
        let Path(name) = Path::<String>::from_request_parts(parts, app)
            .await
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
        let Some(pipeline) = generation.pipelines.get(name.as_str()).cloned() else {
            let known: Vec<&str> = generation
                .pipelines
                .keys()
                .map(|name| name.as_str())
                .collect();
            return Err(ApiError::not_found(
                "unknown_pipeline",
                format!(
                    "no pipeline named \"{name}\"; this host serves: {}",
                    known.join(", ")
                ),
            ));
        };
        Ok(Target {
            generation,
            pipeline,
        })
    }
}

/// An admin POST that carries a header a cross-origin web page cannot set
/// without a preflight: a JSON content type or `X-Strata-Admin: 1`.
pub struct Deliberate;

impl<S: Sync> FromRequestParts<S> for Deliberate {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let headers = &parts.headers;
        let json = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
        let marked = headers
            .get("x-strata-admin")
            .is_some_and(|v| v.as_bytes() == b"1");
        if json || marked {
            Ok(Deliberate)
        } else {
            Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "admin POSTs must send Content-Type: application/json (or X-Strata-Admin: 1), \
                 so that a web page cannot forge them",
            ))
        }
    }
}

/// A number a query names as `name`, within `1..=max`; `default` when it
/// is absent, a 400 naming the parameter when it is not such a number.
pub fn bounded_query<T>(
    name: &str,
    value: Option<String>,
    default: T,
    max: T,
) -> Result<T, ApiError>
where
    T: std::str::FromStr + PartialOrd + From<u8> + std::fmt::Display + Copy,
{
    let Some(text) = value else {
        return Ok(default);
    };
    text.parse()
        .ok()
        .filter(|n| (T::from(1)..=max).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(format!("{name} \"{text}\" is not a number in 1..={max}"))
        })
}

/// The client's own request id (`X-Request-Id`), if it sent one: 1 to 128
/// letters, digits, `-`, `_`, `.` or `:`.
pub struct ClientRequestId(pub Option<String>);

impl<S: Sync> FromRequestParts<S> for ClientRequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get("x-request-id") else {
            return Ok(ClientRequestId(None));
        };
        let valid = value.to_str().ok().filter(|id| {
            (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        });
        match valid {
            Some(id) => Ok(ClientRequestId(Some(id.to_owned()))),
            None => Err(ApiError::bad_request(
                "X-Request-Id must be 1 to 128 letters, digits, '-', '_', '.' or ':'",
            )),
        }
    }
}

/// Whether the client asked for an asynchronous answer with
/// `Prefer: respond-async` (RFC 7240).
pub struct PreferAsync(pub bool);

impl<S: Sync> FromRequestParts<S> for PreferAsync {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let prefers = parts
            .headers
            .get_all("prefer")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|preference| {
                preference
                    .split(';')
                    .next()
                    .is_some_and(|token| token.trim().eq_ignore_ascii_case("respond-async"))
            });
        Ok(PreferAsync(prefers))
    }
}

/// A query string parsed into `T`; a bad one is a 400 naming the fault.
pub struct QueryOf<T>(pub T);

impl<S: Sync, T: DeserializeOwned> FromRequestParts<S> for QueryOf<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(query)| QueryOf(query))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// A JSON object body. The edge's body limit bounds its size; it must
/// arrive within `[server] body_timeout_ms`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        let collected = tokio::time::timeout(app.body_timeout, request.into_body().collect())
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
            .map_err(|error| {
                if exceeds_limit(&error) {
                    ApiError::body_too_large(app.max_body)
                } else {
                    ApiError::bad_request(format!("cannot read the request body: {error}"))
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
        serde_json::from_slice(&body).map(JsonBody).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the request body is not valid: {e}"),
            )
        })
    }
}

/// Whether reading a body failed because it outgrew the edge's limit.
fn exceeds_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = error.source();
    }
    false
}
