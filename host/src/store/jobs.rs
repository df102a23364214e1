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
    /// Another host holds it (its lease has not ended): do nothing.
    Elsewhere,
}

/// The columns [`job_from_row`] reads.
const JOB_SELECT: &str =
    "SELECT id, pipeline, input, attributes, callback, created_at, team FROM jobs";

/// A job no host holds at `?1` (Unix milliseconds): queued, or running on
/// a lease that ended (or was given up by a host starting again).
const TAKEABLE: &str = "(state = 'queued'
     OR (state = 'running' AND (lease_until IS NULL OR lease_until <= ?1)))";

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
        &format!("{JOB_SELECT} WHERE id = ?1"),
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

    /// At start: the jobs this host held when it last stopped (by its
    /// `owner` id) are free to take again at once, instead of after their
    /// leases; then every unfinished job no other host holds, oldest first.
    pub async fn unfinished_jobs(&self, owner: String, now: i64) -> Result<Vec<Job>, StoreError> {
        self.write_with(false, move |conn| {
            conn.execute(
                "UPDATE jobs SET lease_until = NULL WHERE owner = ?1 AND state = 'running'",
                params![owner],
            )?;
            conn.query_map(
                &format!("{JOB_SELECT} WHERE {TAKEABLE} ORDER BY created_at, id"),
                params![now],
                job_from_row,
            )
        })
        .await
    }

    /// Up to `limit` jobs another host may have left: queued since before
    /// `queued_before` (the accepting host is busy), or running on a lease
    /// that ended (its host died). Not this host's own.
    pub async fn jobs_to_take(
        &self,
        owner: String,
        now: i64,
        queued_before: i64,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        self.read(move |conn| {
            conn.query_map(
                &format!(
                    "{JOB_SELECT} WHERE {TAKEABLE}
                       AND (state = 'running' OR created_at <= ?2)
                       AND (owner IS NULL OR owner <> ?3)
                     ORDER BY created_at, id LIMIT ?4"
                ),
                params![now, queued_before, owner, limit],
                job_from_row,
            )
        })
        .await
    }

    /// Extend the leases of the jobs `owner` is running to `until`.
    pub async fn renew_job_leases(&self, owner: String, until: i64) -> Result<(), StoreError> {
        self.write_with(false, move |conn| {
            conn.execute(
                "UPDATE jobs SET lease_until = ?2 WHERE owner = ?1 AND state = 'running'",
                params![owner, until],
            )?;
            Ok(())
        })
        .await
    }

    /// Take a job to run it: mark it running for `owner` with a lease until
    /// `lease_until` (counting its runs), unless it is done, another host
    /// holds its lease, or it has already started `max_runs` times: then it
    /// is dead, completed as a failed request with code `dead_letter`, and
    /// never runs again. Of hosts taking one job at once, one gets it.
    pub async fn start_job(
        &self,
        id: String,
        max_runs: u32,
        owner: String,
        lease_until: i64,
    ) -> Result<JobStart, StoreError> {
        self.write(move |conn| {
            let now = now_millis();
            let found: Option<(JobStatus, i64, String, bool)> = conn.query_opt(
                &format!(
                    "SELECT state, runs, pipeline, CASE WHEN {TAKEABLE} THEN 1 ELSE 0 END
                     FROM jobs WHERE id = ?2"
                ),
                params![now, id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )?;
            let Some((state, runs, pipeline, takeable)) = found else {
                return Err(StoreError::NotFound(format!("job \"{id}\"")));
            };
            if state.finished() {
                return Ok(JobStart::Finished);
            }
            if !takeable {
                return Ok(JobStart::Elsewhere);
            }
            if runs >= i64::from(max_runs) {
                let reason = format!(
                    "the request started {runs} times without completing (the host stopped \
                     while it ran each time); [async] max_runs is {max_runs}"
                );
                let changed = conn.execute(
                    &format!(
                        "UPDATE jobs SET state = 'dead', reason = ?3, done_at = ?1
                         WHERE id = ?2 AND {TAKEABLE}"
                    ),
                    params![now, id, reason],
                )?;
                if changed == 0 {
                    return Ok(JobStart::Elsewhere);
                }
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
            // The condition again, in the update itself: of two hosts that
            // both read the job as takeable, the second changes nothing.
            let changed = conn.execute(
                &format!(
                    "UPDATE jobs SET state = 'running', runs = runs + 1, owner = ?3,
                         lease_until = ?4
                     WHERE id = ?2 AND {TAKEABLE}"
                ),
                params![now, id, owner, lease_until],
            )?;
            Ok(if changed == 1 {
                JobStart::Run
            } else {
                JobStart::Elsewhere
            })
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
