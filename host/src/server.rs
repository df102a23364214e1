//! Starting a host and serving HTTP: load everything, bind, accept
//! connections, shut down gracefully.
//!
//! [`start`] does the whole start-up in order (manifest, engine, generation,
//! store, listener) and returns a [`RunningHost`] whose [`RunningHost::shutdown`]
//! stops accepting, lets in-flight requests finish, and flushes the store.
//! The CLI and the end-to-end tests both go through it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::manifest::Manifest;
use crate::pipeline::Generation;
use crate::runtime::Runtime;
use crate::store::Store;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What every request handler shares.
pub struct App {
    /// The engine and instance pool.
    pub runtime: Arc<Runtime>,
    /// The generation new requests run on.
    pub current: ArcSwap<Generation>,
    /// Durable state.
    pub store: Store,
    /// The largest accepted request body, in bytes.
    pub max_body: usize,
}

/// How to start a host. `listen` and `data_dir` override the manifest.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The manifest file.
    pub manifest: PathBuf,
    /// Listen here instead of the manifest's address.
    pub listen: Option<SocketAddr>,
    /// Keep state here instead of the manifest's data directory.
    pub data_dir: Option<PathBuf>,
}

/// A host that is serving.
pub struct RunningHost {
    addr: SocketAddr,
    app: Arc<App>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RunningHost {
    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (for inspection by tools and tests).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Stop accepting, let in-flight requests finish, flush the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        self.app.store.close().await;
    }

    /// Serve until `signal` resolves, then shut down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }
}

/// Load the manifest and everything it names, open the store, bind the
/// listener and start serving.
pub async fn start(options: HostOptions) -> anyhow::Result<RunningHost> {
    let manifest_path = options.manifest.clone();
    // Reading plugins and compiling them is blocking, CPU-heavy work.
    let (manifest, runtime, generation) = tokio::task::spawn_blocking(move || {
        let manifest = Manifest::load(&manifest_path)?;
        let runtime = Runtime::new(&manifest.runtime)?;
        let generation = Generation::load(&manifest, &runtime, 1)?;
        anyhow::Ok((manifest, runtime, generation))
    })
    .await
    .context("start-up task failed")??;

    let data_dir = options
        .data_dir
        .unwrap_or_else(|| manifest.data_dir.clone());
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir))
        .await
        .context("store task failed")??;

    let listen = options.listen.unwrap_or(manifest.listen);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;

    let app = Arc::new(App {
        runtime: Arc::new(runtime),
        current: ArcSwap::from_pointee(generation),
        store,
        max_body: manifest.server.max_body_kib as usize * 1024,
    });
    tracing::info!(
        %addr,
        manifest = %manifest.path.display(),
        generation = 1,
        pipelines = manifest.pipelines.len(),
        database = %app.store.path().display(),
        "strata is serving"
    );

    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(app.clone(), listener, async {
        let _ = stopped.await;
    }));
    Ok(RunningHost {
        addr,
        app,
        stop,
        task,
    })
}

/// Accept connections on `listener` until `shutdown` resolves, then wait (up
/// to a bound) for open connections to finish their requests.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);

    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Usually out of file descriptors: back off, keep serving.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |request| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(crate::api::handle(app, request).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; stopping anyway");
        }
    }
}
