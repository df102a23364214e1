//! Error budgets shared by the hosts of a cluster: every second each host
//! writes its own counts of every series' windows to `slo:{series}` (a
//! hash, one field per host) and adds the other hosts' recent ones to its
//! windows (`Series::set_remote`).

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

use super::{Cluster, Follower, lock};
use crate::slo::WindowSum;

/// Another host's error-budget counts older than this are not counted (it
/// stopped, or lost Redis, and counts alone).
const BUDGET_STALE_MS: i64 = 30_000;

/// How long an error budget's shared counts outlive the last host that
/// wrote them.
const BUDGET_TTL_SECONDS: i64 = 24 * 3600;

/// One host's counts of one error-budget series, as shared.
#[derive(Serialize, Deserialize)]
struct SharedCounts {
    /// When they were taken (Unix milliseconds).
    at: i64,
    /// Per window: seconds, total, bad.
    windows: Vec<WindowSum>,
}

impl Cluster {
    /// Write this host's error-budget counts and take the other hosts'.
    pub(super) async fn share_budgets(
        &self,
        host: &Follower,
        redis: &mut MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        let series = host.ops.budgets.all();
        if series.is_empty() {
            return Ok(());
        }
        let now = crate::store::now_millis();
        let mut pipe = redis::pipe();
        for (key, counts) in &series {
            let own = SharedCounts {
                at: now,
                windows: lock(counts).own_sums(),
            };
            let text = serde_json::to_string(&own).expect("counts serialise");
            let hash = self.key(&format!("slo:{key}"));
            pipe.hset(&hash, &self.host, text)
                .ignore()
                .expire(&hash, BUDGET_TTL_SECONDS)
                .ignore()
                .hgetall(&hash);
        }
        let shared: Vec<std::collections::HashMap<String, String>> =
            pipe.query_async(redis).await?;
        for ((_, counts), hosts) in series.iter().zip(shared) {
            let mut sums = std::collections::BTreeMap::<u64, (u64, u64)>::new();
            let others = hosts
                .iter()
                .filter(|(name, _)| **name != self.host)
                .filter_map(|(_, text)| serde_json::from_str::<SharedCounts>(text).ok())
                .filter(|other| now - other.at <= BUDGET_STALE_MS);
            for other in others {
                for (seconds, total, bad) in other.windows {
                    let sum = sums.entry(seconds).or_default();
                    sum.0 += total;
                    sum.1 += bad;
                }
            }
            let remote = sums
                .into_iter()
                .map(|(seconds, (total, bad))| (seconds, total, bad))
                .collect();
            lock(counts).set_remote(remote);
        }
        Ok(())
    }
}
