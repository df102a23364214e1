//! Pre-initialising a stage: a component that exports `init` has
//! `initialize` run once, at load, and every fresh instance starts from the
//! state it left (a snapshot of its memories and globals, written into a
//! new component by `wasmtime-wizer`).
//!
//! The host runs the guest itself, so `initialize` links against the same
//! linker as a request and runs under the stage's grants, memory cap and
//! fuel, with a deadline of [`INIT_TIMEOUT`]. Its WASI is the deterministic
//! one (a fixed clock, randomness seeded from the component's digest), so a
//! snapshot depends on the component and its stage's config, limits and
//! grants alone, and is kept per those (up to [`MAX_KEPT`]): a reload that
//! changes none of them does not initialise again. The instances `init`
//! runs in hold pool slots like any other; a snapshot holding a host
//! resource is refused.
//!
//! `initialize` runs twice when it asks to be kept: once in a plain
//! instance, to learn whether it wants a snapshot at all (most stages built
//! with the SDK do not, and instrumenting means compiling the component a
//! second time), and once in the instrumented component, whose state is
//! then read out.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;

use tokio::sync::OwnedSemaphorePermit;
use wasmtime::Store;
use wasmtime::component::{Component, ComponentType, Instance, Lift, TypedFunc, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use super::engine::Runtime;
use super::imports::config::ConfigCtx;
use super::invoke::{LogTag, StageState, classify, set_budget};
use super::ticker::EPOCH_TICK;
use crate::manifest::{Digest, StageSpec, WasiSpec};

/// The export a stage pre-initialises through.
pub const INIT_EXPORT: &str = "strata:pipeline/init@0.2.0";

/// Its one function.
const INIT_FUNC: &str = "initialize";

/// How long `initialize` may run (each of its two runs).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Memory beyond the stage's cap allowed while the snapshot is read: wizer
/// grows each memory by a page per read, and reads each twice.
const SNAPSHOT_HEADROOM: usize = 1 << 20;

/// Pre-initialised components kept; more (configs edited over and over
/// under `strata watch`, say) start the cache afresh.
const MAX_KEPT: usize = 64;

/// What `init` made of a stage: the component every fresh instance starts
/// from instead of the one the manifest names.
#[derive(Clone)]
pub struct Snapshot {
    pub(super) component: Component,
    /// The snapshot's SHA-256 (it is derived from the stage's component and
    /// its config, so it changes with either).
    pub digest: Digest,
    /// Its size.
    pub bytes: usize,
    /// How long `init`, the snapshot and its compilation took.
    pub millis: u64,
}

impl Runtime {
    /// What every fresh instance of the stage `spec` should start from
    /// instead of `component`: its pre-initialised snapshot, if it exports
    /// `init` and its `initialize` asks to be kept. The error says why
    /// `initialize` failed.
    pub(super) fn initialise(
        &self,
        spec: &StageSpec,
        config: &Arc<ConfigCtx>,
        wasi: &Arc<WasiSpec>,
        component: &Component,
    ) -> Result<Option<Snapshot>, String> {
        if component.get_export_index(None, INIT_EXPORT).is_none() {
            return Ok(None);
        }
        // Everything `initialize` may see or is held to.
        let key = (
            spec.plugin.digest.clone(),
            format!(
                "{}\n{:?}\n{:?}\n{:?}",
                config.json(),
                spec.limits,
                spec.wasi,
                spec.grants
            ),
        );
        if let Some(ready) = self.lock_initialised().get(&key) {
            return Ok(ready.clone());
        }
        let init = Init {
            runtime: self,
            spec,
            config,
            wasi,
            tag: LogTag {
                request_id: Arc::from("init"),
                pipeline: Arc::from(""),
                stage: Arc::from(spec.name.as_str()),
                generation: 0,
                digest: Arc::from(spec.plugin.digest.to_string()),
            },
            seed: crate::request::fnv1a(spec.plugin.digest.to_string().as_bytes(), 0),
        };
        // Loading is blocking work (the callers run it off the async
        // workers), so `initialize` gets a small runtime of its own, with
        // what a granted stage's WASI needs (timers, sockets).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime to run `initialize`: {e}"))?;
        let ready = runtime.block_on(async {
            if init.asks_to_be_kept(component).await? {
                init.snapshot().await.map(Some)
            } else {
                Ok(None)
            }
        })?;
        let mut initialised = self.lock_initialised();
        // Old entries are only a faster reload back to an old config; the
        // stages loaded from them hold their own reference.
        if initialised.len() >= MAX_KEPT {
            initialised.clear();
        }
        initialised.insert(key, ready.clone());
        Ok(ready)
    }
}

/// One stage's `init`, run in instances of its own.
struct Init<'a> {
    runtime: &'a Runtime,
    spec: &'a StageSpec,
    config: &'a Arc<ConfigCtx>,
    wasi: &'a Arc<WasiSpec>,
    tag: LogTag,
    seed: u64,
}

impl Init<'_> {
    /// An instance of `component` in a store of its own, within the
    /// stage's memory cap and fuel and the init deadline. It holds a slot
    /// of the pool, as a request's does, so loading under load neither
    /// fails for want of one nor takes one a request counted on.
    async fn instantiate(
        &self,
        component: &Component,
    ) -> Result<(Store<StageState>, Instance, Option<OwnedSemaphorePermit>), String> {
        let slot = self.runtime.slot(true).await;
        let mut store = self.runtime.store_for(
            self.spec.limits.memory_mib,
            self.config,
            self.wasi,
            Some(self.seed),
            &self.tag,
        );
        set_budget(
            &mut store,
            self.spec.limits.fuel,
            Instant::now() + INIT_TIMEOUT,
            self.runtime.settings.fuel_metering,
        );
        let instance = self
            .runtime
            .linker
            .instantiate_async(&mut store, component)
            .await
            .map_err(|e| explain(e, &store, self.spec))?;
        Ok((store, instance, slot))
    }

    /// Run `initialize` in a plain instance of `component`: whether it
    /// asks to be kept.
    async fn asks_to_be_kept(&self, component: &Component) -> Result<bool, String> {
        let (mut store, instance, _slot) = self.instantiate(component).await?;
        call_initialize(&mut store, &instance, self.spec).await
    }

    /// Run `initialize` again in the instrumented component and make its
    /// state the component fresh instances start from.
    async fn snapshot(&self) -> Result<Snapshot, String> {
        let started = Instant::now();
        let engine = &self.runtime.engine;
        let wizer = Wizer::new();
        let (context, instrumented) = wizer
            .instrument_component(&self.spec.plugin.bytes)
            .map_err(|e| format!("cannot instrument the component to snapshot it: {e:#}"))?;
        let instrumented = Component::new(engine, &instrumented)
            .map_err(|e| format!("cannot compile the instrumented component: {e:#}"))?;
        let (mut store, instance, _slot) = self.instantiate(&instrumented).await?;
        if !call_initialize(&mut store, &instance, self.spec).await? {
            return Err("`initialize` asked to be kept, then, run again, not".to_owned());
        }
        // A host resource the guest still holds (wasi-libc keeps the
        // stdout stream it opened, a file stays open) would be a dangling
        // handle in every instance started from the snapshot.
        if !store.data().table.is_empty() {
            return Err(
                "`initialize` returned holding host resources (stdout or stderr \
                 written to, a file or socket left open), which cannot be part of a \
                 snapshot; log through `log` instead, or return false"
                    .to_owned(),
            );
        }
        // Reading the state out is the host's work, not the guest's: it
        // gets fresh fuel and time, room for the page each read adds to a
        // memory, and no cap on what one read returns (the memory cap
        // bounds it).
        let deadline = Instant::now() + INIT_TIMEOUT;
        set_budget(
            &mut store,
            None,
            deadline,
            self.runtime.settings.fuel_metering,
        );
        store.data_mut().limiter.allow_more(SNAPSHOT_HEADROOM);
        store.set_hostcall_fuel(usize::MAX);
        let mut state = Snapshotting {
            store: &mut store,
            instance,
            error: None,
        };
        // Wizer indexes what a read returned; a failed read returns
        // nothing, which it may not expect: a panic there is this stage's
        // load failing, not the host.
        let snapshot = AssertUnwindSafe(wizer.snapshot_component(&context, &mut state))
            .catch_unwind()
            .await;
        if let Some(error) = state.error {
            return Err(format!("cannot read the initialised instance: {error}"));
        }
        let snapshot = match snapshot {
            Ok(snapshot) => {
                snapshot.map_err(|e| format!("cannot snapshot the initialised instance: {e:#}"))?
            }
            Err(_) => return Err("cannot snapshot the initialised instance".to_owned()),
        };
        let ready = Snapshot {
            component: Component::new(engine, &snapshot)
                .map_err(|e| format!("cannot compile the initialised component: {e:#}"))?,
            digest: Digest::of(&snapshot),
            bytes: snapshot.len(),
            millis: started.elapsed().as_millis() as u64,
        };
        tracing::info!(
            stage = %self.spec.name, digest = %self.spec.plugin.digest,
            snapshot = %ready.digest, snapshot_bytes = ready.bytes, millis = ready.millis,
            "stage pre-initialised: fresh instances start from its init"
        );
        Ok(ready)
    }
}

/// The function `func` of the exported interface `interface`, typed as
/// taking nothing and returning one `R`.
fn export_func<R>(
    store: &mut Store<StageState>,
    instance: &Instance,
    interface: &str,
    func: &str,
) -> Result<TypedFunc<(), (R,)>, String>
where
    R: ComponentType + Lift + Send + Sync + 'static,
{
    let index = instance
        .get_export_index(&mut *store, None, interface)
        .and_then(|parent| instance.get_export_index(&mut *store, Some(&parent), func))
        .ok_or_else(|| format!("no export `{interface}.{func}`"))?;
    instance
        .get_typed_func::<(), (R,)>(&mut *store, index)
        .map_err(|e| format!("`{interface}.{func}`: {e:#}"))
}

/// Call `init.initialize` on `instance`: whether it asks to be kept.
async fn call_initialize(
    store: &mut Store<StageState>,
    instance: &Instance,
    spec: &StageSpec,
) -> Result<bool, String> {
    let func = export_func::<bool>(store, instance, INIT_EXPORT, INIT_FUNC)?;
    // The epoch deadline stops guest code; this bounds a guest waiting on
    // the host (a sleep, a socket).
    let call = tokio::time::timeout(
        INIT_TIMEOUT + EPOCH_TICK * 2,
        func.call_async(&mut *store, ()),
    );
    match call.await {
        Ok(Ok((keep,))) => Ok(keep),
        Ok(Err(error)) => Err(explain(error, store, spec)),
        Err(_) => Err(format!(
            "`initialize` timed out after {} ms",
            INIT_TIMEOUT.as_millis()
        )),
    }
}

/// Why `initialize` (or the instance it runs in) failed, in the words a
/// request's failure would use, with the guest's own message when it
/// panicked.
fn explain(error: wasmtime::Error, store: &Store<StageState>, spec: &StageSpec) -> String {
    let state = store.data();
    let mut limits = spec.limits;
    limits.timeout_ms = INIT_TIMEOUT.as_millis() as u64;
    let failure = classify(error, state, &limits);
    match (state.logs.stderr_tail(), failure.detail()) {
        (Some(stderr), _) => format!("`initialize` {failure}: {stderr}"),
        (None, Some(detail)) => format!("`initialize` {failure}: {detail}"),
        (None, None) => format!("`initialize` {failure}"),
    }
}

/// What wizer reads the initialised instance through: the accessor
/// functions its instrumentation exports. A failed call is kept in `error`
/// (the trait has no way to return one) and fails the snapshot.
struct Snapshotting<'a> {
    store: &'a mut Store<StageState>,
    instance: Instance,
    error: Option<String>,
}

impl Snapshotting<'_> {
    async fn call<R>(&mut self, instance: &str, func: &str) -> Option<R>
    where
        R: ComponentType + Lift + Send + Sync + 'static,
    {
        let result = match export_func::<R>(self.store, &self.instance, instance, func) {
            Ok(typed) => typed
                .call_async(&mut *self.store, ())
                .await
                .map(|(value,)| value)
                .map_err(|e| format!("`{instance}.{func}`: {e:#}")),
            Err(error) => Err(error),
        };
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.error.get_or_insert(error);
                None
            }
        }
    }
}

impl ComponentInstanceState for Snapshotting<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        match self.call::<WasmList<u8>>(instance, func).await {
            Some(list) => contents(list.as_le_slice(&*self.store)),
            None => contents(&[]),
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func).await.unwrap_or_default()
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func)
            .await
            .map_or(0, f32::to_bits)
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func)
            .await
            .map_or(0, f64::to_bits)
    }
}
