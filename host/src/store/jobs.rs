//! Jobs: accepted asynchronous requests, run at least once and completed
//! exactly once.

use super::sql::{Conn, Row, params};
use super::{
    JobStatus, NewTicket, RequestRecord, RequestStatus, Store, StoreError, insert_request,
    now_millis, open_ticket,
};

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
    /// The team whose token sent it, if a team's did.
    pub team: Option<String>,
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
/// created_at, team FROM jobs`.
pub(super) fn job_from_row(row: &Row<'_>) -> Result<Job, StoreError> {
    Ok(Job {
        id: row.get(0)?,
        pipeline: row.get(1)?,
        input: row.get(2)?,
        attributes: row.get(3)?,
        callback: row.get(4)?,
        created_at: row.get(5)?,
        team: row.get(6)?,
    })
}

pub(super) fn read_job(conn: &mut Conn<'_>, id: &str) -> Result<Job, StoreError> {
    conn.query_row(
        "SELECT id, pipeline, input, attributes, callback, created_at, team FROM jobs WHERE id = ?1",
        params![id],
        job_from_row,
    )
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

impl Store {
    /// Accept an asynchronous request: durable before the client hears 202.
    pub async fn enqueue(&self, job: Job) -> Result<(), StoreError> {
        self.write(move |conn| {
            let known: Option<i64> = conn.query_opt(
                "SELECT 1 FROM requests WHERE id = ?1",
                params![job.id],
                |row| row.get(0),
            )?;
            if known.is_some() {
                return Err(StoreError::Conflict(format!(
                    "request \"{}\" already ran",
                    job.id
                )));
            }
            let inserted = conn.execute(
                "INSERT INTO jobs (id, pipeline, input, attributes, callback, state, created_at,
                                   team)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7)
                 ON CONFLICT (id) DO NOTHING",
                params![
                    job.id,
                    job.pipeline,
                    job.input,
                    job.attributes,
                    job.callback,
                    job.created_at,
                    job.team
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!(
                    "request \"{}\" was already accepted",
                    job.id
                )));
            }
            Ok(())
        })
        .await
    }

    /// Accepted requests not yet completed (queued, or running when the
    /// host stopped), oldest first.
    pub async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.read(|conn| {
            let rows = conn.query_map(
                "SELECT id, pipeline, input, attributes, callback, created_at, team FROM jobs
                 WHERE state IN ('queued', 'running') ORDER BY created_at, id",
                params![],
                job_from_row,
            )?;
            Ok(rows)
        })
        .await
    }

    /// Mark a job running (counting its runs), unless it is done, or has
    /// already started `max_runs` times: then it is dead, completed as a
    /// failed request with code `dead_letter`, and never runs again.
    pub async fn start_job(&self, id: String, max_runs: u32) -> Result<JobStart, StoreError> {
        self.write(move |conn| {
            let found: Option<(JobStatus, i64, String)> = conn.query_opt(
                "SELECT state, runs, pipeline FROM jobs WHERE id = ?1",
                params![id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?;
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
                    team: job.team.clone(),
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
                let done: Option<JobStatus> = conn.query_opt(
                    "SELECT state FROM jobs WHERE id = ?1",
                    params![record.id],
                    |row| row.get(0),
                )?;
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
            conn.query_opt(
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
        })
        .await
    }
}
