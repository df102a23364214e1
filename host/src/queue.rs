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
    /// How long this host's claim on a job it runs holds unless renewed.
    pub(crate) lease: std::time::Duration,
    /// This host's name on the jobs it runs (see [`owner_id`]).
    pub(crate) owner: String,
}

/// The file in the data directory naming this host on the jobs it runs.
pub const OWNER_FILE: &str = "host-id";

/// This host's name on the jobs it runs: kept in the data directory, so a
/// host that starts again knows its own jobs (and takes them back at once)
/// while hosts sharing the store each have their own. Made on first start.
pub fn owner_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let path = data_dir.join(OWNER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let id = uuid::Uuid::now_v7().to_string();
    std::fs::write(&path, &id).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
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
    pub fn new(settings: &AsyncSettings, owner: String) -> Jobs {
        let (sender, receiver) = mpsc::unbounded_channel();
        Jobs {
            sender,
            receiver: Mutex::new(receiver),
            pending: AtomicUsize::new(0),
            capacity: settings.queue as usize,
            workers: settings.workers as usize,
            max_runs: settings.max_runs,
            lease: std::time::Duration::from_millis(settings.lease_ms),
            owner,
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

    /// Queue a job this host did not just accept through [`Jobs::reserve`]
    /// (one left unfinished, or another host's), counted as pending.
    pub(crate) fn queue(&self, job: Job) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        // The receiver lives as long as the queue.
        let _ = self.sender.send(job);
    }

    pub(crate) fn release(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}
