//! Durable state in embedded SQLite: request records and review tickets.
//!
//! All writes go through one writer thread that batches whatever is queued
//! into a single transaction (group commit; a batch that begins with a plain
//! record first lingers a millisecond so that one wake-up and one commit
//! serve many requests), each write in its own savepoint
//! so one failing write does not undo the others. A caller that must know its
//! write is durable (an escalation: the client is told "escalated" only after
//! the ticket is committed) awaits the commit; plain request records are
//! queued and not awaited. The database runs in WAL mode; a batch holding an
//! awaited write commits with `synchronous = FULL`, so a committed ticket
//! survives a crash of the process or of the machine, while a batch of plain
//! records commits with `NORMAL` (safe against a process crash, not against
//! power loss), which keeps the cost of recording every request low. Reads use a pool of read-only
//! connections on tokio's blocking pool, so neither reads nor writes ever
//! block a runtime worker, and one slow read does not hold up the others.
//!
//! One file per table (or pair of tables), each adding its part of
//! [`Store`]: `requests`, `tickets`, `jobs`, `callbacks` (with deliveries),
//! `feedback` (with approved answers), `patterns` (with examples and their
//! vectors), `audit` (with shadow comparisons); `schema` holds the
//! migrations. This file holds the writer thread, the reader pool, and
//! pruning by age, which crosses tables.

mod audit;
mod callbacks;
mod feedback;
mod jobs;
mod patterns;
mod requests;
mod schema;
mod stats;
mod tickets;

pub use self::audit::*;
pub use self::callbacks::{CallbackState, Delivery};
pub use self::feedback::*;
pub use self::jobs::*;
pub use self::patterns::*;
pub use self::requests::*;
pub use self::stats::{Bucket, TrafficStats};
pub use self::tickets::*;
pub use crate::states::{JobStatus, RequestStatus, TicketState};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc, oneshot};

use self::schema::migrate;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "strata.db";

/// Writes queued beyond this wait for the writer (back-pressure).
const QUEUE_DEPTH: usize = 4096;

/// The most writes committed in one transaction.
const MAX_BATCH: usize = 512;

/// How long the writer lets plain (not awaited) writes gather before it
/// commits them.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused the operation.
    #[error("database error: {0}")]
    Database(String),
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
    /// No such ticket or request.
    #[error("{0} not found")]
    NotFound(String),
    /// The ticket is not in a state that allows the operation.
    #[error("{0}")]
    Conflict(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Database(error.to_string())
    }
}

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

type WriteOp = Box<dyn FnOnce(&Connection) -> (bool, Completion) + Send>;

/// What the writer thread receives.
enum Message {
    /// A write to commit. A durable one is committed with a full sync of
    /// the log, so it survives power loss and not only a crash of the process.
    Job { job: WriteOp, durable: bool },
    /// Commit what is queued before this, then stop.
    Close(oneshot::Sender<()>),
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Message>,
    /// Read-only connections for reads, used on the blocking pool. A
    /// connection is held only for one read, so a slow consumer of the
    /// results never holds one.
    readers: r2d2::Pool<SqliteConnectionManager>,
    path: PathBuf,
    /// Woken after a commit that may have made a callback due.
    callbacks_due: Arc<Notify>,
}

fn open_connection(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;",
    )
    .with_context(|| format!("cannot configure database {}", path.display()))?;
    Ok(conn)
}

/// How many reads may run at once, each on its own connection.
const READERS: u32 = 8;

/// How long a read waits for a free connection before it fails.
const READER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A pool of read-only connections to the database at `path`. In WAL mode
/// readers never block the writer or each other.
fn reader_pool(path: &Path) -> anyhow::Result<r2d2::Pool<SqliteConnectionManager>> {
    let manager = SqliteConnectionManager::file(path)
        .with_flags(
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
                | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )
        .with_init(|conn| {
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            Ok(())
        });
    r2d2::Pool::builder()
        .max_size(READERS)
        .min_idle(Some(1))
        .connection_timeout(READER_WAIT)
        .build(manager)
        .with_context(|| format!("cannot open read connections to {}", path.display()))
}

fn write_loop(conn: Connection, mut queue: mpsc::Receiver<Message>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = None;
    let mut synchronous = Synchronous::Full;
    while let Some(first) = queue.blocking_recv() {
        if matches!(first, Message::Job { durable: false, .. }) {
            // Nobody waits for a plain record: let more gather so that one
            // wake-up and one commit serve many. A durable write queued
            // meanwhile waits at most this long.
            std::thread::sleep(LINGER);
        }
        let mut durable = false;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Job { job, durable: d } => {
                    batch.push(job);
                    durable |= d;
                }
                Message::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if batch.len() < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            // Only batches holding a durable write pay for a full sync.
            let wanted = if durable {
                Synchronous::Full
            } else {
                Synchronous::Normal
            };
            if wanted != synchronous {
                match conn.pragma_update(None, "synchronous", wanted.as_str()) {
                    Ok(()) => synchronous = wanted,
                    Err(error) => tracing::error!(%error, "cannot change the sync mode"),
                }
            }
            commit_batch(&conn, &mut batch);
        }
        if let Some(done) = closing.take() {
            // Dropping the receiver makes every later send fail: nothing can
            // be queued behind the close and then silently lost.
            drop(queue);
            let _ = done.send(());
            return;
        }
    }
}

/// SQLite's `synchronous` setting. In WAL mode `NORMAL` survives a crash of
/// the process but may lose the last commits on power loss; `FULL` does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Synchronous {
    Normal,
    Full,
}

impl Synchronous {
    fn as_str(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// Run one fixed statement through the connection's statement cache (so it
/// is parsed once, not per write).
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn commit_batch(conn: &Connection, batch: &mut Vec<WriteOp>) {
    if let Err(error) = run(conn, "BEGIN IMMEDIATE") {
        // Dropping the jobs drops their reply channels: every waiting caller
        // learns that its write was not committed.
        tracing::error!(%error, jobs = batch.len(), "cannot begin a store transaction");
        batch.clear();
        return;
    }
    let mut completions = Vec::with_capacity(batch.len());
    for job in batch.drain(..) {
        let savepoint = run(conn, "SAVEPOINT job");
        let (failed, completion) = job(conn);
        let settle = if failed || savepoint.is_err() {
            run(conn, "ROLLBACK TO job").and_then(|()| run(conn, "RELEASE job"))
        } else {
            run(conn, "RELEASE job")
        };
        if let Err(error) = settle {
            tracing::error!(%error, "cannot settle a store savepoint");
        }
        completions.push(completion);
    }
    let committed = run(conn, "COMMIT").map_err(StoreError::from);
    if let Err(error) = &committed {
        tracing::error!(%error, "cannot commit a batch of store writes");
        let _ = run(conn, "ROLLBACK");
    }
    for completion in completions {
        completion(match &committed {
            Ok(()) => Ok(()),
            Err(error) => Err(StoreError::Database(error.to_string())),
        });
    }
}

/// A value kept in a column as JSON text. Reading text that is not the
/// expected shape is an error naming it, never a silent `null`.
pub(crate) struct Json<T>(pub(crate) T);

impl<T: Serialize> ToSql for Json<T> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let text = serde_json::to_string(&self.0)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(ToSqlOutput::from(text))
    }
}

impl<T: DeserializeOwned> FromSql for Json<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        serde_json::from_str(text)
            .map(Json)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Store {
    /// Open (creating if needed) the database in `data_dir` and start the
    /// writer thread.
    pub fn open(data_dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let path = data_dir.join(DATABASE_FILE);
        let mut writer = open_connection(&path)?;
        migrate(&mut writer).with_context(|| format!("cannot migrate {}", path.display()))?;
        let readers = reader_pool(&path)?;

        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("strata-store".to_owned())
            .spawn(move || write_loop(writer, queue))
            .context("cannot start the store writer thread")?;
        Ok(Store {
            jobs,
            readers,
            path,
            callbacks_due: Arc::new(Notify::new()),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Notified after a commit that may have made a callback due (a final
    /// record that names one, or a resolution).
    pub fn callbacks_due(&self) -> &Notify {
        &self.callbacks_due
    }

    /// Remove one batch of records older than `cutoffs` (Unix
    /// milliseconds; `None` keeps that kind). Returns how many rows went, so
    /// the caller repeats until a batch removes nothing. What is still
    /// waiting for someone (open tickets and their requests, unfinished jobs,
    /// callbacks not yet settled) is never removed.
    pub async fn prune(&self, cutoffs: Cutoffs) -> Result<usize, StoreError> {
        const BATCH: i64 = 2000;
        self.write_with(false, move |conn| {
            let mut removed = 0;
            // Logs kept by age alone: nothing else refers to their rows.
            for (table, cutoff) in [
                ("deliveries", cutoffs.deliveries),
                ("shadow_runs", cutoffs.shadow_runs),
                ("audit", cutoffs.audit),
            ] {
                if let Some(at) = cutoff {
                    removed += conn.execute(
                        &format!(
                            "DELETE FROM {table} WHERE id IN
                                 (SELECT id FROM {table} WHERE at < ?1 LIMIT ?2)"
                        ),
                        params![at, BATCH],
                    )?;
                }
            }
            if let Some(at) = cutoffs.requests {
                removed += conn.execute(
                    "DELETE FROM tickets WHERE id IN
                         (SELECT id FROM tickets WHERE state IN ('resolved', 'rejected')
                              AND resolved_at < ?1 LIMIT ?2)",
                    params![at, BATCH],
                )?;
                removed += conn.execute(
                    "DELETE FROM jobs WHERE id IN
                         (SELECT id FROM jobs WHERE state IN ('done', 'dead') AND done_at < ?1
                          LIMIT ?2)",
                    params![at, BATCH],
                )?;
                removed += conn.execute(
                    "DELETE FROM callbacks WHERE request_id IN
                         (SELECT request_id FROM callbacks
                          WHERE state IN ('delivered', 'failed') AND created_at < ?1 LIMIT ?2)",
                    params![at, BATCH],
                )?;
                removed += conn.execute(
                    "DELETE FROM requests WHERE id IN
                         (SELECT r.id FROM requests r
                          WHERE r.completed_at < ?1
                            AND NOT EXISTS (SELECT 1 FROM tickets t WHERE t.request_id = r.id)
                            AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = r.id)
                            AND NOT EXISTS (SELECT 1 FROM callbacks c WHERE c.request_id = r.id)
                          LIMIT ?2)",
                    params![at, BATCH],
                )?;
            }
            Ok(removed)
        })
        .await
    }

    /// Commit every write queued so far and stop the writer thread. Writes
    /// attempted afterwards, through any clone, fail with
    /// [`StoreError::Closed`].
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.jobs.send(Message::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }

    async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write_with(true, op).await
    }

    /// A write awaited until committed; `durable` ones are synced fully.
    async fn write_with<T: Send + 'static>(
        &self,
        durable: bool,
        op: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, result) = oneshot::channel();
        let job: WriteOp = Box::new(move |conn| {
            let outcome = op(conn);
            let failed = outcome.is_err();
            let completion: Completion = Box::new(move |commit| {
                let _ = done.send(commit.and(outcome));
            });
            (failed, completion)
        });
        self.jobs
            .send(Message::Job { job, durable })
            .await
            .map_err(|_| StoreError::Closed)?;
        result
            .await
            .map_err(|_| StoreError::Database("the write was not committed".to_owned()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.get().map_err(|e| {
                StoreError::Database(format!("no database connection free for a read: {e}"))
            })?;
            op(&conn)
        })
        .await
        .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?
    }
}
