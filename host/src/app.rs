//! The application state every request handler, worker and operation
//! shares. It sits below the HTTP routers, the job workers, the callback
//! delivery worker and the operator's actions (`control`): they all import
//! it, it imports none of them back.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use futures_util::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Tokens;
use crate::callbacks::Callbacks;
use crate::metrics::Metrics;
use crate::ops::Operations;
use crate::pipeline::{Generation, RunContext};
use crate::queue::Jobs;
use crate::runtime::Runtime;
use crate::store::Store;

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
    pub body_timeout: std::time::Duration,
    /// How long a real-time request's client waits for its answer.
    pub request_timeout: std::time::Duration,
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
    /// Every task the host spawns, and the signal that stops them.
    pub lifecycle: Lifecycle,
    /// Teams' recent requests, for their rate limits.
    pub teams: Arc<crate::teams::Teams>,
    /// The OTLP trace exporter, when `[telemetry] otlp` is set.
    pub telemetry: Option<crate::telemetry::Telemetry>,
    /// The hosts this one serves with, when `[shared] redis` is set.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl App {
    /// A pipeline's answer bank, with the settings of the serving
    /// generation (or the defaults, for a pipeline no longer served).
    pub fn bank(&self, pipeline: &str) -> Arc<crate::bank::Bank> {
        let generation = self.current.load();
        let spec = generation
            .pipelines
            .get(pipeline)
            .map(|p| p.answer_bank.clone())
            .unwrap_or_default();
        self.run.banks.bank(pipeline, &spec)
    }
}

/// Every task the host spawns, and the one signal that stops them all.
///
/// Shutdown is: cancel, wait (within a bound) for every tracked task to
/// finish what it holds, then close the store. A task that writes to the
/// store is spawned here, so the store never closes under it.
#[derive(Clone, Default)]
pub struct Lifecycle {
    /// Fires once, when the host begins to stop.
    pub cancel: CancellationToken,
    /// The host's tasks: listeners, workers, watchers, shadows.
    pub tasks: TaskTracker,
}

impl Lifecycle {
    /// Run `task` as one of the host's tasks.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Run `task` in the caller's own task, to its end even if the caller
    /// stops waiting: dropped before it ends (the client hung up, a wait
    /// timed out), what is left of it goes on as one of the host's tasks.
    /// While the caller waits this costs no hand-off to another task and
    /// back, which [`Lifecycle::spawn`] would. A panic in `task` is caught
    /// and returned.
    pub fn finish<F>(&self, task: F) -> Finishing<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Finishing {
            // Caught, so a panic neither unwinds through the caller nor
            // leaves a task that `drop` would try to finish.
            task: Some(Box::pin(AssertUnwindSafe(task).catch_unwind())),
            tasks: self.tasks.clone(),
        }
    }

    /// Run `task` until it ends or the host begins to stop, whichever is
    /// first. For loops that hold nothing worth finishing.
    pub fn spawn_until_stopped<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Whether the host has begun to stop.
    pub fn stopping(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Cancel, then wait for every task, at most `bound`. Returns whether
    /// they all finished.
    pub async fn stop(&self, bound: std::time::Duration) -> bool {
        self.cancel.cancel();
        self.tasks.close();
        tokio::time::timeout(bound, self.tasks.wait()).await.is_ok()
    }
}

/// A task its caller polls and the host finishes if the caller stops
/// ([`Lifecycle::finish`]).
pub struct Finishing<T: Send + 'static> {
    /// The task, its panics caught; `None` once it ended.
    task: Option<Pin<Box<dyn Future<Output = std::thread::Result<T>> + Send>>>,
    tasks: TaskTracker,
}

/// A task that panicked, with its message when it had one.
#[derive(Debug)]
pub struct Panicked(pub String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "panicked: {}", self.0)
    }
}

impl<T: Send + 'static> Future for Finishing<T> {
    type Output = Result<T, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let task = self
            .task
            .as_mut()
            .expect("a finished task is not polled again");
        let Poll::Ready(output) = task.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        self.task = None;
        Poll::Ready(output.map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            Panicked(message)
        }))
    }
}

impl<T: Send + 'static> Drop for Finishing<T> {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        // Without a runtime (it is being torn down) nothing can finish it.
        // A panic in what is left has been reported by the panic hook.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.tasks.track_future(async move {
                let _ = task.await;
            }));
        }
    }
}
