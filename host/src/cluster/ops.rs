//! Operations across the cluster: what one host applied, numbered by
//! `seq` (`INCR`), kept as `op:{seq}` for a day and published on the
//! channel `ops`. Each operation also carries an id of its own, so one
//! published twice (a reply lost after Redis had run the command) or seen
//! both by pub/sub and by a poll is applied once; a poll applies every
//! operation it has not seen, in order, so a reload and then a rollback
//! reach a host that missed both as a reload and then a rollback.

use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

use super::{Cluster, Follower, Progress};
use crate::ops::Report;

/// How long an operation stays readable for hosts that missed it.
const OP_TTL_SECONDS: u64 = 24 * 3600;

/// The most operations a poll applies after a gap (the newest ones).
const MAX_CATCH_UP: u64 = 64;

/// The ids of operations remembered as seen.
const SEEN: usize = 1024;

/// What the other hosts are asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpAction {
    /// Read the manifest again and serve it if it loads.
    Reload,
    /// Serve the previous generation again, if it is the one the origin
    /// returned to (`manifest_sha256`).
    Rollback,
}

/// An operation one host applied, for the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    /// Its number in the cluster, increasing (0 until published).
    pub seq: u64,
    /// Its own id: the same operation published twice has one id.
    pub id: String,
    /// The host that applied it first.
    pub origin: String,
    /// The process behind that host's name.
    pub instance: String,
    /// What the others should do.
    pub action: OpAction,
    /// What the origin serves after it.
    pub manifest_sha256: Option<String>,
    /// When the origin applied it (Unix milliseconds).
    pub at: i64,
}

impl Cluster {
    /// The operation the other hosts should follow after `report`.
    pub(super) fn draft(&self, report: &Report) -> Op {
        Op {
            seq: 0,
            id: uuid::Uuid::new_v4().to_string(),
            origin: self.host.clone(),
            instance: self.instance.clone(),
            action: if report.action == "rollback" {
                OpAction::Rollback
            } else {
                OpAction::Reload
            },
            manifest_sha256: report.manifest_sha256.clone(),
            at: report.at,
        }
    }

    /// Number `op` and tell the other hosts.
    pub(super) async fn publish(
        &self,
        host: &Follower,
        redis: &mut MultiplexedConnection,
        op: &mut Op,
        progress: &mut Progress,
    ) -> redis::RedisResult<()> {
        op.seq = redis.incr(self.key("seq"), 1).await?;
        progress.first_sighting(&op.id);
        let text = serde_json::to_string(&op).expect("an operation serialises");
        redis::pipe()
            .set_ex(self.key(&format!("op:{}", op.seq)), &text, OP_TTL_SECONDS)
            .ignore()
            .publish(self.key("ops"), &text)
            .ignore()
            .exec_async(redis)
            .await?;
        // `applied` moves only through numbers in order: another host's
        // operation numbered before this one is still fetched by a poll.
        host.metrics.cluster_messages("operation", "published", 1);
        tracing::info!(seq = op.seq, action = ?op.action, "published an operation to the cluster");
        Ok(())
    }

    /// Apply, in order, every operation numbered since the last one seen.
    pub(super) async fn catch_up(
        &self,
        host: &Follower,
        redis: &mut MultiplexedConnection,
        progress: &mut Progress,
    ) -> redis::RedisResult<()> {
        let seq: u64 = redis
            .get::<_, Option<u64>>(self.key("seq"))
            .await?
            .unwrap_or(0);
        let first_contact = progress.applied.is_none();
        let mut applied = progress.applied.unwrap_or(0);
        if seq < applied {
            // Restored from a snapshot, a lagging replica, or flushed: read
            // the numbering again from its start; ids keep what was seen
            // from being applied twice.
            tracing::warn!(
                seq,
                applied,
                "the cluster's numbering went back; following it again"
            );
            applied = 0;
            progress.applied = Some(0);
        }
        if seq == applied && !first_contact {
            return Ok(());
        }
        let from = (applied + 1)
            .max(seq.saturating_sub(MAX_CATCH_UP - 1))
            .max(1);
        if from > seq {
            progress.applied = Some(seq);
            return Ok(());
        }
        let keys: Vec<String> = (from..=seq).map(|n| self.key(&format!("op:{n}"))).collect();
        let texts: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(redis).await?;
        for (number, text) in (from..=seq).zip(texts) {
            let op = text.and_then(|text| serde_json::from_str::<Op>(&text).ok());
            match op {
                // This host read its files after that operation.
                Some(op) if first_contact && op.at <= self.started_at => {
                    progress.first_sighting(&op.id);
                }
                Some(op) => self.consider(host, op, progress),
                // Numbered and not written yet (its publisher is between
                // the two commands): wait for it, one poll. Still missing
                // at the next (its publisher died, or it expired): go on.
                None if progress.missing != Some(number) => {
                    progress.missing = Some(number);
                    progress.applied = Some(number - 1);
                    return Ok(());
                }
                None => progress.missing = None,
            }
            progress.applied = Some(number);
        }
        Ok(())
    }

    /// A published operation, as its message arrives: the ones numbered
    /// before it that this host has not seen are applied first, in order.
    pub(super) async fn receive(
        &self,
        host: &Follower,
        redis: &mut MultiplexedConnection,
        op: Op,
        progress: &mut Progress,
    ) -> redis::RedisResult<()> {
        let next = progress.applied.unwrap_or(0) + 1;
        if op.seq > next {
            self.catch_up(host, redis, progress).await?;
        } else if op.seq == next {
            progress.applied = Some(op.seq);
        }
        self.consider(host, op, progress);
        Ok(())
    }

    /// Apply `op` unless this host has seen it or made it.
    pub(super) fn consider(&self, host: &Follower, op: Op, progress: &mut Progress) {
        if !progress.first_sighting(&op.id) || op.instance == self.instance {
            return;
        }
        tracing::info!(
            seq = op.seq,
            origin = %op.origin,
            action = ?op.action,
            "applying an operation of the cluster"
        );
        host.metrics.cluster_messages("operation", "received", 1);
        // Nobody applying means the host is stopping.
        let _ = host.apply.send(op);
    }
}

impl Progress {
    /// Remember `id` as seen; whether it was new.
    fn first_sighting(&mut self, id: &str) -> bool {
        if self.seen.iter().any(|seen| seen == id) {
            return false;
        }
        if self.seen.len() >= SEEN {
            self.seen.pop_front();
        }
        self.seen.push_back(id.to_owned());
        true
    }
}
