//! Bounded growth: a background task that removes records older than the
//! manifest's `[retention]` allows, in small batches so that it never holds
//! the writer for long.

use std::sync::Arc;
use std::time::Duration;

use crate::app::Lifecycle;
use crate::manifest::RetentionSettings;
use crate::store::{Cutoffs, Store, now_millis};

/// How often old records are looked for.
const EVERY: Duration = Duration::from_secs(3600);

const DAY_MILLIS: i64 = 24 * 3600 * 1000;

/// The cutoffs `settings` give at `now` (Unix milliseconds).
pub fn cutoffs(settings: &RetentionSettings, now: i64) -> Cutoffs {
    let before = |days: u32| (days > 0).then(|| now - i64::from(days) * DAY_MILLIS);
    Cutoffs {
        requests: before(settings.requests_days),
        deliveries: before(settings.deliveries_days),
        shadow_runs: before(settings.shadow_runs_days),
        audit: before(settings.audit_days),
    }
}

/// Remove everything older than `cutoffs`; returns how many rows went.
pub async fn prune(store: &Store, cutoffs: Cutoffs) -> usize {
    let mut total = 0;
    loop {
        match store.prune(cutoffs).await {
            Ok(0) => return total,
            Ok(removed) => total += removed,
            Err(error) => {
                tracing::error!(%error, "cannot remove old records");
                return total;
            }
        }
    }
}

/// Prune at start and then every hour until the host stops.
pub fn spawn(store: Store, settings: Arc<RetentionSettings>, lifecycle: &Lifecycle) {
    let cancel = lifecycle.cancel.clone();
    lifecycle.spawn(async move {
        loop {
            let removed = prune(&store, cutoffs(&settings, now_millis())).await;
            if removed > 0 {
                tracing::info!(removed, "removed records older than [retention] keeps");
            }
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                () = cancel.cancelled() => return,
            }
        }
    });
}
