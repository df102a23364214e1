//! The feedback dataset (ratings, corrections, resolutions) and the
//! approved answers it leaves in the answer bank.

use tokio::sync::mpsc;

use super::sql::{Conn, params};
use super::{RequestRecord, Store, StoreError, now_millis, read_request};

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

pub(super) fn insert_feedback(
    conn: &mut Conn<'_>,
    event: &FeedbackEvent,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO feedback (at, kind, request_id, pipeline, key, input, answer, rating,
                               correction, actor)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
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
        ],
    )?;
    Ok(())
}

pub(super) fn upsert_approved(
    conn: &mut Conn<'_>,
    pipeline: &str,
    key: &str,
    answer: &str,
    source: &str,
    actor: &str,
    request_id: &str,
) -> Result<(), StoreError> {
    conn.execute("INSERT INTO answer_bank (pipeline, key, answer, source, approved_by, request_id, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (pipeline, key) DO UPDATE SET answer = excluded.answer,
             source = excluded.source, approved_by = excluded.approved_by,
             request_id = excluded.request_id, updated_at = excluded.updated_at", params![pipeline, key, answer, source, actor, request_id, now_millis()])?;
    Ok(())
}

impl Store {
    /// Every approved answer: `(pipeline, key, answer, source)`.
    pub async fn approved_answers(
        &self,
    ) -> Result<Vec<(String, String, String, String)>, StoreError> {
        self.read(|conn| {
            // The order entries were first approved in.
            let sql = if conn.is_postgres() {
                "SELECT pipeline, key, answer, source FROM answer_bank ORDER BY seq"
            } else {
                "SELECT pipeline, key, answer, source FROM answer_bank ORDER BY rowid"
            };
            let rows = conn.query_map(sql, params![], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?;
            Ok(rows)
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
    /// while the receiver is slow. The caller runs it as a task of its own.
    pub fn export_feedback(
        &self,
        lines: mpsc::Sender<String>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let store = self.clone();
        async move {
            let mut after = 0i64;
            loop {
                let page = store
                    .read(move |conn| {
                        conn.query_map(
                            "SELECT f.id, f.at, f.kind, f.request_id, f.pipeline, f.key, f.input,
                                    f.answer, f.rating, f.correction, f.actor, r.team
                             FROM feedback f LEFT JOIN requests r ON r.id = f.request_id
                             WHERE f.id > ?1 ORDER BY f.id LIMIT 500",
                            params![after],
                            |row| {
                                let id: i64 = row.get(0)?;
                                let line = serde_json::json!({
                                    "id": id,
                                    "at": row.get::<i64>(1)?,
                                    "kind": row.get::<String>(2)?,
                                    "request_id": row.get::<String>(3)?,
                                    "pipeline": row.get::<String>(4)?,
                                    "key": row.get::<Option<String>>(5)?,
                                    "input": row.get::<String>(6)?,
                                    "answer": row.get::<Option<String>>(7)?,
                                    "rating": row.get::<Option<String>>(8)?,
                                    "correction": row.get::<Option<String>>(9)?,
                                    "actor": row.get::<String>(10)?,
                                    "team": row.get::<Option<String>>(11)?,
                                });
                                Ok((id, line.to_string()))
                            },
                        )
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
        }
    }
}
