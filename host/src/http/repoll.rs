//! A connection's task polled again at once when it wakes itself.
//!
//! hyper runs a connection's handler in the connection's own task, and the
//! handler reading the request body wakes that task (hyper's body channel
//! tells the connection it wants more) while the task is being polled. For
//! tokio a task woken during its own poll has yielded: it goes to the back
//! of the run queue and a sleeping worker is woken to take it. On one
//! connection that moved nearly every request to the other worker, a
//! wake-up and a cold cache each time (BENCHMARKS.md, "A connection's task
//! that wakes itself").
//!
//! [`Repoll`] polls such a task again in place instead, once per poll: a
//! wake from the task's own poll is noted, not passed on. A second one in
//! the same poll is passed on, so a task that keeps yielding (a long stage's
//! epoch yield, every tick) still yields to the runtime at least every other
//! time. Wakes from anywhere else (another thread, another task, after the
//! poll) reach the runtime as they always did.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Polls of the inner future one poll may make after the first, when the
/// inner future woke itself.
const REPOLLS: usize = 1;

thread_local! {
    /// The [`Shared`] whose future this thread is polling, as an address
    /// (0: none), and whether that future has woken itself during the
    /// current poll. Only the polling thread reads or writes either.
    static POLLING: Cell<(usize, bool)> = const { Cell::new((0, false)) };
}

/// `future`, polled again in place when it wakes itself (see the module
/// documentation).
pub(super) struct Repoll<F> {
    future: Pin<Box<F>>,
    shared: Arc<Shared>,
    waker: Waker,
}

impl<F: Future> Repoll<F> {
    pub(super) fn new(future: F) -> Repoll<F> {
        let shared = Arc::new(Shared {
            task: AtomicWaker::new(),
        });
        Repoll {
            future: Box::pin(future),
            waker: Waker::from(shared.clone()),
            shared,
        }
    }
}

/// What the waker handed to the inner future shares with [`Repoll`].
struct Shared {
    /// The runtime's waker for the task, from its latest poll.
    task: AtomicWaker,
}

impl Shared {
    fn address(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let (polling, _) = POLLING.with(Cell::get);
        if polling == self.address() {
            POLLING.with(|p| p.set((polling, true)));
        } else {
            self.task.wake();
        }
    }
}

/// Marks this thread as polling `shared`'s future until dropped, even if
/// the poll panics (a mark left behind would swallow later wakes); a poll
/// nested in another [`Repoll`]'s gives the outer one its mark back.
struct Polling {
    previous: (usize, bool),
}

impl Polling {
    fn enter(shared: &Arc<Shared>) -> Polling {
        Polling {
            previous: POLLING.with(|p| p.replace((shared.address(), false))),
        }
    }

    /// Whether the future woke itself since [`Polling::enter`].
    fn woke_itself(&self) -> bool {
        POLLING.with(Cell::get).1
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        POLLING.with(|p| p.set(self.previous));
    }
}

impl<F: Future> Future for Repoll<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.shared.task.register(cx.waker());
        let mut inner = Context::from_waker(&this.waker);
        for _ in 0..=REPOLLS {
            let polling = Polling::enter(&this.shared);
            let polled = this.future.as_mut().poll(&mut inner);
            if polled.is_ready() || !polling.woke_itself() {
                return polled;
            }
        }
        // It woke itself again: let the runtime run something else first,
        // as it asked.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Wakes itself `times` times while polled, then is ready.
    struct Yields {
        times: usize,
        polls: Arc<AtomicUsize>,
    }

    impl Future for Yields {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.times == 0 {
                return Poll::Ready(());
            }
            self.times -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// A waker counting its wakes.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll_once<F: Future>(
        future: &mut Pin<Box<Repoll<F>>>,
        wakes: &Arc<Count>,
    ) -> Poll<F::Output> {
        let waker = Waker::from(wakes.clone());
        future.as_mut().poll(&mut Context::from_waker(&waker))
    }

    /// A [`Yields`] of `times` in a [`Repoll`], its count of polls and a
    /// waker's count of wakes.
    fn yielding(times: usize) -> (Pin<Box<Repoll<Yields>>>, Arc<AtomicUsize>, Arc<Count>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let future = Box::pin(Repoll::new(Yields {
            times,
            polls: polls.clone(),
        }));
        (future, polls, Arc::new(Count(AtomicUsize::new(0))))
    }

    #[test]
    fn one_wake_of_its_own_is_polled_again_in_place() {
        let (mut future, polls, wakes) = yielding(1);
        assert!(poll_once(&mut future, &wakes).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            0,
            "the runtime was not told"
        );
    }

    #[test]
    fn a_task_that_keeps_waking_itself_still_yields() {
        let (mut future, polls, wakes) = yielding(3);
        assert!(poll_once(&mut future, &wakes).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            1,
            "it yielded to the runtime"
        );
        assert!(poll_once(&mut future, &wakes).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_wake_after_the_poll_reaches_the_runtime() {
        // On this thread, after the poll returned.
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut future = Box::pin(Repoll::new(rx));
        assert!(poll_once(&mut future, &wakes).is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
        tx.send(()).unwrap();
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        assert!(poll_once(&mut future, &wakes).is_ready());

        // From another thread.
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut future = Box::pin(Repoll::new(rx));
        assert!(poll_once(&mut future, &wakes).is_pending());
        std::thread::spawn(move || tx.send(()).unwrap())
            .join()
            .unwrap();
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        assert!(poll_once(&mut future, &wakes).is_ready());
    }

    #[test]
    fn a_repoll_nested_in_another_keeps_the_outer_ones_mark() {
        // The outer future wakes itself, then polls an inner `Repoll` that
        // wakes itself too: each is polled again by its own `Repoll`, and
        // the runtime hears of neither.
        let inner_polls = Arc::new(AtomicUsize::new(0));
        let mut inner = Box::pin(Repoll::new(Yields {
            times: 1,
            polls: inner_polls.clone(),
        }));
        let mut woke = false;
        let outer = std::future::poll_fn(move |cx| {
            if !woke {
                woke = true;
                cx.waker().wake_by_ref();
                assert!(inner.as_mut().poll(cx).is_ready());
                return Poll::Pending;
            }
            Poll::Ready(())
        });
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let mut future = Box::pin(Repoll::new(outer));
        assert!(poll_once(&mut future, &wakes).is_ready());
        assert_eq!(inner_polls.load(Ordering::Relaxed), 2);
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            0,
            "the runtime was not told"
        );
    }
}
