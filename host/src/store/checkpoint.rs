//! Moving a SQLite store's write-ahead log into the database, off the
//! writer thread.
//!
//! SQLite in WAL mode copies the log back into the database file (a
//! checkpoint) when it passes 1,000 pages, on the connection whose commit
//! passed it: the writer thread. That copy runs for a millisecond or more,
//! and on a small machine a request's worker that wakes meanwhile waits for
//! the core it holds: it was the 99th percentile of a request on one
//! connection (BENCHMARKS.md, "The one-connection tail").
//!
//! Here a thread of its own (`strata-checkpoint`) does it, on its own
//! connection, with SQLite's `PASSIVE` checkpoint, which never blocks the
//! writer or a reader; on Linux at a lower priority (nice
//! [`CHECKPOINT_NICE`]), so a waking worker takes the core from it at once.
//! The writer pokes it after each commit; it then waits for the next
//! commit, or [`WAIT_FOR_MORE`] if none comes, and checkpoints. Under steady
//! writes it so copies the log close behind the writer, about every second
//! commit; it sleeps while nothing is written.
//!
//! SQLite starts the log over only after a checkpoint that copied all of it,
//! and under steady writes a checkpoint beside the writer seldom does (the
//! writer commits meanwhile). So the writer's own checkpoint stays, once the
//! log holds [`BACKSTOP_PAGES`] (about 40 MB): by then the checkpointer has
//! copied all but the last commit or two, so the writer copies only those
//! and the log starts over. (Checkpoints at most every 250 ms were tried:
//! they cost less CPU, but the writer's checkpoint then had a quarter of a
//! second of writes to copy, and the tail came back; BENCHMARKS.md.) Should
//! the checkpointer fall behind (a machine busy for long), the writer does
//! the rest, as SQLite always did, so the log stays bounded either way.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::Connection;

/// How long after a commit the checkpointer waits for another before it
/// copies the log anyway (a lone commit is copied this long after it).
pub(super) const WAIT_FOR_MORE: Duration = Duration::from_millis(250);

/// The log's size, in pages, at which the writer checkpoints itself (the
/// writer's `wal_autocheckpoint`; SQLite's default is 1,000).
pub(super) const BACKSTOP_PAGES: u32 = 10_000;

/// The checkpointer's nice value on Linux (0 is the host's own).
const CHECKPOINT_NICE: i32 = 10;

/// The writer's side: told of every commit. Dropping it (the writer
/// stopped) makes the checkpointer run once more and stop.
pub(super) struct Checkpointer {
    poke: SyncSender<()>,
}

impl Checkpointer {
    /// Start the checkpointer of the database at `path`.
    pub(super) fn start(path: &Path) -> anyhow::Result<Checkpointer> {
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        let (poke, pokes) = sync_channel(1);
        std::thread::Builder::new()
            .name("strata-checkpoint".to_owned())
            .spawn(move || run(&conn, &pokes))
            .context("cannot start the store's checkpoint thread")?;
        Ok(Checkpointer { poke })
    }

    /// A commit happened: the log may have grown.
    pub(super) fn committed(&self) {
        // One poke pending is enough (a full channel already says so), and
        // a checkpointer that stopped has nothing to be told.
        let _ = self.poke.try_send(());
    }
}

fn run(conn: &Connection, pokes: &Receiver<()>) {
    lower_priority();
    // Wait for a commit, then for the next one (or `WAIT_FOR_MORE`), and
    // copy what the log holds. The writer's end dropped ends the loop after
    // one last checkpoint.
    while pokes.recv().is_ok() {
        match pokes.recv_timeout(WAIT_FOR_MORE) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        checkpoint(conn);
    }
    checkpoint(conn);
}

/// Copy what the log holds into the database, without waiting for the
/// writer or a reader (`PASSIVE`).
fn checkpoint(conn: &Connection) {
    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    match result {
        Ok((log, copied)) => tracing::trace!(log, copied, "checkpointed the store's log"),
        Err(error) => tracing::warn!(%error, "cannot checkpoint the store's log; the writer will"),
    }
}

/// Run this thread below the host's priority, where the system lets one
/// thread's priority differ from its process's (Linux).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let thread = rustix::thread::gettid();
        if let Err(error) = rustix::process::setpriority_process(Some(thread), CHECKPOINT_NICE) {
            tracing::debug!(%error, "the store's checkpoint thread keeps the host's priority");
        }
    }
}
