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
//!
//! This module holds the state (`Operations`: the operations lock, the
//! previous generation, the audit trail) and `telemetry`, the pipelines'
//! observer (budgets, metrics, recording, burn alarms); `changes` says what
//! changed. The actions that take the application (reload, rollback,
//! promote, the watcher) are in [`crate::control`].

mod changes;
mod telemetry;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

pub(crate) use self::changes::{diff, fingerprint, restart_only_changes, same_content};
pub(crate) use self::telemetry::BurnAlarm;
use crate::bank::Banks;
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::pipeline::Generation;
use crate::record::Recorders;
use crate::slo::{Budgets, SeriesKey};
use crate::store::{AuditEntry, Store};
pub use crate::store::{ChangeKind, StageChange};

/// What asked for an operation, and who.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// `startup`, `admin`, `watch`, `signal`, `burn` or `cluster`.
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
    /// A report of `action` by `trigger` on generation `generation` that
    /// has changed nothing yet: failed until the operation says otherwise.
    pub(crate) fn begin(action: &'static str, trigger: &Trigger, generation: u64) -> Report {
        Report {
            action,
            trigger: trigger.source,
            actor: trigger.actor.clone(),
            result: "failed",
            from_generation: generation,
            to_generation: generation,
            manifest_sha256: None,
            changes: Vec::new(),
            error: None,
            note: None,
            took_ms: 0.0,
            at: crate::store::now_millis(),
        }
    }

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

/// Size of one file, and when it last changed: enough to notice a change.
pub(crate) type Fingerprint = BTreeMap<PathBuf, Option<(u64, SystemTime)>>;

pub(crate) struct State {
    /// The generation before the serving one, for one-call rollback.
    pub(crate) previous: Option<Arc<Generation>>,
    /// The files a change to which should reload.
    pub(crate) watched: Vec<PathBuf>,
    /// What those files looked like when last acted on.
    pub(crate) fingerprint: Fingerprint,
    /// While a rollback is in force, what the serving generation is instead
    /// of the manifest file ("generation 5 serves the pipelines of
    /// generation 3"); cleared when the file is loaded again.
    pub(crate) rolled_back: Option<String>,
}

/// Reload state, error budgets and the observer of pipeline runs.
pub struct Operations {
    /// Error budgets of pipelines and canaries.
    pub budgets: Budgets,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    pub(crate) recorders: Recorders,
    pub(crate) store: Store,
    pub(crate) manifest_path: PathBuf,
    pub(crate) state: tokio::sync::Mutex<State>,
    pub(crate) last: Mutex<Option<Report>>,
    pub(crate) burning: Mutex<HashSet<SeriesKey>>,
    pub(crate) alarms: mpsc::UnboundedSender<BurnAlarm>,
    pub(crate) alarm_queue: Mutex<Option<mpsc::UnboundedReceiver<BurnAlarm>>>,
    /// Every finished operation's report, for whoever follows them (the
    /// cluster, `[shared]`).
    finished: broadcast::Sender<Report>,
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
            finished: broadcast::channel(64).0,
        }
    }

    /// The reports of operations finished from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Report> {
        self.finished.subscribe()
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
                    pipeline: name.to_string(),
                    stage: candidate.stage.spec.name.to_string(),
                    digest: candidate.stage.digest.to_string(),
                };
                self.budgets.configure(key, &pipeline.slo);
            }
        }
    }

    /// Record that the host started serving `generation`.
    pub async fn started(&self, generation: &Generation) {
        let report = Report {
            result: "applied",
            from_generation: 0,
            manifest_sha256: Some(generation.manifest.sha256.clone()),
            changes: diff(None, generation),
            ..Report::begin("start", &Trigger::host("startup"), generation.number)
        };
        self.finish(report).await;
    }

    pub(crate) async fn finish(&self, report: Report) -> Report {
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
            changes: report.changes.clone(),
            note: report.error.clone().or_else(|| report.note.clone()),
        };
        if let Err(error) = self.store.audit(entry).await {
            tracing::error!(%error, "cannot write the audit log entry for a {}", report.action);
        }
        // Nobody following is fine.
        let _ = self.finished.send(report.clone());
        report
    }

    /// The canary alarms, for the worker that acts on them (taken once).
    pub(crate) fn take_alarms(&self) -> Option<mpsc::UnboundedReceiver<BurnAlarm>> {
        self.alarm_queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}
