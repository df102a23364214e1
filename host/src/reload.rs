//! Live operations: reloads built aside and published atomically, rollback
//! to the previous generation, promotion and rollback of candidates, the
//! automatic rollback of canaries that burn the error budget, and the
//! triggers (file watch, SIGHUP, admin API).
//!
//! Every operation takes one lock, so operations never interleave. A reload
//! reads the manifest and every plugin, compiles (on the blocking pool, with
//! the on-disk compile cache), links and validates the whole new generation
//! before anything changes; only then is it published with one atomic store.
//! A request already running keeps the `Arc` of the generation it started on
//! and finishes there. A failed reload changes nothing and says why in its
//! report, the log, `GET /admin/pipelines` and the audit log.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::bank::Banks;
use crate::manifest::{Manifest, ManifestErrorKind, RolloutMode};
use crate::metrics::Metrics;
use crate::pipeline::{Candidate, Execution, Generation, Observer, Pipeline, ShadowComparison};
use crate::record::{Line, Recorders};
use crate::runtime::capabilities::ImportRule;
use crate::server::App;
use crate::slo::{Budgets, MIN_EVENTS_FOR_ROLLBACK, SeriesKey};
use crate::store::{AuditEntry, ShadowRecord, Store};

/// What asked for an operation, and who.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// `startup`, `admin`, `watch`, `signal` or `burn`.
    pub source: &'static str,
    /// A token fingerprint (`admin:1a2b3c4d`), `loopback-admin`, or the host.
    pub actor: String,
}

impl Trigger {
    /// A trigger from the host itself (file watch, signal, start-up).
    pub fn host(source: &'static str) -> Trigger {
        Trigger {
            source,
            actor: "strata".to_owned(),
        }
    }
}

/// What changed for one stage between two generations.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageChange {
    /// The pipeline.
    pub pipeline: String,
    /// The stage.
    pub stage: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// The live digest before.
    pub old_digest: Option<String>,
    /// The live digest after.
    pub new_digest: Option<String>,
    /// The candidate digest before.
    pub old_candidate: Option<String>,
    /// The candidate digest after.
    pub new_candidate: Option<String>,
    /// Grants the stage gained.
    pub grants_added: Vec<String>,
    /// Grants the stage lost.
    pub grants_removed: Vec<String>,
    /// Imports the stage's component gained.
    pub imports_added: Vec<String>,
    /// Imports the stage's component lost.
    pub imports_removed: Vec<String>,
    /// Whether its config, limits, layer or `on_error` changed.
    pub settings_changed: bool,
}

/// The result of one operation.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `start`, `reload`, `rollback`, `promote` or `rollback_stage`.
    pub action: &'static str,
    /// What asked for it.
    pub trigger: &'static str,
    /// Who asked.
    pub actor: String,
    /// `applied`, `unchanged` or `failed`.
    pub result: &'static str,
    /// The generation serving before.
    pub from_generation: u64,
    /// The generation serving after.
    pub to_generation: u64,
    /// The digest of the manifest read, if one was.
    pub manifest_sha256: Option<String>,
    /// Per stage: what changed.
    pub changes: Vec<StageChange>,
    /// Why it failed.
    pub error: Option<String>,
    /// Anything else worth knowing.
    pub note: Option<String>,
    /// How long it took, in milliseconds.
    pub took_ms: f64,
    /// When it finished (Unix milliseconds).
    pub at: i64,
}

impl Report {
    /// Whether the operation changed nothing because it failed.
    pub fn failed(&self) -> bool {
        self.result == "failed"
    }
}

/// Why a candidate operation could not start.
#[derive(Debug, thiserror::Error)]
pub enum CandidateError {
    /// No such pipeline or stage.
    #[error("{0}")]
    NotFound(String),
    /// The stage has no candidate.
    #[error("{0}")]
    NoCandidate(String),
}

/// A canary whose failures burn the error budget too fast.
#[derive(Debug, Clone)]
struct BurnAlarm {
    key: SeriesKey,
    pipeline: String,
    stage: String,
    digest: String,
    burn_rate: f64,
    threshold: f64,
    windows: (u64, u64),
}

/// Size of one file, and when it last changed: enough to notice a change.
type Fingerprint = BTreeMap<PathBuf, Option<(u64, SystemTime)>>;

struct State {
    /// The generation before the serving one, for one-call rollback.
    previous: Option<Arc<Generation>>,
    /// The files a change to which should reload.
    watched: Vec<PathBuf>,
    /// What those files looked like when last acted on.
    fingerprint: Fingerprint,
    /// While a rollback is in force, what the serving generation is instead
    /// of the manifest file ("generation 5 serves the pipelines of
    /// generation 3"); cleared when the file is loaded again.
    rolled_back: Option<String>,
}

/// Reload state, error budgets and the observer of pipeline runs.
pub struct Operations {
    /// Error budgets of pipelines and canaries.
    pub budgets: Budgets,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    recorders: Recorders,
    store: Store,
    manifest_path: PathBuf,
    state: tokio::sync::Mutex<State>,
    last: Mutex<Option<Report>>,
    burning: Mutex<HashSet<SeriesKey>>,
    alarms: mpsc::UnboundedSender<BurnAlarm>,
    alarm_queue: Mutex<Option<mpsc::UnboundedReceiver<BurnAlarm>>>,
}

impl Operations {
    /// Operations for the host serving `manifest` (already loaded).
    pub fn new(
        store: Store,
        manifest: &Manifest,
        metrics: Arc<Metrics>,
        data_dir: &Path,
    ) -> Operations {
        let (alarms, queue) = mpsc::unbounded_channel();
        let watched = manifest.watched_files();
        Operations {
            budgets: Budgets::default(),
            recorders: Recorders::new(data_dir),
            metrics,
            store,
            manifest_path: manifest.path.clone(),
            state: tokio::sync::Mutex::new(State {
                previous: None,
                rolled_back: None,
                fingerprint: fingerprint(&watched),
                watched,
            }),
            last: Mutex::new(None),
            burning: Mutex::new(HashSet::new()),
            alarms,
            alarm_queue: Mutex::new(Some(queue)),
        }
    }

    /// The last operation's report.
    pub fn last_report(&self) -> Option<Report> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The files the watcher should watch.
    pub async fn watched_files(&self) -> Vec<PathBuf> {
        self.state.lock().await.watched.clone()
    }

    /// Apply `generation`'s settings to what outlives generations (answer
    /// banks, error budgets, traffic recorders), once, as it is published.
    /// Lookups on the request path never change them, so requests still
    /// running on the previous generation do not undo this.
    pub fn adopt(&self, generation: &Generation, banks: &Banks) {
        for (name, pipeline) in &generation.pipelines {
            banks.configure(name, &pipeline.answer_bank);
            self.recorders.configure(name, pipeline.record.as_ref());
            self.budgets
                .configure(SeriesKey::Pipeline(name.clone()), &pipeline.slo);
            for candidate in pipeline.stages.iter().filter_map(|s| s.candidate.as_ref()) {
                let key = SeriesKey::Candidate {
                    pipeline: name.clone(),
                    stage: candidate.stage.spec.name.clone(),
                    digest: candidate.stage.digest.clone(),
                };
                self.budgets.configure(key, &pipeline.slo);
            }
        }
    }

    /// Record that the host started serving `generation`.
    pub async fn started(&self, generation: &Generation) {
        let report = Report {
            action: "start",
            trigger: "startup",
            actor: "strata".to_owned(),
            result: "applied",
            from_generation: 0,
            to_generation: generation.number,
            manifest_sha256: Some(generation.manifest.sha256.clone()),
            changes: diff(None, generation),
            error: None,
            note: None,
            took_ms: 0.0,
            at: crate::store::now_millis(),
        };
        self.finish(report).await;
    }

    async fn finish(&self, report: Report) -> Report {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        self.metrics
            .operation(report.action, report.result, report.to_generation);
        if report.failed() {
            tracing::error!(
                action = report.action,
                trigger = report.trigger,
                actor = %report.actor,
                error = report.error.as_deref().unwrap_or(""),
                "{} failed; generation {} keeps serving",
                report.action,
                report.from_generation
            );
        } else {
            tracing::info!(
                action = report.action,
                trigger = report.trigger,
                actor = %report.actor,
                result = report.result,
                generation = report.to_generation,
                changes = report.changes.len(),
                took_ms = report.took_ms,
                "{} {}",
                report.action,
                report.result
            );
        }
        let entry = AuditEntry {
            id: 0,
            at: report.at,
            action: report.action.to_owned(),
            trigger: report.trigger.to_owned(),
            actor: report.actor.clone(),
            result: report.result.to_owned(),
            from_generation: Some(report.from_generation),
            to_generation: Some(report.to_generation),
            manifest_sha256: report.manifest_sha256.clone(),
            changes: serde_json::to_value(&report.changes).unwrap_or_default(),
            note: report.error.clone().or_else(|| report.note.clone()),
        };
        if let Err(error) = self.store.audit(entry).await {
            tracing::error!(%error, "cannot write the audit log entry for a {}", report.action);
        }
        report
    }

    /// The canary alarms, for the worker that acts on them (taken once).
    fn take_alarms(&self) -> Option<mpsc::UnboundedReceiver<BurnAlarm>> {
        self.alarm_queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

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

async fn reload_locked(
    app: &Arc<App>,
    state: &mut State,
    trigger: &Trigger,
    action: &'static str,
    edited: Option<Manifest>,
) -> Report {
    let started = Instant::now();
    let current = app.current.load_full();
    let mut report = Report {
        action,
        trigger: trigger.source,
        actor: trigger.actor.clone(),
        result: "failed",
        from_generation: current.number,
        to_generation: current.number,
        manifest_sha256: None,
        changes: Vec::new(),
        error: None,
        note: None,
        took_ms: 0.0,
        at: 0,
    };
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
fn publish(app: &App, state: &mut State, generation: Generation) {
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
    tokio::spawn(async move {
        if let Err(error) = crate::bank::reload_patterns(&banks, &manifest, &store, &client).await {
            tracing::error!(error = %format!("{error:#}"), "cannot reload the answer bank");
        }
    });
    state.previous = Some(replaced);
}

/// Serve the previous generation's pipelines again, as a new generation.
/// The files on disk are left alone: the next change to them is loaded.
pub async fn rollback(app: &Arc<App>, trigger: Trigger) -> Report {
    let started = Instant::now();
    let mut state = app.ops.state.lock().await;
    let current = app.current.load_full();
    let mut report = Report {
        action: "rollback",
        trigger: trigger.source,
        actor: trigger.actor.clone(),
        result: "failed",
        from_generation: current.number,
        to_generation: current.number,
        manifest_sha256: None,
        changes: Vec::new(),
        error: None,
        note: None,
        took_ms: 0.0,
        at: crate::store::now_millis(),
    };
    match state.previous.clone() {
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
            digest: candidate.plugin.digest(),
        });
    }
    drop(state);
    Ok(app.ops.finish(report).await)
}

/// Rewrite the manifest with the candidate of `pipeline`/`stage` promoted or
/// removed, keeping everything else (comments included) as it was.
fn edit_manifest(path: &Path, pipeline: &str, stage: &str, promote: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // Edit the file a symlink points at, not the link: replacing the link
    // with a file would cut it from whatever manages the target.
    let path = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut document: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("cannot parse {}", path.display()))?;
    let stages = document
        .get_mut("pipelines")
        .and_then(|p| p.get_mut(pipeline))
        .and_then(|p| p.get_mut("stages"))
        .and_then(toml_edit::Item::as_array_of_tables_mut)
        .context("the pipeline's stages are not written as [[pipelines.NAME.stages]] tables")?;
    let table = stages
        .iter_mut()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(stage))
        .context("the stage is not in the manifest file")?;
    let candidate = table
        .remove("candidate")
        .context("the stage has no candidate in the manifest file")?;
    if promote {
        let candidate = candidate
            .as_table_like()
            .context("the candidate is not a table")?;
        for key in ["plugin", "sha256", "grants", "config"] {
            match candidate.get(key) {
                Some(value) => {
                    table.insert(key, value.clone());
                }
                // The old pin belongs to the old plugin.
                None if key == "sha256" || key == "plugin" => {
                    table.remove(key);
                }
                None => {}
            }
        }
    }
    replace_file(&path, document.to_string().as_bytes())
}

/// Replace `path` with `contents` so that a crash leaves the old file or the
/// new one, never a torn one: write a temporary file beside it with the
/// same permissions, flush it to disk, rename it over `path`, and flush the
/// directory so the rename itself survives a power cut.
fn replace_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let directory = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    let metadata =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut aside = tempfile::Builder::new()
        .prefix(".strata-edit-")
        .tempfile_in(directory)
        .with_context(|| format!("cannot create a file in {}", directory.display()))?;
    aside
        .write_all(contents)
        .and_then(|()| aside.as_file().set_permissions(metadata.permissions()))
        .and_then(|()| aside.as_file().sync_all())
        .with_context(|| format!("cannot write {}", aside.path().display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        // Keep the owner too when allowed to (as root, or for the group
        // when the host is a member); otherwise the file is the host's, as
        // any file it writes.
        let _ =
            std::os::unix::fs::fchown(aside.as_file(), Some(metadata.uid()), Some(metadata.gid()));
    }
    aside
        .persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    // The new file is in place now, so a failure here must not report the
    // edit as not made; only whether the rename survives a power cut is in
    // doubt.
    #[cfg(unix)]
    if let Err(error) = std::fs::File::open(directory).and_then(|d| d.sync_all()) {
        tracing::warn!(directory = %directory.display(), %error, "cannot flush the directory of the edited manifest");
    }
    Ok(())
}

/// Act on canary alarms: roll back each burning canary once.
pub fn spawn_burn_worker(app: Arc<App>) {
    let Some(mut alarms) = app.ops.take_alarms() else {
        return;
    };
    tokio::spawn(async move {
        while let Some(alarm) = alarms.recv().await {
            let current = app.current.load_full();
            let still_serving = current
                .pipelines
                .get(&alarm.pipeline)
                .and_then(|p| p.stages.iter().find(|s| s.name() == alarm.stage))
                .and_then(|s| s.candidate.as_ref())
                .is_some_and(|c| c.stage.digest == alarm.digest);
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

/// Watch the manifest and its plugins; reload when they change and stay
/// unchanged for `debounce`.
pub fn spawn_watcher(
    app: Arc<App>,
    files: Vec<PathBuf>,
    debounce: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (events, mut changes) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let _ = events.send(event.paths);
        }
    })?;
    // The first watches are in place before start-up returns, so no change
    // made right after can be missed.
    let mut directories = BTreeSet::new();
    watch_directories(&mut watcher, &mut directories, &files);
    tokio::spawn(async move {
        let mut files = files;
        loop {
            // Wait for a change to one of the files.
            loop {
                tokio::select! {
                    paths = changes.recv() => match paths {
                        Some(paths) if paths.iter().any(|p| files.contains(p)) => break,
                        Some(_) => continue,
                        None => return,
                    },
                    _ = shutdown.changed() => return,
                }
            }
            // Then for quiet: a file still being written is not read.
            loop {
                match tokio::time::timeout(debounce, changes.recv()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            files_changed(&app).await;
            files = app.ops.watched_files().await;
            watch_directories(&mut watcher, &mut directories, &files);
        }
    });
    Ok(())
}

/// Watch the directories holding `files`, and no others. Directories, not
/// files: a deploy that renames a new file over an old one is still seen.
fn watch_directories(
    watcher: &mut notify::RecommendedWatcher,
    directories: &mut BTreeSet<PathBuf>,
    files: &[PathBuf],
) {
    use notify::Watcher as _;
    let wanted: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_owned))
        .collect();
    for gone in directories.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    for new in wanted.difference(directories) {
        if let Err(error) = watcher.watch(new, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(directory = %new.display(), %error, "cannot watch for changes");
        }
    }
    *directories = wanted;
}

fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    files
        .iter()
        .map(|path| {
            let seen = std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)));
            (path.clone(), seen)
        })
        .collect()
}

/// Whether two manifests would build the same generation: same text and
/// same plugin bytes everywhere.
fn same_content(a: &Manifest, b: &Manifest) -> bool {
    let digests = |m: &Manifest| -> Vec<(String, Option<String>)> {
        m.stages()
            .map(|(_, s)| {
                (
                    s.plugin.sha256.clone(),
                    s.candidate.as_ref().map(|c| c.plugin.sha256.clone()),
                )
            })
            .collect()
    };
    a.sha256 == b.sha256 && digests(a) == digests(b)
}

/// Settings a reload cannot change, named so the operator knows.
fn restart_only_changes(old: &Manifest, new: &Manifest) -> Option<String> {
    let mut keys = Vec::new();
    if old.listen != new.listen {
        keys.push("listen");
    }
    if old.data_dir != new.data_dir {
        keys.push("data_dir");
    }
    if old.admin != new.admin {
        keys.push("[admin]");
    }
    if old.reload != new.reload {
        keys.push("[reload]");
    }
    if old.server.max_body_kib != new.server.max_body_kib {
        keys.push("[server]");
    }
    if old.background != new.background {
        keys.push("[async]");
    }
    if old.callbacks != new.callbacks {
        keys.push("[callbacks]");
    }
    (!keys.is_empty()).then(|| {
        format!(
            "{} changed; these take effect when the host restarts",
            keys.join(", ")
        )
    })
}

/// Per stage, what differs between `old` (none at start-up) and `new`.
fn diff(old: Option<&Generation>, new: &Generation) -> Vec<StageChange> {
    type Key = (String, String);
    let index = |generation: &Generation| -> BTreeMap<Key, StageFacts> {
        generation
            .pipelines
            .values()
            .flat_map(|p| {
                p.stages
                    .iter()
                    .map(move |s| ((p.name.clone(), s.name().to_owned()), StageFacts::of(s)))
            })
            .collect()
    };
    let before = old.map(index).unwrap_or_default();
    let after = index(new);
    let keys: BTreeSet<&Key> = before.keys().chain(after.keys()).collect();
    let mut changes = Vec::new();
    for key in keys {
        let (old, new) = (before.get(key), after.get(key));
        if let (Some(old), Some(new)) = (old, new)
            && old == new
        {
            continue;
        }
        let empty = StageFacts::default();
        let (o, n) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
        changes.push(StageChange {
            pipeline: key.0.clone(),
            stage: key.1.clone(),
            change: match (old, new) {
                (None, _) => "added",
                (_, None) => "removed",
                _ => "changed",
            },
            old_digest: old.map(|f| f.digest.clone()),
            new_digest: new.map(|f| f.digest.clone()),
            old_candidate: o.candidate.clone(),
            new_candidate: n.candidate.clone(),
            grants_added: n.grants.difference(&o.grants).cloned().collect(),
            grants_removed: o.grants.difference(&n.grants).cloned().collect(),
            imports_added: n.imports.difference(&o.imports).cloned().collect(),
            imports_removed: o.imports.difference(&n.imports).cloned().collect(),
            settings_changed: old.is_some() && new.is_some() && o.settings != n.settings,
        });
    }
    changes
}

/// What the audit log compares about a stage.
#[derive(Debug, Default, PartialEq)]
struct StageFacts {
    digest: String,
    candidate: Option<String>,
    grants: BTreeSet<String>,
    imports: BTreeSet<String>,
    settings: String,
}

impl StageFacts {
    fn of(stage: &crate::pipeline::Stage) -> StageFacts {
        let live = &stage.live;
        let spec = &live.spec;
        let mut grants: BTreeSet<String> =
            spec.grants.iter().map(|g| g.as_str().to_owned()).collect();
        let mut imports: BTreeSet<String> = live
            .imports
            .iter()
            .filter(|i| i.rule != ImportRule::Baseline)
            .map(|i| i.name.clone())
            .collect();
        // A candidate's capabilities count: it runs on real requests too.
        if let Some(candidate) = &stage.candidate {
            grants.extend(
                candidate
                    .stage
                    .spec
                    .grants
                    .iter()
                    .map(|g| format!("{} (candidate)", g.as_str())),
            );
            imports.extend(
                candidate
                    .stage
                    .imports
                    .iter()
                    .filter(|i| i.rule != ImportRule::Baseline)
                    .map(|i| format!("{} (candidate)", i.name)),
            );
        }
        StageFacts {
            digest: live.digest.clone(),
            candidate: stage.candidate.as_ref().map(|c| c.stage.digest.clone()),
            grants,
            imports,
            settings: format!(
                "{:?}|{:?}|{}|{}|{:?}",
                spec.limits,
                spec.on_error,
                spec.layer,
                serde_json::Value::Object(spec.config.clone()),
                stage
                    .candidate
                    .as_ref()
                    .map(|c| (c.mode, c.percent, c.max_burn_rate))
            ),
        }
    }
}

impl Observer for Operations {
    fn candidate_served(&self, pipeline: &Pipeline, candidate: &Candidate, failed: bool) {
        if candidate.mode != RolloutMode::Canary {
            return;
        }
        let key = SeriesKey::Candidate {
            pipeline: pipeline.name.clone(),
            stage: candidate.stage.spec.name.clone(),
            digest: candidate.stage.digest.clone(),
        };
        self.metrics
            .canary_served(&pipeline.name, &candidate.stage.spec.name, failed);
        let series = self.budgets.series(key.clone(), &pipeline.slo);
        let firing = {
            let mut series = series.lock().unwrap_or_else(|e| e.into_inner());
            series.record(failed);
            if !failed {
                return;
            }
            series
                .alerts(Some(candidate.max_burn_rate))
                .into_iter()
                .find(|a| a.firing && a.short.total >= MIN_EVENTS_FOR_ROLLBACK)
        };
        let Some(alert) = firing else {
            return;
        };
        let first = self
            .burning
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        if first {
            let _ = self.alarms.send(BurnAlarm {
                key,
                pipeline: pipeline.name.clone(),
                stage: candidate.stage.spec.name.clone(),
                digest: candidate.stage.digest.clone(),
                burn_rate: alert.short.burn_rate.min(alert.long.burn_rate),
                threshold: alert.threshold,
                windows: (alert.long_s, alert.short_s),
            });
        }
    }

    fn shadow_compared(&self, comparison: ShadowComparison) {
        self.metrics
            .shadow_compared(&comparison.pipeline, &comparison.stage, comparison.same());
        self.store.record_shadow(ShadowRecord {
            same: comparison.same(),
            request_id: comparison.request_id,
            pipeline: comparison.pipeline,
            stage: comparison.stage,
            live_digest: comparison.live_digest,
            candidate_digest: comparison.candidate_digest,
            live: comparison.live,
            candidate: comparison.candidate,
        });
    }

    fn request_finished(
        &self,
        pipeline: &Pipeline,
        execution: &Execution,
        elapsed: Duration,
        background: bool,
    ) {
        self.metrics
            .request_finished(&pipeline.name, execution, elapsed.as_secs_f64(), background);
        if let Some(spec) = &pipeline.record
            && let Some(line) = Line::of(execution, spec)
        {
            self.recorders.record(spec, &line);
        }
        // The latency objective is about clients waiting: an asynchronous
        // run (which may wait for a batch on purpose) counts only failures.
        let slow = !background && elapsed > Duration::from_millis(pipeline.slo.latency_ms);
        let bad = execution.had_failure() || slow;
        self.budgets
            .series(SeriesKey::Pipeline(pipeline.name.clone()), &pipeline.slo)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(bad);
    }
}
