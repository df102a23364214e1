//! Pruning by age: one batch of old records removed across tables, never
//! what is still waiting for someone (`[retention]`).

use super::sql::params;
use super::{Cutoffs, Store, StoreError};

impl Store {
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
}
