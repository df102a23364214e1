//! Error budgets and team limits shared by the hosts of a cluster: every
//! second each host writes its own counts of every series' windows to
//! `slo:{series}` (a hash, one field per host) and adds the other hosts'
//! recent ones to its windows (`Series::set_remote`); likewise each team's
//! requests in the last minute and spend to `teams:{team}`
//! (`Teams::set_others`).

use redis::aio::MultiplexedConnection;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Cluster, Follower, lock};
use crate::slo::WindowSum;
use crate::teams::TeamCounts;

/// Another host's rates older than this are not counted (it stopped, or
/// lost Redis, and counts alone).
const STALE_MS: i64 = 30_000;

/// How long shared counts outlive the last host that wrote them.
const TTL_SECONDS: i64 = 24 * 3600;

/// One host's counts, as shared, with when they were taken.
#[derive(Serialize, Deserialize)]
struct Stamped<T> {
    /// When they were taken (Unix milliseconds).
    at: i64,
    counts: T,
}

impl Cluster {
    /// Write this host's error-budget counts and take the other hosts'.
    pub(super) async fn share_budgets(
        &self,
        host: &Follower,
        redis: &mut MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        let series = host.ops.budgets.all();
        let own: Vec<(String, Vec<WindowSum>)> = series
            .iter()
            .map(|(key, counts)| (format!("slo:{key}"), lock(counts).own_sums()))
            .collect();
        let shared = self.exchange(redis, own).await?;
        for ((_, counts), others) in series.iter().zip(shared) {
            let mut sums = std::collections::BTreeMap::<u64, (u64, u64)>::new();
            let fresh = others.into_iter().filter(|(fresh, _)| *fresh);
            for (seconds, total, bad) in fresh.flat_map(|(_, windows)| windows) {
                let sum = sums.entry(seconds).or_default();
                sum.0 = sum.0.saturating_add(total);
                sum.1 = sum.1.saturating_add(bad);
            }
            let remote = sums
                .into_iter()
                .map(|(seconds, (total, bad))| (seconds, total, bad))
                .collect();
            lock(counts).set_remote(remote);
        }
        Ok(())
    }

    /// Write this host's counts of every team and take the other hosts'.
    pub(super) async fn share_teams(
        &self,
        host: &Follower,
        redis: &mut MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        // Every team the manifest names, so a team's first request here
        // already counts the others'.
        let mut own = host.teams.own_counts().await;
        let (day, month) = crate::teams::period_starts(crate::store::now_millis());
        for team in (host.serving)().teams {
            if !own.iter().any(|(known, _)| *known == team) {
                let idle = TeamCounts {
                    day,
                    month,
                    ..TeamCounts::default()
                };
                own.push((team, idle));
            }
        }
        let teams: Vec<(String, TeamCounts)> = own
            .iter()
            .map(|(team, counts)| (format!("teams:{team}"), *counts))
            .collect();
        let shared = self.exchange(redis, teams).await?;
        for ((team, counts), others) in own.iter().zip(shared) {
            let mut sum = TeamCounts {
                day: counts.day,
                month: counts.month,
                ..TeamCounts::default()
            };
            // A silent host's requests leave the minute; its spend, kept in
            // its store, stays for the day and month it was for.
            for (fresh, other) in others {
                let last_minute = if fresh { other.last_minute } else { 0 };
                sum.add(&TeamCounts {
                    last_minute,
                    ..other
                });
            }
            host.teams.set_others(team, sum);
        }
        Ok(())
    }

    /// For each `(hash, counts)`: write this host's counts under `hash` and
    /// read the other hosts', each with whether it is recent, in one round
    /// trip.
    async fn exchange<T: Serialize + DeserializeOwned>(
        &self,
        redis: &mut MultiplexedConnection,
        own: Vec<(String, T)>,
    ) -> redis::RedisResult<Vec<Vec<(bool, T)>>> {
        if own.is_empty() {
            return Ok(Vec::new());
        }
        let now = crate::store::now_millis();
        let mut pipe = redis::pipe();
        for (hash, counts) in own {
            let text =
                serde_json::to_string(&Stamped { at: now, counts }).expect("counts serialise");
            let hash = self.key(&hash);
            pipe.hset(&hash, &self.host, text)
                .ignore()
                .expire(&hash, TTL_SECONDS)
                .ignore()
                .hgetall(&hash);
        }
        let shared: Vec<std::collections::HashMap<String, String>> =
            pipe.query_async(redis).await?;
        Ok(shared
            .into_iter()
            .map(|hosts| {
                hosts
                    .into_iter()
                    .filter(|(name, _)| *name != self.host)
                    .filter_map(|(_, text)| serde_json::from_str::<Stamped<T>>(&text).ok())
                    .map(|other| (now.saturating_sub(other.at) <= STALE_MS, other.counts))
                    .collect()
            })
            .collect())
    }
}
