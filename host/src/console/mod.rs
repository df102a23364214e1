//! The web console: a review queue for reviewers (on the API's listener)
//! and an operations dashboard for operators (on the admin listener),
//! served by the host itself, every asset embedded in the binary.
//!
//! The pages are static shells; their scripts call the same JSON API any
//! client calls, with the console session ([`session`]) in place of a
//! bearer token, so roles are enforced server-side exactly as in the API.
//!
//! | route | listener | what |
//! | --- | --- | --- |
//! | `/console` | both | to the queue (API listener) or the dashboard (admin listener) |
//! | `/console/login` | both | GET the sign-in page; POST `{"token": "..."}` to sign in |
//! | `/console/logout` | both | POST: sign out |
//! | `/console/queue` | API | the review queue (reviewer role) |
//! | `/console/dashboard` | admin | the operations dashboard (admin role) |
//! | `/console/assets/{file}` | both | the pages' scripts and style |
//!
//! Pages send a strict `Content-Security-Policy` (scripts and styles from
//! the host only, no inline code, no framing).

pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::json;

use self::session::Session;
use crate::app::App;
use crate::auth::Role;
use crate::http::ApiError;
use crate::http::error::json_response;
use crate::http::extract::JsonBody;

/// Which listener a console router serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The API's: the review queue.
    Api,
    /// The admin listener: the operations dashboard.
    Admin,
}

impl Listener {
    fn home(self) -> &'static str {
        match self {
            Listener::Api => "/console/queue",
            Listener::Admin => "/console/dashboard",
        }
    }
}

/// The console's routes for one listener.
pub fn router(app: Arc<App>, listener: Listener) -> Router {
    let home = listener.home();
    let router = Router::new()
        .route("/console", get(move || async move { redirect(home) }))
        .route(
            "/console/login",
            get(
                move |headers: HeaderMap, query: Result<Query<LoginQuery>, QueryRejection>| async move {
                    // A query that does not parse is no reason to refuse the page.
                    let why = query.ok().and_then(|Query(q)| q.why);
                    login_page(listener, &headers, why.as_deref())
                },
            )
            .post(login),
        )
        .route("/console/logout", post(logout))
        .route("/console/assets/{file}", get(asset));
    let router = match listener {
        Listener::Api => router.route(
            "/console/queue",
            get(|headers: HeaderMap| async move {
                page(
                    &headers,
                    Role::Reviewer,
                    "Review queue",
                    "queue",
                    "/console/queue",
                )
            }),
        ),
        Listener::Admin => router.route(
            "/console/dashboard",
            get(|headers: HeaderMap| async move {
                page(
                    &headers,
                    Role::Admin,
                    "Operations",
                    "dashboard",
                    "/console/dashboard",
                )
            }),
        ),
    };
    router.with_state(app)
}

fn redirect(to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, HeaderValue::from_str(to).expect("a path"))],
    )
        .into_response()
}

/// The headers every console page carries.
fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                 connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Text for HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page's frame: head, header with who is signed in, and the script.
fn frame(title: &str, session: Option<&Session>, script: &str, main: &str) -> String {
    let (meta, who) = match session {
        Some(s) => (
            format!(
                "<meta name=\"csrf-token\" content=\"{}\"><meta name=\"caller\" content=\"{}\">\
                 <meta name=\"role\" content=\"{}\">",
                escape(&s.csrf),
                escape(&s.caller),
                escape(&s.role)
            ),
            format!(
                "<span class=\"who\" id=\"who\">{} ({})</span>\
                 <button type=\"button\" id=\"logout\" class=\"quiet\">Sign out</button>",
                escape(&s.caller),
                escape(&s.role)
            ),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Strata</title>{meta}\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\"></head>\
         <body><header class=\"top\"><span class=\"brand\">Strata</span>\
         <span class=\"title\">{title}</span><span class=\"spacer\"></span>{who}</header>\
         <div id=\"status\" class=\"status\" role=\"status\" aria-live=\"polite\"></div>\
         <main id=\"main\">{main}</main>\
         <script src=\"/console/assets/console.js\"></script>\
         <script src=\"/console/assets/{script}.js\"></script></body></html>\n"
    )
}

/// The sign-in page's query: why the user was sent there.
#[derive(Deserialize)]
struct LoginQuery {
    #[serde(default)]
    why: Option<String>,
}

fn login_page(listener: Listener, headers: &HeaderMap, why: Option<&str>) -> Response {
    let notice = match why {
        Some("expired") => "Your session has expired. Sign in again.",
        Some("signed-out") => "You have signed out.",
        Some("role") => "Your role may not open that page. Sign in with another token.",
        _ => "",
    };
    let what = match listener {
        Listener::Api => "the review queue (a reviewer's or an admin's token)",
        Listener::Admin => "the operations dashboard (an admin's token)",
    };
    // Already signed in, with a session still valid: straight on.
    if why.is_none()
        && let Some(value) = session::cookie_value(headers)
        && Session::open_sealed(value, crate::store::now_millis()).is_ok()
    {
        return redirect(listener.home());
    }
    let main = format!(
        "<form id=\"login\" class=\"card login\" autocomplete=\"off\">\
         <h1>Sign in</h1><p>Enter your token for {what}. On this machine, with no token \
         configured for the role, leave it empty.</p>\
         <p class=\"notice\" id=\"notice\">{}</p>\
         <label for=\"token\">Token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autofocus>\
         <input type=\"hidden\" id=\"next\" value=\"{}\">\
         <button type=\"submit\" id=\"sign-in\">Sign in</button></form>",
        escape(notice),
        escape(listener.home()),
    );
    html(StatusCode::OK, frame("Sign in", None, "login", &main))
}

/// A page that needs a session of `role`: without one, to sign-in.
fn page(headers: &HeaderMap, role: Role, title: &str, script: &str, path: &str) -> Response {
    let Some(value) = session::cookie_value(headers) else {
        return redirect("/console/login");
    };
    let session = match Session::open_sealed(value, crate::store::now_millis()) {
        Ok(session) => session,
        Err(session::Refused::Expired) => return redirect("/console/login?why=expired"),
        Err(session::Refused::Invalid) => return redirect("/console/login?why=expired"),
    };
    if session.caller_for(role).is_err() {
        return redirect("/console/login?why=role");
    }
    let main = format!(
        "<div id=\"app\" data-path=\"{}\"><p class=\"loading\">Loading…</p></div>",
        escape(path)
    );
    html(StatusCode::OK, frame(title, Some(&session), script, &main))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    #[serde(default)]
    token: String,
}

/// Sign in: the token's role becomes the session's (an admin's token is an
/// admin session, anything else that passes as a reviewer a reviewer's).
async fn login(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<crate::http::extract::Peer>>,
    JsonBody(body): JsonBody<LoginBody>,
) -> Result<Response, ApiError> {
    let token = body.token.trim();
    let authorization = (!token.is_empty()).then(|| format!("Bearer {token}"));
    let peer = peer.map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |p| {
        p.0.0.ip()
    });
    let host = headers.get(header::HOST).map(|v| v.as_bytes());
    let try_role = |role: Role| {
        app.tokens.authorize(
            role,
            authorization.as_deref().map(str::as_bytes),
            peer,
            host,
        )
    };
    let (caller, role) = match try_role(Role::Admin) {
        Ok(caller) => (caller, Role::Admin),
        Err(_) => match try_role(Role::Reviewer) {
            Ok(caller) => (caller, Role::Reviewer),
            Err(denied) => return Err(denied.into()),
        },
    };
    let session = Session::new(&caller, role, crate::store::now_millis());
    let mut response = json_response(
        StatusCode::OK,
        &json!({"caller": session.caller, "role": session.role}),
    );
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&session.cookie(session::behind_tls(&headers)))
            .expect("a cookie is ASCII"),
    );
    tracing::info!(caller = %session.caller, role = %session.role, "console sign-in");
    Ok(response)
}

/// Sign out: the cookie goes. (A JSON POST, so no other site can send it.)
async fn logout(headers: HeaderMap, JsonBody(_): JsonBody<serde_json::Value>) -> Response {
    let mut response = json_response(StatusCode::OK, &json!({"signed_out": true}));
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&session::cleared_cookie(session::behind_tls(&headers)))
            .expect("a cookie is ASCII"),
    );
    response
}

/// The embedded assets.
const ASSETS: [(&str, &str, &str); 5] = [
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    ),
    (
        "login.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/login.js"),
    ),
    (
        "queue.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/queue.js"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/dashboard.js"),
    ),
];

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *body,
        )
            .into_response(),
        None => {
            ApiError::not_found("no_asset", format!("no console asset \"{file}\"")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_html() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
