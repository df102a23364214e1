//! Candidate versions of a stage: promotion and rollback by an operator,
//! and the automatic rollback of a canary that burns its error budget.

use std::sync::Arc;

use super::edit::edit_manifest;
use super::reload::reload_locked;
use crate::app::App;
use crate::ops::{CandidateError, Report, Trigger};
use crate::slo::SeriesKey;

/// Make a stage's candidate its live version (`promote`), or drop the
/// candidate (`rollback_stage`). The manifest file is edited (written aside,
/// keeping its comments, mode and any symlink) and reloaded, so the file
/// stays the truth; if it cannot be written, the change is applied in memory
/// only and the report says so. While a rollback is in force the file is
/// not what is served, and loading it would undo the rollback: the change
/// is then applied to the serving generation only, and the report says so.
pub async fn settle_candidate(
    app: &Arc<App>,
    pipeline: &str,
    stage: &str,
    promote: bool,
    trigger: Trigger,
) -> Result<Report, CandidateError> {
    let action = if promote { "promote" } else { "rollback_stage" };
    let mut state = app.ops.state.lock().await;
    let current = app.current.load_full();
    let spec = current
        .manifest
        .pipelines
        .get(pipeline)
        .ok_or_else(|| CandidateError::NotFound(format!("no pipeline named \"{pipeline}\"")))?
        .stages
        .iter()
        .find(|s| s.name == stage)
        .ok_or_else(|| {
            CandidateError::NotFound(format!("pipeline \"{pipeline}\" has no stage \"{stage}\""))
        })?;
    let Some(candidate) = spec.candidate.clone() else {
        return Err(CandidateError::NoCandidate(format!(
            "stage \"{stage}\" of pipeline \"{pipeline}\" has no candidate"
        )));
    };

    // The same change applied to the serving manifest, for when the file
    // is not to be (or cannot be) edited.
    let mut in_memory = (*current.manifest).clone();
    if let Some(live) = in_memory
        .pipelines
        .get_mut(pipeline)
        .and_then(|p| p.stages.iter_mut().find(|s| s.name == stage))
    {
        if promote {
            live.plugin = candidate.plugin.clone();
            live.grants = candidate.grants.clone();
            live.config = candidate.config.clone();
        }
        live.candidate = None;
    }
    let (edited, note) = if let Some(rolled_back) = &state.rolled_back {
        let note = format!(
            "a rollback is in force ({rolled_back}), so the change applies to the serving \
             generation only; the manifest file is not edited, and the next reload from it \
             serves what it says"
        );
        (Some(in_memory), Some(note))
    } else {
        let path = app.ops.manifest_path.clone();
        let (p, s) = (pipeline.to_owned(), stage.to_owned());
        let edit = tokio::task::spawn_blocking(move || edit_manifest(&path, &p, &s, promote))
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("editing task failed: {e}")));
        match edit {
            Ok(()) => (None, None),
            Err(error) => {
                let note = format!(
                    "the manifest file was not updated ({error:#}); the change holds until the \
                     next reload from the file"
                );
                (Some(in_memory), Some(note))
            }
        }
    };
    let mut report = reload_locked(app, &mut state, &trigger, action, edited).await;
    if note.is_some() {
        report.note = note;
    }
    if !report.failed() {
        app.ops.budgets.forget(&SeriesKey::Candidate {
            pipeline: pipeline.to_owned(),
            stage: stage.to_owned(),
            digest: candidate.plugin.digest.to_string(),
        });
    }
    drop(state);
    Ok(app.ops.finish(report).await)
}

/// Act on canary alarms: roll back each burning canary once.
pub fn spawn_burn_worker(app: Arc<App>) {
    let Some(mut alarms) = app.ops.take_alarms() else {
        return;
    };
    let cancel = app.lifecycle.cancel.clone();
    app.lifecycle.clone().spawn(async move {
        // A rollback under way when the host stops is finished.
        while let Some(alarm) = tokio::select! {
            alarm = alarms.recv() => alarm,
            () = cancel.cancelled() => None,
        } {
            let current = app.current.load_full();
            let still_serving = current
                .pipelines
                .get(alarm.pipeline.as_str())
                .and_then(|p| p.stages.iter().find(|s| s.name() == alarm.stage))
                .and_then(|s| s.candidate.as_ref())
                .is_some_and(|c| c.stage.digest.to_string() == alarm.digest);
            if still_serving {
                let trigger = Trigger {
                    source: "burn",
                    actor: format!(
                        "strata: canary burn rate {:.1} reached {:.1} over {}s and {}s",
                        alarm.burn_rate, alarm.threshold, alarm.windows.0, alarm.windows.1
                    ),
                };
                if let Err(error) =
                    settle_candidate(&app, &alarm.pipeline, &alarm.stage, false, trigger).await
                {
                    tracing::error!(%error, "cannot roll back a burning canary");
                }
            }
            app.ops
                .burning
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&alarm.key);
        }
    });
}
