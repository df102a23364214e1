//! The engine: one wasmtime `Engine` with its pooling allocator, epoch
//! ticker and compile cache, the linker every stage links against, and the
//! components compiled so far.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig,
};

use super::invoke::StageState;
use super::ticker::Ticker;
use crate::manifest::{Digest, MAX_MEMORY_MIB, PluginFile, RuntimeSettings};

/// One instance slot's share of the pool: core instances, memories and
/// tables a single component may hold.
pub(super) const CORE_INSTANCES_PER_SLOT: u32 = 16;

pub(super) const MEMORIES_PER_SLOT: u32 = 4;

pub(super) const TABLES_PER_SLOT: u32 = 16;

/// Resident memory kept per pooled slot between instances; measured here to
/// halve the cost of a fresh instance together with `pagemap_scan`.
pub(super) const KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// The engine, linker and instance pool shared by every stage of every
/// generation.
pub struct Runtime {
    pub(super) engine: Engine,
    pub(super) linker: Linker<StageState>,
    pub(super) settings: RuntimeSettings,
    /// One permit per pooled instance slot: a request waits for a slot
    /// rather than failing when the pool is busy.
    pub(super) slots: Arc<Semaphore>,
    /// Compiled components by SHA-256, so one plugin used by several stages
    /// (or by several generations) is compiled once.
    pub(super) compiled: Mutex<HashMap<Digest, Component>>,
    /// What `init` made of a component, by digest and everything its
    /// `initialize` sees (see `init`): a snapshot, or `None` when it asked
    /// to keep nothing.
    pub(super) initialised: Mutex<HashMap<(Digest, String), Option<super::init::Snapshot>>>,
    /// Shared by host services that call out (model providers).
    pub(super) http: reqwest::Client,
    /// Where host services run work that outlives the call that started it
    /// (a batch of model calls): the host's own tracker when it serves, so
    /// shutdown waits for that work.
    pub(super) tasks: tokio_util::task::TaskTracker,
    /// Advances the engine's epoch while any store lives.
    pub(super) ticker: Arc<Ticker>,
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
            .consume_fuel(settings.fuel_metering)
            // Bounds checks are explicit in compiled code rather than left
            // to guard pages and signal handlers. A guest's memory then
            // stays mapped read-write after it grows, so recycling its pool
            // slot for the next fresh instance needs no `mprotect` (and no
            // TLB shootdown across cores): measured at about 9 % less CPU
            // per request on the demo (BENCHMARKS.md). Just as safe; the
            // guest's own code pays a little for the checks.
            .signals_based_traps(false)
            .memory_guard_size(0);
        // `STRATA_PERF_MAP=1` names the guests' compiled functions for
        // `perf` (in /tmp/perf-PID.map), so a profile of the host shows
        // which stage code runs rather than anonymous JIT addresses.
        if std::env::var_os("STRATA_PERF_MAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
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
        let ticker = Ticker::spawn(&engine);

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        // Every supported contract version, side by side: a component built
        // against an older one links to the same host code it always did.
        super::imports::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;
        // `wasi:http`: its types for HTTP stages, its outgoing handler for
        // those granted it (the capability check runs before linking).
        super::imports::http::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;

        Ok(Runtime {
            engine,
            linker,
            settings: settings.clone(),
            slots: Arc::new(Semaphore::new(instances as usize)),
            compiled: Mutex::new(HashMap::new()),
            initialised: Mutex::new(HashMap::new()),
            http: reqwest::Client::builder()
                .build()
                .context("cannot build the HTTP client for model providers")?,
            tasks: tokio_util::task::TaskTracker::new(),
            ticker,
        })
    }

    /// The settings the engine was built with.
    pub fn settings(&self) -> &RuntimeSettings {
        &self.settings
    }

    pub(super) fn compile(&self, plugin: &PluginFile) -> Result<Component, String> {
        let key = &plugin.digest;
        if let Some(component) = self.lock_compiled().get(key) {
            return Ok(component.clone());
        }
        // Compile outside the lock: it takes tens of milliseconds.
        let component =
            Component::new(&self.engine, &*plugin.bytes).map_err(|e| format!("{e:#}"))?;
        self.lock_compiled().insert(key.clone(), component.clone());
        Ok(component)
    }

    pub(super) fn lock_compiled(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Component>> {
        // A panic while holding this lock could only come from HashMap
        // itself; the map stays usable, so a poisoned lock is taken over.
        self.compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn lock_initialised(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(Digest, String), Option<super::init::Snapshot>>> {
        // As for `compiled`: a poisoned map is still a usable map.
        self.initialised
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The HTTP client host services (model providers) share.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Run host services' background work on `tasks` (the host's tracker)
    /// instead of a tracker of the runtime's own.
    pub fn with_tasks(mut self, tasks: tokio_util::task::TaskTracker) -> Runtime {
        self.tasks = tasks;
        self
    }

    /// Where host services' background work runs.
    pub fn tasks(&self) -> &tokio_util::task::TaskTracker {
        &self.tasks
    }
}
