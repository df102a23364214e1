//! Callbacks due and their delivery attempts.

use super::sql::params;
use super::{Store, StoreError, now_millis};

/// A request's callback: where it goes, where it stands, every attempt.
#[derive(Debug, Clone)]
pub struct CallbackState {
    /// The receiver.
    pub url: String,
    /// `waiting` (for its asynchronous request), `pending`, `delivered` or
    /// `failed`.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// Each attempt, oldest first.
    pub deliveries: Vec<Delivery>,
}

/// One delivery attempt of a callback.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its number, from 1.
    pub attempt: i64,
    /// When it was made (Unix milliseconds).
    pub at: i64,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<i64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Whether it delivered.
    pub ok: bool,
}

impl Store {
    /// Up to `limit` callbacks due for delivery at `now`, the earliest
    /// first: `(request_id, url, attempts)`.
    pub async fn due_callbacks(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.read(move |conn| {
            let rows = conn.query_map(
                "SELECT request_id, url, attempts FROM callbacks
                 WHERE state = 'pending' AND next_at <= ?1 ORDER BY next_at LIMIT ?2",
                params![now, limit as i64],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?;
            Ok(rows)
        })
        .await
    }

    /// Take a due callback for one delivery attempt: its next attempt moves
    /// to `lease_until`, so no other host sharing the store (and no later
    /// look at what is due) starts it meanwhile, and a host that dies
    /// during the attempt leaves it due again once the lease ends. False if
    /// it was no longer due at `now` (another host took it, or it settled).
    pub async fn claim_callback(
        &self,
        request_id: String,
        now: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        self.write_with(false, move |conn| {
            let changed = conn.execute(
                "UPDATE callbacks SET next_at = ?3
                 WHERE request_id = ?1 AND state = 'pending' AND next_at <= ?2",
                params![request_id, now, lease_until],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    /// The earliest time after `after` a pending callback is due, if any.
    pub async fn next_callback_at(&self, after: i64) -> Result<Option<i64>, StoreError> {
        self.read(move |conn| {
            conn.query_row(
                "SELECT MIN(next_at) FROM callbacks WHERE state = 'pending' AND next_at > ?1",
                params![after],
                |row| row.get(0),
            )
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
    pub async fn callback(&self, request_id: String) -> Result<Option<CallbackState>, StoreError> {
        self.read(move |conn| {
            let found: Option<(String, String, i64)> = conn.query_opt(
                "SELECT url, state, attempts FROM callbacks WHERE request_id = ?1",
                params![request_id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?;
            let Some((url, state, attempts)) = found else {
                return Ok(None);
            };
            let deliveries = conn.query_map(
                "SELECT attempt, at, status, error, ok FROM deliveries
                 WHERE request_id = ?1 ORDER BY id",
                params![request_id],
                |row| {
                    Ok(Delivery {
                        attempt: row.get(0)?,
                        at: row.get(1)?,
                        status: row.get(2)?,
                        error: row.get(3)?,
                        ok: row.get(4)?,
                    })
                },
            )?;
            Ok(Some(CallbackState {
                url,
                state,
                attempts,
                deliveries,
            }))
        })
        .await
    }
}
