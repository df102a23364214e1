//! The WebAssembly runtime: one engine, the linker, limits, loading stages
//! and invoking them.
//!
//! Loading turns a validated [`StageSpec`] into a [`LoadedStage`]: the
//! component is compiled once (per digest), its exports and imports are
//! checked against the stage contract and the stage's grants, and it is
//! pre-instantiated. Invoking gives each call a fresh instance from the
//! pooling allocator, bounded by the stage's limits: epoch-based wall-clock
//! timeout (which also yields to tokio so a long stage never blocks a worker),
//! a memory cap that traps on failed growth, optional fuel, and an output
//! size cap. Any failure is a [`StageFailure`] for that one call; nothing a
//! guest does can take the process down.

pub(crate) mod bindings;
pub use self::bindings::Contract;
pub mod capabilities;
mod limits;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig, Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use self::bindings::{STAGE_EXPORT_EXPECTED, StageInstance, StagePre};
use self::capabilities::ImportRule;
use self::limits::StageLimiter;
use crate::manifest::{
    Limits, MAX_MEMORY_MIB, ManifestError, ManifestErrorKind, PluginFile, RuntimeSettings,
    StageSpec, UngrantedImport,
};
use crate::request::{Outcome, Request};

/// How often the engine's epoch advances: the resolution of stage timeouts
/// and of yielding to other tasks.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// One instance slot's share of the pool: core instances, memories and
/// tables a single component may hold.
const CORE_INSTANCES_PER_SLOT: u32 = 16;
const MEMORIES_PER_SLOT: u32 = 4;
const TABLES_PER_SLOT: u32 = 16;

/// The most bytes a guest may pass to the host in one call (a log line, an
/// answer to remember, a model prompt); more is a trap, not a host
/// allocation of whatever size the guest asks for.
const HOSTCALL_FUEL: usize = 4 << 20;

/// Resident memory kept per pooled slot between instances; measured here to
/// halve the cost of a fresh instance together with `pagemap_scan`.
const KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// The engine, linker and instance pool shared by every stage of every
/// generation.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StageState>,
    settings: RuntimeSettings,
    /// One permit per pooled instance slot: a request waits for a slot
    /// rather than failing when the pool is busy.
    slots: Arc<Semaphore>,
    /// Compiled components by SHA-256, so one plugin used by several stages
    /// (or by several generations) is compiled once.
    compiled: Mutex<HashMap<String, Component>>,
    /// Shared by host services that call out (model providers).
    http: reqwest::Client,
}

impl Runtime {
    /// Create the engine (with its epoch ticker) and the linker. With a
    /// `cache_dir`, compiled components are kept there, keyed by their bytes
    /// and the engine's settings, so a restart or a reload does not compile
    /// an unchanged component again.
    pub fn new(settings: &RuntimeSettings, cache_dir: Option<&Path>) -> anyhow::Result<Runtime> {
        let instances = settings.instances;
        let mut pool = PoolingAllocationConfig::new();
        // A Rust stage is one core instance with a memory and a table; a
        // Python one (componentize-py) is about 14 core instances and a
        // dozen tables. The pool is sized so a full house of the larger
        // kind fits; what it reserves is address space, not memory. Each
        // component may use at most one slot's share, so however the slots
        // are filled no component can exhaust the pool for the others.
        pool.total_component_instances(instances)
            .total_core_instances(instances * CORE_INSTANCES_PER_SLOT)
            .total_memories(instances * MEMORIES_PER_SLOT)
            .total_tables(instances * TABLES_PER_SLOT)
            .max_core_instances_per_component(CORE_INSTANCES_PER_SLOT)
            .max_memories_per_component(MEMORIES_PER_SLOT)
            .max_tables_per_component(TABLES_PER_SLOT)
            .total_stacks(instances)
            .max_memory_size((MAX_MEMORY_MIB as usize) << 20)
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto);

        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .consume_fuel(settings.fuel_metering);
        if let Some(dir) = cache_dir {
            let dir = std::path::absolute(dir)
                .with_context(|| format!("cannot resolve {}", dir.display()))?;
            let mut cache = CacheConfig::new();
            cache.with_directory(&dir);
            let cache = Cache::new(cache)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot use {} as the compile cache", dir.display()))?;
            config.cache(Some(cache));
        }
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("cannot create the WebAssembly engine")?;
        spawn_epoch_ticker(&engine);

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        // Every supported contract version, side by side: a component built
        // against an older one links to the same host code it always did.
        bindings::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;

        Ok(Runtime {
            engine,
            linker,
            settings: settings.clone(),
            slots: Arc::new(Semaphore::new(instances as usize)),
            compiled: Mutex::new(HashMap::new()),
            http: reqwest::Client::builder()
                .build()
                .context("cannot build the HTTP client for model providers")?,
        })
    }

    /// The settings the engine was built with.
    pub fn settings(&self) -> &RuntimeSettings {
        &self.settings
    }

    /// Compile, check and pre-instantiate one stage.
    ///
    /// Errors are [`ManifestError`]s located at the stage's `plugin` key, so
    /// an operator sees the same shape of message for a bad digest and for a
    /// component that imports what it was not granted.
    /// `key` names the manifest key errors point at (`plugin`, or
    /// `candidate.plugin` for a candidate version).
    pub fn load_stage(
        &self,
        manifest: &std::path::Path,
        pipeline: &str,
        spec: &StageSpec,
        key: &str,
    ) -> Result<LoadedStage, ManifestError> {
        let path = spec.plugin.path.clone();
        let fail = |kind| ManifestError {
            file: manifest.to_owned(),
            location: Box::new(crate::manifest::Location {
                pipeline: Some(pipeline.to_owned()),
                stage: Some(spec.name.clone()),
                key: Some(key.to_owned()),
            }),
            kind: Box::new(kind),
        };

        let component = self.compile(&spec.plugin).map_err(|reason| {
            fail(ManifestErrorKind::InvalidComponent {
                path: path.clone(),
                reason,
            })
        })?;
        let ty = component.component_type();

        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let Some(contract) = Contract::of_exports(exports.iter().map(String::as_str)) else {
            return Err(fail(ManifestErrorKind::MissingExport {
                path,
                expected: STAGE_EXPORT_EXPECTED,
                found: exports,
            }));
        };

        let mut imports = Vec::new();
        let mut ungranted = Vec::new();
        for (name, _) in ty.imports(&self.engine) {
            let rule = ImportRule::of(name);
            let allowed = match rule {
                ImportRule::Types | ImportRule::Baseline => true,
                ImportRule::Grant(grant) => spec.grants.contains(&grant),
                ImportRule::Denied => false,
            };
            if !allowed {
                ungranted.push(UngrantedImport {
                    name: name.to_owned(),
                    grant: match rule {
                        ImportRule::Grant(grant) => Some(grant),
                        _ => None,
                    },
                });
            }
            // Types-only interfaces carry no functions; listing them would
            // only add noise to `strata check`.
            if rule != ImportRule::Types {
                imports.push(ImportInfo {
                    name: name.to_owned(),
                    rule,
                });
            }
        }
        if !ungranted.is_empty() {
            return Err(fail(ManifestErrorKind::UngrantedImports {
                path,
                imports: ungranted,
            }));
        }

        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(|pre| StagePre::new(contract, pre))
            .map_err(|e| {
                fail(ManifestErrorKind::Link {
                    path: path.clone(),
                    reason: format!("{e:#}"),
                })
            })?;

        Ok(LoadedStage {
            context: Arc::new(StageContext {
                pipeline: pipeline.into(),
                stage: spec.name.as_str().into(),
                config: StageConfig::new(&spec.config),
            }),
            spec: spec.clone(),
            digest: spec.plugin.digest(),
            contract,
            imports,
            exports,
            pre,
            reuse: spec.reuse.map(|spec| ReusePool {
                spec,
                idle: Mutex::new(Vec::new()),
                serving: std::sync::atomic::AtomicBool::new(true),
            }),
        })
    }

    fn compile(&self, plugin: &PluginFile) -> Result<Component, String> {
        let key = &plugin.sha256;
        if let Some(component) = self.lock_compiled().get(key) {
            return Ok(component.clone());
        }
        // Compile outside the lock: it takes tens of milliseconds.
        let component =
            Component::new(&self.engine, &*plugin.bytes).map_err(|e| format!("{e:#}"))?;
        self.lock_compiled().insert(key.clone(), component.clone());
        Ok(component)
    }

    /// Compile a plugin and list its exports and imports, without checking
    /// them against any grants (`strata audit` reports rather than refuses).
    pub fn inspect(&self, plugin: &PluginFile) -> Result<ComponentFacts, String> {
        let component = self.compile(plugin)?;
        let ty = component.component_type();
        Ok(ComponentFacts {
            exports: ty
                .exports(&self.engine)
                .map(|(name, _)| name.to_owned())
                .collect(),
            imports: ty
                .imports(&self.engine)
                .map(|(name, _)| ImportInfo {
                    name: name.to_owned(),
                    rule: ImportRule::of(name),
                })
                .collect(),
        })
    }

    fn lock_compiled(&self) -> std::sync::MutexGuard<'_, HashMap<String, Component>> {
        // A panic while holding this lock could only come from HashMap
        // itself; the map stays usable, so a poisoned lock is taken over.
        self.compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Run one stage on one request: in a fresh instance, or, for a stage
    /// that opts into reuse, in an idle instance of its own if one waits.
    ///
    /// This is the one place that gets an instance for a stage.
    pub async fn invoke(
        &self,
        stage: &LoadedStage,
        request: &Request,
        tag: &LogTag,
        services: &Services,
    ) -> Invocation {
        let limits = stage.spec.limits;
        let idle = stage
            .reuse
            .as_ref()
            .and_then(|pool| pool.idle.lock().unwrap_or_else(|e| e.into_inner()).pop());
        let (mut store, instance, slot, uses) = match idle {
            Some(idle) => (idle.store, Some(idle.instance), idle.slot, idle.uses),
            None => {
                let Some(slot) = self.slot(services.batch).await else {
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
        prepare(
            &mut store,
            stage,
            tag,
            services,
            self.settings.fuel_metering,
        );

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
                .handle(&mut store, &request.into())
                .await
                .map_err(|e| (false, e))?;
            Ok((instance, outcome))
        };
        // The epoch deadline only fires while guest code runs; this bounds
        // time the guest spends waiting on the host (a WASI poll, say).
        let result = tokio::time::timeout(timeout + EPOCH_TICK * 2, call).await;
        // What the stage did before it finished (or was stopped) still
        // counts: a model call it made was paid for.
        let effects = std::mem::take(&mut store.data_mut().effects);
        let state = store.data();
        if state.log_lines_dropped > 0 {
            tracing::warn!(
                request_id = %tag.request_id, pipeline = %tag.pipeline,
                generation = tag.generation, stage = %tag.stage, digest = %tag.digest,
                dropped = state.log_lines_dropped,
                "stage logged more than {} lines; the rest were dropped",
                crate::imports::log::MAX_LINES
            );
        }
        let (outcome, instance) = match result {
            Err(_) => (
                Err(StageFailure::Timeout {
                    ms: limits.timeout_ms,
                }),
                None,
            ),
            Ok(Ok((instance, outcome))) => (check_outcome(outcome.into(), &limits), Some(instance)),
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
                }
            }
        }
        Invocation { outcome, effects }
    }

    /// A slot of the instance pool. Real-time requests wait at most
    /// `[runtime] slot_wait_ms` (`None` then: the host is overloaded);
    /// background ones (`patient`) as long as it takes.
    async fn slot(&self, patient: bool) -> Option<tokio::sync::OwnedSemaphorePermit> {
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
        let logs = crate::imports::wasi::GuestLogs::new(tag.clone());
        let seed = stage.spec.deterministic.map(|seed| {
            // The same input meets the same randomness, whatever the request
            // id: a replay decides alike.
            crate::pipeline::fnv1a(request.input.as_bytes(), seed)
        });
        let mut store = Store::new(
            &self.engine,
            StageState {
                wasi: crate::imports::wasi::locked_down(&logs, seed, &stage.spec.wasi),
                table: ResourceTable::new(),
                limiter: StageLimiter::new(stage.spec.limits.memory_mib),
                context: stage.context.clone(),
                tag: tag.clone(),
                logs,
                services: Services::default(),
                effects: Effects::default(),
                timed_out: false,
                deadline: Instant::now(),
                log_lines: 0,
                log_lines_dropped: 0,
            },
        );
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(HOSTCALL_FUEL);
        store
    }

    /// The HTTP client host services (model providers) share.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// Host services an invocation may use, as its grants allow.
#[derive(Clone, Default)]
pub struct Services {
    /// The pipeline's answer bank.
    pub bank: Option<Arc<crate::bank::Bank>>,
    /// The generation's model tiers.
    pub models: Option<Arc<crate::model::ModelRouter>>,
    /// A shadow run reads the bank but must not change it.
    pub read_only_bank: bool,
    /// Model calls may wait to join a batch (asynchronous requests only).
    pub batch: bool,
}

/// What an invocation did besides deciding.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    /// The key the stage asked its request's final answer be kept under.
    pub remember_key: Option<String>,
    /// Model calls it made.
    pub model_calls: Vec<crate::model::ModelCall>,
    /// Answer-bank lookups that found an answer.
    pub cache_hits: u32,
    /// Answer-bank lookups that found nothing.
    pub cache_misses: u32,
    /// The pattern the stage's last answer-bank lookup matched.
    pub pattern: Option<i64>,
    /// Its `lookup` calls by result: trusted, untrusted, no match.
    pub pattern_lookups: [u32; 3],
    /// Its `lookup` calls by the model that matched them.
    pub pattern_features: crate::patterns::PatternFeatures,
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
fn prepare(
    store: &mut Store<StageState>,
    stage: &LoadedStage,
    tag: &LogTag,
    services: &Services,
    fuel_metering: bool,
) {
    let limits = stage.spec.limits;
    let state = store.data_mut();
    if state.tag.request_id != tag.request_id {
        state.logs.restart(tag.clone());
        state.tag = tag.clone();
    }
    state.services = services.clone();
    state.effects = Effects::default();
    state.timed_out = false;
    state.log_lines = 0;
    state.log_lines_dropped = 0;
    if fuel_metering {
        store
            .set_fuel(limits.fuel.unwrap_or(u64::MAX))
            .expect("fuel metering is enabled on this engine");
    }
    let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
    store.data_mut().deadline = deadline;
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

/// An instance waiting for its next request, with its store and the pool
/// slot it holds.
struct Idle {
    store: Store<StageState>,
    instance: StageInstance,
    slot: tokio::sync::OwnedSemaphorePermit,
    uses: u32,
}

/// The idle instances of a stage that reuses them.
pub(crate) struct ReusePool {
    spec: crate::manifest::ReuseSpec,
    idle: Mutex<Vec<Idle>>,
    /// False while the stage's generation is not the one served: instances
    /// are then not kept idle.
    serving: std::sync::atomic::AtomicBool,
}

impl LoadedStage {
    /// Mark this version served or not. A version no longer served drops
    /// its idle instances at once, releasing their pool slots, and keeps
    /// none from then on; one served again (a rollback) keeps them again.
    pub fn set_serving(&self, serving: bool) {
        if let Some(pool) = &self.reuse {
            pool.serving
                .store(serving, std::sync::atomic::Ordering::Release);
            if !serving {
                let idle =
                    std::mem::take(&mut *pool.idle.lock().unwrap_or_else(|e| e.into_inner()));
                drop(idle);
            }
        }
    }

    /// Idle instances this version holds (and so pool slots).
    pub fn idle_instances(&self) -> usize {
        self.reuse.as_ref().map_or(0, |pool| {
            pool.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
        })
    }
}

/// Advance the engine's epoch every tick for as long as the engine lives.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("strata-epoch".to_owned())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("cannot spawn the epoch ticker thread");
}

fn check_outcome(outcome: Outcome, limits: &Limits) -> Result<Outcome, StageFailure> {
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
fn classify(error: wasmtime::Error, state: &StageState, limits: &Limits) -> StageFailure {
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
            StageFailure::Instantiate { .. } => "instantiate",
            StageFailure::Overloaded { .. } => "overloaded",
        }
    }

    /// Internals for the log, never for the client.
    pub fn detail(&self) -> Option<&str> {
        match self {
            StageFailure::Trap { detail } | StageFailure::Instantiate { detail } => Some(detail),
            _ => None,
        }
    }
}

/// A stage ready to be invoked.
pub struct LoadedStage {
    /// The stage as the manifest describes it.
    pub spec: StageSpec,
    /// `sha256:<hex>` of the component.
    pub digest: String,
    /// The contract version the component was built against.
    pub contract: Contract,
    /// The component's imports (types-only interfaces left out) and how each
    /// is satisfied.
    pub imports: Vec<ImportInfo>,
    /// The component's exports.
    pub exports: Vec<String>,
    pre: StagePre<StageState>,
    context: Arc<StageContext>,
    reuse: Option<ReusePool>,
}

/// What a component exports and imports.
#[derive(Debug, Clone)]
pub struct ComponentFacts {
    /// Export names.
    pub exports: Vec<String>,
    /// Every import, types-only ones included, with how the host would
    /// satisfy it.
    pub imports: Vec<ImportInfo>,
}

impl ComponentFacts {
    /// Whether it exports the stage interface of a supported version.
    pub fn is_stage(&self) -> bool {
        self.contract().is_some()
    }

    /// The contract version whose stage it exports.
    pub fn contract(&self) -> Option<Contract> {
        Contract::of_exports(self.exports.iter().map(String::as_str))
    }
}

/// One import of a loaded component.
#[derive(Debug, Clone)]
pub struct ImportInfo {
    /// Full name, e.g. `wasi:cli/stdout@0.2.6`.
    pub name: String,
    /// How the host satisfies it.
    pub rule: ImportRule,
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

/// Per-stage data every invocation's store shares.
pub(crate) struct StageContext {
    #[allow(dead_code, reason = "kept for debugging and future host imports")]
    pub(crate) pipeline: Arc<str>,
    #[allow(dead_code, reason = "kept for debugging and future host imports")]
    pub(crate) stage: Arc<str>,
    pub(crate) config: StageConfig,
}

/// A stage's config table, prepared for the `config` interface.
pub(crate) struct StageConfig {
    /// Top-level values: strings as they are, anything else as JSON.
    pub(crate) values: HashMap<String, String>,
    /// The whole table as JSON.
    pub(crate) json: String,
}

impl StageConfig {
    fn new(table: &serde_json::Map<String, serde_json::Value>) -> Self {
        let values = table
            .iter()
            .map(|(key, value)| {
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (key.clone(), text)
            })
            .collect();
        StageConfig {
            values,
            json: serde_json::Value::Object(table.clone()).to_string(),
        }
    }
}

/// The data of one invocation's store.
pub(crate) struct StageState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: StageLimiter,
    pub(crate) context: Arc<StageContext>,
    pub(crate) tag: LogTag,
    logs: crate::imports::wasi::GuestLogs,
    pub(crate) services: Services,
    pub(crate) effects: Effects,
    timed_out: bool,
    /// When the invocation's wall-clock limit runs out: host calls that
    /// wait on the network (an embeddings lookup) keep within it.
    pub(crate) deadline: Instant,
    pub(crate) log_lines: u32,
    pub(crate) log_lines_dropped: u32,
}

impl WasiView for StageState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
