//! Durable state: request records, review tickets, jobs, callbacks,
//! feedback, the answer bank's patterns, the audit log. Embedded SQLite by
//! default; a PostgreSQL server (`[store] url`) for hosts that share their
//! state. Both run the same statements (see `sql`).
//!
//! All writes go through one writer thread that batches whatever is queued
//! into a single transaction (group commit; a batch that begins with a plain
//! record first lingers a millisecond so that one wake-up and one commit
//! serve many requests), each write in its own savepoint (or, for a record
//! that is one statement, on SQLite, none: SQLite undoes a failed statement
//! itself) so one failing write does not undo the others. A caller that must know its
//! write is durable (an escalation: the client is told "escalated" only after
//! the ticket is committed) awaits the commit; plain request records are
//! queued and not awaited. The database runs in WAL mode; a batch holding an
//! awaited write commits with `synchronous = FULL`, so a committed ticket
//! survives a crash of the process or of the machine, while a batch of plain
//! records commits with `NORMAL` (safe against a process crash, not against
//! power loss), which keeps the cost of recording every request low. A
//! thread of its own copies SQLite's log into the database (`checkpoint`), so
//! the writer's turns on the processor stay short. Reads use a pool of
//! read-only connections on tokio's blocking pool, so neither reads nor
//! writes ever block a runtime worker, and one slow read does not hold up the
//! others.
//!
//! PostgreSQL runs the same way: one writer connection committing batches
//! (savepoint per write; a batch of plain records commits with
//! `synchronous_commit = off`, one holding an awaited write with the
//! server's default), reads from a pool.
//!
//! One file per table (or pair of tables), each adding its part of
//! [`Store`]: `requests`, `tickets`, `jobs`, `callbacks` (with deliveries),
//! `feedback` (with approved answers), `patterns` (with examples and their
//! vectors), `audit` (with shadow comparisons); `offers` tells hosts on one
//! PostgreSQL server of jobs a busy host cannot start; `schema` holds the
//! migrations; `prune` removes records by age, across tables; `checkpoint`
//! copies SQLite's log into the database. This file holds the writer thread
//! and the reader pool.

mod audit;
mod callbacks;
mod checkpoint;
mod feedback;
mod jobs;
mod offers;
mod patterns;
mod prune;
mod requests;
mod schema;
pub(crate) mod sql;
mod stats;
mod tickets;

pub use self::audit::*;
pub use self::callbacks::{CallbackState, Delivery};
pub use self::feedback::*;
pub use self::jobs::*;
pub use self::patterns::*;
pub use self::requests::*;
pub(crate) use self::stats::quantile;
pub use self::stats::{Bucket, TrafficStats};
pub use self::tickets::*;
pub use crate::states::{JobStatus, RequestStatus, TicketState};

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::Connection;
use tokio::sync::{Notify, mpsc, oneshot};

use self::schema::{migrate, migrate_postgres};
pub(crate) use self::sql::Json;
use self::sql::{Conn, Statements, params};

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
    /// The database refused the operation, or cannot be reached.
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

type WriteOp = Box<dyn FnOnce(&mut Conn<'_>) -> (bool, Completion) + Send>;

/// What the writer thread receives.
enum Message {
    /// A write to commit. A durable one is committed with a full sync of
    /// the log, so it survives power loss and not only a crash of the process.
    /// A write of `one_statement` runs a single statement, which SQLite
    /// undoes by itself when it fails, so there it needs no savepoint.
    Job {
        job: WriteOp,
        durable: bool,
        one_statement: bool,
    },
    /// Commit what is queued before this, then stop.
    Close(oneshot::Sender<()>),
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Message>,
    /// Connections for reads, used on the blocking pool. A connection is
    /// held only for one read, so a slow consumer of the results never
    /// holds one.
    readers: Readers,
    /// The database file, or the server (without its password).
    location: String,
    /// Woken after a commit that may have made a callback due.
    callbacks_due: Arc<Notify>,
    /// The PostgreSQL server's settings, for connections of other kinds
    /// (listening for offered jobs); `None` on SQLite.
    postgres: Option<Arc<postgres::Config>>,
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

/// How long connecting to a PostgreSQL server may take, unless its URL
/// says (`connect_timeout`, in seconds).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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

/// The writer thread's connection. One per store, for its whole life, so
/// the variants' difference in size costs nothing.
#[allow(clippy::large_enum_variant)]
enum Writer {
    Sqlite {
        conn: Connection,
        synchronous: Synchronous,
        /// Told of each commit; copies the log into the database.
        checkpointer: checkpoint::Checkpointer,
    },
    Postgres {
        config: postgres::Config,
        client: Option<postgres::Client>,
        statements: Statements,
    },
}

impl Writer {
    /// A batch was committed: on SQLite, the log may be due to be copied
    /// into the database.
    fn committed(&self) {
        if let Writer::Sqlite { checkpointer, .. } = self {
            checkpointer.committed();
        }
    }

    /// Begin a transaction; a `durable` one is synced in full at commit.
    /// A PostgreSQL connection lost since the last batch is made again.
    fn begin(&mut self, durable: bool) -> Result<Conn<'_>, StoreError> {
        match self {
            Writer::Sqlite {
                conn, synchronous, ..
            } => {
                // Only batches holding a durable write pay for a full sync.
                let wanted = if durable {
                    Synchronous::Full
                } else {
                    Synchronous::Normal
                };
                if wanted != *synchronous {
                    match conn.pragma_update(None, "synchronous", wanted.as_str()) {
                        Ok(()) => *synchronous = wanted,
                        Err(error) => tracing::error!(%error, "cannot change the sync mode"),
                    }
                }
                let mut conn = Conn::Sqlite(conn);
                run(&mut conn, "BEGIN IMMEDIATE")?;
                Ok(conn)
            }
            Writer::Postgres {
                config,
                client,
                statements,
            } => {
                if client.as_ref().is_none_or(postgres::Client::is_closed) {
                    *statements = Statements::default();
                    *client = None;
                    *client = Some(config.connect(NoTls)?);
                }
                let client = client.as_mut().expect("connected above");
                client.batch_execute(if durable {
                    "BEGIN"
                } else {
                    "BEGIN; SET LOCAL synchronous_commit = off"
                })?;
                Ok(Conn::Postgres {
                    client,
                    statements: Some(statements),
                })
            }
        }
    }
}

fn write_loop(mut writer: Writer, mut queue: mpsc::Receiver<Message>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = None;
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
                Message::Job {
                    job,
                    durable: d,
                    one_statement,
                } => {
                    batch.push((job, one_statement));
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
            match writer.begin(durable) {
                Ok(mut conn) => {
                    commit_batch(&mut conn, &mut batch);
                    writer.committed();
                }
                Err(error) => {
                    // Dropping the jobs drops their reply channels: every
                    // waiting caller learns that its write was not committed.
                    tracing::error!(%error, jobs = batch.len(), "cannot begin a store transaction");
                    batch.clear();
                }
            }
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

/// Run one fixed statement: SQLite through the connection's statement
/// cache (parsed once, not per write), PostgreSQL as a simple query.
fn run(conn: &mut Conn<'_>, sql: &str) -> Result<(), StoreError> {
    if conn.is_postgres() {
        conn.batch(sql)
    } else {
        conn.execute(sql, params![]).map(|_| ())
    }
}

/// Run `batch` in the transaction begun on `conn` and commit it. Each write
/// is undone alone when it fails: by a savepoint around it, or, for a
/// single statement on SQLite, by SQLite itself (a failed statement leaves
/// the transaction as it was; on PostgreSQL it would abort the transaction,
/// so there every write has its savepoint). Records are single statements,
/// and their savepoint's two statements cost as much as the record's own.
fn commit_batch(conn: &mut Conn<'_>, batch: &mut Vec<(WriteOp, bool)>) {
    let mut completions = Vec::with_capacity(batch.len());
    for (job, one_statement) in batch.drain(..) {
        if one_statement && !conn.is_postgres() {
            let (_, completion) = job(conn);
            completions.push(completion);
            continue;
        }
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
    let committed = run(conn, "COMMIT");
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

/// The connections reads use.
#[derive(Clone)]
enum Readers {
    Sqlite(r2d2::Pool<SqliteConnectionManager>),
    Postgres(Arc<PostgresReaders>),
}

/// PostgreSQL's read connections. The blocking client runs a small
/// runtime of its own, which must not be entered from a runtime worker
/// (it would panic), so the pool is dropped on a thread of its own.
struct PostgresReaders(Option<r2d2::Pool<PostgresConnectionManager<NoTls>>>);

impl Drop for PostgresReaders {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            let _ = std::thread::Builder::new()
                .name("strata-store-close".to_owned())
                .spawn(move || drop(pool));
        }
    }
}

/// A PostgreSQL URL without its password, for logs and errors.
fn without_password(config: &postgres::Config, url: &str) -> String {
    if config.get_password().is_none() {
        return url.to_owned();
    }
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Err(_) => "a PostgreSQL server (the URL holds a password)".to_owned(),
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
        // The checkpointer copies the log back; the writer only when that
        // falls far behind (`checkpoint`).
        writer
            .pragma_update(None, "wal_autocheckpoint", checkpoint::BACKSTOP_PAGES)
            .with_context(|| format!("cannot configure database {}", path.display()))?;
        let readers = reader_pool(&path)?;
        let checkpointer = checkpoint::Checkpointer::start(&path)?;
        Store::start(
            Writer::Sqlite {
                conn: writer,
                synchronous: Synchronous::Full,
                checkpointer,
            },
            Readers::Sqlite(readers),
            path.display().to_string(),
        )
    }

    /// Connect to the PostgreSQL server at `url` (`postgres://...`),
    /// bring its schema up to date and start the writer thread. Blocks:
    /// call it off the runtime's workers.
    pub fn connect(url: &str) -> anyhow::Result<Store> {
        let mut config: postgres::Config = url
            .parse()
            .with_context(|| "[store] url is not a PostgreSQL URL (postgres://USER@HOST/DB)")?;
        if config.get_connect_timeout().is_none() {
            // A server that does not answer fails the write that needs it
            // (503 to an escalation) instead of holding every write.
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let location = without_password(&config, url);
        let mut client = config
            .connect(NoTls)
            .with_context(|| format!("cannot connect to {location}"))?;
        migrate_postgres(&mut client).with_context(|| format!("cannot migrate {location}"))?;
        let readers = r2d2::Pool::builder()
            .max_size(READERS)
            .min_idle(Some(1))
            .connection_timeout(READER_WAIT)
            .build(PostgresConnectionManager::new(config.clone(), NoTls))
            .with_context(|| format!("cannot open read connections to {location}"))?;
        let shared = Arc::new(config.clone());
        let mut store = Store::start(
            Writer::Postgres {
                config,
                client: Some(client),
                statements: Statements::default(),
            },
            Readers::Postgres(Arc::new(PostgresReaders(Some(readers)))),
            location,
        )?;
        store.postgres = Some(shared);
        Ok(store)
    }

    /// The store `[store]` names: the PostgreSQL server at its `url`, or
    /// the SQLite file in `data_dir`. Blocks: call it off the runtime's
    /// workers.
    pub fn open_configured(
        settings: &crate::manifest::StoreSettings,
        data_dir: &Path,
    ) -> anyhow::Result<Store> {
        match &settings.url {
            Some(url) => Store::connect(url),
            None => Store::open(data_dir),
        }
    }

    fn start(writer: Writer, readers: Readers, location: String) -> anyhow::Result<Store> {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("strata-store".to_owned())
            .spawn(move || write_loop(writer, queue))
            .context("cannot start the store writer thread")?;
        Ok(Store {
            jobs,
            readers,
            location,
            callbacks_due: Arc::new(Notify::new()),
            postgres: None,
        })
    }

    /// Whether other hosts may share this store (PostgreSQL): only then do
    /// jobs and callbacks need leases, offers and looks for others' work.
    pub fn shared(&self) -> bool {
        self.postgres.is_some()
    }

    /// The database file, or the PostgreSQL server (without its password).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Notified after a commit that may have made a callback due (a final
    /// record that names one, or a resolution).
    pub fn callbacks_due(&self) -> &Notify {
        &self.callbacks_due
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
        op: impl FnOnce(&mut Conn<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write_with(true, op).await
    }

    /// A write awaited until committed; `durable` ones are synced fully.
    async fn write_with<T: Send + 'static>(
        &self,
        durable: bool,
        op: impl FnOnce(&mut Conn<'_>) -> Result<T, StoreError> + Send + 'static,
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
            .send(Message::Job {
                job,
                durable,
                one_statement: false,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        result
            .await
            .map_err(|_| StoreError::Database("the write was not committed".to_owned()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Conn<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let busy =
                |e| StoreError::Database(format!("no database connection free for a read: {e}"));
            match readers {
                Readers::Sqlite(pool) => op(&mut Conn::Sqlite(&*pool.get().map_err(busy)?)),
                Readers::Postgres(readers) => op(&mut Conn::Postgres {
                    client: &mut *readers
                        .0
                        .as_ref()
                        .expect("taken only on drop")
                        .get()
                        .map_err(busy)?,
                    statements: None,
                }),
            }
        })
        .await
        .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?
    }
}
