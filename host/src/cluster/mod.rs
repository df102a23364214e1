//! Hosts that serve as one (`[shared] redis`).
//!
//! Redis carries signals, never code. An operation that changed what one
//! host serves (a reload, from the admin API, a signal or the file watch; a
//! rollback; a promotion or an automatic rollback, which edit the manifest
//! and reload) is published as an [`Op`]; every other host of the cluster
//! applies the same action to its own files: a reload reads its own
//! manifest, a rollback returns to its own previous generation. Hosts that
//! read the same files (one volume, or one deploy) therefore serve the same
//! generation, and `GET /admin/cluster` shows any host that does not: a
//! host whose build fails keeps serving its last good generation and says
//! why in its status.
//!
//! Keys, under `strata:{cluster}:`: `epoch` (set once: a new value means
//! Redis lost its data and numbering restarted), `seq` (the number of the
//! last operation, `INCR`), `op:{seq}` (each operation, JSON, kept a day), the
//! channel `ops` (each operation as it is published) and `hosts` (a hash:
//! each host's status, JSON, refreshed every second, removed when the host
//! stops). A host that missed messages (a dropped connection, a restarted
//! Redis) finds the operations on its next poll of `seq`, within a second,
//! and applies them in order (`ops.rs`).
//! While Redis is unreachable every host keeps serving and operating on its
//! own, retrying with back-off; its operations of that time (the last 64)
//! are published, in order, when Redis is back.
//!
//! Error budgets are shared the same way: every second each host writes
//! its own counts of every series' windows to `slo:{series}` (a hash, one
//! field per host) and adds the other hosts' recent ones to its windows, so
//! burn rates and a canary's automatic rollback see the whole cluster's
//! traffic, at most a couple of seconds late.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::manifest::SharedSettings;
use crate::metrics::Metrics;
use crate::ops::{Operations, Report};

mod bank;
mod budgets;
mod ops;

pub use self::ops::{Op, OpAction};

/// How often a host refreshes its status and polls for a missed operation.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A host whose status is older than this is shown as stale.
const STALE_MS: i64 = 10_000;

/// The longest wait for Redis to accept a connection or answer a command.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Reconnection back-off: from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// The last operation a host ran, in its status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastOperation {
    /// `reload`, `rollback`, `promote`, ...
    pub action: String,
    /// `admin`, `cluster`, `watch`, ...
    pub trigger: String,
    /// Who asked (for `cluster`, the host it came from).
    pub actor: String,
    /// `applied`, `unchanged` or `failed`.
    pub result: String,
    /// Why it failed.
    pub error: Option<String>,
    /// When it finished (Unix milliseconds).
    pub at: i64,
}

impl From<&Report> for LastOperation {
    fn from(report: &Report) -> Self {
        LastOperation {
            action: report.action.to_owned(),
            trigger: report.trigger.to_owned(),
            actor: report.actor.clone(),
            result: report.result.to_owned(),
            error: report.error.clone(),
            at: report.at,
        }
    }
}

/// One host's status, as kept in the `hosts` hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host's name in the cluster.
    pub host: String,
    /// The process behind the name (a new one at every start).
    #[serde(default)]
    pub instance: String,
    /// Where its API listens.
    pub api: String,
    /// Where its admin API listens.
    pub admin: String,
    /// The generation it serves.
    pub generation: u64,
    /// The digest of the manifest that generation was built from.
    pub manifest_sha256: String,
    /// The last cluster operation it has seen.
    pub applied_seq: u64,
    /// The last operation it ran, from whatever trigger.
    pub last_operation: Option<LastOperation>,
    /// When it started (Unix milliseconds).
    pub started_at: i64,
    /// When it last wrote this status (Unix milliseconds).
    pub heartbeat_at: i64,
}

/// Whether this host reaches Redis, and the last reason it did not.
#[derive(Debug, Clone, Default)]
struct Link {
    connected: bool,
    error: Option<String>,
}

/// What one host's coordination task remembers across connections.
#[derive(Default)]
struct Progress {
    /// The highest operation number seen (applied, or this host's own);
    /// `None` until the first contact.
    applied: Option<u64>,
    /// An operation number found missing (numbered, not written) at the
    /// last poll: skipped if it is still missing at the next.
    missing: Option<u64>,
    /// The ids of the operations seen lately, so none is applied twice.
    seen: std::collections::VecDeque<String>,
    /// This host's operations while Redis was unreachable, in order.
    pending: Vec<Op>,
    /// Whether another process was found using this host's name.
    warned_twin: bool,
    /// This host's last operation, whatever its result.
    last: Option<LastOperation>,
    /// This host's approvals while Redis was unreachable.
    pending_approvals: Vec<crate::bank::BankChange>,
    /// The identity of the Redis data last seen (`epoch`): when it changes,
    /// the data was lost (a restart without persistence) and numbering
    /// starts again.
    epoch: Option<String>,
}

/// What a host serves, as the cluster needs to know it.
pub struct Serving {
    /// The generation.
    pub generation: u64,
    /// The digest of the manifest it was built from.
    pub manifest_sha256: String,
    /// The teams it names, whose limits are shared.
    pub teams: Vec<String>,
}

/// What following the cluster needs from the host it runs in.
pub struct Follower {
    /// The reports of this host's operations (`Operations::subscribe`).
    pub reports: broadcast::Receiver<Report>,
    /// The generation this host serves and its manifest's digest.
    pub serving: Box<dyn Fn() -> Serving + Send + Sync>,
    /// Where `shared_connected` is kept.
    pub metrics: Arc<Metrics>,
    /// Where the other hosts' operations go, for this host to apply.
    pub apply: tokio::sync::mpsc::UnboundedSender<Op>,
    /// The error budgets, whose counts are shared.
    pub ops: Arc<Operations>,
    /// The teams, whose requests and spend are shared.
    pub teams: Arc<crate::teams::Teams>,
    /// This host's answer-bank changes, for the others (`Banks::share`).
    pub bank_changes: tokio::sync::mpsc::UnboundedReceiver<crate::bank::BankChange>,
    /// Apply another host's answer-bank change here.
    pub apply_bank: Box<dyn Fn(crate::bank::BankChange) + Send + Sync>,
}

/// This host's membership of a cluster.
pub struct Cluster {
    name: String,
    host: String,
    /// This process, as opposed to its name: two processes given one name
    /// still tell their own messages from each other's.
    instance: String,
    redis: String,
    client: redis::Client,
    api: String,
    admin: String,
    started_at: i64,
    link: Mutex<Link>,
}

impl Cluster {
    /// Membership as `shared` says, for a host serving on `api` and
    /// `admin`; `None` without `[shared] redis`. Nothing is contacted yet.
    pub fn new(
        shared: &SharedSettings,
        api: std::net::SocketAddr,
        admin: std::net::SocketAddr,
    ) -> anyhow::Result<Option<Arc<Cluster>>> {
        let Some(url) = &shared.redis else {
            return Ok(None);
        };
        let client = redis::Client::open(url.as_str())
            .map_err(|error| anyhow::anyhow!("[shared] redis: {error}"))?;
        let host = match &shared.host {
            Some(host) => host.clone(),
            None => format!("{}:{}", machine_name(), api.port()),
        };
        Ok(Some(Arc::new(Cluster {
            name: shared.cluster_name().to_owned(),
            host,
            instance: uuid::Uuid::new_v4().to_string(),
            redis: redacted(url),
            client,
            api: api.to_string(),
            admin: admin.to_string(),
            started_at: crate::store::now_millis(),
            link: Mutex::new(Link::default()),
        })))
    }

    fn key(&self, suffix: &str) -> String {
        format!("strata:{}:{suffix}", self.name)
    }

    /// Leave the cluster: remove this host's status (the host is stopping).
    pub async fn leave(&self) {
        let removed = async {
            let mut redis = self.connect().await?;
            redis
                .hdel::<_, _, ()>(self.key("hosts"), &self.host)
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(error) = removed.await {
            tracing::warn!(%error, "cannot remove this host's status from the cluster");
        }
    }

    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|error| format!("cannot reach Redis at {}: {error}", self.redis))
    }

    /// Follow the cluster, reconnecting with back-off: publish this host's
    /// operations, send the others' to `host.apply`. Runs until dropped.
    pub async fn follow(&self, mut host: Follower) {
        let mut progress = Progress::default();
        let mut backoff = BACKOFF.0;
        loop {
            let (joined, error) = self.session(&mut host, &mut progress).await;
            self.set_link(&host, Err(error));
            // Alone now: only this host's own counts.
            for (_, series) in host.ops.budgets.all() {
                lock(&series).set_remote(Vec::new());
            }
            host.teams.clear_others();
            if joined {
                backoff = BACKOFF.0;
            }
            let pause = tokio::time::sleep(backoff);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    report = host.reports.recv() => match report {
                        Ok(report) => {
                            let draft = publishable(&report).then(|| self.draft(&report));
                            progress.note(&report, draft);
                        }
                        Err(error) => lagged(&error),
                    },
                    Some(change) = host.bank_changes.recv() => progress.hold(change),
                }
            }
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// Connect, subscribe to the channels and learn the data's epoch.
    async fn open(
        &self,
        progress: &mut Progress,
    ) -> Result<(MultiplexedConnection, redis::aio::PubSub), String> {
        let mut redis = self.connect().await?;
        let lost = |error: redis::RedisError| format!("lost Redis at {}: {error}", self.redis);
        let subscribed = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub
                .subscribe(&[self.key("ops"), self.key("bank")])
                .await?;
            redis::RedisResult::Ok(pubsub)
        };
        let pubsub = tokio::time::timeout(REDIS_TIMEOUT, subscribed)
            .await
            .map_err(|_| format!("cannot subscribe at {}: timed out", self.redis))?
            .map_err(lost)?;
        let fresh = uuid::Uuid::new_v4().to_string();
        let (epoch,): (String,) = redis::pipe()
            .set_nx(self.key("epoch"), &fresh)
            .ignore()
            .get(self.key("epoch"))
            .query_async(&mut redis)
            .await
            .map_err(lost)?;
        if progress.epoch.as_ref().is_some_and(|known| *known != epoch) {
            tracing::warn!("Redis lost the cluster's data (a new epoch); numbering starts again");
            progress.applied = Some(0);
        }
        progress.epoch = Some(epoch);
        Ok((redis, pubsub))
    }

    /// One connection's life: returns whether it joined the cluster, and
    /// why it ended.
    async fn session(&self, host: &mut Follower, progress: &mut Progress) -> (bool, String) {
        let (mut redis, mut pubsub) = match self.open(progress).await {
            Ok(opened) => opened,
            Err(error) => return (false, error),
        };
        let mut joined = false;
        let ops_channel = self.key("ops");
        let mut messages = pubsub.on_message();
        let result: redis::RedisResult<()> = async {
            self.catch_up(host, &mut redis, progress).await?;
            while !progress.pending.is_empty() {
                let mut op = progress.pending.remove(0);
                if let Err(error) = self.publish(host, &mut redis, &mut op, progress).await {
                    // Again, under the same id, when Redis is back.
                    progress.pending.insert(0, op);
                    return Err(error);
                }
            }
            self.join_banks(&mut redis, host, progress).await?;
            self.heartbeat(host, &mut redis, progress).await?;
            self.set_link(host, Ok(()));
            joined = true;
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let Some(message) = message else {
                            return Err(redis::RedisError::from((
                                redis::ErrorKind::Io,
                                "the subscription ended",
                            )));
                        };
                        let payload = message.get_payload_bytes();
                        if message.get_channel_name() != ops_channel {
                            self.receive_bank(payload, host);
                            continue;
                        }
                        match serde_json::from_slice::<Op>(payload) {
                            Ok(op) => self.receive(host, &mut redis, op, progress).await?,
                            Err(error) => tracing::warn!(%error, "ignoring a malformed cluster operation"),
                        }
                    }
                    Some(change) = host.bank_changes.recv() => {
                        self.publish_bank(&mut redis, change, host, progress).await?;
                    }
                    report = host.reports.recv() => {
                        let report = match report {
                            Ok(report) => report,
                            Err(error) => {
                                lagged(&error);
                                continue;
                            }
                        };
                        if publishable(&report) {
                            let mut op = self.draft(&report);
                            if let Err(error) = self.publish(host, &mut redis, &mut op, progress).await {
                                // Again, under the same id, when Redis is back.
                                progress.note(&report, Some(op));
                                return Err(error);
                            }
                        }
                        if report.result == "applied" {
                            // A pipeline the new generation adds gets the
                            // cluster's approved answers.
                            self.load_approved(&mut redis, host).await?;
                        }
                        progress.last = Some(LastOperation::from(&report));
                        self.heartbeat(host, &mut redis, progress).await?;
                    }
                    _ = tick.tick() => {
                        self.catch_up(host, &mut redis, progress).await?;
                        self.heartbeat(host, &mut redis, progress).await?;
                        self.share_budgets(host, &mut redis).await?;
                        self.share_teams(host, &mut redis).await?;
                    }
                }
            }
        }
        .await;
        let why = match result {
            Ok(()) => "the connection ended".to_owned(),
            Err(error) => format!("lost Redis at {}: {error}", self.redis),
        };
        (joined, why)
    }

    /// Write this host's status, and say so if another process wrote one
    /// under the same name since.
    async fn heartbeat(
        &self,
        host: &Follower,
        redis: &mut MultiplexedConnection,
        progress: &mut Progress,
    ) -> redis::RedisResult<()> {
        let Serving {
            generation,
            manifest_sha256,
            ..
        } = (host.serving)();
        let status = HostStatus {
            host: self.host.clone(),
            instance: self.instance.clone(),
            api: self.api.clone(),
            admin: self.admin.clone(),
            generation,
            manifest_sha256,
            applied_seq: progress.applied.unwrap_or(0),
            last_operation: progress.last.clone(),
            started_at: self.started_at,
            heartbeat_at: crate::store::now_millis(),
        };
        let text = serde_json::to_string(&status).expect("a status serialises");
        let (before,): (Option<String>,) = redis::pipe()
            .hget(self.key("hosts"), &self.host)
            .hset(self.key("hosts"), &self.host, text)
            .ignore()
            .query_async(redis)
            .await?;
        let twin = before
            .and_then(|text| serde_json::from_str::<HostStatus>(&text).ok())
            .filter(|before| before.instance != self.instance)
            .filter(|before| status.heartbeat_at.saturating_sub(before.heartbeat_at) < STALE_MS);
        if let Some(twin) = twin
            && !progress.warned_twin
        {
            progress.warned_twin = true;
            tracing::warn!(
                host = %self.host, other_api = %twin.api,
                "another process of the cluster uses this host's name; give each host its own \
                 [shared] host, or leave it unset"
            );
        }
        Ok(())
    }

    fn link(&self) -> Link {
        lock(&self.link).clone()
    }

    fn set_link(&self, host: &Follower, result: Result<(), String>) {
        let mut link = lock(&self.link);
        match result {
            Ok(()) => {
                if !link.connected {
                    tracing::info!(redis = %self.redis, cluster = %self.name, host = %self.host, "joined the cluster");
                }
                link.connected = true;
            }
            Err(error) => {
                // Said once per outage, not at every retry.
                if link.connected || link.error.is_none() {
                    tracing::warn!(%error, "the cluster is unreachable; serving and operating alone until it is back");
                }
                link.connected = false;
                link.error = Some(error);
            }
        }
        host.metrics.shared_connected(link.connected);
    }

    /// What `GET /admin/cluster` shows: every host's status beside the last
    /// operation, read from Redis now.
    pub async fn view(&self) -> Result<serde_json::Value, String> {
        let read = async {
            let mut redis = self.connect().await?;
            let failed = |error: redis::RedisError| format!("Redis at {}: {error}", self.redis);
            let hosts: std::collections::BTreeMap<String, String> =
                redis.hgetall(self.key("hosts")).await.map_err(failed)?;
            let seq: Option<u64> = redis.get(self.key("seq")).await.map_err(failed)?;
            let op: Option<String> = match seq {
                Some(seq) => redis
                    .get(self.key(&format!("op:{seq}")))
                    .await
                    .map_err(failed)?,
                None => None,
            };
            Ok::<_, String>((hosts, op))
        };
        let (hosts, op) = tokio::time::timeout(REDIS_TIMEOUT * 2, read)
            .await
            .map_err(|_| format!("Redis at {} did not answer in time", self.redis))??;
        let latest = op.and_then(|op| serde_json::from_str::<Op>(&op).ok());
        let now = crate::store::now_millis();
        let statuses: Vec<HostStatus> = hosts
            .values()
            .filter_map(|text| serde_json::from_str(text).ok())
            .collect();
        // In step: serving what the last operation's origin served, or (with
        // no operation yet) what this host serves.
        let own = statuses.iter().find(|status| status.host == self.host);
        let reference = latest
            .as_ref()
            .and_then(|op| op.manifest_sha256.clone())
            .or_else(|| own.map(|status| status.manifest_sha256.clone()));
        let views: Vec<serde_json::Value> = statuses
            .iter()
            .map(|status| {
                let stale = now.saturating_sub(status.heartbeat_at) > STALE_MS;
                let in_step = reference.as_deref() == Some(status.manifest_sha256.as_str());
                let mut view = serde_json::to_value(status).expect("a status serialises");
                view["stale"] = stale.into();
                view["in_step"] = in_step.into();
                view
            })
            .collect();
        let all_in_step = views
            .iter()
            .filter(|view| view["stale"] == false)
            .all(|view| view["in_step"] == true);
        let link = self.link();
        Ok(serde_json::json!({
            "cluster": self.name,
            "host": self.host,
            "redis": self.redis,
            "connected": link.connected,
            "error": if link.connected { None } else { link.error },
            "latest_operation": latest,
            "in_step": all_in_step,
            "hosts": views,
        }))
    }
}

impl Progress {
    /// Remember `report` while Redis is unreachable (or just lost): its
    /// operation, if the other hosts should follow it, is published when
    /// Redis is back, after any others kept before it.
    fn note(&mut self, report: &Report, op: Option<Op>) {
        /// The most operations kept while Redis is unreachable.
        const MAX_PENDING: usize = 64;
        self.last = Some(LastOperation::from(report));
        if let Some(op) = op {
            if self.pending.len() >= MAX_PENDING {
                tracing::warn!(
                    "more than {MAX_PENDING} operations while the cluster was unreachable; the oldest is not published"
                );
                self.pending.remove(0);
            }
            self.pending.push(op);
        }
    }
}

/// A follower that fell behind the host's reports lost some of them.
fn lagged(error: &broadcast::error::RecvError) {
    tracing::warn!(%error, "the cluster follower missed reports of this host's operations");
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the other hosts should follow `report`: it changed what this
/// host serves, and it was not itself asked for by the cluster.
fn publishable(report: &Report) -> bool {
    report.result == "applied" && !matches!(report.trigger, "cluster" | "startup")
}

/// The machine's host name, or `localhost` when it cannot be read.
fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `url` without its password, for logs and views.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Trigger;

    #[test]
    fn passwords_never_reach_a_view() {
        assert_eq!(
            redacted("redis://user:secret@10.0.0.5:6379/2"),
            "redis://***@10.0.0.5:6379/2"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn only_what_changed_a_host_and_was_not_asked_by_the_cluster_is_published() {
        let report = |action, trigger: &'static str, result| Report {
            result,
            ..Report::begin(action, &Trigger::host(trigger), 1)
        };
        assert!(publishable(&report("reload", "admin", "applied")));
        assert!(publishable(&report("rollback", "admin", "applied")));
        assert!(publishable(&report("rollback_stage", "burn", "applied")));
        assert!(!publishable(&report("reload", "admin", "unchanged")));
        assert!(!publishable(&report("reload", "admin", "failed")));
        assert!(!publishable(&report("reload", "cluster", "applied")));
        assert!(!publishable(&report("start", "startup", "applied")));
    }
}
