//! Request records: one per finished run.

use super::sql::{Conn, params};
use super::{
    Completion, Message, RequestStatus, Store, StoreError, Ticket, WriteOp, now_millis, read_ticket,
};

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
    /// The team whose token made the request, if a team's did.
    pub team: Option<String>,
    /// Where to POST the result when the request completes.
    pub callback: Option<String>,
    /// The answer-bank pattern whose answer it got, if any.
    pub pattern: Option<i64>,
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

/// A request's record and when it completed.
pub(super) fn read_request(
    conn: &mut Conn<'_>,
    id: &str,
) -> Result<Option<(RequestRecord, Option<i64>)>, StoreError> {
    conn.query_opt(
        "SELECT id, pipeline, generation, status, input, attributes, output,
                            confidence, stage, layer, code, message, trace, created_at,
                            completed_at, remember_key, cost_usd, pattern, team
                     FROM requests WHERE id = ?1",
        params![id],
        |row| {
            Ok((
                RequestRecord {
                    id: row.get(0)?,
                    pipeline: row.get(1)?,
                    generation: row.get::<i64>(2)? as u64,
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
                    team: row.get(18)?,
                    // Kept in the callbacks table, shown from there.
                    callback: None,
                },
                row.get::<Option<i64>>(14)?,
            ))
        },
    )
}

pub(super) fn insert_request(conn: &mut Conn<'_>, r: &RequestRecord) -> Result<(), StoreError> {
    let escalated = r.status == RequestStatus::Escalated;
    let completed_at = (!escalated).then(now_millis);
    if let Some(url) = &r.callback {
        // Delivered once the request is final: now, or when a reviewer
        // resolves its ticket.
        let state = if escalated { "waiting" } else { "pending" };
        conn.execute(
            "INSERT INTO callbacks (request_id, url, state, next_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (request_id) DO UPDATE SET state = excluded.state,
                 next_at = excluded.next_at
             WHERE callbacks.state = 'waiting'",
            params![r.id, url, state, now_millis()],
        )?;
    }
    conn.execute(
        "INSERT INTO requests (id, pipeline, generation, status, input, attributes, output,
                               confidence, stage, layer, code, message, trace, created_at,
                               completed_at, remember_key, cost_usd, pattern, team)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18, ?19)
         ON CONFLICT (id) DO NOTHING",
        params![
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
            r.pattern,
            r.team
        ],
    )?;
    Ok(())
}

impl Store {
    /// Whether committing `record` makes its callback due at once.
    pub(super) fn calls_back(record: &RequestRecord) -> bool {
        record.callback.is_some() && record.status != RequestStatus::Escalated
    }

    /// Queue a request record. Returns once queued, not once committed.
    pub async fn record(&self, record: RequestRecord) -> Result<(), StoreError> {
        let id = record.id.clone();
        let due = Self::calls_back(&record).then(|| self.callbacks_due.clone());
        // Without a callback the record is one statement (`insert_request`).
        let one_statement = record.callback.is_none();
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
                one_statement,
            })
            .await
            .map_err(|_| StoreError::Closed)
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

    /// A request's state, or `None` if no such request was recorded.
    pub async fn request(&self, id: String) -> Result<Option<RequestState>, StoreError> {
        self.read(move |conn| {
            let found = read_request(conn, &id)?;
            let Some((record, completed_at)) = found else {
                return Ok(None);
            };
            let ticket_id: Option<i64> = conn.query_opt(
                "SELECT id FROM tickets WHERE request_id = ?1 AND kind = 'escalation'",
                params![record.id],
                |row| row.get(0),
            )?;
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
}

#[cfg(test)]
mod tests {
    use super::{Completion, Message, RequestRecord, RequestStatus, Store, StoreError, WriteOp};

    fn answered(id: &str) -> RequestRecord {
        RequestRecord {
            id: id.to_owned(),
            pipeline: "support".to_owned(),
            generation: 1,
            status: RequestStatus::Answered,
            input: "hello".to_owned(),
            attributes: "{}".to_owned(),
            output: Some("hi".to_owned()),
            confidence: Some(1.0),
            stage: Some("faq".to_owned()),
            layer: Some("rules".to_owned()),
            code: None,
            message: None,
            trace: "[]".to_owned(),
            created_at: 1,
            remember_key: None,
            cost_usd: 0.0,
            team: None,
            callback: None,
            pattern: None,
        }
    }

    /// The log is copied into the database by the checkpoint thread,
    /// while it holds far fewer pages than the writer's own checkpoint
    /// waits for (and than SQLite's default, 1,000).
    #[tokio::test]
    async fn the_log_is_copied_into_the_database_off_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = dir.path().join(crate::store::DATABASE_FILE);
        let before = std::fs::metadata(&db).unwrap().len();
        // About 400 pages: one a record.
        let input = "x".repeat(4000);
        for i in 0..400 {
            let mut record = answered(&format!("r{i}"));
            record.input.clone_from(&input);
            store.record(record).await.unwrap();
        }
        store.record_durably(answered("last")).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let size = std::fs::metadata(&db).unwrap().len();
            if size >= before + 1_000_000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the database file is still {size} bytes (from {before})"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Records skip the savepoint on SQLite: one that fails must still
    /// leave the records queued around it, in the same batch, committed.
    #[tokio::test]
    async fn a_failed_record_without_a_savepoint_undoes_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (told, failure) = tokio::sync::oneshot::channel();
        let failing: WriteOp = Box::new(move |conn| {
            // The status column's CHECK refuses this.
            let result = conn
                .execute(
                    "INSERT INTO requests (id, pipeline, generation, status, input, attributes,
                                           trace, created_at)
                     VALUES ('bad', 'support', 1, 'bogus', '', '{}', '[]', 1)",
                    super::params![],
                )
                .map(|_| ());
            let failed = result.is_err();
            let completion: Completion = Box::new(move |commit: Result<(), StoreError>| {
                let _ = told.send(commit.and(result));
            });
            (failed, completion)
        });
        // Queued back to back, so the writer, lingering after the first
        // record, takes all three into one transaction.
        store.record(answered("before")).await.unwrap();
        store
            .jobs
            .send(Message::Job {
                job: failing,
                durable: false,
                one_statement: true,
            })
            .await
            .unwrap();
        store.record(answered("after")).await.unwrap();

        assert!(failure.await.unwrap().is_err(), "the bad row is refused");
        for id in ["before", "after"] {
            let kept = store.request(id.to_owned()).await.unwrap();
            assert!(kept.is_some(), "{id} is committed");
        }
        assert!(store.request("bad".to_owned()).await.unwrap().is_none());
    }
}
