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
use tokio::net::TcpListener;

use crate::app::{App, Lifecycle};
use crate::auth::{Role, Tokens};
use crate::callbacks::Callbacks;
use crate::http::Bounds;
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::ops::{Operations, Trigger};
use crate::pipeline::{Generation, RunContext};
use crate::queue::Jobs;
use crate::runtime::Runtime;
use crate::store::Store;

/// How long shutdown waits for the host's tasks (connections included)
/// to finish what they hold.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

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
    /// Keep durable state in the PostgreSQL server at this URL instead of
    /// where the manifest's `[store]` says.
    pub store_url: Option<String>,
    /// Use these tokens instead of reading them from the environment.
    pub tokens: Option<Tokens>,
    /// Keep compiled components here instead of `DATA_DIR/compile-cache`
    /// (several hosts may share one).
    pub compile_cache: Option<PathBuf>,
    /// Sign callbacks with this secret instead of the one in the
    /// environment variable `[callbacks] secret_env` names.
    pub callback_secret: Option<String>,
    /// Leave reloads to the caller even if the manifest's `[reload] watch`
    /// is on (`strata watch` reloads only what it has built and tested).
    pub no_file_watch: bool,
}

impl HostOptions {
    /// Options for `manifest` with nothing overridden.
    pub fn new(manifest: impl Into<PathBuf>) -> HostOptions {
        HostOptions {
            manifest: manifest.into(),
            listen: None,
            admin_listen: None,
            data_dir: None,
            store_url: None,
            tokens: None,
            compile_cache: None,
            callback_secret: None,
            no_file_watch: false,
        }
    }
}

/// A host that is serving.
pub struct RunningHost {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    app: Arc<App>,
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

    /// Stop accepting, let in-flight requests and the host's tasks finish
    /// (within a bound), then flush and close the store.
    pub async fn shutdown(self) {
        if !self.app.lifecycle.stop(STOP_TIMEOUT).await {
            tracing::warn!("tasks still running after {STOP_TIMEOUT:?}; closing the store anyway");
        }
        self.app.store.close().await;
        if let Some(cluster) = &self.app.cluster {
            cluster.leave().await;
        }
        if self.app.telemetry.is_some() {
            // The SDK's shutdown blocks until the last batch is sent.
            let app = self.app.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(telemetry) = &app.telemetry {
                    telemetry.shutdown();
                }
            })
            .await;
        }
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
    // Every task the host starts, the runtime's included, is tracked here.
    let lifecycle = Lifecycle::default();
    let tasks = lifecycle.tasks.clone();
    // Reading plugins and compiling them is blocking, CPU-heavy work.
    let (manifest, runtime, generation) = tokio::task::spawn_blocking(move || {
        let manifest = Arc::new(Manifest::load(&manifest_path)?);
        let data_dir = data_override.unwrap_or_else(|| manifest.data_dir.clone());
        let cache = cache_override.unwrap_or_else(|| data_dir.join("compile-cache"));
        let runtime = Runtime::new(&manifest.runtime, Some(&cache))?.with_tasks(tasks);
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
    let mut store_settings = manifest.store.clone();
    if let Some(url) = options.store_url.clone() {
        store_settings.url = Some(url);
    }
    let store =
        tokio::task::spawn_blocking(move || Store::open_configured(&store_settings, &store_dir))
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
    let mut run = RunContext::new(runtime.clone(), ops.clone(), shadow_slots);
    run.tasks = lifecycle.tasks.clone();
    run.banks = Arc::new(crate::bank::Banks::tracked(
        lifecycle.tasks.clone(),
        lifecycle.cancel.clone(),
    ));
    let callbacks = match options.callback_secret {
        Some(secret) => Callbacks::with_secret(&manifest.callbacks, Some(secret)),
        None => Callbacks::new(&manifest.callbacks),
    };
    let app = Arc::new(App {
        background: run.clone().batched(),
        run,
        teams: Arc::default(),
        telemetry: crate::telemetry::Telemetry::start(&manifest.telemetry)
            .context("cannot start the OTLP exporter ([telemetry])")?,
        cluster: crate::cluster::Cluster::new(&manifest.shared, addr, admin_addr)?,
        jobs: Jobs::new(&manifest.background, crate::queue::owner_id(&data_dir)?),
        callbacks,
        runtime,
        current: ArcSwap::from_pointee(generation),
        store,
        max_body: manifest.server.max_body_kib as usize * 1024,
        body_timeout: Duration::from_millis(manifest.server.body_timeout_ms),
        request_timeout: Duration::from_millis(manifest.server.request_timeout_ms),
        ops,
        tokens,
        metrics,
        lifecycle,
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
        app.bank(&pipeline).approve(key, answer, &source);
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
    // Unfinished asynchronous requests are queued before the API accepts
    // anything, so a request accepted now is never also read back as one
    // left over from the last run. Workers finish the request in hand before
    // shutdown completes; what is still queued runs at the next start.
    crate::jobs::start(app.clone())
        .await
        .context("cannot resume the asynchronous requests")?;
    let header_timeout = Duration::from_millis(manifest.server.header_timeout_ms);
    let bounds = Bounds {
        max_body: app.max_body,
        max_in_flight: manifest.server.max_in_flight as usize,
    };
    for (listener, router) in [
        (
            listener,
            crate::http::public::router(app.clone()).merge(crate::console::router(
                app.clone(),
                crate::console::Listener::Api,
            )),
        ),
        (
            admin_listener,
            crate::http::admin::router(app.clone()).merge(crate::console::router(
                app.clone(),
                crate::console::Listener::Admin,
            )),
        ),
    ] {
        let edge = crate::http::edge(router, bounds);
        let cancel = app.lifecycle.cancel.clone();
        app.lifecycle
            .spawn(crate::http::serve(listener, header_timeout, cancel, edge));
    }
    crate::control::spawn_burn_worker(app.clone());
    if manifest.reload.watch && !options.no_file_watch {
        crate::control::spawn_watcher(
            app.clone(),
            manifest.watched_files(),
            Duration::from_millis(manifest.reload.debounce_ms),
        )
        .context("cannot watch the manifest and plugin files")?;
    }
    crate::delivery::spawn_worker(app.clone());
    crate::retention::spawn(
        app.store.clone(),
        Arc::new(manifest.retention.clone()),
        &app.lifecycle,
    );
    spawn_signal_reloads(app.clone());
    crate::control::join_cluster(&app);
    // Said last: whoever waits for this line may send requests and signals.
    tracing::info!(
        %addr,
        %admin_addr,
        manifest = %manifest.path.display(),
        generation = 1,
        pipelines = manifest.pipelines.len(),
        database = %app.store.location(),
        "strata is serving"
    );
    Ok(RunningHost {
        addr,
        admin_addr,
        app,
    })
}

/// Reload on SIGHUP. The handler is in place when this returns, so a
/// SIGHUP sent after "strata is serving" reloads rather than kills.
fn spawn_signal_reloads(app: Arc<App>) {
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
        // A reload under way when the host stops is finished, not dropped.
        let (lifecycle, cancel) = (app.lifecycle.clone(), app.lifecycle.cancel.clone());
        lifecycle.spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = hangups.recv() => {
                        crate::control::reload(&app, Trigger::host("signal")).await;
                    }
                    () = cancel.cancelled() => return,
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = app;
}
