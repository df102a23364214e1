//! The queue of accepted asynchronous requests: bounded, counted, with
//! the receiving end the workers in [`crate::jobs`] share.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Mutex, mpsc};

use crate::manifest::AsyncSettings;
use crate::store::{Job, StoreError};

/// The queue of accepted asynchronous requests.
pub struct Jobs {
    pub(crate) sender: mpsc::UnboundedSender<Job>,
    pub(crate) receiver: Mutex<mpsc::UnboundedReceiver<Job>>,
    /// Accepted and not yet completed.
    pub(crate) pending: AtomicUsize,
    pub(crate) capacity: usize,
    pub(crate) workers: usize,
    /// Starts after which a job that never completes is dead.
    pub(crate) max_runs: u32,
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full.
    #[error("the queue of asynchronous requests is full")]
    Full,
    /// The store refused it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Jobs {
    /// An empty queue with the manifest's bounds.
    pub fn new(settings: &AsyncSettings) -> Jobs {
        let (sender, receiver) = mpsc::unbounded_channel();
        Jobs {
            sender,
            receiver: Mutex::new(receiver),
            pending: AtomicUsize::new(0),
            capacity: settings.queue as usize,
            workers: settings.workers as usize,
            max_runs: settings.max_runs,
        }
    }

    /// Accepted requests not yet completed.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub(crate) fn reserve(&self) -> bool {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    pub(crate) fn release(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}
