//! Starting a host and serving HTTP: load everything, bind, accept
//! connections, shut down gracefully.
//!
//! [`start`] does the whole start-up in order (manifest, engine with its
//! compile cache, generation, store, listeners, watcher, signal handler) and
//! returns a [`RunningHost`] whose [`RunningHost::shutdown`] stops accepting,
//! lets in-flight requests finish, and flushes the store. The CLI and the
//! end-to-end tests both go through it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::Response;
use crate::auth::{Role, Tokens};
use crate::callbacks::Callbacks;
use crate::jobs::Jobs;
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::pipeline::{Generation, RunContext};
use crate::reload::{Operations, Trigger};
use crate::runtime::Runtime;
use crate::store::Store;

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
    /// How long a client may take to send a body.
    pub body_timeout: Duration,
    /// Reloads, rollouts and error budgets.
    pub ops: Arc<Operations>,
    /// What pipeline runs need (engine, observer, shadow bound).
    pub run: RunContext,
    /// Bearer tokens of each role.
    pub tokens: Tokens,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The context asynchronous requests run in: `run`, with model calls
    /// allowed to join batches.
    pub background: RunContext,
    /// Accepted asynchronous requests.
    pub jobs: Jobs,
    /// Who may be called back, and the signing secret.
    pub callbacks: Callbacks,
}

/// How to start a host. Set fields override the manifest (and, for
/// `tokens`, the environment).
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The manifest file.
    pub manifest: PathBuf,
    /// Listen here instead of the manifest's address.
    pub listen: Option<SocketAddr>,
    /// Serve the admin API here instead of the manifest's `[admin] listen`.
    pub admin_listen: Option<SocketAddr>,
    /// Keep state here instead of the manifest's data directory.
    pub data_dir: Option<PathBuf>,
    /// Use these tokens instead of reading them from the environment.
    pub tokens: Option<Tokens>,
    /// Keep compiled components here instead of `DATA_DIR/compile-cache`
    /// (several hosts may share one).
    pub compile_cache: Option<PathBuf>,
    /// Sign callbacks with this secret instead of the one in the
    /// environment variable `[callbacks] secret_env` names.
    pub callback_secret: Option<String>,
}

impl HostOptions {
    /// Options for `manifest` with nothing overridden.
    pub fn new(manifest: impl Into<PathBuf>) -> HostOptions {
        HostOptions {
            manifest: manifest.into(),
            listen: None,
            admin_listen: None,
            data_dir: None,
            tokens: None,
            compile_cache: None,
            callback_secret: None,
        }
    }
}

/// A host that is serving.
pub struct RunningHost {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    app: Arc<App>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningHost {
    /// The host's durable store.
    pub fn store(&self) -> &Store {
        &self.app.store
    }

    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the admin API listens on.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The shared state (for inspection by tools and tests).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Stop accepting, let in-flight requests finish, flush the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.app.store.close().await;
    }

    /// Serve until `signal` resolves, then shut down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }
}

/// Load the manifest and everything it names, open the store, bind the
/// listeners and start serving.
pub async fn start(options: HostOptions) -> anyhow::Result<RunningHost> {
    let manifest_path = options.manifest.clone();
    let data_override = options.data_dir.clone();
    let cache_override = options.compile_cache.clone();
    // Reading plugins and compiling them is blocking, CPU-heavy work.
    let (manifest, runtime, generation) = tokio::task::spawn_blocking(move || {
        let manifest = Arc::new(Manifest::load(&manifest_path)?);
        let data_dir = data_override.unwrap_or_else(|| manifest.data_dir.clone());
        let cache = cache_override.unwrap_or_else(|| data_dir.join("compile-cache"));
        let runtime = Runtime::new(&manifest.runtime, Some(&cache))?;
        let generation = Generation::load(manifest.clone(), &runtime, 1)?;
        anyhow::Ok((manifest, runtime, generation))
    })
    .await
    .context("start-up task failed")??;

    crate::cases::gate(&runtime, &generation)
        .await
        .map_err(|failures| anyhow::anyhow!("golden cases failed:\n{failures}"))?;
    let data_dir = options
        .data_dir
        .unwrap_or_else(|| manifest.data_dir.clone());
    let store_dir = data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&store_dir))
        .await
        .context("store task failed")??;

    let tokens = match options.tokens {
        Some(tokens) => tokens,
        None => Tokens::from_env().map_err(|why| anyhow::anyhow!("{why}"))?,
    };
    let listen = options.listen.unwrap_or(manifest.listen);
    let admin_listen = options.admin_listen.unwrap_or(manifest.admin.listen);
    if !tokens.configured(Role::Admin) && !admin_listen.ip().is_loopback() {
        anyhow::bail!(
            "the admin API would listen on {admin_listen} without a token; set {} or use a \
             loopback address",
            Role::Admin.token_variable()
        );
    }
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let admin_listener = TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("cannot listen on {admin_listen} for the admin API"))?;
    let addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let runtime = Arc::new(runtime);
    let metrics = Arc::new(Metrics::new());
    let ops = Arc::new(Operations::new(
        store.clone(),
        &manifest,
        metrics.clone(),
        &data_dir,
    ));
    // Shadows get a quarter of the instance slots at most.
    let shadow_slots = (manifest.runtime.instances as usize / 4).max(1);
    let run = RunContext::new(runtime.clone(), ops.clone(), shadow_slots);
    let callbacks = match options.callback_secret {
        Some(secret) => Callbacks::with_secret(&manifest.callbacks, Some(secret)),
        None => Callbacks::new(&manifest.callbacks),
    };
    let app = Arc::new(App {
        background: run.clone().batched(),
        run,
        jobs: Jobs::new(&manifest.background),
        callbacks,
        runtime,
        current: ArcSwap::from_pointee(generation),
        store,
        max_body: manifest.server.max_body_kib as usize * 1024,
        body_timeout: Duration::from_millis(manifest.server.body_timeout_ms),
        ops,
        tokens,
        metrics,
    });
    // Approved answers (human resolutions, corrections) outlive the process.
    let approved = app
        .store
        .approved_answers()
        .await
        .context("cannot read the approved answers")?;
    let generation = app.current.load_full();
    crate::bank::load_patterns(
        &app.run.banks,
        &generation.manifest,
        &app.store,
        app.run.runtime.http(),
    )
    .await
    .context("cannot load the answer bank")?;
    app.ops.adopt(&generation, &app.run.banks);
    for (pipeline, key, answer, source) in approved {
        crate::api::bank_of(&app, &pipeline).approve(key, answer, &source);
    }
    app.ops.started(&generation).await;
    for role in Role::ALL {
        if !app.tokens.configured(role) {
            match role {
                Role::Client => tracing::info!(
                    "{} is not set: the client API is open to every caller",
                    role.token_variable()
                ),
                _ => tracing::warn!(
                    "{} is not set: {} routes accept callers on this machine only",
                    role.token_variable(),
                    role.as_str()
                ),
            }
        }
    }
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    // Unfinished asynchronous requests are queued before the API accepts
    // anything, so a request accepted now is never also read back as one
    // left over from the last run. Workers finish the request in hand before
    // shutdown completes; what is still queued runs at the next start.
    tasks.extend(
        crate::jobs::start(app.clone(), stopped.clone())
            .await
            .context("cannot resume the asynchronous requests")?,
    );
    let handler_app = app.clone();
    let header_timeout = Duration::from_millis(manifest.server.header_timeout_ms);
    tasks.push(tokio::spawn(serve(
        listener,
        header_timeout,
        shutdown_on(stopped.clone()),
        move |request, peer| crate::api::handle(handler_app.clone(), request, peer),
    )));
    let admin_app = app.clone();
    tasks.push(tokio::spawn(serve(
        admin_listener,
        header_timeout,
        shutdown_on(stopped.clone()),
        move |request, peer| crate::admin::handle(admin_app.clone(), request, peer),
    )));
    crate::reload::spawn_burn_worker(app.clone());
    if manifest.reload.watch {
        crate::reload::spawn_watcher(
            app.clone(),
            manifest.watched_files(),
            Duration::from_millis(manifest.reload.debounce_ms),
            stopped.clone(),
        )
        .context("cannot watch the manifest and plugin files")?;
    }
    crate::callbacks::spawn_worker(app.clone(), stopped.clone());
    crate::retention::spawn(
        app.store.clone(),
        Arc::new(manifest.retention.clone()),
        stopped.clone(),
    );
    spawn_signal_reloads(app.clone(), stopped);
    // Said last: whoever waits for this line may send requests and signals.
    tracing::info!(
        %addr,
        %admin_addr,
        manifest = %manifest.path.display(),
        generation = 1,
        pipelines = manifest.pipelines.len(),
        database = %app.store.path().display(),
        "strata is serving"
    );
    Ok(RunningHost {
        addr,
        admin_addr,
        app,
        stop,
        tasks,
    })
}

async fn shutdown_on(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Reload on SIGHUP. The handler is in place when this returns, so a
/// SIGHUP sent after "strata is serving" reloads rather than kills.
fn spawn_signal_reloads(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; reload through the admin API");
                return;
            }
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = hangups.recv() => {
                        crate::reload::reload(&app, Trigger::host("signal")).await;
                    }
                    _ = stopped.changed() => return,
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (app, stopped);
}

/// Accept connections on `listener` until `shutdown` resolves, then wait (up
/// to a bound) for open connections to finish their requests. `handler`
/// answers each request, given the peer's address; a client slower than
/// `header_timeout` to send its headers is disconnected.
pub async fn serve<H, F>(
    listener: TcpListener,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
    handler: H,
) where
    H: Fn(http::Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    tokio::pin!(shutdown);

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
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let response = handler(request, peer);
            async move { Ok::<_, std::convert::Infallible>(response.await) }
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
        () = graceful.shutdown() => {},
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; stopping anyway");
        }
    }
}
