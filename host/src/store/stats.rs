//! What the operations dashboard shows of a pipeline's traffic, from the
//! request records: answers by layer per bucket of time, completion rate,
//! time to value, and cost.

use serde::Serialize;

use super::sql::params;
use super::{Store, StoreError};

/// A pipeline's traffic over a window of time.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficStats {
    /// Start of the window, milliseconds since the Unix epoch.
    pub since: i64,
    /// Width of a bucket, in milliseconds.
    pub bucket_millis: i64,
    /// One entry per bucket with any request, oldest first.
    pub buckets: Vec<Bucket>,
    /// Requests recorded in the window.
    pub requests: u64,
    /// Of those, answered (by any layer, a person included).
    pub answered: u64,
    /// Still waiting for a person.
    pub escalated: u64,
    /// Rejected or failed.
    pub refused: u64,
    /// Answered / requests; `None` without requests.
    pub completion_rate: Option<f64>,
    /// Time from arrival to answer of answered requests, in milliseconds.
    pub time_to_value_p50_ms: Option<f64>,
    /// The same, 99th percentile.
    pub time_to_value_p99_ms: Option<f64>,
    /// Model spend in the window.
    pub cost_usd: f64,
    /// Spend per answered request.
    pub cost_per_answered_usd: Option<f64>,
}

/// Requests of one bucket of time.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Start of the bucket, milliseconds since the Unix epoch.
    pub start: i64,
    /// Answered requests by the layer that answered (`human` for a person).
    pub answered: std::collections::BTreeMap<String, u64>,
    /// Escalated, not yet answered.
    pub escalated: u64,
    /// Rejected or failed.
    pub refused: u64,
    /// Model spend.
    pub cost_usd: f64,
}

impl Store {
    /// `pipeline`'s requests created since `since`, in buckets of
    /// `bucket_millis`.
    pub async fn traffic(
        &self,
        pipeline: String,
        since: i64,
        bucket_millis: i64,
    ) -> Result<TrafficStats, StoreError> {
        let bucket_millis = bucket_millis.max(1);
        self.read(move |conn| {
            let rows = conn.query_map(
                "SELECT created_at, completed_at, status, layer, cost_usd FROM requests
                 WHERE pipeline = ?1 AND created_at >= ?2 ORDER BY created_at",
                params![pipeline, since],
                |row| {
                    Ok((
                        row.get::<i64>(0)?,
                        row.get::<Option<i64>>(1)?,
                        row.get::<String>(2)?,
                        row.get::<Option<String>>(3)?,
                        row.get::<f64>(4)?,
                    ))
                },
            )?;
            let mut stats = TrafficStats {
                since,
                bucket_millis,
                buckets: Vec::new(),
                requests: 0,
                answered: 0,
                escalated: 0,
                refused: 0,
                completion_rate: None,
                time_to_value_p50_ms: None,
                time_to_value_p99_ms: None,
                cost_usd: 0.0,
                cost_per_answered_usd: None,
            };
            let mut waits = Vec::new();
            for row in rows {
                let (created, completed, status, layer, cost) = row;
                let start = since + (created - since) / bucket_millis * bucket_millis;
                if stats.buckets.last().is_none_or(|b| b.start != start) {
                    stats.buckets.push(Bucket {
                        start,
                        answered: Default::default(),
                        escalated: 0,
                        refused: 0,
                        cost_usd: 0.0,
                    });
                }
                let bucket = stats.buckets.last_mut().expect("pushed above");
                stats.requests += 1;
                stats.cost_usd += cost;
                bucket.cost_usd += cost;
                match status.as_str() {
                    "answered" => {
                        stats.answered += 1;
                        *bucket
                            .answered
                            .entry(layer.unwrap_or_else(|| "unknown".to_owned()))
                            .or_default() += 1;
                        if let Some(completed) = completed {
                            waits.push((completed - created).max(0) as f64);
                        }
                    }
                    "escalated" => {
                        stats.escalated += 1;
                        bucket.escalated += 1;
                    }
                    _ => {
                        stats.refused += 1;
                        bucket.refused += 1;
                    }
                }
            }
            if stats.requests > 0 {
                stats.completion_rate = Some(stats.answered as f64 / stats.requests as f64);
            }
            if stats.answered > 0 {
                stats.cost_per_answered_usd = Some(stats.cost_usd / stats.answered as f64);
            }
            waits.sort_by(f64::total_cmp);
            stats.time_to_value_p50_ms = quantile(&waits, 0.5);
            stats.time_to_value_p99_ms = quantile(&waits, 0.99);
            Ok(stats)
        })
        .await
    }
}

impl Store {
    /// `team`'s model spend since `day` and since `month` (Unix
    /// milliseconds), and its requests and answers since `month`.
    pub async fn team_spend(
        &self,
        team: String,
        day: i64,
        month: i64,
    ) -> Result<(f64, f64, u64, u64), StoreError> {
        self.read(move |conn| {
            conn.query_row(
                "SELECT COALESCE(SUM(CASE WHEN created_at >= ?2 THEN cost_usd END), 0),
                        COALESCE(SUM(cost_usd), 0), COUNT(*),
                        CAST(COALESCE(SUM(CASE WHEN status = 'answered' THEN 1 ELSE 0 END), 0) AS BIGINT)
                 FROM requests WHERE team = ?1 AND created_at >= ?3",
                params![team, day, month],
                |row| {
                    Ok((
                        row.get::<f64>(0)?,
                        row.get::<f64>(1)?,
                        row.get::<i64>(2)? as u64,
                        row.get::<i64>(3)? as u64,
                    ))
                },
            )
        })
        .await
    }
}

/// The `q` quantile of sorted `values` (nearest rank).
pub(crate) fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), Some(50.0));
        assert_eq!(quantile(&values, 0.99), Some(99.0));
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
