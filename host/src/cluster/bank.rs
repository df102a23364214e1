//! Answer banks shared by the hosts of a cluster: every change a host makes
//! to a bank (an answer stored, approved or dropped) is published on the
//! channel `bank`, in batches, and applied by the others to their own
//! banks, so a lookup stays in memory and a reviewer's answer on one host
//! is served by every host at once. Approved answers are also kept in the
//! hash `approved` (one field per pipeline and key), which a host reads
//! whenever it joins, so one that started or reconnected later has them
//! too; unapproved answers are a cache, and a host that joins later starts
//! without the others'.

use redis::aio::MultiplexedConnection;
use serde::Deserialize;

use super::{Cluster, Follower, Progress};
use crate::bank::{BankChange, Change};

/// The most changes published in one message.
const BATCH: usize = 256;

/// The most approvals kept while Redis is unreachable, for publishing when
/// it is back.
const MAX_PENDING_APPROVALS: usize = 10_000;

/// A batch of one host's bank changes, as read back (the message also
/// names its `origin` host, for whoever watches the channel).
#[derive(Deserialize)]
pub(super) struct BankMessage {
    /// The process that sent it (two may share a host name).
    instance: String,
    changes: Vec<BankChange>,
}

impl Cluster {
    /// Publish `first` and whatever else is queued (up to a batch); if
    /// Redis fails, hold the batch's approvals for when it is back.
    pub(super) async fn publish_bank(
        &self,
        redis: &mut MultiplexedConnection,
        first: BankChange,
        host: &mut Follower,
        progress: &mut Progress,
    ) -> redis::RedisResult<()> {
        let mut changes = vec![first];
        while changes.len() < BATCH {
            match host.bank_changes.try_recv() {
                Ok(change) => changes.push(change),
                Err(_) => break,
            }
        }
        let count = changes.len() as u64;
        let result = self.send_bank(redis, &changes).await;
        match result {
            Ok(()) => host
                .metrics
                .cluster_messages("bank_change", "published", count),
            Err(_) => changes.into_iter().for_each(|change| progress.hold(change)),
        }
        result
    }

    /// Publish `changes`, keeping the approvals in `approved`.
    pub(super) async fn send_bank(
        &self,
        redis: &mut MultiplexedConnection,
        changes: &[BankChange],
    ) -> redis::RedisResult<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for change in changes {
            if let Change::Approve { .. } = change.change {
                let text = serde_json::to_string(change).expect("a change serialises");
                pipe.hset(self.key("approved"), approved_field(change), text)
                    .ignore();
            }
        }
        // A `BankMessage`, written from borrowed parts.
        let message = serde_json::json!({
            "origin": self.host,
            "instance": self.instance,
            "changes": changes,
        });
        let text = message.to_string();
        pipe.publish(self.key("bank"), text)
            .ignore()
            .exec_async(redis)
            .await
    }

    /// Apply another host's published changes; this host's own are skipped.
    pub(super) fn receive_bank(&self, payload: &[u8], host: &Follower) {
        match serde_json::from_slice::<BankMessage>(payload) {
            Ok(message) if message.instance != self.instance => {
                let count = message.changes.len() as u64;
                host.metrics
                    .cluster_messages("bank_change", "received", count);
                for change in message.changes {
                    (host.apply_bank)(change);
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "ignoring a malformed answer-bank message"),
        }
    }

    /// On joining: this host's changes made while Redis was unreachable
    /// first (so they win over older ones kept there), then every approved
    /// answer the cluster keeps.
    pub(super) async fn join_banks(
        &self,
        redis: &mut MultiplexedConnection,
        host: &Follower,
        progress: &mut Progress,
    ) -> redis::RedisResult<()> {
        let pending = std::mem::take(&mut progress.pending_approvals);
        for (sent, batch) in pending.chunks(BATCH).enumerate() {
            if let Err(error) = self.send_bank(redis, batch).await {
                progress.pending_approvals = pending[sent * BATCH..].to_vec();
                return Err(error);
            }
        }
        self.load_approved(redis, host).await
    }

    /// Every approved answer the cluster keeps, into this host's banks (of
    /// the pipelines it serves: again after a generation adds one).
    pub(super) async fn load_approved(
        &self,
        redis: &mut MultiplexedConnection,
        host: &Follower,
    ) -> redis::RedisResult<()> {
        let approved: std::collections::HashMap<String, String> =
            redis::AsyncCommands::hgetall(redis, self.key("approved")).await?;
        for text in approved.values() {
            if let Ok(change) = serde_json::from_str::<BankChange>(text) {
                (host.apply_bank)(change);
            }
        }
        Ok(())
    }
}

impl Progress {
    /// Keep an approval, or a bad rating's drop, made while Redis is
    /// unreachable; stored answers are a cache's and are not worth keeping.
    pub(super) fn hold(&mut self, change: BankChange) {
        if matches!(change.change, Change::Put { .. }) {
            return;
        }
        if self.pending_approvals.len() >= MAX_PENDING_APPROVALS {
            tracing::warn!(
                "more than {MAX_PENDING_APPROVALS} approvals and drops while the cluster was \
                 unreachable; the oldest are not published"
            );
            self.pending_approvals.remove(0);
        }
        self.pending_approvals.push(change);
    }
}

/// The field of `approved` an approval is kept under.
fn approved_field(change: &BankChange) -> String {
    format!("{}\u{1f}{}", change.pipeline, change.key)
}
