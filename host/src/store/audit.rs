//! The audit log of operations, and shadow comparisons.

use serde::{Deserialize, Serialize};

use super::sql::params;
use super::{Completion, Json, Message, Store, StoreError, WriteOp, now_millis};
use crate::request::Outcome;

/// How a stage differs between two generations.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// New in the later generation.
    Added,
    /// Gone from it.
    Removed,
    /// In both, different.
    Changed,
}

/// What changed for one stage between two generations.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageChange {
    /// The pipeline.
    pub pipeline: String,
    /// The stage.
    pub stage: String,
    /// Added, removed or changed.
    pub change: ChangeKind,
    /// The live digest before.
    pub old_digest: Option<String>,
    /// The live digest after.
    pub new_digest: Option<String>,
    /// The candidate digest before.
    pub old_candidate: Option<String>,
    /// The candidate digest after.
    pub new_candidate: Option<String>,
    /// Grants the stage gained.
    pub grants_added: Vec<String>,
    /// Grants the stage lost.
    pub grants_removed: Vec<String>,
    /// Imports the stage's component gained.
    pub imports_added: Vec<String>,
    /// Imports the stage's component lost.
    pub imports_removed: Vec<String>,
    /// Whether its config, limits, layer or `on_error` changed.
    pub settings_changed: bool,
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
    pub changes: Vec<StageChange>,
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
    pub live: ShadowOutcome,
    /// The candidate's outcome.
    pub candidate: ShadowOutcome,
}

/// What one version of a stage decided, as a shadow comparison keeps it:
/// its outcome, or `{"kind": "failed", "failure": "timeout"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShadowOutcome {
    /// It decided.
    Decided(Outcome),
    /// It failed.
    Failed {
        /// Always `failed`, the tag beside the outcomes' own.
        kind: FailedTag,
        /// How (see `StageFailure::kind`).
        failure: String,
    },
}

/// The `kind` of a failed shadow outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailedTag {
    /// `failed`.
    Failed,
}

/// Shadow comparisons of one pipeline, per stage and candidate.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowSummary {
    /// The pipeline.
    pub pipeline: String,
    /// One group per stage, candidate and live version compared.
    pub stages: Vec<ShadowGroup>,
}

/// The comparisons of one candidate against one live version.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowGroup {
    /// The stage.
    pub stage: String,
    /// The live version.
    pub live_digest: String,
    /// The candidate.
    pub candidate_digest: String,
    /// Comparisons made.
    pub runs: i64,
    /// Comparisons whose outcomes differed.
    pub differing: i64,
    /// The newest differing ones.
    pub differences: Vec<ShadowDifference>,
}

/// One request on which the candidate decided otherwise.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowDifference {
    /// The request.
    pub request_id: String,
    /// What the live version decided.
    pub live: ShadowOutcome,
    /// What the candidate decided.
    pub candidate: ShadowOutcome,
    /// When (Unix milliseconds).
    pub at: i64,
}

impl Store {
    /// Append an entry to the audit log; returns once it is durable.
    pub async fn audit(&self, entry: AuditEntry) -> Result<i64, StoreError> {
        self.write(move |conn| {
            conn.query_row(
                "INSERT INTO audit (at, action, trigger, actor, result, from_generation,
                                    to_generation, manifest_sha256, changes, note)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) RETURNING id",
                params![
                    entry.at,
                    entry.action,
                    entry.trigger,
                    entry.actor,
                    entry.result,
                    entry.from_generation.map(|g| g as i64),
                    entry.to_generation.map(|g| g as i64),
                    entry.manifest_sha256,
                    Json(&entry.changes),
                    entry.note,
                ],
                |row| row.get(0),
            )
        })
        .await
    }

    /// The newest audit entries, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |conn| {
            let rows = conn.query_map(
                "SELECT id, at, action, trigger, actor, result, from_generation, to_generation,
                        manifest_sha256, changes, note
                 FROM audit ORDER BY id DESC LIMIT ?1",
                params![limit],
                |row| {
                    Ok(AuditEntry {
                        id: row.get(0)?,
                        at: row.get(1)?,
                        action: row.get(2)?,
                        trigger: row.get(3)?,
                        actor: row.get(4)?,
                        result: row.get(5)?,
                        from_generation: row.get::<Option<i64>>(6)?.map(|g| g as u64),
                        to_generation: row.get::<Option<i64>>(7)?.map(|g| g as u64),
                        manifest_sha256: row.get(8)?,
                        changes: row.get::<Json<_>>(9)?.0,
                        note: row.get(10)?,
                    })
                },
            )?;
            Ok(rows)
        })
        .await
    }

    /// Queue a shadow comparison without waiting. Comparisons are
    /// observations, not promises: when the queue is full one is dropped
    /// (and logged) rather than slowing live traffic.
    pub fn record_shadow(&self, run: ShadowRecord) {
        let job: WriteOp = Box::new(move |conn| {
            let result = conn
                .execute(
                    "INSERT INTO shadow_runs (at, request_id, pipeline, stage, live_digest,
                                              candidate_digest, same, live, candidate)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        now_millis(),
                        run.request_id,
                        run.pipeline,
                        run.stage,
                        run.live_digest,
                        run.candidate_digest,
                        run.same,
                        Json(&run.live),
                        Json(&run.candidate),
                    ],
                )
                .map(|_| ());
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
                one_statement: true,
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
    ) -> Result<ShadowSummary, StoreError> {
        self.read(move |conn| {
            let groups = conn.query_map(
                "SELECT stage, candidate_digest, live_digest, COUNT(*),
                        CAST(SUM(1 - same) AS BIGINT)
                 FROM shadow_runs WHERE pipeline = ?1
                 GROUP BY stage, candidate_digest, live_digest ORDER BY stage",
                params![pipeline],
                |row| {
                    Ok((
                        row.get::<String>(0)?,
                        row.get::<String>(1)?,
                        row.get::<String>(2)?,
                        row.get::<i64>(3)?,
                        row.get::<i64>(4)?,
                    ))
                },
            )?;
            let mut out = Vec::new();
            for (stage, candidate, live, runs, differing) in groups {
                let differences = conn.query_map(
                    "SELECT request_id, live, candidate, at FROM shadow_runs
                     WHERE pipeline = ?1 AND stage = ?2 AND candidate_digest = ?3 AND same = 0
                     ORDER BY id DESC LIMIT ?4",
                    params![pipeline, stage, candidate, examples],
                    |row| {
                        Ok(ShadowDifference {
                            request_id: row.get(0)?,
                            live: row.get::<Json<_>>(1)?.0,
                            candidate: row.get::<Json<_>>(2)?.0,
                            at: row.get(3)?,
                        })
                    },
                )?;
                out.push(ShadowGroup {
                    stage,
                    live_digest: live,
                    candidate_digest: candidate,
                    runs,
                    differing,
                    differences,
                });
            }
            Ok(ShadowSummary {
                pipeline,
                stages: out,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{FailedTag, ShadowOutcome};
    use crate::request::Outcome;

    #[test]
    fn a_shadow_outcome_is_kept_as_tagged_json_and_reads_back() {
        let cases = [
            (
                ShadowOutcome::Decided(Outcome::Respond {
                    output: "hi".to_owned(),
                    confidence: 0.5,
                }),
                json!({"kind": "respond", "output": "hi", "confidence": 0.5}),
            ),
            (
                ShadowOutcome::Decided(Outcome::Escalate {
                    reason: "unsure".to_owned(),
                    draft: None,
                }),
                json!({"kind": "escalate", "reason": "unsure", "draft": null}),
            ),
            (
                ShadowOutcome::Failed {
                    kind: FailedTag::Failed,
                    failure: "timeout".to_owned(),
                },
                json!({"kind": "failed", "failure": "timeout"}),
            ),
        ];
        for (outcome, kept) in cases {
            assert_eq!(serde_json::to_value(&outcome).unwrap(), kept);
            assert_eq!(
                serde_json::from_value::<ShadowOutcome>(kept).unwrap(),
                outcome
            );
        }
        assert!(serde_json::from_value::<ShadowOutcome>(json!({"kind": "shrug"})).is_err());
    }
}
