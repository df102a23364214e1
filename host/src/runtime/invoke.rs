//! Invoking a stage: an instance (fresh, or idle for a stage that reuses
//! them) bounded by the stage's limits, the call, and every way it can fail
//! as a [`StageFailure`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtxView, WasiView};

use super::engine::Runtime;
use super::limits::StageLimiter;
use super::load::Idle;
use super::load::LoadedStage;
use super::ticker::EPOCH_TICK;
use crate::manifest::Limits;
use crate::request::{Outcome, Request};
use crate::runtime::imports::cache::{BankAccess, CacheCtx, CacheUse};
use crate::runtime::imports::config::ConfigCtx;
use crate::runtime::imports::http::HttpCtx;
use crate::runtime::imports::log::LogCtx;
use crate::runtime::imports::model::{ModelAccess, ModelCtx};
use crate::runtime::imports::wasi::{GuestLogs, LazyWasi};

/// The most bytes a guest may pass to the host in one call (a log line, an
/// answer to remember, a model prompt); more is a trap, not a host
/// allocation of whatever size the guest asks for.
pub(super) const HOSTCALL_FUEL: usize = 4 << 20;

impl Runtime {
    /// Run one stage on one request: in a fresh instance, or, for a stage
    /// that opts into reuse, in an idle instance of its own if one waits.
    ///
    /// This is the one place that gets an instance for a stage.
    pub async fn invoke(
        &self,
        stage: &LoadedStage,
        request: &Request,
        tag: &LogTag,
        access: &Access,
    ) -> Invocation {
        let limits = stage.spec.limits;
        let idle = stage
            .reuse
            .as_ref()
            .and_then(|pool| pool.idle.lock().unwrap_or_else(|e| e.into_inner()).pop());
        let (mut store, instance, slot, uses) = match idle {
            Some(idle) => (idle.store, Some(idle.instance), idle.slot, idle.uses),
            None => {
                // A request that may wait for a batch may wait for a slot.
                let Some(slot) = self.slot(access.models.batch).await else {
                    return Invocation {
                        outcome: Err(StageFailure::Overloaded {
                            waited_ms: self.settings.slot_wait_ms,
                        }),
                        effects: Effects::default(),
                    };
                };
                (self.new_store(stage, request, tag), None, slot, 0)
            }
        };
        prepare(&mut store, stage, tag, access, self.settings.fuel_metering);

        let timeout = Duration::from_millis(limits.timeout_ms);
        let call = async {
            let instance = match instance {
                Some(instance) => instance,
                None => stage
                    .pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(|e| (true, e))?,
            };
            let outcome = instance
                .handle(
                    &mut store,
                    request,
                    &tag.stage,
                    limits.output_kib as usize * 1024,
                )
                .await
                .map_err(|e| (false, e))?;
            Ok((instance, outcome))
        };
        // The epoch deadline only fires while guest code runs; this bounds
        // time the guest spends waiting on the host (a WASI poll, say).
        let result = tokio::time::timeout(timeout + EPOCH_TICK * 2, call).await;
        // What the stage did before it finished (or was stopped) still
        // counts: a model call it made was paid for.
        let effects = {
            let state = store.data_mut();
            Effects {
                cache: state.cache.take_use(),
                model_calls: state.model.take_calls(),
            }
        };
        let state = store.data();
        state.log.report_dropped();
        let (outcome, instance) = match result {
            Err(_) => (
                Err(StageFailure::Timeout {
                    ms: limits.timeout_ms,
                }),
                None,
            ),
            Ok(Ok((instance, outcome))) => (
                outcome.and_then(|outcome| check_outcome(outcome, &limits)),
                Some(instance),
            ),
            Ok(Err((instantiating, error))) => {
                let failure = classify(error, state, &limits);
                // A trap while instantiating is the instance's own start-up
                // code; anything else there is the host unable to make one.
                let failure = match failure {
                    StageFailure::Trap { detail } if instantiating => {
                        StageFailure::Instantiate { detail }
                    }
                    other => other,
                };
                (Err(failure), None)
            }
        };
        // A reusable instance goes back only after a clean call: a trap, a
        // limit or an invalid outcome may have left it in any state.
        if let (Some(pool), Some(instance), Ok(_)) = (&stage.reuse, instance, &outcome) {
            let uses = uses + 1;
            // A pool of a generation no longer served keeps nothing: its
            // idle instances would hold slots nobody can use.
            if uses < pool.spec.max_uses && pool.serving.load(std::sync::atomic::Ordering::Acquire)
            {
                let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < pool.spec.max_idle as usize {
                    idle.push(Idle {
                        store,
                        instance,
                        slot,
                        uses,
                    });
                    return Invocation { outcome, effects };
                }
            }
        }
        super::retire::retire(store, slot, super::retire::cap(self.settings.instances));
        Invocation { outcome, effects }
    }

    /// A slot of the instance pool. Real-time requests wait at most
    /// `[runtime] slot_wait_ms` (`None` then: the host is overloaded);
    /// background ones (`patient`) as long as it takes.
    pub(super) async fn slot(&self, patient: bool) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        // Finished instances this worker has not dropped yet hold slots.
        super::retire::drop_kept();
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        let wait = self.slots.clone().acquire_owned();
        let slot = if patient {
            wait.await
        } else {
            tokio::time::timeout(Duration::from_millis(self.settings.slot_wait_ms), wait)
                .await
                .ok()?
        };
        Some(slot.expect("the slot semaphore is never closed"))
    }

    fn new_store(&self, stage: &LoadedStage, request: &Request, tag: &LogTag) -> Store<StageState> {
        let seed = stage.spec.deterministic.map(|seed| {
            // The same input meets the same randomness, whatever the request
            // id: a replay decides alike.
            crate::request::fnv1a(request.input.as_bytes(), seed)
        });
        self.store_for(
            stage.spec.limits.memory_mib,
            &stage.config,
            &stage.wasi,
            seed,
            tag,
        )
    }

    /// A store for one instance of a stage, its memory capped at
    /// `memory_mib`.
    pub(super) fn store_for(
        &self,
        memory_mib: u32,
        config: &Arc<ConfigCtx>,
        wasi: &Arc<crate::manifest::WasiSpec>,
        seed: Option<u64>,
        tag: &LogTag,
    ) -> Store<StageState> {
        let logs = GuestLogs::new(tag.clone());
        let mut store = Store::new(
            &self.engine,
            StageState {
                wasi: LazyWasi::new(seed, wasi.clone()),
                table: ResourceTable::new(),
                limiter: StageLimiter::new(memory_mib),
                logs,
                log: LogCtx::new(tag.clone()),
                config: config.clone(),
                cache: CacheCtx::new(tag.clone()),
                model: ModelCtx::default(),
                http: HttpCtx::new(wasi.clone()),
                timed_out: false,
                _awake: self.ticker.awake(),
            },
        );
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(HOSTCALL_FUEL);
        store
    }
}

/// What the caller lends an invocation, one part per host interface that
/// needs one (the stage's grants decide whether it may import them at all).
#[derive(Clone, Default)]
pub struct Access {
    /// For `cache`.
    pub bank: BankAccess,
    /// For `model`.
    pub models: ModelAccess,
}

/// What an invocation did besides deciding, one part per host interface.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    /// Through `cache`.
    pub cache: CacheUse,
    /// Through `model`: every call it made.
    pub model_calls: Vec<crate::model::ModelCall>,
}

/// The result of one invocation.
pub struct Invocation {
    /// The stage's decision, or why it failed.
    pub outcome: Result<Outcome, StageFailure>,
    /// What it did on the way.
    pub effects: Effects,
}

/// Set a store up for one invocation: who it serves, what it may use, and
/// its time and fuel (memory is capped for the instance's whole life).
pub(super) fn prepare(
    store: &mut Store<StageState>,
    stage: &LoadedStage,
    tag: &LogTag,
    access: &Access,
    fuel_metering: bool,
) {
    let limits = stage.spec.limits;
    let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
    let state = store.data_mut();
    if state.log.tag().request_id != tag.request_id {
        state.logs.restart(tag.clone());
    }
    state.log.restart(tag);
    state.cache.restart(&access.bank, tag, deadline);
    state.model.restart(&access.models);
    state.timed_out = false;
    set_budget(store, limits.fuel, deadline, fuel_metering);
}

/// Give a store its fuel (when the engine meters it) and its deadline:
/// guest code past `deadline` is interrupted and marked `timed_out`.
pub(super) fn set_budget(
    store: &mut Store<StageState>,
    fuel: Option<u64>,
    deadline: Instant,
    fuel_metering: bool,
) {
    if fuel_metering {
        store
            .set_fuel(fuel.unwrap_or(u64::MAX))
            .expect("fuel metering is enabled on this engine");
    }
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |mut ctx| {
        if Instant::now() >= deadline {
            ctx.data_mut().timed_out = true;
            Ok(UpdateDeadline::Interrupt)
        } else {
            // Let other requests run, then come back for another tick.
            Ok(UpdateDeadline::Yield(1))
        }
    });
}

pub(super) fn check_outcome(outcome: Outcome, limits: &Limits) -> Result<Outcome, StageFailure> {
    let limit = limits.output_kib as usize * 1024;
    let bytes = outcome.size();
    if bytes > limit {
        return Err(StageFailure::OutputTooLarge { bytes, limit });
    }
    if let Outcome::Respond { confidence, .. } = outcome
        && !(0.0..=1.0).contains(&confidence)
    {
        return Err(StageFailure::InvalidOutcome(format!(
            "confidence {confidence} is outside 0..=1"
        )));
    }
    Ok(outcome)
}

/// Name the cause of a failed call. The store's own flags are checked first:
/// they say for certain which limit stopped the guest, whatever the error
/// text looks like.
pub(super) fn classify(
    error: wasmtime::Error,
    state: &StageState,
    limits: &Limits,
) -> StageFailure {
    if state.timed_out {
        return StageFailure::Timeout {
            ms: limits.timeout_ms,
        };
    }
    if state.limiter.exceeded() {
        return StageFailure::Memory {
            mib: limits.memory_mib,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => StageFailure::Fuel {
            budget: limits.fuel.unwrap_or(u64::MAX),
        },
        Some(Trap::Interrupt) => StageFailure::Timeout {
            ms: limits.timeout_ms,
        },
        _ => StageFailure::Trap {
            detail: format!("{error:#}"),
        },
    }
}

/// Why one stage invocation failed. The `Display` form is safe to show to a
/// client; guest internals stay in [`StageFailure::detail`] for the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StageFailure {
    /// The wall-clock limit passed.
    #[error("timed out after {ms} ms")]
    Timeout {
        /// The limit.
        ms: u64,
    },
    /// The guest tried to grow its memory past the cap.
    #[error("exceeded its memory limit of {mib} MiB")]
    Memory {
        /// The cap.
        mib: u32,
    },
    /// The fuel budget ran out.
    #[error("ran out of fuel (budget {budget})")]
    Fuel {
        /// The budget.
        budget: u64,
    },
    /// The guest trapped (a panic, an `unreachable`, a bad access).
    #[error("trapped")]
    Trap {
        /// The engine's description, with the wasm backtrace.
        detail: String,
    },
    /// The outcome was larger than the stage's output limit.
    #[error("returned {bytes} bytes of output, over its limit of {limit} bytes")]
    OutputTooLarge {
        /// Bytes returned.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The outcome broke the contract (e.g. confidence outside 0..1).
    #[error("returned an invalid outcome: {0}")]
    InvalidOutcome(String),
    /// An HTTP stage answered 5xx, or set an error code as its response.
    #[error("{}", match status { Some(status) => format!("answered HTTP {status}"), None => "answered with an HTTP error".to_owned() })]
    Http {
        /// The status, when there was a response.
        status: Option<u16>,
        /// The start of the body, or the error code: for the log.
        detail: String,
    },
    /// No instance could be made: the instance pool is exhausted for this
    /// component's shape, or its start-up code failed.
    #[error("could not be instantiated")]
    Instantiate {
        /// The engine's description.
        detail: String,
    },
    /// No instance slot came free in time: the host is overloaded. Not the
    /// stage's fault, so not subject to its `on_error`.
    #[error("found no free instance within {waited_ms} ms")]
    Overloaded {
        /// How long the request waited.
        waited_ms: u64,
    },
}

impl StageFailure {
    /// A stable short name, for traces, logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StageFailure::Timeout { .. } => "timeout",
            StageFailure::Memory { .. } => "memory",
            StageFailure::Fuel { .. } => "fuel",
            StageFailure::Trap { .. } => "trap",
            StageFailure::OutputTooLarge { .. } => "output_too_large",
            StageFailure::InvalidOutcome(_) => "invalid_outcome",
            StageFailure::Http { .. } => "http",
            StageFailure::Instantiate { .. } => "instantiate",
            StageFailure::Overloaded { .. } => "overloaded",
        }
    }

    /// Internals for the log, never for the client.
    pub fn detail(&self) -> Option<&str> {
        match self {
            StageFailure::Trap { detail }
            | StageFailure::Instantiate { detail }
            | StageFailure::Http { detail, .. } => Some(detail),
            _ => None,
        }
    }
}

/// What identifies an invocation in log lines.
#[derive(Debug, Clone)]
pub struct LogTag {
    /// The request id.
    pub request_id: Arc<str>,
    /// The pipeline.
    pub pipeline: Arc<str>,
    /// The stage.
    pub stage: Arc<str>,
    /// The generation serving the request.
    pub generation: u64,
    /// The digest of the stage version running.
    pub digest: Arc<str>,
}

/// The data of one invocation's store.
///
/// One field per host interface, each that interface's own context; the
/// imports reach only their own (see [`crate::runtime::imports`]).
pub(crate) struct StageState {
    /// WASI, locked down (`wasi:*`), built on the guest's first WASI call.
    pub(super) wasi: LazyWasi,
    pub(super) table: ResourceTable,
    /// Where the guest's stdout and stderr go.
    pub(super) logs: GuestLogs,
    /// `strata:pipeline/log`.
    pub(crate) log: LogCtx,
    /// `strata:pipeline/config`.
    pub(crate) config: Arc<ConfigCtx>,
    /// `strata:pipeline/cache`.
    pub(crate) cache: CacheCtx,
    /// `strata:pipeline/model`.
    pub(crate) model: ModelCtx,
    /// `wasi:http`.
    pub(crate) http: HttpCtx,
    pub(super) limiter: StageLimiter,
    pub(super) timed_out: bool,
    /// Keeps the epoch advancing while the store lives.
    pub(super) _awake: super::ticker::Awake,
}

impl WasiView for StageState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get(&self.logs),
            table: &mut self.table,
        }
    }
}
