//! `wasi:http`: the types every HTTP stage needs, and outgoing requests for
//! a stage granted `wasi:http`, each checked against the hosts its
//! manifest entry lists (`wasi = { http = [...] }`).
//!
//! The interfaces are wasmtime-wasi-http's; this file holds the per-instance
//! context and the hook that refuses a request to any other host with
//! `HTTP-request-denied` before a connection is attempted. A stage without
//! the grant never links `outgoing-handler` at all: it is refused at load
//! (see [`crate::runtime::capabilities`]).

use std::sync::Arc;

use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::manifest::WasiSpec;
use crate::runtime::StageState;

/// One instance's `wasi:http` state.
pub(crate) struct HttpCtx {
    ctx: WasiHttpCtx,
    hooks: AllowedHosts,
}

impl HttpCtx {
    /// A context whose outgoing requests may reach `wasi.http` only.
    pub(crate) fn new(allowed: Arc<WasiSpec>) -> HttpCtx {
        HttpCtx {
            ctx: WasiHttpCtx::new(),
            hooks: AllowedHosts(allowed),
        }
    }
}

impl WasiHttpView for StageState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http.ctx,
            table: &mut self.table,
            hooks: &mut self.http.hooks,
        }
    }
}

/// The hosts one stage may send requests to: its `wasi.http`.
struct AllowedHosts(Arc<WasiSpec>);

impl AllowedHosts {
    fn permits(&self, uri: &http::Uri) -> bool {
        let Some(host) = uri.host() else {
            return false;
        };
        let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        };
        let port = uri.port_u16().unwrap_or(default_port);
        // `Uri::host` keeps an IPv6 address's brackets; entries hold it as
        // `Authority::host` does, with them too.
        self.0
            .http
            .iter()
            .any(|allowed| allowed.allows(host, port, default_port))
    }
}

impl WasiHttpHooks for AllowedHosts {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        _ = fut;
        if !self.permits(request.uri()) {
            let uri = request.uri().clone();
            return Box::new(async move {
                tracing::warn!(%uri, "a stage's outgoing HTTP request to a host its manifest does not list was refused");
                Err(wasmtime_wasi_http::Error::HttpRequestDenied)
            });
        }
        Box::new(async move {
            use http_body_util::BodyExt;

            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Link `wasi:http/types` and `wasi:http/outgoing-handler` (every 0.2.x).
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<StageState>,
) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::HttpHost;

    #[test]
    fn only_listed_hosts_and_ports_are_permitted() {
        let allowed = AllowedHosts(Arc::new(WasiSpec {
            http: ["api.example.com", "127.0.0.1:8080", "[::1]:9000"]
                .iter()
                .map(|h| HttpHost::parse(h).expect("valid"))
                .collect(),
            ..WasiSpec::default()
        }));
        let cases = [
            ("https://api.example.com/v1", true),
            ("http://api.example.com/v1", true),
            ("https://API.Example.com/v1", true),
            ("https://api.example.com:8443/v1", false),
            ("https://api.example.org/v1", false),
            ("https://evil.com/api.example.com", false),
            ("http://127.0.0.1:8080/x", true),
            ("http://127.0.0.1/x", false),
            ("http://127.0.0.1:8081/x", false),
            ("http://[::1]:9000/", true),
            ("http://[::1]:9001/", false),
        ];
        for (uri, expected) in cases {
            let uri: http::Uri = uri.parse().expect("a valid URI");
            assert_eq!(allowed.permits(&uri), expected, "{uri}");
        }
    }
}
