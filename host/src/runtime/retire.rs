//! Retiring finished instances off the request's path.
//!
//! Dropping a fresh instance's store resets its pool slot for the next one
//! (wasmtime walks the memory with `pagemap_scan` and copies back the pages
//! the guest wrote): about a third of what a fresh instance costs. A request
//! need not wait for it. On the host's async workers a finished store is
//! kept in the worker's own small list and dropped when the worker has
//! nothing else to do ([`on_worker_park`], which the server's runtime calls
//! just before a worker goes idle), so with light traffic the reset happens
//! after the reply is written, on the same thread, with no wake-up of
//! another. Under load a worker seldom goes idle; its list is dropped
//! whenever it is full, in line, so the host does the same work it always
//! did.
//!
//! A kept store still holds its slot of the instance pool, so the pool never
//! holds more instances than it has slots. A worker keeps at most an eighth
//! of the pool ([`cap`], and at most [`KEPT_PER_WORKER`]): a small pool
//! keeps nothing, so another worker's request never waits for slots this
//! one holds. A request that finds no free slot first drops what its own
//! worker keeps ([`drop_kept`]). On any thread
//! that is not such a worker (the blocking pool, a test's runtime, the
//! one-shot commands) a store is dropped at once, as before.

use std::cell::RefCell;

use tokio::sync::OwnedSemaphorePermit;
use wasmtime::Store;

use super::invoke::StageState;

/// Finished stores a worker keeps at most before it drops them in line.
pub(super) const KEPT_PER_WORKER: usize = 8;

/// How many finished stores a worker keeps with a pool of `instances`.
pub(super) fn cap(instances: u32) -> usize {
    (instances as usize / 8).min(KEPT_PER_WORKER)
}

/// A finished store and the pool slot it holds.
type Finished = (Store<StageState>, OwnedSemaphorePermit);

thread_local! {
    /// This thread's finished stores; `None` until the thread has gone idle
    /// once as a worker of a runtime that calls [`on_worker_park`].
    static KEPT: RefCell<Option<Vec<Finished>>> = const { RefCell::new(None) };
}

/// Give a finished instance's store, and the slot it holds, back: kept for
/// the worker's next idle moment when called on such a worker, at most
/// `cap` of them (see [`cap`]), dropped now otherwise.
pub(super) fn retire(store: Store<StageState>, slot: OwnedSemaphorePermit, cap: usize) {
    let full = KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        match kept.as_mut() {
            Some(list) if cap > 0 => {
                list.push((store, slot));
                list.len() >= cap
            }
            _ => {
                drop(kept);
                drop(store);
                drop(slot);
                false
            }
        }
    });
    if full {
        drop_kept();
    }
}

/// Drop every store this thread keeps, freeing their slots.
pub(crate) fn drop_kept() {
    // Taken out of the cell first: dropping a store runs wasmtime's code,
    // which must not find the cell borrowed.
    let kept = KEPT.with(|kept| kept.borrow_mut().as_mut().map(std::mem::take));
    drop(kept);
}

/// For the server's runtime (`on_thread_park`): the worker is about to go
/// idle, so what it keeps is dropped now; from here on it keeps finished
/// stores.
pub fn on_worker_park() {
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        if kept.is_none() {
            *kept = Some(Vec::with_capacity(KEPT_PER_WORKER));
        }
    });
    drop_kept();
}

/// For the server's runtime (`on_thread_stop`): a worker that stops keeps
/// nothing.
pub fn on_worker_stop() {
    let kept = KEPT.with(|kept| kept.borrow_mut().take());
    drop(kept);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    use super::*;

    /// A maker of empty stores of one engine.
    fn stores() -> impl Fn() -> Store<StageState> {
        let runtime = crate::runtime::Runtime::new(&Default::default(), None).unwrap();
        let config = crate::runtime::imports::config::ConfigCtx::new(&Default::default());
        let wasi = Arc::new(crate::manifest::WasiSpec::default());
        let tag = crate::runtime::LogTag {
            request_id: "r".into(),
            pipeline: "p".into(),
            stage: "s".into(),
            generation: 1,
            digest: "d".into(),
        };
        move || runtime.store_for(16, &config, &wasi, None, &tag)
    }

    #[test]
    fn a_worker_keeps_an_eighth_of_the_pool_and_at_most_eight() {
        assert_eq!(cap(4), 0);
        assert_eq!(cap(16), 2);
        assert_eq!(cap(64), 8);
        assert_eq!(cap(256), KEPT_PER_WORKER);
    }

    #[test]
    fn a_thread_that_never_idled_as_a_worker_drops_at_once() {
        let store = stores();
        let slots = Arc::new(Semaphore::new(1));
        retire(
            store(),
            slots.clone().try_acquire_owned().unwrap(),
            KEPT_PER_WORKER,
        );
        assert_eq!(slots.available_permits(), 1);
    }

    #[test]
    fn a_worker_keeps_stores_until_it_idles_or_holds_too_many() {
        std::thread::spawn(|| {
            let store = stores();
            let slots = Arc::new(Semaphore::new(KEPT_PER_WORKER));
            on_worker_park();
            for kept in 1..KEPT_PER_WORKER {
                retire(
                    store(),
                    slots.clone().try_acquire_owned().unwrap(),
                    KEPT_PER_WORKER,
                );
                assert_eq!(slots.available_permits(), KEPT_PER_WORKER - kept);
            }
            // The next one fills the list: all are dropped in line.
            retire(
                store(),
                slots.clone().try_acquire_owned().unwrap(),
                KEPT_PER_WORKER,
            );
            assert_eq!(slots.available_permits(), KEPT_PER_WORKER);

            retire(
                store(),
                slots.clone().try_acquire_owned().unwrap(),
                KEPT_PER_WORKER,
            );
            assert_eq!(slots.available_permits(), KEPT_PER_WORKER - 1);
            on_worker_park();
            assert_eq!(slots.available_permits(), KEPT_PER_WORKER);

            retire(
                store(),
                slots.clone().try_acquire_owned().unwrap(),
                KEPT_PER_WORKER,
            );
            drop_kept();
            assert_eq!(slots.available_permits(), KEPT_PER_WORKER);

            retire(
                store(),
                slots.clone().try_acquire_owned().unwrap(),
                KEPT_PER_WORKER,
            );
            on_worker_stop();
            assert_eq!(slots.available_permits(), KEPT_PER_WORKER);
            // A worker whose pool is too small to share keeps nothing.
            on_worker_park();
            retire(store(), slots.clone().try_acquire_owned().unwrap(), cap(7));
            assert_eq!(slots.available_permits(), KEPT_PER_WORKER);
            on_worker_stop();
            // A stopped worker keeps nothing more.
            retire(
                store(),
                slots.clone().try_acquire_owned().unwrap(),
                KEPT_PER_WORKER,
            );
            assert_eq!(slots.available_permits(), KEPT_PER_WORKER);
        })
        .join()
        .unwrap();
    }
}
