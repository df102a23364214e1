//! Following the cluster (`[shared] redis`): this host's operations are
//! published by [`crate::cluster`], and the other hosts' are applied here
//! through the same actions an operator's request takes (the operations
//! lock, golden cases, the audit log), with trigger `cluster`.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::app::App;
use crate::cluster::{Follower, OpAction, Serving};
use crate::ops::Trigger;

/// Join the cluster, if the host belongs to one: follow it and apply what
/// the other hosts did, one operation at a time.
pub fn join_cluster(app: &Arc<App>) {
    let Some(cluster) = app.cluster.clone() else {
        return;
    };
    let Some(bank_changes) = app.run.banks.share() else {
        tracing::error!("the answer banks are already shared; not joining the cluster twice");
        return;
    };
    let (apply, mut ops) = mpsc::unbounded_channel();
    let serving = {
        let app = app.clone();
        move || {
            let generation = app.current.load();
            Serving {
                generation: generation.number,
                manifest_sha256: generation.manifest.sha256.clone(),
                teams: generation.manifest.teams.keys().cloned().collect(),
            }
        }
    };
    let follower = Follower {
        reports: app.ops.subscribe(),
        serving: Box::new(serving),
        metrics: app.metrics.clone(),
        apply,
        ops: app.ops.clone(),
        teams: app.teams.clone(),
        bank_changes,
        apply_bank: Box::new({
            let app = app.clone();
            move |change| {
                // Only pipelines this host serves: a bank is never made for
                // a name that came from Redis alone.
                if app
                    .current
                    .load()
                    .pipelines
                    .contains_key(change.pipeline.as_str())
                {
                    app.bank(&change.pipeline).apply(change.key, change.change);
                }
            }
        }),
    };
    app.lifecycle
        .spawn_until_stopped(async move { cluster.follow(follower).await });
    // An operation under way when the host stops is finished, not dropped.
    let (app, cancel) = (app.clone(), app.lifecycle.cancel.clone());
    let lifecycle = app.lifecycle.clone();
    lifecycle.spawn(async move {
        loop {
            tokio::select! {
                Some(op) = ops.recv() => {
                    let trigger = Trigger {
                        source: "cluster",
                        actor: format!("host {}", op.origin),
                    };
                    match op.action {
                        OpAction::Reload => {
                            super::reload(&app, trigger).await;
                        }
                        OpAction::Rollback => {
                            // Only back to the manifest the origin returned
                            // to, and never twice (a second would undo it).
                            let target = op.manifest_sha256.as_deref();
                            super::reload::rollback_to(&app, trigger, target).await;
                        }
                    }
                }
                () = cancel.cancelled() => return,
            }
        }
    });
}
