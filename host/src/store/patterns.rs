//! Answer-bank patterns: approved answers with their example questions,
//! ratings, and example vectors.

use std::collections::HashMap;

use serde::Serialize;

use super::sql::{Conn, params};
use super::{Store, StoreError, now_millis};

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
pub(super) fn pattern_for(
    conn: &mut Conn<'_>,
    pipeline: &str,
    answer: &str,
    label: Option<&str>,
    source: &str,
) -> Result<(i64, bool, bool), StoreError> {
    let found: Option<(i64, String)> = match label {
        Some(label) => conn.query_opt(
            "SELECT id, answer FROM patterns WHERE pipeline = ?1 AND label = ?2",
            params![pipeline, label],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?,
        None => conn.query_opt(
            "SELECT id, answer FROM patterns WHERE pipeline = ?1 AND answer = ?2
                 ORDER BY id LIMIT 1",
            params![pipeline, answer],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?,
    };
    let now = now_millis();
    match found {
        Some((id, known)) if known == answer => Ok((id, false, false)),
        Some((id, _)) => {
            conn.execute(
                "UPDATE patterns SET answer = ?2, source = ?3, strictness = 0, updated_at = ?4
                 WHERE id = ?1",
                params![id, answer, source, now],
            )?;
            Ok((id, false, true))
        }
        None => {
            let id = conn.query_row(
                "INSERT INTO patterns (pipeline, answer, label, source, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5) RETURNING id",
                params![pipeline, answer, label, source, now],
                |row| row.get(0),
            )?;
            Ok((id, true, false))
        }
    }
}

/// Add `question` as an example of pattern `id`; false if it was there.
pub(super) fn add_example(
    conn: &mut Conn<'_>,
    id: i64,
    question: &str,
    source: &str,
) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "INSERT INTO examples (pattern, question, source, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (pattern, question) DO NOTHING",
        params![id, question, source, now_millis()],
    )? > 0)
}

/// Little-endian f32s from a blob (a trailing partial value is ignored).
pub(super) fn floats(blob: &[u8]) -> Vec<f32> {
    blob.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A stored pattern, as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPattern {
    /// Its id in the store (unique across pipelines).
    pub id: i64,
    /// Its pipeline.
    pub pipeline: String,
    /// The approved answer.
    pub answer: String,
    /// The intent it answers, if known.
    pub label: Option<String>,
    /// `import`, `human` or `correction`.
    pub source: String,
    /// How much bad ratings raised its threshold (0 = none).
    pub strictness: f32,
    /// Its example questions.
    pub examples: Vec<String>,
}

impl Store {
    /// Where the answer bank's tables stand: changes whenever a pattern or
    /// an example is added or changed.
    pub async fn bank_version(&self) -> Result<BankVersion, StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT (SELECT COUNT(*) FROM examples), (SELECT COALESCE(MAX(id), 0) FROM examples),
                        (SELECT COUNT(*) FROM patterns),
                        (SELECT COALESCE(MAX(updated_at), 0) FROM patterns)",
                params![],
                |row| {
                    Ok(BankVersion([
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                    ]))
                },
            )
        })
        .await
    }

    /// Every pipeline's patterns with their examples, oldest first.
    pub async fn patterns(&self) -> Result<Vec<StoredPattern>, StoreError> {
        self.read(|conn| {
            let mut patterns: Vec<StoredPattern> = conn.query_map(
                "SELECT id, pipeline, answer, label, source, strictness FROM patterns
                     ORDER BY id",
                params![],
                |row| {
                    Ok(StoredPattern {
                        id: row.get(0)?,
                        pipeline: row.get(1)?,
                        answer: row.get(2)?,
                        label: row.get(3)?,
                        source: row.get(4)?,
                        strictness: row.get::<f64>(5)? as f32,
                        examples: Vec::new(),
                    })
                },
            )?;
            let index: HashMap<i64, usize> = patterns
                .iter()
                .enumerate()
                .map(|(at, p)| (p.id, at))
                .collect();
            conn.query_map(
                "SELECT pattern, question FROM examples ORDER BY id",
                params![],
                |row| {
                    let pattern: i64 = row.get(0)?;
                    if let Some(at) = index.get(&pattern) {
                        patterns[*at].examples.push(row.get(1)?);
                    }
                    Ok(())
                },
            )?;
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
                |row| Ok((row.get(0)?, row.get(1)?, row.get::<f64>(2)?)),
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
            let rows = conn.query_map(
                "SELECT e.pattern, e.question, v.vector
                 FROM example_vectors v
                 JOIN examples e ON e.id = v.example
                 JOIN patterns p ON p.id = e.pattern
                 WHERE p.pipeline = ?1 AND v.model = ?2",
                params![pipeline, model],
                |row| {
                    let blob: Vec<u8> = row.get(2)?;
                    Ok((row.get(0)?, row.get(1)?, floats(&blob)))
                },
            )?;
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
            for (pattern, question, vector) in &rows {
                let blob: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                conn.execute(
                    "INSERT INTO example_vectors (example, model, vector)
                     SELECT id, ?3, ?4 FROM examples WHERE pattern = ?1 AND question = ?2
                     ON CONFLICT (example, model) DO UPDATE SET vector = excluded.vector",
                    params![pattern, question, model, blob],
                )?;
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
}
