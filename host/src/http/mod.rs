//! The HTTP edge: two axum routers (the API and the admin API), one tower
//! stack around each, and the accept loop that serves them.
//!
//! - [`public`]: the API for applications and reviewers;
//! - [`admin`]: the admin API for operators, on its own listener;
//! - [`openai`]: the OpenAI-compatible front door (chat, completions, models);
//! - [`extract`]: authentication, bodies, queries and headers as extractors;
//! - [`error`]: the typed error body every refusal becomes.
//!
//! The JSON of requests and tickets is built in [`crate::views`].
//!
//! Handlers get the shared [`App`] as axum state and never see a raw
//! request: each check is an extractor, each refusal an [`ApiError`].

pub mod admin;
pub mod error;
pub mod extract;
pub mod openai;
pub mod public;
mod repoll;
pub mod review;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use http::{Method, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::normalize_path::NormalizePathLayer;
use tower_http::trace::TraceLayer;

use crate::app::App;
pub use error::ApiError;
use extract::{Arrived, Peer};

/// How long shutdown waits for open connections to finish their requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A router with every layer of the edge around it, ready to serve.
pub type Edge = BoxCloneSyncService<http::Request<Incoming>, Response, Infallible>;

/// What bounds the edge: the largest body and how many requests at once.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The largest request body, in bytes.
    pub max_body: usize,
    /// Requests handled at once; more are refused with 503 `overloaded`.
    pub max_in_flight: usize,
}

/// The one tower stack around a router, outermost layer first.
pub fn edge(router: Router, bounds: Bounds) -> Edge {
    let stack = ServiceBuilder::new()
        // `/v1/pipelines/x/` is `/v1/pipelines/x`.
        .layer(NormalizePathLayer::trim_trailing_slash())
        // One span per request, method and path, at debug level: free
        // unless `STRATA_LOG` asks for it; no event per request.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &http::Request<Incoming>| {
                    tracing::debug_span!("http", method = %request.method(), path = %request.uri().path())
                })
                .on_request(())
                .on_response(())
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
        // A request the in-flight limit refuses becomes 503 `overloaded`.
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            ApiError::overloaded()
        }))
        // Refuse at once instead of queueing when the limit is reached.
        .load_shed()
        // At most `max_in_flight` requests handled at once.
        .concurrency_limit(bounds.max_in_flight)
        // The body limit's own 413 becomes the typed `body_too_large`.
        .map_response(move |response: Response<_>| typed_413(response, bounds.max_body))
        // A body over the limit is refused: by its Content-Length at once,
        // or when it grows past the limit while read.
        .layer(RequestBodyLimitLayer::new(bounds.max_body))
        .service(router);
    BoxCloneSyncService::new(stack.map_response(IntoResponse::into_response))
}

/// Turn the body limit layer's plain 413 into a typed error body.
fn typed_413<B>(response: http::Response<B>, limit: usize) -> Response
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    let typed = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !typed {
        return ApiError::body_too_large(limit).into_response();
    }
    response.map(Body::new)
}

/// `route`, answering any other method with a typed 405 naming `allow`.
fn only(route: MethodRouter<Arc<App>>, allow: &'static str) -> MethodRouter<Arc<App>> {
    route.fallback(move |method: Method, uri: Uri| async move {
        ApiError::method_not_allowed(&method, uri.path(), allow)
    })
}

/// Accept connections on `listener` until `cancel` fires, then wait (up to
/// a bound) for open connections to finish their requests. A client slower
/// than `header_timeout` to send its headers is disconnected.
pub async fn serve(
    listener: TcpListener,
    header_timeout: Duration,
    cancel: CancellationToken,
    edge: Edge,
) {
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off, keep serving.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = edge
            .clone()
            .map_request(move |mut request: http::Request<Incoming>| {
                let extensions = request.extensions_mut();
                extensions.insert(Peer(peer));
                extensions.insert(Arrived(Instant::now()));
                request
            });
        let connection = graceful.watch(
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)),
        );
        // A connection's task wakes itself as its handler reads the body:
        // polled again in place rather than handed to another worker.
        connections.spawn(async move {
            if let Err(error) = repoll::Repoll::new(connection).await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    let finished = async {
        graceful.shutdown().await;
        connections.wait().await;
    };
    drain(finished, "connections").await;
}

/// Wait for `done`, at most [`DRAIN_TIMEOUT`].
pub(crate) async fn drain(done: impl Future<Output = ()>, what: &str) {
    if tokio::time::timeout(DRAIN_TIMEOUT, done).await.is_err() {
        tracing::warn!("{what} still open after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
}
