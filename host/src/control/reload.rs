//! Reloads and rollbacks: a candidate generation built aside, gated by
//! its golden cases, published whole; the previous one kept for rollback;
//! what changed between two generations.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::app::App;
use crate::manifest::{Manifest, ManifestErrorKind};
use crate::ops::{Report, State, Trigger, diff, fingerprint, restart_only_changes, same_content};
use crate::pipeline::Generation;

/// Read the manifest again and publish it as a new generation if it loads.
pub async fn reload(app: &Arc<App>, trigger: Trigger) -> Report {
    let mut state = app.ops.state.lock().await;
    let report = reload_locked(app, &mut state, &trigger, "reload", None).await;
    drop(state);
    app.ops.finish(report).await
}

/// Called by the file watcher: reload if the watched files changed since
/// the last operation (an operation's own writes, or a rollback, do not
/// count).
pub async fn files_changed(app: &Arc<App>) -> Option<Report> {
    let mut state = app.ops.state.lock().await;
    let now = tokio::task::spawn_blocking({
        let watched = state.watched.clone();
        move || fingerprint(&watched)
    })
    .await
    .ok()?;
    if now == state.fingerprint {
        return None;
    }
    let report = reload_locked(app, &mut state, &Trigger::host("watch"), "reload", None).await;
    drop(state);
    Some(app.ops.finish(report).await)
}

pub(super) async fn reload_locked(
    app: &Arc<App>,
    state: &mut State,
    trigger: &Trigger,
    action: &'static str,
    edited: Option<Manifest>,
) -> Report {
    let started = Instant::now();
    let current = app.current.load_full();
    let mut report = Report::begin(action, trigger, current.number);
    let finish = |mut report: Report| {
        report.took_ms = started.elapsed().as_secs_f64() * 1000.0;
        report.at = crate::store::now_millis();
        report
    };

    // Whether this reads the file, so that what is served is the file again.
    let from_file = edited.is_none();
    // Taken before reading, so a change made while loading is seen again.
    state.fingerprint = fingerprint(&state.watched);
    let manifest = match edited {
        Some(manifest) => Ok(manifest),
        None => {
            let path = app.ops.manifest_path.clone();
            match tokio::task::spawn_blocking(move || Manifest::load(&path)).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(e) => Err(format!("loading task failed: {e}")),
            }
        }
    };
    let manifest = match manifest {
        Ok(manifest) => manifest,
        Err(error) => {
            report.error = Some(error);
            return finish(report);
        }
    };
    report.manifest_sha256 = Some(manifest.sha256.clone());
    // Watch what the new manifest names too, so fixing a broken plugin it
    // points at is noticed; those files as they were when it was read.
    let added: Vec<PathBuf> = manifest
        .watched_files()
        .into_iter()
        .filter(|path| !state.fingerprint.contains_key(path))
        .collect();
    state.fingerprint.extend(fingerprint(&added));
    state.watched = state.fingerprint.keys().cloned().collect();

    if manifest.runtime != *app.runtime.settings() {
        report.error = Some(
            "[runtime] changed; engine settings take effect only when the host restarts".to_owned(),
        );
        return finish(report);
    }
    if same_content(&current.manifest, &manifest) {
        if from_file {
            // The file says what is served, so no rollback is in force.
            state.rolled_back = None;
        }
        report.result = "unchanged";
        return finish(report);
    }
    let notes = restart_only_changes(&current.manifest, &manifest);

    let number = current.number + 1;
    let runtime = app.runtime.clone();
    let manifest = Arc::new(manifest);
    let loaded =
        tokio::task::spawn_blocking(move || Generation::load(manifest, &runtime, number)).await;
    let generation = match loaded {
        Ok(Ok(generation)) => generation,
        Ok(Err(error)) => {
            if let ManifestErrorKind::UngrantedImports { .. } = &*error.kind {
                let location = &error.location;
                app.ops.metrics.stage_failure(
                    location.pipeline.as_deref().unwrap_or("-"),
                    location.stage.as_deref().unwrap_or("-"),
                    "refused_import",
                );
            }
            report.error = Some(error.to_string());
            return finish(report);
        }
        Err(error) => {
            report.error = Some(format!("loading task failed: {error}"));
            return finish(report);
        }
    };
    // Golden cases are the last check before anything changes.
    if let Err(failures) = crate::cases::gate(&app.runtime, &generation).await {
        report.error = Some(format!("golden cases failed:\n{failures}"));
        return finish(report);
    }
    report.changes = diff(Some(&current), &generation);
    // Stop watching what the new manifest no longer names. The fingerprint
    // stays the one taken before reading: a change made while this reload
    // compiled is seen by the next check.
    state.watched = generation.manifest.watched_files();
    let watched: BTreeSet<&PathBuf> = state.watched.iter().collect();
    state.fingerprint.retain(|path, _| watched.contains(path));
    publish(app, state, generation);
    if from_file {
        state.rolled_back = None;
    }
    report.result = "applied";
    report.to_generation = number;
    report.note = notes;
    finish(report)
}

/// Publish `generation`; the one it replaces becomes the rollback target.
pub(super) fn publish(app: &App, state: &mut State, generation: Generation) {
    app.ops.adopt(&generation, &app.run.banks);
    let generation = Arc::new(generation);
    let replaced = app.current.swap(generation.clone());
    // Kept for rollback, the replaced generation must not keep idle
    // instances (and their pool slots) meanwhile. Versions both share (an
    // unchanged stage, or everything after a rollback) serve on.
    replaced.set_serving(false);
    generation.set_serving(true);
    // Patterns imported since (`strata bank import`) are served from now
    // on; the fit runs in the background and only when the store changed.
    let (banks, store, manifest, client) = (
        app.run.banks.clone(),
        app.store.clone(),
        generation.manifest.clone(),
        app.run.runtime.http().clone(),
    );
    app.lifecycle.spawn(async move {
        if let Err(error) = crate::bank::reload_patterns(&banks, &manifest, &store, &client).await {
            tracing::error!(error = %format!("{error:#}"), "cannot reload the answer bank");
        }
    });
    state.previous = Some(replaced);
}

/// Serve the previous generation's pipelines again, as a new generation.
/// The files on disk are left alone: the next change to them is loaded.
pub async fn rollback(app: &Arc<App>, trigger: Trigger) -> Report {
    rollback_to(app, trigger, None).await
}

/// [`rollback`], only if the previous generation was built from the
/// manifest whose digest is `expect` (another host of the cluster returned
/// to it), checked under the operations lock; a host that already serves
/// that manifest reports `unchanged` (a second rollback would undo it).
pub(super) async fn rollback_to(app: &Arc<App>, trigger: Trigger, expect: Option<&str>) -> Report {
    let started = Instant::now();
    let mut state = app.ops.state.lock().await;
    let current = app.current.load_full();
    let mut report = Report::begin("rollback", &trigger, current.number);
    let previous_digest = state
        .previous
        .as_ref()
        .map(|previous| previous.manifest.sha256.clone());
    match state.previous.clone() {
        _ if expect.is_some_and(|expect| expect == current.manifest.sha256) => {
            report.result = "unchanged";
            report.note = Some("this host already serves that manifest".to_owned());
        }
        _ if expect.is_some() && previous_digest.as_deref() != expect => {
            report.error = Some(format!(
                "the cluster rolled back to manifest {}; this host's previous generation is {}, \
                 so generation {} keeps serving",
                expect.unwrap_or_default(),
                previous_digest.as_deref().unwrap_or("none"),
                current.number
            ));
        }
        None => {
            report.error = Some("there is no previous generation to roll back to".to_owned());
        }
        Some(previous) => {
            let number = current.number + 1;
            let generation = previous.renumbered(number);
            report.changes = diff(Some(&current), &generation);
            report.manifest_sha256 = Some(generation.manifest.sha256.clone());
            report.note = Some(format!(
                "generation {number} serves the pipelines of generation {}; the files on disk \
                 are unchanged, and the next change to them is loaded",
                previous.number
            ));
            state.fingerprint = fingerprint(&state.watched);
            publish(app, &mut state, generation);
            state.rolled_back = Some(format!(
                "generation {number} serves the pipelines of generation {}",
                previous.number
            ));
            report.result = "applied";
            report.to_generation = number;
        }
    }
    report.took_ms = started.elapsed().as_secs_f64() * 1000.0;
    drop(state);
    app.ops.finish(report).await
}
