//! The epoch ticker: a thread that advances the engine's epoch every
//! [`EPOCH_TICK`], which is what interrupts a stage past its timeout and
//! makes a long stage yield to other tasks.
//!
//! Guest code runs only inside a store, so the ticker is needed only while
//! one lives. Every store holds an [`Awake`] guard; once no store has lived
//! for [`IDLE_TICKS`] ticks the ticker sleeps, and the next store made
//! wakes it before any guest code can run in it. An idle host then wakes
//! about once a second (to notice that its engine is gone) rather than a
//! thousand times. The grace before sleeping keeps a host under load, even
//! one request at a time, from paying a thread wake-up per request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Engine;

/// How often the engine's epoch advances: the resolution of stage timeouts
/// and of yielding to other tasks.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Ticks without a live store before the ticker sleeps.
const IDLE_TICKS: u32 = 100;

/// How long the sleeping ticker waits before it looks again whether its
/// engine still exists.
const SLEEP_CHECK: Duration = Duration::from_secs(1);

/// What the ticker thread and the stores share.
pub(super) struct Ticker {
    /// Stores alive now.
    live: AtomicUsize,
    /// Whether the ticker is asleep, or about to be.
    sleeping: AtomicBool,
    /// The ticker thread, to wake it; set by the thread when it starts.
    thread: OnceLock<Thread>,
    /// Epochs advanced (for tests).
    #[cfg(test)]
    ticks: std::sync::atomic::AtomicU64,
}

/// Held by a store for its whole life: while any exists, the epoch
/// advances.
pub(super) struct Awake(Arc<Ticker>);

impl Drop for Awake {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ticker {
    /// Start the ticker thread for `engine`; it ends when the engine is
    /// dropped.
    pub(super) fn spawn(engine: &Engine) -> Arc<Ticker> {
        Self::spawn_checking_every(engine, SLEEP_CHECK)
    }

    /// [`Ticker::spawn`], the sleeping ticker looking for its engine every
    /// `sleep_check`.
    fn spawn_checking_every(engine: &Engine, sleep_check: Duration) -> Arc<Ticker> {
        let ticker = Arc::new(Ticker {
            live: AtomicUsize::new(0),
            sleeping: AtomicBool::new(false),
            thread: OnceLock::new(),
            #[cfg(test)]
            ticks: std::sync::atomic::AtomicU64::new(0),
        });
        let weak = engine.weak();
        let shared = ticker.clone();
        std::thread::Builder::new()
            .name("strata-epoch".to_owned())
            .spawn(move || {
                let _ = shared.thread.set(std::thread::current());
                let mut idle = 0;
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    #[cfg(test)]
                    shared.ticks.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(EPOCH_TICK);
                    if shared.live.load(Ordering::SeqCst) > 0 {
                        idle = 0;
                        continue;
                    }
                    // Held at the grace once reached, so a ticker that woke
                    // only to look for its engine sleeps again after one tick.
                    idle = (idle + 1).min(IDLE_TICKS);
                    if idle == IDLE_TICKS {
                        shared.sleep_while_idle(sleep_check);
                    }
                }
            })
            .expect("cannot spawn the epoch ticker thread");
        ticker
    }

    /// Sleep until a store is made, or for `at_most`.
    fn sleep_while_idle(&self, at_most: Duration) {
        // `sleeping` is set before `live` is read, and a new store counts
        // itself in `live` before it reads `sleeping`: in every order at
        // least one of the two sees the other, so a store is never left
        // with the ticker asleep. An unpark before the park is kept.
        self.sleeping.store(true, Ordering::SeqCst);
        if self.live.load(Ordering::SeqCst) == 0 {
            std::thread::park_timeout(at_most);
        }
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Count a new store, waking the ticker if it sleeps.
    pub(super) fn awake(self: &Arc<Self>) -> Awake {
        self.live.fetch_add(1, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
        Awake(self.clone())
    }

    /// Whether the ticker sleeps now (for tests).
    #[cfg(test)]
    fn is_sleeping(&self) -> bool {
        self.sleeping.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use wasmtime::{Config, Instance, Module, Store, UpdateDeadline};

    use super::*;

    /// `(module (func (export "spin") (loop (br 0))))`: never returns.
    const SPIN: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
        0x03, 0x02, 0x01, 0x00, // function 0 has type 0
        0x07, 0x08, 0x01, 0x04, b's', b'p', b'i', b'n', 0x00, 0x00, // export
        0x0a, 0x09, 0x01, 0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // code
    ];

    fn engine() -> Engine {
        let mut config = Config::new();
        config.epoch_interruption(true);
        Engine::new(&config).unwrap()
    }

    /// A ticker whose sleep outlasts any test: only a store wakes it.
    fn sound_asleep(engine: &Engine) -> Arc<Ticker> {
        Ticker::spawn_checking_every(engine, Duration::from_secs(3600))
    }

    fn wait_until_sleeping(ticker: &Ticker) {
        let give_up = Instant::now() + Duration::from_secs(30);
        while !ticker.is_sleeping() {
            assert!(Instant::now() < give_up, "the ticker never slept");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn an_idle_ticker_sleeps_and_a_live_store_keeps_it_awake() {
        let engine = engine();
        let ticker = sound_asleep(&engine);
        wait_until_sleeping(&ticker);

        let awake = ticker.awake();
        let give_up = Instant::now() + Duration::from_secs(30);
        while ticker.is_sleeping() {
            assert!(Instant::now() < give_up, "the ticker was not woken");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Several times its grace: it stays awake while the store lives.
        std::thread::sleep(EPOCH_TICK * IDLE_TICKS * 3);
        assert!(!ticker.is_sleeping(), "the ticker slept under a live store");

        drop(awake);
        wait_until_sleeping(&ticker);
    }

    #[test]
    fn guest_code_is_interrupted_in_a_store_made_while_the_ticker_sleeps() {
        let engine = engine();
        let ticker = sound_asleep(&engine);
        wait_until_sleeping(&ticker);

        let module = Module::new(&engine, SPIN).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        let awake = ticker.awake();
        // On its own thread, so a ticker that never wakes fails the test
        // rather than hanging it.
        std::thread::spawn(move || {
            let mut store = Store::new(&engine, awake);
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Interrupt));
            let instance = Instance::new(&mut store, &module, &[]).unwrap();
            let spin = instance
                .get_typed_func::<(), ()>(&mut store, "spin")
                .unwrap();
            let _ = done.send(spin.call(&mut store, ()).is_err());
        });
        let interrupted = finished
            .recv_timeout(Duration::from_secs(30))
            .expect("the spinning guest was never interrupted");
        assert!(interrupted);
    }

    #[test]
    fn a_sleeping_ticker_stays_asleep_and_ends_with_its_engine() {
        let engine = engine();
        let ticker = Ticker::spawn_checking_every(&engine, Duration::from_millis(20));
        wait_until_sleeping(&ticker);
        // Woken only to look for its engine, it does not tick its grace
        // again: a few ticks in half a second, not a hundred a wake-up.
        let before = ticker.ticks.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(500));
        let ticked = ticker.ticks.load(Ordering::Relaxed) - before;
        assert!(ticked < u64::from(IDLE_TICKS), "{ticked} ticks while idle");

        drop(engine);
        // The thread holds the only other reference; it lets go once it
        // sees the engine gone, within its sleep's timeout.
        let give_up = Instant::now() + Duration::from_secs(30);
        while Arc::strong_count(&ticker) > 1 {
            assert!(Instant::now() < give_up, "the ticker outlived its engine");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
