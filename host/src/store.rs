//! Durable state in embedded SQLite: request records and review tickets.
//!
//! All writes go through one writer thread that batches whatever is queued
//! into a single transaction (group commit), each write in its own savepoint
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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use std::collections::HashMap;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::patterns::StoredPattern;
pub use crate::states::{JobStatus, RequestStatus, TicketState};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "strata.db";

/// Writes queued beyond this wait for the writer (back-pressure).
const QUEUE_DEPTH: usize = 4096;
/// The most writes committed in one transaction.
const MAX_BATCH: usize = 512;

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

/// One request's record, written when its pipeline run ends.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// The request id.
    pub id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// The generation that served it.
    pub generation: u64,
    /// How the run ended.
    pub status: RequestStatus,
    /// The input as the last stage left it (after redaction).
    pub input: String,
    /// The attributes as JSON.
    pub attributes: String,
    /// The answer, if answered.
    pub output: Option<String>,
    /// The answer's confidence, if answered.
    pub confidence: Option<f64>,
    /// The stage that decided, if one did.
    pub stage: Option<String>,
    /// That stage's layer.
    pub layer: Option<String>,
    /// Rejection or failure code.
    pub code: Option<String>,
    /// Rejection or failure message.
    pub message: Option<String>,
    /// The stage trace as JSON (names, layers, digests, results).
    pub trace: String,
    /// When the request arrived (Unix milliseconds).
    pub created_at: i64,
    /// The answer-bank key a stage named for the request's answer.
    pub remember_key: Option<String>,
    /// What its model calls cost, in US dollars.
    pub cost_usd: f64,
    /// Where to POST the result when the request completes.
    pub callback: Option<String>,
    /// The answer-bank pattern whose answer it got, if any.
    pub pattern: Option<i64>,
}

/// A ticket to open for an escalated request.
#[derive(Debug, Clone)]
pub struct NewTicket {
    /// Why the request was escalated.
    pub reason: String,
    /// The proposed answer, if any.
    pub draft: Option<String>,
}

/// What a ticket asks of a reviewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketKind {
    /// Answer an escalated request.
    Escalation,
    /// Accept or reject a client's proposed correction of an answer.
    Correction,
}

impl TicketKind {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TicketKind::Escalation => "escalation",
            TicketKind::Correction => "correction",
        }
    }

    fn parse(text: &str) -> rusqlite::Result<TicketKind> {
        match text {
            "escalation" => Ok(TicketKind::Escalation),
            "correction" => Ok(TicketKind::Correction),
            other => Err(rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("unknown ticket kind \"{other}\"").into(),
            )),
        }
    }
}

/// A review ticket as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Ticket {
    /// Ticket number.
    pub id: i64,
    /// What the reviewer is asked to do.
    pub kind: TicketKind,
    /// The escalated request, or the request whose answer a correction
    /// proposes to change.
    pub request_id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// The stage that escalated, if one did.
    pub stage: Option<String>,
    /// Why.
    pub reason: String,
    /// The proposed answer (for a correction, the proposed text).
    pub draft: Option<String>,
    /// Who proposed a correction (a client's token fingerprint, or
    /// `anonymous`).
    pub proposed_by: Option<String>,
    /// The request input as the reviewer should see it.
    pub input: String,
    /// The request attributes.
    pub attributes: serde_json::Value,
    /// Where it stands (`rejected`: a correction turned down).
    pub state: TicketState,
    /// The reviewer who claimed it.
    pub claimed_by: Option<String>,
    /// When it was claimed.
    pub claimed_at: Option<i64>,
    /// The reviewer's answer.
    pub resolution: Option<String>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
    /// When it was resolved.
    pub resolved_at: Option<i64>,
    /// When it was opened.
    pub created_at: i64,
    /// The answer-bank key a stage named for the request's answer; the
    /// resolution is approved there.
    pub remember_key: Option<String>,
}

/// A request's current state, as `GET /v1/requests/{id}` shows it.
#[derive(Debug, Clone)]
pub struct RequestState {
    /// The record as written (status and answer updated by a resolution).
    pub record: RequestRecord,
    /// When it reached a final answer, if it has.
    pub completed_at: Option<i64>,
    /// Its ticket, if it was escalated.
    pub ticket: Option<Ticket>,
}

/// Open the ticket of an escalated request. A retried request (same id)
/// that escalates again gets the ticket it already has.
fn open_ticket(
    conn: &Connection,
    record: &RequestRecord,
    ticket: &NewTicket,
) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO tickets (request_id, pipeline, stage, reason, draft, state, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'open', ?6)
         ON CONFLICT (request_id) WHERE kind = 'escalation' DO NOTHING",
        params![
            record.id,
            record.pipeline,
            record.stage,
            ticket.reason,
            ticket.draft,
            record.created_at
        ],
    )?;
    Ok(conn.query_row(
        "SELECT id FROM tickets WHERE request_id = ?1 AND kind = 'escalation'",
        params![record.id],
        |row| row.get(0),
    )?)
}

/// An accepted asynchronous request.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its request id.
    pub id: String,
    /// The pipeline.
    pub pipeline: String,
    /// The input.
    pub input: String,
    /// The attributes, as JSON.
    pub attributes: String,
    /// Where to POST the result.
    pub callback: Option<String>,
    /// When it was accepted (Unix milliseconds).
    pub created_at: i64,
}

/// What [`Store::start_job`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStart {
    /// Run it.
    Run,
    /// It completed already (a duplicate in the queue): do nothing.
    Finished,
    /// It ran too often without completing; now dead, with this reason.
    Dead(String),
}

/// A job from a row of `SELECT id, pipeline, input, attributes, callback,
/// created_at FROM jobs`.
fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: row.get(0)?,
        pipeline: row.get(1)?,
        input: row.get(2)?,
        attributes: row.get(3)?,
        callback: row.get(4)?,
        created_at: row.get(5)?,
    })
}

fn read_job(conn: &Connection, id: &str) -> Result<Job, StoreError> {
    Ok(conn.query_row(
        "SELECT id, pipeline, input, attributes, callback, created_at FROM jobs WHERE id = ?1",
        params![id],
        job_from_row,
    )?)
}

/// Where an asynchronous request's job stands.
#[derive(Debug, Clone)]
pub struct JobState {
    /// The pipeline.
    pub pipeline: String,
    /// Where it stands.
    pub state: JobStatus,
    /// Why a dead job is dead.
    pub reason: Option<String>,
    /// How many times it started running (more than once after a crash).
    pub runs: i64,
    /// When it was accepted (Unix milliseconds).
    pub created_at: i64,
}

/// One rating, correction or resolution, as kept in the dataset.
#[derive(Debug, Clone)]
pub struct FeedbackEvent {
    /// `rating`, `correction` or `resolution`.
    pub kind: String,
    /// The request.
    pub request_id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// Its answer-bank key.
    pub key: Option<String>,
    /// The input (after redaction).
    pub input: String,
    /// The answer given (or the draft a reviewer saw).
    pub answer: Option<String>,
    /// `good` or `bad`.
    pub rating: Option<String>,
    /// The corrected or reviewer's answer.
    pub correction: Option<String>,
    /// Who gave it.
    pub actor: String,
}

fn insert_feedback(conn: &Connection, event: &FeedbackEvent) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO feedback (at, kind, request_id, pipeline, key, input, answer, rating,
                               correction, actor)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        now_millis(),
        event.kind,
        event.request_id,
        event.pipeline,
        event.key,
        event.input,
        event.answer,
        event.rating,
        event.correction,
        event.actor
    ])?;
    Ok(())
}

fn upsert_approved(
    conn: &Connection,
    pipeline: &str,
    key: &str,
    answer: &str,
    source: &str,
    actor: &str,
    request_id: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO answer_bank (pipeline, key, answer, source, approved_by, request_id, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (pipeline, key) DO UPDATE SET answer = excluded.answer,
             source = excluded.source, approved_by = excluded.approved_by,
             request_id = excluded.request_id, updated_at = excluded.updated_at",
    )?
    .execute(params![pipeline, key, answer, source, actor, request_id, now_millis()])?;
    Ok(())
}

/// One entry of the reload audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// Its number (0 before it is written).
    pub id: i64,
    /// When (Unix milliseconds).
    pub at: i64,
    /// `start`, `reload`, `rollback`, `promote` or `rollback_stage`.
    pub action: String,
    /// What asked for it: `startup`, `admin`, `watch`, `signal` or `burn`.
    pub trigger: String,
    /// Who: a token fingerprint such as `admin:1a2b3c4d`, or the host itself.
    pub actor: String,
    /// `applied`, `unchanged` or `failed`.
    pub result: String,
    /// The generation serving before.
    pub from_generation: Option<u64>,
    /// The generation serving after (unchanged on failure).
    pub to_generation: Option<u64>,
    /// The manifest's digest, when one was read.
    pub manifest_sha256: Option<String>,
    /// Per stage: old and new digests, grants and imports added or removed.
    pub changes: serde_json::Value,
    /// Why it failed, or anything else worth knowing.
    pub note: Option<String>,
}

/// A shadow comparison to record.
#[derive(Debug, Clone)]
pub struct ShadowRecord {
    /// The request.
    pub request_id: String,
    /// The pipeline.
    pub pipeline: String,
    /// The stage.
    pub stage: String,
    /// The live version.
    pub live_digest: String,
    /// The candidate.
    pub candidate_digest: String,
    /// Whether both decided the same.
    pub same: bool,
    /// The live outcome.
    pub live: serde_json::Value,
    /// The candidate's outcome.
    pub candidate: serde_json::Value,
}

/// A fingerprint of the answer bank's tables (see [`Store::bank_version`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BankVersion([i64; 4]);

/// One row to import into an answer bank: a question and either its
/// answer or its label (whose answer comes from a label → answer table).
#[derive(Debug, Clone, PartialEq)]
pub struct ImportRow {
    /// The example question.
    pub question: String,
    /// The approved answer.
    pub answer: String,
    /// The intent, if known.
    pub label: Option<String>,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportReport {
    /// Patterns created.
    pub patterns_created: usize,
    /// Patterns whose answer the import replaced.
    pub answers_replaced: usize,
    /// Examples added.
    pub examples_added: usize,
    /// Examples already there.
    pub examples_known: usize,
}

/// Find the pattern of `pipeline` with this label (or, without a label,
/// this answer), creating it; replace its answer when the label's answer
/// changed. Returns its id and whether it was created or changed.
fn pattern_for(
    conn: &Connection,
    pipeline: &str,
    answer: &str,
    label: Option<&str>,
    source: &str,
) -> Result<(i64, bool, bool), StoreError> {
    let found: Option<(i64, String)> = match label {
        Some(label) => conn
            .prepare_cached("SELECT id, answer FROM patterns WHERE pipeline = ?1 AND label = ?2")?
            .query_row(params![pipeline, label], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?,
        None => conn
            .prepare_cached(
                "SELECT id, answer FROM patterns WHERE pipeline = ?1 AND answer = ?2
                 ORDER BY id LIMIT 1",
            )?
            .query_row(params![pipeline, answer], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?,
    };
    let now = now_millis();
    match found {
        Some((id, known)) if known == answer => Ok((id, false, false)),
        Some((id, _)) => {
            conn.prepare_cached(
                "UPDATE patterns SET answer = ?2, source = ?3, strictness = 0, updated_at = ?4
                 WHERE id = ?1",
            )?
            .execute(params![id, answer, source, now])?;
            Ok((id, false, true))
        }
        None => {
            conn.prepare_cached(
                "INSERT INTO patterns (pipeline, answer, label, source, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )?
            .execute(params![pipeline, answer, label, source, now])?;
            Ok((conn.last_insert_rowid(), true, false))
        }
    }
}

/// Add `question` as an example of pattern `id`; false if it was there.
fn add_example(
    conn: &Connection,
    id: i64,
    question: &str,
    source: &str,
) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "INSERT INTO examples (pattern, question, source, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (pattern, question) DO NOTHING",
        )?
        .execute(params![id, question, source, now_millis()])?
        > 0)
}

/// Times before which records go (Unix milliseconds); `None` keeps them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cutoffs {
    /// Finished requests, resolved tickets, finished jobs, settled callbacks.
    pub requests: Option<i64>,
    /// Delivery attempts.
    pub deliveries: Option<i64>,
    /// Shadow comparisons.
    pub shadow_runs: Option<i64>,
    /// Audit entries.
    pub audit: Option<i64>,
}

/// Which tickets to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketFilter {
    /// Open or claimed: everything still waiting for an answer.
    Pending,
    /// Only tickets in this state.
    State(TicketState),
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

    /// Whether committing `record` makes its callback due at once.
    fn calls_back(record: &RequestRecord) -> bool {
        record.callback.is_some() && record.status != RequestStatus::Escalated
    }

    /// Queue a request record. Returns once queued, not once committed.
    pub async fn record(&self, record: RequestRecord) -> Result<(), StoreError> {
        let id = record.id.clone();
        let due = Self::calls_back(&record).then(|| self.callbacks_due.clone());
        let job: WriteOp = Box::new(move |conn| {
            let result = insert_request(conn, &record);
            let failed = result.is_err();
            let completion: Completion = Box::new(move |commit| match commit.and(result) {
                Ok(()) => {
                    if let Some(due) = due {
                        due.notify_one();
                    }
                }
                Err(error) => {
                    tracing::error!(request_id = %id, %error, "cannot record the request");
                }
            });
            (failed, completion)
        });
        self.jobs
            .send(Message::Job {
                job,
                durable: false,
            })
            .await
            .map_err(|_| StoreError::Closed)
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

    /// Where the answer bank's tables stand: changes whenever a pattern or
    /// an example is added or changed.
    pub async fn bank_version(&self) -> Result<BankVersion, StoreError> {
        self.read(|conn| {
            Ok(conn.query_row(
                "SELECT (SELECT COUNT(*) FROM examples), (SELECT IFNULL(MAX(id), 0) FROM examples),
                        (SELECT COUNT(*) FROM patterns),
                        (SELECT IFNULL(MAX(updated_at), 0) FROM patterns)",
                [],
                |row| {
                    Ok(BankVersion([
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                    ]))
                },
            )?)
        })
        .await
    }

    /// Every pipeline's patterns with their examples, oldest first.
    pub async fn patterns(&self) -> Result<Vec<StoredPattern>, StoreError> {
        self.read(|conn| {
            let mut patterns: Vec<StoredPattern> = conn
                .prepare_cached(
                    "SELECT id, pipeline, answer, label, source, strictness FROM patterns
                     ORDER BY id",
                )?
                .query_map([], |row| {
                    Ok(StoredPattern {
                        id: row.get(0)?,
                        pipeline: row.get(1)?,
                        answer: row.get(2)?,
                        label: row.get(3)?,
                        source: row.get(4)?,
                        strictness: row.get::<_, f64>(5)? as f32,
                        examples: Vec::new(),
                    })
                })?
                .collect::<Result<_, _>>()?;
            let index: HashMap<i64, usize> = patterns
                .iter()
                .enumerate()
                .map(|(at, p)| (p.id, at))
                .collect();
            let mut statement =
                conn.prepare_cached("SELECT pattern, question FROM examples ORDER BY id")?;
            let mut rows = statement.query([])?;
            while let Some(row) = rows.next()? {
                let pattern: i64 = row.get(0)?;
                if let Some(at) = index.get(&pattern) {
                    patterns[*at].examples.push(row.get(1)?);
                }
            }
            Ok(patterns)
        })
        .await
    }

    /// Import rows into `pipeline`'s answer bank, all or nothing.
    pub async fn import_patterns(
        &self,
        pipeline: String,
        rows: Vec<ImportRow>,
        source: String,
    ) -> Result<ImportReport, StoreError> {
        self.write(move |conn| {
            let mut report = ImportReport::default();
            let mut seen: HashMap<(String, Option<String>), i64> = HashMap::new();
            for row in &rows {
                let key = (row.answer.clone(), row.label.clone());
                let id = match seen.get(&key) {
                    Some(id) => *id,
                    None => {
                        let (id, created, replaced) = pattern_for(
                            conn,
                            &pipeline,
                            &row.answer,
                            row.label.as_deref(),
                            &source,
                        )?;
                        report.patterns_created += usize::from(created);
                        report.answers_replaced += usize::from(replaced);
                        seen.insert(key, id);
                        id
                    }
                };
                if add_example(conn, id, &row.question, &source)? {
                    report.examples_added += 1;
                } else {
                    report.examples_known += 1;
                }
            }
            Ok(report)
        })
        .await
    }

    /// Learn that `question` is answered by `answer` in `pipeline` (a
    /// reviewer's resolution, an accepted correction): the question becomes
    /// an example of the pattern with that answer, created if none has it.
    /// Returns the pattern with just this example, for the bank to learn.
    pub async fn learn_example(
        &self,
        pipeline: String,
        question: String,
        answer: String,
        source: String,
    ) -> Result<StoredPattern, StoreError> {
        self.write(move |conn| {
            let (id, _, _) = pattern_for(conn, &pipeline, &answer, None, &source)?;
            add_example(conn, id, &question, &source)?;
            let (label, pattern_source, strictness) = conn.query_row(
                "SELECT label, source, strictness FROM patterns WHERE id = ?1",
                params![id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get::<_, f64>(2)?)),
            )?;
            Ok(StoredPattern {
                id,
                pipeline,
                answer,
                label,
                source: pattern_source,
                strictness: strictness as f32,
                examples: vec![question],
            })
        })
        .await
    }

    /// The stored embeddings of `pipeline`'s examples by `model`, as
    /// (pattern, question, vector).
    pub async fn example_vectors(
        &self,
        pipeline: String,
        model: String,
    ) -> Result<Vec<(i64, String, Vec<f32>)>, StoreError> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT e.pattern, e.question, v.vector
                 FROM example_vectors v
                 JOIN examples e ON e.id = v.example
                 JOIN patterns p ON p.id = e.pattern
                 WHERE p.pipeline = ?1 AND v.model = ?2",
            )?;
            let rows = statement
                .query_map(params![pipeline, model], |row| {
                    let blob: Vec<u8> = row.get(2)?;
                    Ok((row.get(0)?, row.get(1)?, floats(&blob)))
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Keep embeddings by `model` of examples given as (pattern, question,
    /// vector); an example that is gone meanwhile is skipped.
    pub async fn put_example_vectors(
        &self,
        model: String,
        rows: Vec<(i64, String, Vec<f32>)>,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            let mut statement = conn.prepare_cached(
                "INSERT OR REPLACE INTO example_vectors (example, model, vector)
                 SELECT id, ?3, ?4 FROM examples WHERE pattern = ?1 AND question = ?2",
            )?;
            for (pattern, question, vector) in &rows {
                let blob: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                statement.execute(params![pattern, question, model, blob])?;
            }
            Ok(())
        })
        .await
    }

    /// Keep a pattern's strictness (ratings raised or relaxed it).
    pub async fn set_strictness(&self, pattern: i64, strictness: f32) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE patterns SET strictness = ?2, updated_at = ?3 WHERE id = ?1",
                params![pattern, f64::from(strictness), now_millis()],
            )?;
            Ok(())
        })
        .await
    }

    /// Record a request and wait until the record (and its callback, if
    /// it names one) is committed.
    pub async fn record_durably(&self, record: RequestRecord) -> Result<(), StoreError> {
        let due = Self::calls_back(&record);
        self.write(move |conn| insert_request(conn, &record))
            .await?;
        if due {
            self.callbacks_due.notify_one();
        }
        Ok(())
    }

    /// Record an escalated request and open its ticket; returns the ticket
    /// number once both are committed.
    pub async fn escalate(
        &self,
        record: RequestRecord,
        ticket: NewTicket,
    ) -> Result<i64, StoreError> {
        self.write(move |conn| {
            insert_request(conn, &record)?;
            open_ticket(conn, &record, &ticket)
        })
        .await
    }

    /// Claim a ticket for `reviewer`. Claiming a ticket one already holds is
    /// not an error.
    pub async fn claim(&self, ticket: i64, reviewer: String) -> Result<Ticket, StoreError> {
        self.write(move |conn| {
            let changed = conn.execute(
                "UPDATE tickets SET state = 'claimed', claimed_by = ?2, claimed_at = ?3
                 WHERE id = ?1 AND (state = 'open' OR (state = 'claimed' AND claimed_by = ?2))",
                params![ticket, reviewer, now_millis()],
            )?;
            if changed == 0 {
                return Err(explain_refusal(conn, ticket)?);
            }
            read_ticket(conn, ticket)?
                .ok_or_else(|| StoreError::NotFound(format!("ticket {ticket}")))
        })
        .await
    }

    /// Resolve a ticket with the reviewer's answer, which becomes the
    /// request's answer. An open ticket may be resolved directly; a claimed
    /// one only by the reviewer holding it.
    pub async fn resolve(
        &self,
        ticket: i64,
        reviewer: String,
        answer: String,
    ) -> Result<Ticket, StoreError> {
        let resolved = self
            .write(move |conn| {
                let now = now_millis();
                let changed = conn.execute(
                    "UPDATE tickets SET state = 'resolved', resolution = ?2, resolved_by = ?3,
                        resolved_at = ?4,
                        claimed_by = COALESCE(claimed_by, ?3), claimed_at = COALESCE(claimed_at, ?4)
                 WHERE id = ?1 AND (state = 'open' OR (state = 'claimed' AND claimed_by = ?3))",
                    params![ticket, answer, reviewer, now],
                )?;
                if changed == 0 {
                    return Err(explain_refusal(conn, ticket)?);
                }
                let resolved = read_ticket(conn, ticket)?
                    .ok_or_else(|| StoreError::NotFound(format!("ticket {ticket}")))?;
                if resolved.kind == TicketKind::Correction {
                    // An accepted correction changes the bank, not the request:
                    // the client was answered long ago.
                    accept_correction(conn, &resolved, &answer, &reviewer)?;
                    return Ok(resolved);
                }
                conn.execute(
                    "UPDATE requests SET status = 'answered', output = ?2, confidence = 1.0,
                        stage = NULL, layer = 'human', completed_at = ?3
                 WHERE id = (SELECT request_id FROM tickets WHERE id = ?1)",
                    params![ticket, answer, now],
                )?;
                // The request is final now: a waiting callback becomes due.
                conn.execute(
                    "UPDATE callbacks SET state = 'pending', next_at = ?2
                 WHERE request_id = ?1 AND state = 'waiting'",
                    params![resolved.request_id, now],
                )?;
                // The resolution is part of the training set, and the approved
                // answer of the request's answer-bank key.
                insert_feedback(
                    conn,
                    &FeedbackEvent {
                        kind: "resolution".to_owned(),
                        request_id: resolved.request_id.clone(),
                        pipeline: resolved.pipeline.clone(),
                        key: resolved.remember_key.clone(),
                        input: resolved.input.clone(),
                        answer: resolved.draft.clone(),
                        rating: None,
                        correction: Some(answer.clone()),
                        actor: reviewer.clone(),
                    },
                )?;
                if let Some(key) = &resolved.remember_key {
                    upsert_approved(
                        conn,
                        &resolved.pipeline,
                        key,
                        &answer,
                        "human",
                        &reviewer,
                        &resolved.request_id,
                    )?;
                }
                Ok(resolved)
            })
            .await?;
        self.callbacks_due.notify_one();
        Ok(resolved)
    }

    /// Open a correction ticket: a client's proposed answer for a request,
    /// which changes nothing until a reviewer accepts it. Returns the ticket
    /// and the request as recorded.
    pub async fn propose_correction(
        &self,
        request_id: String,
        correction: String,
        actor: String,
    ) -> Result<(Ticket, RequestRecord), StoreError> {
        self.write(move |conn| {
            let (record, _) = read_request(conn, &request_id)?
                .ok_or_else(|| StoreError::NotFound(format!("request \"{request_id}\"")))?;
            conn.execute(
                "INSERT INTO tickets (request_id, kind, pipeline, stage, reason, draft, state,
                                      created_at, proposed_by)
                 VALUES (?1, 'correction', ?2, ?3, ?4, ?5, 'open', ?6, ?7)",
                params![
                    record.id,
                    record.pipeline,
                    record.stage,
                    format!("{actor} proposes a correction of this answer"),
                    correction,
                    now_millis(),
                    actor
                ],
            )?;
            let id = conn.last_insert_rowid();
            insert_feedback(
                conn,
                &FeedbackEvent {
                    kind: "proposal".to_owned(),
                    request_id: record.id.clone(),
                    pipeline: record.pipeline.clone(),
                    key: record.remember_key.clone(),
                    input: record.input.clone(),
                    answer: record.output.clone(),
                    rating: Some("bad".to_owned()),
                    correction: Some(correction),
                    actor,
                },
            )?;
            let ticket = read_ticket(conn, id)?
                .ok_or_else(|| StoreError::NotFound(format!("ticket {id}")))?;
            Ok((ticket, record))
        })
        .await
    }

    /// Reject a proposed correction: nothing changes but the ticket. Only
    /// a correction ticket may be rejected, and a claimed one only by the
    /// reviewer holding it.
    pub async fn reject_correction(
        &self,
        ticket: i64,
        reviewer: String,
        note: Option<String>,
    ) -> Result<Ticket, StoreError> {
        self.write(move |conn| {
            let kind = read_ticket(conn, ticket)?.map(|t| t.kind);
            if kind == Some(TicketKind::Escalation) {
                return Err(StoreError::Conflict(format!(
                    "ticket {ticket} is an escalation: answer it with /resolve; only a proposed \
                     correction can be rejected"
                )));
            }
            let now = now_millis();
            let changed = conn.execute(
                "UPDATE tickets SET state = 'rejected', resolution = ?2, resolved_by = ?3,
                        resolved_at = ?4,
                        claimed_by = COALESCE(claimed_by, ?3), claimed_at = COALESCE(claimed_at, ?4)
                 WHERE id = ?1 AND kind = 'correction'
                   AND (state = 'open' OR (state = 'claimed' AND claimed_by = ?3))",
                params![ticket, note, reviewer, now],
            )?;
            if changed == 0 {
                return Err(explain_refusal(conn, ticket)?);
            }
            read_ticket(conn, ticket)?
                .ok_or_else(|| StoreError::NotFound(format!("ticket {ticket}")))
        })
        .await
    }

    /// A request's state, or `None` if no such request was recorded.
    pub async fn request(&self, id: String) -> Result<Option<RequestState>, StoreError> {
        self.read(move |conn| {
            let found = read_request(conn, &id)?;
            let Some((record, completed_at)) = found else {
                return Ok(None);
            };
            let ticket_id: Option<i64> = conn
                .query_row(
                    "SELECT id FROM tickets WHERE request_id = ?1 AND kind = 'escalation'",
                    params![record.id],
                    |row| row.get(0),
                )
                .optional()?;
            let ticket = match ticket_id {
                Some(t) => read_ticket(conn, t)?,
                None => None,
            };
            Ok(Some(RequestState {
                record,
                completed_at,
                ticket,
            }))
        })
        .await
    }

    /// One ticket.
    pub async fn ticket(&self, id: i64) -> Result<Option<Ticket>, StoreError> {
        self.read(move |conn| read_ticket(conn, id)).await
    }

    /// Tickets matching `filter`, oldest first, at most `limit`.
    pub async fn tickets(
        &self,
        filter: TicketFilter,
        limit: u32,
    ) -> Result<Vec<Ticket>, StoreError> {
        self.read(move |conn| {
            let (clause, state) = match filter {
                TicketFilter::Pending => ("t.state IN ('open', 'claimed')", None),
                TicketFilter::State(state) => ("t.state = ?2", Some(state.as_str())),
            };
            let sql = format!("{TICKET_SELECT} WHERE {clause} ORDER BY t.id LIMIT ?1");
            let mut statement = conn.prepare_cached(&sql)?;
            let rows = match state {
                None => statement.query_map(params![limit], ticket_from_row)?,
                Some(state) => statement.query_map(params![limit, state], ticket_from_row)?,
            };
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Accept an asynchronous request: durable before the client hears 202.
    pub async fn enqueue(&self, job: Job) -> Result<(), StoreError> {
        self.write(move |conn| {
            let known: Option<i64> = conn
                .query_row(
                    "SELECT 1 FROM requests WHERE id = ?1",
                    params![job.id],
                    |row| row.get(0),
                )
                .optional()?;
            if known.is_some() {
                return Err(StoreError::Conflict(format!(
                    "request \"{}\" already ran",
                    job.id
                )));
            }
            conn.execute(
                "INSERT INTO jobs (id, pipeline, input, attributes, callback, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6)",
                params![
                    job.id,
                    job.pipeline,
                    job.input,
                    job.attributes,
                    job.callback,
                    job.created_at
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Conflict(format!("request \"{}\" was already accepted", job.id))
                }
                other => other.into(),
            })?;
            Ok(())
        })
        .await
    }

    /// Accepted requests not yet completed (queued, or running when the
    /// host stopped), oldest first.
    pub async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, pipeline, input, attributes, callback, created_at FROM jobs
                 WHERE state IN ('queued', 'running') ORDER BY created_at, id",
            )?;
            let rows = statement.query_map([], job_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Mark a job running (counting its runs), unless it is done, or has
    /// already started `max_runs` times: then it is dead, completed as a
    /// failed request with code `dead_letter`, and never runs again.
    pub async fn start_job(&self, id: String, max_runs: u32) -> Result<JobStart, StoreError> {
        self.write(move |conn| {
            let found: Option<(JobStatus, i64, String)> = conn
                .query_row(
                    "SELECT state, runs, pipeline FROM jobs WHERE id = ?1",
                    params![id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            let Some((state, runs, pipeline)) = found else {
                return Err(StoreError::NotFound(format!("job \"{id}\"")));
            };
            if state.finished() {
                return Ok(JobStart::Finished);
            }
            if runs >= i64::from(max_runs) {
                let reason = format!(
                    "the request started {runs} times without completing (the host stopped \
                     while it ran each time); [async] max_runs is {max_runs}"
                );
                conn.execute(
                    "UPDATE jobs SET state = 'dead', reason = ?2, done_at = ?3 WHERE id = ?1",
                    params![id, reason, now_millis()],
                )?;
                let job = read_job(conn, &id)?;
                let record = RequestRecord {
                    id: id.clone(),
                    pipeline,
                    generation: 0,
                    status: RequestStatus::Failed,
                    input: job.input,
                    attributes: job.attributes,
                    output: None,
                    confidence: None,
                    stage: None,
                    layer: None,
                    code: Some("dead_letter".to_owned()),
                    message: Some(reason.clone()),
                    trace: "[]".to_owned(),
                    created_at: job.created_at,
                    remember_key: None,
                    cost_usd: 0.0,
                    callback: job.callback,
                    pattern: None,
                };
                insert_request(conn, &record)?;
                return Ok(JobStart::Dead(reason));
            }
            conn.execute(
                "UPDATE jobs SET state = 'running', runs = runs + 1
                 WHERE id = ?1 AND state IN ('queued', 'running')",
                params![id],
            )?;
            Ok(JobStart::Run)
        })
        .await
    }

    /// Complete a job: its request record (and ticket, if escalated) and
    /// the job's end, in one transaction, so a job completes exactly once
    /// even if it ran twice around a crash. Returns the ticket number.
    pub async fn complete_job(
        &self,
        record: RequestRecord,
        ticket: Option<NewTicket>,
    ) -> Result<Option<i64>, StoreError> {
        let due = Self::calls_back(&record);
        let ticket = self
            .write(move |conn| {
                let done: Option<JobStatus> = conn
                    .query_row(
                        "SELECT state FROM jobs WHERE id = ?1",
                        params![record.id],
                        |row| row.get(0),
                    )
                    .optional()?;
                if done.is_some_and(JobStatus::finished) {
                    return Ok(None);
                }
                insert_request(conn, &record)?;
                let ticket = match ticket {
                    None => None,
                    Some(ticket) => Some(open_ticket(conn, &record, &ticket)?),
                };
                conn.execute(
                    "UPDATE jobs SET state = 'done', done_at = ?2 WHERE id = ?1",
                    params![record.id, now_millis()],
                )?;
                Ok(ticket)
            })
            .await?;
        if due {
            self.callbacks_due.notify_one();
        }
        Ok(ticket)
    }

    /// An asynchronous request's job, whatever its state.
    pub async fn job_state(&self, id: String) -> Result<Option<JobState>, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT pipeline, state, runs, created_at, reason FROM jobs WHERE id = ?1",
                    params![id],
                    |row| {
                        Ok(JobState {
                            pipeline: row.get(0)?,
                            state: row.get(1)?,
                            runs: row.get(2)?,
                            created_at: row.get(3)?,
                            reason: row.get(4)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    /// Up to `limit` callbacks due for delivery at `now`, the earliest
    /// first: `(request_id, url, attempts)`.
    pub async fn due_callbacks(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT request_id, url, attempts FROM callbacks
                 WHERE state = 'pending' AND next_at <= ?1 ORDER BY next_at LIMIT ?2",
            )?;
            let rows = statement.query_map(params![now, limit as i64], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The earliest time after `after` a pending callback is due, if any.
    pub async fn next_callback_at(&self, after: i64) -> Result<Option<i64>, StoreError> {
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT MIN(next_at) FROM callbacks WHERE state = 'pending' AND next_at > ?1",
                params![after],
                |row| row.get(0),
            )?)
        })
        .await
    }

    /// Record one delivery attempt and what comes next: delivered, another
    /// attempt at `retry_at`, or failed for good.
    pub async fn record_delivery(
        &self,
        request_id: String,
        attempt: i64,
        status: Option<u16>,
        error: Option<String>,
        retry_at: Option<i64>,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            let ok = error.is_none();
            conn.execute(
                "INSERT INTO deliveries (request_id, attempt, at, status, error, ok)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![request_id, attempt, now_millis(), status, error, ok],
            )?;
            let (state, next_at) = match (ok, retry_at) {
                (true, _) => ("delivered", None),
                (false, Some(at)) => ("pending", Some(at)),
                (false, None) => ("failed", None),
            };
            conn.execute(
                "UPDATE callbacks SET state = ?2, attempts = ?3, next_at = ?4
                 WHERE request_id = ?1",
                params![request_id, state, attempt, next_at],
            )?;
            Ok(())
        })
        .await
    }

    /// A request's callback and its delivery attempts.
    pub async fn callback(
        &self,
        request_id: String,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        self.read(move |conn| {
            let found: Option<(String, String, i64)> = conn
                .query_row(
                    "SELECT url, state, attempts FROM callbacks WHERE request_id = ?1",
                    params![request_id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            let Some((url, state, attempts)) = found else {
                return Ok(None);
            };
            let mut statement = conn.prepare_cached(
                "SELECT attempt, at, status, error, ok FROM deliveries
                 WHERE request_id = ?1 ORDER BY id",
            )?;
            let deliveries = statement
                .query_map(params![request_id], |row| {
                    Ok(serde_json::json!({
                        "attempt": row.get::<_, i64>(0)?,
                        "at": row.get::<_, i64>(1)?,
                        "status": row.get::<_, Option<i64>>(2)?,
                        "error": row.get::<_, Option<String>>(3)?,
                        "ok": row.get::<_, bool>(4)?,
                    }))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(serde_json::json!({
                "url": url,
                "state": state,
                "attempts": attempts,
                "deliveries": deliveries,
            })))
        })
        .await
    }

    /// Every approved answer: `(pipeline, key, answer, source)`.
    pub async fn approved_answers(
        &self,
    ) -> Result<Vec<(String, String, String, String)>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT pipeline, key, answer, source FROM answer_bank ORDER BY rowid",
            )?;
            let rows = statement.query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Record feedback on a request; with a correction, the correction
    /// becomes the approved answer of the request's answer-bank key (if it
    /// has one). Returns the request as recorded.
    pub async fn feedback(
        &self,
        request_id: String,
        rating: Option<String>,
        correction: Option<String>,
        actor: String,
    ) -> Result<RequestRecord, StoreError> {
        // Looked up inside the write: the record of a request answered a
        // moment ago may still be queued, and queued writes come first.
        self.write(move |conn| {
            let (record, _) = read_request(conn, &request_id)?
                .ok_or_else(|| StoreError::NotFound(format!("request \"{request_id}\"")))?;
            insert_feedback(
                conn,
                &FeedbackEvent {
                    kind: if correction.is_some() {
                        "correction"
                    } else {
                        "rating"
                    }
                    .to_owned(),
                    request_id: record.id.clone(),
                    pipeline: record.pipeline.clone(),
                    key: record.remember_key.clone(),
                    input: record.input.clone(),
                    answer: record.output.clone(),
                    rating,
                    correction: correction.clone(),
                    actor: actor.clone(),
                },
            )?;
            if let (Some(key), Some(correction)) = (&record.remember_key, &correction) {
                upsert_approved(
                    conn,
                    &record.pipeline,
                    key,
                    correction,
                    "correction",
                    &actor,
                    &record.id,
                )?;
            }
            Ok(record)
        })
        .await
    }

    /// Stream the feedback dataset as JSON lines, oldest first, into `lines`
    /// (one `String` per line, newline included). Stops early if the
    /// receiver goes away. The reader is held for one page at a time, never
    /// while the receiver is slow.
    pub fn export_feedback(&self, lines: mpsc::Sender<String>) {
        let store = self.clone();
        tokio::spawn(async move {
            let mut after = 0i64;
            loop {
                let page = store
                    .read(move |conn| {
                        let mut statement = conn.prepare_cached(
                            "SELECT id, json_object(
                                'id', id, 'at', at, 'kind', kind, 'request_id', request_id,
                                'pipeline', pipeline, 'key', key, 'input', input,
                                'answer', answer, 'rating', rating, 'correction', correction,
                                'actor', actor)
                             FROM feedback WHERE id > ?1 ORDER BY id LIMIT 500",
                        )?;
                        let rows = statement
                            .query_map(params![after], |row| Ok((row.get(0)?, row.get(1)?)))?;
                        Ok(rows.collect::<Result<Vec<(i64, String)>, _>>()?)
                    })
                    .await;
                let page = match page {
                    Ok(page) => page,
                    Err(error) => {
                        tracing::error!(%error, "cannot read the feedback dataset");
                        return;
                    }
                };
                let Some((last, _)) = page.last() else {
                    return;
                };
                after = *last;
                for (_, line) in page {
                    if lines.send(format!("{line}\n")).await.is_err() {
                        return;
                    }
                }
            }
        });
    }

    /// Append an entry to the audit log; returns once it is durable.
    pub async fn audit(&self, entry: AuditEntry) -> Result<i64, StoreError> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO audit (at, action, trigger, actor, result, from_generation,
                                    to_generation, manifest_sha256, changes, note)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    entry.at,
                    entry.action,
                    entry.trigger,
                    entry.actor,
                    entry.result,
                    entry.from_generation.map(|g| g as i64),
                    entry.to_generation.map(|g| g as i64),
                    entry.manifest_sha256,
                    entry.changes.to_string(),
                    entry.note,
                ],
            )?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    /// The newest audit entries, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, at, action, trigger, actor, result, from_generation, to_generation,
                        manifest_sha256, changes, note
                 FROM audit ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = statement.query_map(params![limit], |row| {
                Ok(AuditEntry {
                    id: row.get(0)?,
                    at: row.get(1)?,
                    action: row.get(2)?,
                    trigger: row.get(3)?,
                    actor: row.get(4)?,
                    result: row.get(5)?,
                    from_generation: row.get::<_, Option<i64>>(6)?.map(|g| g as u64),
                    to_generation: row.get::<_, Option<i64>>(7)?.map(|g| g as u64),
                    manifest_sha256: row.get(8)?,
                    changes: serde_json::from_str(&row.get::<_, String>(9)?)
                        .unwrap_or(serde_json::Value::Null),
                    note: row.get(10)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Queue a shadow comparison without waiting. Comparisons are
    /// observations, not promises: when the queue is full one is dropped
    /// (and logged) rather than slowing live traffic.
    pub fn record_shadow(&self, run: ShadowRecord) {
        let job: WriteOp = Box::new(move |conn| {
            let result = conn
                .prepare_cached(
                    "INSERT INTO shadow_runs (at, request_id, pipeline, stage, live_digest,
                                              candidate_digest, same, live, candidate)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        now_millis(),
                        run.request_id,
                        run.pipeline,
                        run.stage,
                        run.live_digest,
                        run.candidate_digest,
                        run.same,
                        run.live.to_string(),
                        run.candidate.to_string(),
                    ])
                })
                .map(|_| ())
                .map_err(StoreError::from);
            let failed = result.is_err();
            let completion: Completion = Box::new(move |commit| {
                if let Err(error) = commit.and(result) {
                    tracing::warn!(%error, "cannot record a shadow comparison");
                }
            });
            (failed, completion)
        });
        if self
            .jobs
            .try_send(Message::Job {
                job,
                durable: false,
            })
            .is_err()
        {
            tracing::warn!("the store queue is full; a shadow comparison was dropped");
        }
    }

    /// Shadow comparisons of a pipeline: per stage and candidate, how many
    /// ran and how many differed, with the newest differing ones.
    pub async fn shadow_summary(
        &self,
        pipeline: String,
        examples: u32,
    ) -> Result<serde_json::Value, StoreError> {
        self.read(move |conn| {
            let mut groups = conn.prepare_cached(
                "SELECT stage, candidate_digest, live_digest, COUNT(*), SUM(1 - same)
                 FROM shadow_runs WHERE pipeline = ?1
                 GROUP BY stage, candidate_digest, live_digest ORDER BY stage",
            )?;
            let mut out = Vec::new();
            let rows = groups.query_map(params![pipeline], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })?;
            for row in rows {
                let (stage, candidate, live, runs, differing) = row?;
                let mut recent = conn.prepare_cached(
                    "SELECT request_id, live, candidate, at FROM shadow_runs
                     WHERE pipeline = ?1 AND stage = ?2 AND candidate_digest = ?3 AND same = 0
                     ORDER BY id DESC LIMIT ?4",
                )?;
                let differences = recent
                    .query_map(params![pipeline, stage, candidate, examples], |row| {
                        let parse = |text: String| {
                            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
                        };
                        Ok(serde_json::json!({
                            "request_id": row.get::<_, String>(0)?,
                            "live": parse(row.get(1)?),
                            "candidate": parse(row.get(2)?),
                            "at": row.get::<_, i64>(3)?,
                        }))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                out.push(serde_json::json!({
                    "stage": stage,
                    "live_digest": live,
                    "candidate_digest": candidate,
                    "runs": runs,
                    "differing": differing,
                    "differences": differences,
                }));
            }
            Ok(serde_json::json!({ "pipeline": pipeline, "stages": out }))
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

/// Schema migrations, applied in order; `user_version` counts those applied.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE requests (
        id           TEXT PRIMARY KEY,
        pipeline     TEXT NOT NULL,
        generation   INTEGER NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('answered', 'escalated', 'rejected', 'failed')),
        input        TEXT NOT NULL,
        attributes   TEXT NOT NULL,
        output       TEXT,
        confidence   REAL,
        stage        TEXT,
        layer        TEXT,
        code         TEXT,
        message      TEXT,
        trace        TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        completed_at INTEGER
    );
    CREATE TABLE tickets (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id  TEXT NOT NULL UNIQUE REFERENCES requests (id),
        pipeline    TEXT NOT NULL,
        stage       TEXT,
        reason      TEXT NOT NULL,
        draft       TEXT,
        state       TEXT NOT NULL CHECK (state IN ('open', 'claimed', 'resolved')),
        claimed_by  TEXT,
        claimed_at  INTEGER,
        resolution  TEXT,
        resolved_by TEXT,
        resolved_at INTEGER,
        created_at  INTEGER NOT NULL
    );
    CREATE INDEX tickets_by_state ON tickets (state, id);
", "
    CREATE TABLE audit (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        at              INTEGER NOT NULL,
        action          TEXT NOT NULL,
        trigger         TEXT NOT NULL,
        actor           TEXT NOT NULL,
        result          TEXT NOT NULL CHECK (result IN ('applied', 'unchanged', 'failed')),
        from_generation INTEGER,
        to_generation   INTEGER,
        manifest_sha256 TEXT,
        changes         TEXT NOT NULL,
        note            TEXT
    );
    CREATE TABLE shadow_runs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        at               INTEGER NOT NULL,
        request_id       TEXT NOT NULL,
        pipeline         TEXT NOT NULL,
        stage            TEXT NOT NULL,
        live_digest      TEXT NOT NULL,
        candidate_digest TEXT NOT NULL,
        same             INTEGER NOT NULL,
        live             TEXT NOT NULL,
        candidate        TEXT NOT NULL
    );
    CREATE INDEX shadow_runs_by_stage ON shadow_runs (pipeline, stage, candidate_digest, id);
", "
    ALTER TABLE requests ADD COLUMN remember_key TEXT;
    ALTER TABLE requests ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0;
    CREATE TABLE answer_bank (
        pipeline    TEXT NOT NULL,
        key         TEXT NOT NULL,
        answer      TEXT NOT NULL,
        source      TEXT NOT NULL,
        approved_by TEXT NOT NULL,
        request_id  TEXT,
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (pipeline, key)
    );
    CREATE TABLE feedback (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        at         INTEGER NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('rating', 'correction', 'resolution')),
        request_id TEXT NOT NULL,
        pipeline   TEXT NOT NULL,
        key        TEXT,
        input      TEXT NOT NULL,
        answer     TEXT,
        rating     TEXT CHECK (rating IN ('good', 'bad')),
        correction TEXT,
        actor      TEXT NOT NULL
    );
", "
    CREATE TABLE jobs (
        id         TEXT PRIMARY KEY,
        pipeline   TEXT NOT NULL,
        input      TEXT NOT NULL,
        attributes TEXT NOT NULL,
        callback   TEXT,
        state      TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done')),
        runs       INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        done_at    INTEGER
    );
    CREATE INDEX jobs_by_state ON jobs (state, created_at);
    CREATE TABLE callbacks (
        request_id TEXT PRIMARY KEY,
        url        TEXT NOT NULL,
        state      TEXT NOT NULL CHECK (state IN ('waiting', 'pending', 'delivered', 'failed')),
        attempts   INTEGER NOT NULL DEFAULT 0,
        next_at    INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX callbacks_due ON callbacks (state, next_at);
    CREATE TABLE deliveries (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL,
        attempt    INTEGER NOT NULL,
        at         INTEGER NOT NULL,
        status     INTEGER,
        error      TEXT,
        ok         INTEGER NOT NULL
    );
    CREATE INDEX deliveries_by_request ON deliveries (request_id, id);
", "
    -- Tickets of a second kind: a client's proposed correction of an answer,
    -- waiting for a reviewer to accept or reject it. A request has at most
    -- one escalation ticket and any number of correction tickets.
    CREATE TABLE tickets_v5 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id  TEXT NOT NULL REFERENCES requests (id),
        kind        TEXT NOT NULL DEFAULT 'escalation'
                    CHECK (kind IN ('escalation', 'correction')),
        pipeline    TEXT NOT NULL,
        stage       TEXT,
        reason      TEXT NOT NULL,
        draft       TEXT,
        state       TEXT NOT NULL CHECK (state IN ('open', 'claimed', 'resolved', 'rejected')),
        claimed_by  TEXT,
        claimed_at  INTEGER,
        resolution  TEXT,
        resolved_by TEXT,
        resolved_at INTEGER,
        created_at  INTEGER NOT NULL,
        proposed_by TEXT
    );
    INSERT INTO tickets_v5 (id, request_id, pipeline, stage, reason, draft, state, claimed_by,
                            claimed_at, resolution, resolved_by, resolved_at, created_at)
        SELECT id, request_id, pipeline, stage, reason, draft, state, claimed_by, claimed_at,
               resolution, resolved_by, resolved_at, created_at FROM tickets;
    DROP TABLE tickets;
    ALTER TABLE tickets_v5 RENAME TO tickets;
    CREATE UNIQUE INDEX tickets_escalation ON tickets (request_id) WHERE kind = 'escalation';
    CREATE INDEX tickets_by_state ON tickets (state, id);
    CREATE INDEX tickets_by_request ON tickets (request_id);
    CREATE TABLE feedback_v5 (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        at         INTEGER NOT NULL,
        kind       TEXT NOT NULL
                   CHECK (kind IN ('rating', 'correction', 'resolution', 'proposal')),
        request_id TEXT NOT NULL,
        pipeline   TEXT NOT NULL,
        key        TEXT,
        input      TEXT NOT NULL,
        answer     TEXT,
        rating     TEXT CHECK (rating IN ('good', 'bad')),
        correction TEXT,
        actor      TEXT NOT NULL
    );
    INSERT INTO feedback_v5 SELECT * FROM feedback;
    DROP TABLE feedback;
    ALTER TABLE feedback_v5 RENAME TO feedback;
    -- A job that ran too often without completing is dead: kept, with why,
    -- and never run again.
    CREATE TABLE jobs_v5 (
        id         TEXT PRIMARY KEY,
        pipeline   TEXT NOT NULL,
        input      TEXT NOT NULL,
        attributes TEXT NOT NULL,
        callback   TEXT,
        state      TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'dead')),
        runs       INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        done_at    INTEGER,
        reason     TEXT
    );
    INSERT INTO jobs_v5 (id, pipeline, input, attributes, callback, state, runs, created_at,
                         done_at)
        SELECT id, pipeline, input, attributes, callback, state, runs, created_at, done_at
        FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_v5 RENAME TO jobs;
    CREATE INDEX jobs_by_state ON jobs (state, created_at);
    CREATE INDEX requests_by_completion ON requests (completed_at);
    CREATE INDEX audit_by_time ON audit (at);
    CREATE INDEX shadow_runs_by_time ON shadow_runs (at);
    CREATE INDEX deliveries_by_time ON deliveries (at);
", "
    -- The learned answer bank: approved answers with the example questions
    -- they answer. A label (intent) names at most one pattern per pipeline.
    CREATE TABLE patterns (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        pipeline   TEXT NOT NULL,
        answer     TEXT NOT NULL,
        label      TEXT,
        source     TEXT NOT NULL,
        strictness REAL NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX patterns_by_label ON patterns (pipeline, label) WHERE label IS NOT NULL;
    CREATE INDEX patterns_by_answer ON patterns (pipeline, answer);
    CREATE TABLE examples (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        pattern    INTEGER NOT NULL REFERENCES patterns (id) ON DELETE CASCADE,
        question   TEXT NOT NULL,
        source     TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (pattern, question)
    );
    -- The pattern whose answer a request got from the bank, so a rating of
    -- the answer counts against the pattern.
    ALTER TABLE requests ADD COLUMN pattern INTEGER;
", "
    -- Embeddings of example questions, per embeddings model (the provider's
    -- model name), so a restart embeds only what is new and another model
    -- embeds everything again. Little-endian f32s.
    CREATE TABLE example_vectors (
        example INTEGER NOT NULL REFERENCES examples (id) ON DELETE CASCADE,
        model   TEXT NOT NULL,
        vector  BLOB NOT NULL,
        PRIMARY KEY (example, model)
    ) WITHOUT ROWID;
"];

/// Little-endian f32s from a blob (a trailing partial value is ignored).
fn floats(blob: &[u8]) -> Vec<f32> {
    blob.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let applied: usize = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if applied > MIGRATIONS.len() {
        anyhow::bail!(
            "the database is at schema version {applied}, newer than this build knows ({}); \
             use a newer strata",
            MIGRATIONS.len()
        );
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn write_loop(conn: Connection, mut queue: mpsc::Receiver<Message>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = None;
    let mut synchronous = Synchronous::Full;
    while let Some(first) = queue.blocking_recv() {
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

fn commit_batch(conn: &Connection, batch: &mut Vec<WriteOp>) {
    if let Err(error) = conn.execute_batch("BEGIN IMMEDIATE") {
        // Dropping the jobs drops their reply channels: every waiting caller
        // learns that its write was not committed.
        tracing::error!(%error, jobs = batch.len(), "cannot begin a store transaction");
        batch.clear();
        return;
    }
    let mut completions = Vec::with_capacity(batch.len());
    for job in batch.drain(..) {
        let savepoint = conn.execute_batch("SAVEPOINT job");
        let (failed, completion) = job(conn);
        let settle = if failed || savepoint.is_err() {
            conn.execute_batch("ROLLBACK TO job; RELEASE job")
        } else {
            conn.execute_batch("RELEASE job")
        };
        if let Err(error) = settle {
            tracing::error!(%error, "cannot settle a store savepoint");
        }
        completions.push(completion);
    }
    let committed = conn.execute_batch("COMMIT").map_err(StoreError::from);
    if let Err(error) = &committed {
        tracing::error!(%error, "cannot commit a batch of store writes");
        let _ = conn.execute_batch("ROLLBACK");
    }
    for completion in completions {
        completion(match &committed {
            Ok(()) => Ok(()),
            Err(error) => Err(StoreError::Database(error.to_string())),
        });
    }
}

/// A request's record and when it completed.
fn read_request(
    conn: &Connection,
    id: &str,
) -> Result<Option<(RequestRecord, Option<i64>)>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, pipeline, generation, status, input, attributes, output,
                            confidence, stage, layer, code, message, trace, created_at,
                            completed_at, remember_key, cost_usd, pattern
                     FROM requests WHERE id = ?1",
            params![id],
            |row| {
                Ok((
                    RequestRecord {
                        id: row.get(0)?,
                        pipeline: row.get(1)?,
                        generation: row.get::<_, i64>(2)? as u64,
                        status: row.get(3)?,
                        input: row.get(4)?,
                        attributes: row.get(5)?,
                        output: row.get(6)?,
                        confidence: row.get(7)?,
                        stage: row.get(8)?,
                        layer: row.get(9)?,
                        code: row.get(10)?,
                        message: row.get(11)?,
                        trace: row.get(12)?,
                        created_at: row.get(13)?,
                        remember_key: row.get(15)?,
                        cost_usd: row.get(16)?,
                        pattern: row.get(17)?,
                        // Kept in the callbacks table, shown from there.
                        callback: None,
                    },
                    row.get::<_, Option<i64>>(14)?,
                ))
            },
        )
        .optional()?)
}

fn insert_request(conn: &Connection, r: &RequestRecord) -> Result<(), StoreError> {
    let escalated = r.status == RequestStatus::Escalated;
    let completed_at = (!escalated).then(now_millis);
    if let Some(url) = &r.callback {
        // Delivered once the request is final: now, or when a reviewer
        // resolves its ticket.
        let state = if escalated { "waiting" } else { "pending" };
        conn.prepare_cached(
            "INSERT INTO callbacks (request_id, url, state, next_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (request_id) DO UPDATE SET state = excluded.state,
                 next_at = excluded.next_at
             WHERE callbacks.state = 'waiting'",
        )?
        .execute(params![r.id, url, state, now_millis()])?;
    }
    conn.prepare_cached(
        "INSERT INTO requests (id, pipeline, generation, status, input, attributes, output,
                               confidence, stage, layer, code, message, trace, created_at,
                               completed_at, remember_key, cost_usd, pattern)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18)
         ON CONFLICT (id) DO NOTHING",
    )?
    .execute(params![
        r.id,
        r.pipeline,
        r.generation as i64,
        r.status,
        r.input,
        r.attributes,
        r.output,
        r.confidence,
        r.stage,
        r.layer,
        r.code,
        r.message,
        r.trace,
        r.created_at,
        completed_at,
        r.remember_key,
        r.cost_usd,
        r.pattern
    ])?;
    Ok(())
}

const TICKET_SELECT: &str = "
    SELECT t.id, t.request_id, t.pipeline, t.stage, t.reason, t.draft, r.input, r.attributes,
           t.state, t.claimed_by, t.claimed_at, t.resolution, t.resolved_by, t.resolved_at,
           t.created_at, r.remember_key, t.kind, t.proposed_by
    FROM tickets t JOIN requests r ON r.id = t.request_id";

fn ticket_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Ticket> {
    let attributes: String = row.get(7)?;
    Ok(Ticket {
        id: row.get(0)?,
        kind: TicketKind::parse(&row.get::<_, String>(16)?)?,
        proposed_by: row.get(17)?,
        request_id: row.get(1)?,
        pipeline: row.get(2)?,
        stage: row.get(3)?,
        reason: row.get(4)?,
        draft: row.get(5)?,
        input: row.get(6)?,
        attributes: serde_json::from_str(&attributes).unwrap_or(serde_json::Value::Null),
        state: row.get(8)?,
        claimed_by: row.get(9)?,
        claimed_at: row.get(10)?,
        resolution: row.get(11)?,
        resolved_by: row.get(12)?,
        resolved_at: row.get(13)?,
        remember_key: row.get(15)?,
        created_at: row.get(14)?,
    })
}

fn read_ticket(conn: &Connection, id: i64) -> Result<Option<Ticket>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("{TICKET_SELECT} WHERE t.id = ?1"))?
        .query_row(params![id], ticket_from_row)
        .optional()?)
}

/// Apply an accepted correction: the dataset gets it, and the request's
/// answer-bank key (if any) gets it as its approved answer.
fn accept_correction(
    conn: &Connection,
    ticket: &Ticket,
    answer: &str,
    reviewer: &str,
) -> Result<(), StoreError> {
    let output: Option<String> = conn.query_row(
        "SELECT output FROM requests WHERE id = ?1",
        params![ticket.request_id],
        |row| row.get(0),
    )?;
    insert_feedback(
        conn,
        &FeedbackEvent {
            kind: "correction".to_owned(),
            request_id: ticket.request_id.clone(),
            pipeline: ticket.pipeline.clone(),
            key: ticket.remember_key.clone(),
            input: ticket.input.clone(),
            answer: output,
            rating: Some("bad".to_owned()),
            correction: Some(answer.to_owned()),
            actor: reviewer.to_owned(),
        },
    )?;
    if let Some(key) = &ticket.remember_key {
        upsert_approved(
            conn,
            &ticket.pipeline,
            key,
            answer,
            "correction",
            reviewer,
            &ticket.request_id,
        )?;
    }
    Ok(())
}

/// Say why a claim or resolution changed nothing.
fn explain_refusal(conn: &Connection, ticket: i64) -> Result<StoreError, StoreError> {
    let Some(current) = read_ticket(conn, ticket)? else {
        return Ok(StoreError::NotFound(format!("ticket {ticket}")));
    };
    Ok(match current.state {
        TicketState::Resolved => StoreError::Conflict(format!(
            "ticket {ticket} is already resolved by {}",
            current.resolved_by.unwrap_or_default()
        )),
        TicketState::Rejected => StoreError::Conflict(format!(
            "ticket {ticket} was already rejected by {}",
            current.resolved_by.unwrap_or_default()
        )),

        _ => StoreError::Conflict(format!(
            "ticket {ticket} is claimed by {}",
            current.claimed_by.unwrap_or_default()
        )),
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
