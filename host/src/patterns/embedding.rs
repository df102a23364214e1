//! Embeddings for a pipeline's patterns: the optional embedded model's
//! state, embedding examples in the background (vectors kept in the store),
//! and how each lookup was served (embedded, lexical, or lexical because
//! embedding the question failed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_patterns::PatternId;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Patterns, Served};
use crate::embeddings::{EmbedError, Embedder};
use crate::store::Store;

/// How a stage's `lookup` calls were matched, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PatternFeatures {
    /// By the model fitted with embeddings.
    pub embeddings: u32,
    /// By the lexical model, the bank having no embedded one.
    pub lexical: u32,
    /// By the lexical model because embedding the question failed, by
    /// reason, in the order of [`FALLBACK_REASONS`].
    pub fallback: [u32; 4],
}

/// Why embedding a question failed: the `reason` label of
/// `strata_embeddings_failures_total`.
pub const FALLBACK_REASONS: [&str; 4] = ["timeout", "unavailable", "rejected", "invalid"];

impl PatternFeatures {
    /// Count one lookup served as `served`.
    pub fn count(&mut self, served: Served) {
        match served {
            Served::Embeddings => self.embeddings += 1,
            Served::Lexical => self.lexical += 1,
            Served::Fallback(reason) => {
                let at = FALLBACK_REASONS
                    .iter()
                    .position(|r| *r == reason)
                    .unwrap_or(FALLBACK_REASONS.len() - 1);
                self.fallback[at] += 1;
            }
        }
    }
}

/// How long a failure of the embeddings endpoint silences the next ones'
/// log lines, and how long examples it could not embed wait to be tried
/// again when no new example comes to trigger it.
pub(super) const WARN_EVERY: Duration = Duration::from_secs(60);

pub(super) const RETRY_EVERY: Duration = Duration::from_secs(60);

/// Examples are embedded and kept this many batches at a time.
const KEEP_EVERY_BATCHES: usize = 4;

/// The embeddings side of a pipeline's patterns.
pub struct Embeddings {
    pub(super) embedder: Embedder,
    pub(super) pipeline: String,
    /// Where vectors are kept; none for a catalogue that is not persisted.
    pub(super) store: Option<Store>,
    /// One background embedding task at a time; `again` asks the running
    /// one for another pass (an example arrived while it worked).
    pub(super) running: AtomicBool,
    pub(super) again: AtomicBool,
    /// When a failure was last logged, and how many were not logged since.
    pub(super) warned: Mutex<(Option<Instant>, u64)>,
    pub(super) last_error: Mutex<Option<String>>,
    /// Where the background pass runs, and what stops it.
    pub(super) tasks: TaskTracker,
    pub(super) cancel: CancellationToken,
}

impl Embeddings {
    /// The embeddings of `pipeline`'s examples by `embedder`, kept in
    /// `store`.
    pub fn new(embedder: Embedder, pipeline: &str, store: Option<Store>) -> Embeddings {
        Embeddings {
            embedder,
            pipeline: pipeline.to_owned(),
            store,
            running: AtomicBool::new(false),
            again: AtomicBool::new(false),
            warned: Mutex::new((None, 0)),
            last_error: Mutex::new(None),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// The same, with background passes spawned on `tasks` and stopped by
    /// `cancel` (the host's, so shutdown waits for a pass in hand).
    pub fn tracked(mut self, tasks: TaskTracker, cancel: CancellationToken) -> Embeddings {
        self.tasks = tasks;
        self.cancel = cancel;
        self
    }

    /// Log a failure, at most once per [`WARN_EVERY`].
    pub(super) fn failed(&self, error: &EmbedError, during: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.0.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            warned.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut warned.1);
        warned.0 = Some(Instant::now());
        tracing::warn!(
            pipeline = %self.pipeline,
            endpoint = %self.embedder.url(),
            model = %self.embedder.model(),
            reason = error.reason(),
            %error,
            suppressed,
            "embeddings failed while {during}; the answer bank uses its lexical model"
        );
    }
}

/// Attach the vectors known by (pattern, question) to the examples of
/// `bank` that have none; a vector the bank refuses (another length) is
/// left out, and that example is embedded again.
pub(super) fn attach(bank: &mut strata_patterns::Bank, vectors: &HashMap<(i64, String), Vec<f32>>) {
    let found: Vec<(PatternId, u64, &Vec<f32>)> = bank
        .unembedded()
        .filter_map(|(id, serial, text)| {
            let v = vectors.get(&(id.0 as i64, text.to_owned()))?;
            Some((id, serial, v))
        })
        .collect();
    for (id, serial, v) in found {
        let _ = bank.set_vector(id, serial, v);
    }
}

impl Patterns {
    /// Embed the examples that have no vector yet, keep the vectors and
    /// publish them; returns whether any were added. Nothing is locked
    /// while the endpoint works. The vectors are kept a few batches at a
    /// time, so a failure part way loses only the batches in flight: the
    /// next pass starts where this one stopped.
    pub async fn embed_pending(&self) -> Result<bool, EmbedError> {
        let Some(embeddings) = &self.embeddings else {
            return Ok(false);
        };
        let pending: Vec<(PatternId, u64, String)> = self
            .lock()
            .unembedded()
            .map(|(id, serial, text)| (id, serial, text.to_owned()))
            .collect();
        if pending.is_empty() {
            return Ok(false);
        }
        for part in pending.chunks(embeddings.embedder.batch() * KEEP_EVERY_BATCHES) {
            let texts: Vec<&str> = part.iter().map(|p| p.2.as_str()).collect();
            let vectors = embeddings.embedder.embed_all(&texts).await?;
            if let Some(store) = &embeddings.store {
                let rows = part
                    .iter()
                    .zip(&vectors)
                    .map(|((id, _, text), v)| (id.0 as i64, text.clone(), v.clone()))
                    .collect();
                if let Err(error) = store
                    .put_example_vectors(embeddings.embedder.model().to_owned(), rows)
                    .await
                {
                    tracing::warn!(pipeline = %embeddings.pipeline, %error, "cannot keep the examples' embeddings");
                }
            }
            let mut bank = self.lock();
            for ((id, serial, _), v) in part.iter().zip(&vectors) {
                // Gone meanwhile (removed), or refused (a vector unlike the
                // others): it stays unembedded and lexical.
                if let Err(error) = bank.set_vector(*id, *serial, v) {
                    tracing::debug!(pipeline = %embeddings.pipeline, %error, "embedding not used");
                }
            }
        }
        let bank = self.lock();
        let answers = self.lock_answers().clone();
        self.publish(&bank, answers);
        Ok(true)
    }

    /// [`Patterns::embed_pending`] on the runtime, then a refit if the
    /// embedded model is missing or behind; on failure, tried again after
    /// [`RETRY_EVERY`] or when the next example arrives. One at a time.
    pub(super) fn embed_in_background(self: &Arc<Self>) {
        let Some(embeddings) = &self.embeddings else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() || embeddings.cancel.is_cancelled() {
            return;
        }
        if embeddings.running.swap(true, Ordering::AcqRel) {
            embeddings.again.store(true, Ordering::Release);
            return;
        }
        let this = self.clone();
        embeddings.tasks.spawn(async move {
            let embeddings = this.embeddings.as_ref().expect("checked above");
            let retry = loop {
                embeddings.again.store(false, Ordering::Release);
                let failed = match this.embed_pending().await {
                    Ok(added) => {
                        if added && this.current.load().dense.is_none() {
                            this.refit_in_background();
                        }
                        false
                    }
                    Err(error) => {
                        embeddings.failed(&error, "embedding examples");
                        true
                    }
                };
                // An example that arrived during this pass may have missed
                // it (or met the endpoint back up): go again at once.
                if !embeddings.again.load(Ordering::Acquire) {
                    break failed;
                }
            };
            embeddings.running.store(false, Ordering::Release);
            if embeddings.again.swap(false, Ordering::AcqRel) {
                this.embed_in_background();
                return;
            }
            if retry {
                tokio::select! {
                    () = tokio::time::sleep(RETRY_EVERY) => {}
                    () = embeddings.cancel.cancelled() => return,
                }
                // A weak handle would let a replaced catalogue go; a strong
                // one keeps it a minute longer at most, which is harmless.
                this.embed_in_background();
            }
        });
    }

    /// Where the embeddings stand, for a bank that has a model: its names,
    /// examples embedded and waiting, whether the embedded model is
    /// fitted, the last failure.
    pub fn embeddings_status(&self) -> Option<serde_json::Value> {
        let embeddings = self.embeddings.as_ref()?;
        let (embedded, pending) = {
            let bank = self.lock();
            (bank.vectors(), bank.unembedded().count())
        };
        Some(serde_json::json!({
            "name": embeddings.embedder.name(),
            "model": embeddings.embedder.model(),
            "endpoint": embeddings.embedder.url(),
            "examples_embedded": embedded,
            "examples_pending": pending,
            "fitted": self.current.load().dense.is_some(),
            "last_error": *embeddings.last_error.lock().unwrap_or_else(|e| e.into_inner()),
        }))
    }

    /// Start embedding what has no vector yet, in the background (after a
    /// start whose embedding failed).
    pub fn resume_embedding(self: &Arc<Self>) {
        if self.lock().unembedded().next().is_some() {
            self.embed_in_background();
        }
    }
}
