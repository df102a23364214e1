//! The answer banks: one per pipeline, what the `cache` interface reads and
//! writes, and where human answers and corrections land.
//!
//! Unapproved answers (stored by stages, or remembered from a model's
//! answer) live in a bounded in-memory cache (moka) with a time to live.
//! Approved answers (a reviewer's resolution, a correction sent as feedback)
//! are kept apart, never evicted, never replaced by an unapproved one, and
//! written to the store so they survive a restart. Banks belong to the
//! process, not to a generation: a reload keeps every answer.
//!
//! Hosts of a cluster (`[shared]`) share their banks: every change made
//! here (an answer stored, approved or dropped) is also sent to
//! [`Banks::share`]'s receiver for the other hosts, and theirs are applied
//! with [`Bank::apply`], which sends nothing on.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::manifest::AnswerBankSpec;
pub use crate::patterns::{Lookup, Patterns, Served, StoredPattern};

/// A remembered answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The answer text.
    pub answer: String,
    /// `stage`, `model`, `human` or `correction`.
    pub source: String,
    /// Whether a person approved it.
    pub approved: bool,
}

#[derive(Debug, Clone)]
struct Expiring {
    entry: Entry,
    expires: Instant,
}

/// A change to one pipeline's bank, as the other hosts of a cluster hear it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BankChange {
    /// The pipeline whose bank changed.
    pub pipeline: String,
    /// The key the answer is stored under.
    pub key: String,
    /// What happened to it.
    pub change: Change,
}

/// What happened to an answer-bank key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// An unapproved answer was stored, to live `ttl_ms` at most.
    Put {
        /// The answer.
        answer: String,
        /// `stage` or `model`.
        source: String,
        /// Its time to live, in milliseconds.
        ttl_ms: u64,
    },
    /// An answer was approved (the origin made it durable).
    Approve {
        /// The answer.
        answer: String,
        /// `human` or `correction`.
        source: String,
    },
    /// An unapproved answer was dropped (rated bad).
    Forget,
}

/// Where a bank sends its changes, once the host shares its banks.
#[derive(Clone)]
struct Outbox {
    pipeline: String,
    sender: Arc<OnceLock<mpsc::UnboundedSender<BankChange>>>,
}

impl Outbox {
    /// Whether the host shares its banks.
    fn active(&self) -> bool {
        self.sender.get().is_some()
    }

    fn send(&self, key: &str, change: Change) {
        if let Some(sender) = self.sender.get() {
            // Nobody receiving means the host is stopping.
            let _ = sender.send(BankChange {
                pipeline: self.pipeline.clone(),
                key: key.to_owned(),
                change,
            });
        }
    }
}

/// One pipeline's bank.
pub struct Bank {
    spec: AnswerBankSpec,
    outbox: Outbox,
    unapproved: Cache<String, Expiring>,
    approved: RwLock<HashMap<String, Entry>>,
    /// Approved answers with example questions, matched by similarity.
    patterns: Arc<Patterns>,
}

impl Bank {
    fn new(spec: AnswerBankSpec, patterns: Arc<Patterns>, outbox: Outbox) -> Bank {
        Bank {
            outbox,
            patterns,
            unapproved: Cache::builder()
                .max_capacity(spec.capacity)
                .time_to_live(Duration::from_secs(spec.ttl_s))
                .build(),
            approved: RwLock::new(HashMap::new()),
            spec,
        }
    }

    /// The answer under `key`: an approved one first.
    pub fn get(&self, key: &str) -> Option<Entry> {
        if let Some(entry) = self
            .approved
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
        {
            return Some(entry.clone());
        }
        let found = self.unapproved.get(key)?;
        if found.expires <= Instant::now() {
            self.unapproved.invalidate(key);
            return None;
        }
        Some(found.entry)
    }

    /// Remember an unapproved answer; `ttl` of zero means the bank's default.
    /// An approved answer under the same key stays.
    pub fn put(&self, key: String, answer: String, source: &str, ttl: Duration) {
        // Copied only when the other hosts are told.
        let copy = self.outbox.active().then(|| (key.clone(), answer.clone()));
        if let Some(ttl) = self.store_unapproved(key, answer, source, ttl)
            && let Some((key, answer)) = copy
        {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            let source = source.to_owned();
            self.outbox.send(
                &key,
                Change::Put {
                    answer,
                    source,
                    ttl_ms,
                },
            );
        }
    }

    /// Apply a change another host of the cluster made (sending nothing on).
    pub fn apply(&self, key: String, change: Change) {
        match change {
            Change::Put {
                answer,
                source,
                ttl_ms,
            } => {
                // A zero would mean the bank's default; a remote answer
                // keeps at most what it had left.
                let ttl = Duration::from_millis(ttl_ms.max(1));
                self.store_unapproved(key, answer, &source, ttl);
            }
            Change::Approve { answer, source } => self.keep_approved(key, answer, &source),
            Change::Forget => self.unapproved.invalidate(&key),
        }
    }

    /// Store an unapproved answer unless an approved one holds the key;
    /// returns the time to live it was given.
    fn store_unapproved(
        &self,
        key: String,
        answer: String,
        source: &str,
        ttl: Duration,
    ) -> Option<Duration> {
        if self
            .approved
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key)
        {
            return None;
        }
        let ttl = if ttl.is_zero() {
            Duration::from_secs(self.spec.ttl_s)
        } else {
            ttl.min(Duration::from_secs(self.spec.ttl_s))
        };
        self.unapproved.insert(
            key,
            Expiring {
                entry: Entry {
                    answer,
                    source: source.to_owned(),
                    approved: false,
                },
                expires: Instant::now() + ttl,
            },
        );
        Some(ttl)
    }

    /// Keep an approved answer (the caller has made it durable).
    pub fn approve(&self, key: String, answer: String, source: &str) {
        let change = Change::Approve {
            answer: answer.clone(),
            source: source.to_owned(),
        };
        self.outbox.send(&key, change);
        self.keep_approved(key, answer, source);
    }

    fn keep_approved(&self, key: String, answer: String, source: &str) {
        self.unapproved.invalidate(&key);
        self.approved
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                key,
                Entry {
                    answer,
                    source: source.to_owned(),
                    approved: true,
                },
            );
    }

    /// The approved answer whose examples `question` is most like, and
    /// whether the match is trusted under the pipeline's error budget; and
    /// which model found it (see [`Patterns::lookup`]).
    /// Embedding the question may take `budget` at most.
    pub async fn lookup(&self, question: &str, budget: Duration) -> (Option<Lookup>, Served) {
        self.patterns.lookup(question, budget).await
    }

    /// The learned half of the bank.
    pub fn patterns(&self) -> &Arc<Patterns> {
        &self.patterns
    }

    /// Forget an unapproved answer (it was rated bad). Approved answers are
    /// only replaced, by a correction.
    pub fn forget_unapproved(&self, key: &str) -> bool {
        let had = self.unapproved.contains_key(key);
        self.unapproved.invalidate(key);
        self.outbox.send(key, Change::Forget);
        had
    }
}

/// Every pipeline's bank.
///
/// Patterns are kept apart from the banks' settings: a bank rebuilt for new
/// bounds keeps its pipeline's patterns.
#[derive(Default)]
pub struct Banks {
    banks: RwLock<HashMap<String, Arc<Bank>>>,
    patterns: RwLock<HashMap<String, Arc<Patterns>>>,
    /// The store's bank version the patterns were last loaded at, and the
    /// embeddings settings they were loaded with.
    loaded: std::sync::Mutex<Option<(crate::store::BankVersion, String)>>,
    /// Where background embedding runs, and the signal that stops it: the
    /// host's own, so shutdown waits for a pass in hand before the store
    /// closes (a fresh, untracked pair for tools).
    tasks: tokio_util::task::TaskTracker,
    cancel: tokio_util::sync::CancellationToken,
    /// Where every bank's changes go once the host shares them.
    outbox: Arc<OnceLock<mpsc::UnboundedSender<BankChange>>>,
}

impl Banks {
    /// Banks whose background work runs on `tasks` and stops on `cancel`.
    pub fn tracked(
        tasks: tokio_util::task::TaskTracker,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Banks {
        Banks {
            tasks,
            cancel,
            ..Banks::default()
        }
    }

    /// Send every change made here to the returned receiver from now on,
    /// for the other hosts of the cluster; `None` if already shared.
    pub fn share(&self) -> Option<mpsc::UnboundedReceiver<BankChange>> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.outbox.set(sender).ok()?;
        Some(receiver)
    }

    fn outbox(&self, pipeline: &str) -> Outbox {
        Outbox {
            pipeline: pipeline.to_owned(),
            sender: self.outbox.clone(),
        }
    }

    /// The bank of `pipeline`, created with `spec` if it has none. Its
    /// settings are the last ones [`Banks::configure`] applied: a request
    /// still running on an older generation uses the bank as it is.
    pub fn bank(&self, pipeline: &str, spec: &AnswerBankSpec) -> Arc<Bank> {
        if let Some(bank) = self
            .banks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(pipeline)
        {
            return bank.clone();
        }
        self.banks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pipeline.to_owned())
            .or_insert_with(|| {
                let patterns = self.patterns_of(pipeline, spec);
                Arc::new(Bank::new(spec.clone(), patterns, self.outbox(pipeline)))
            })
            .clone()
    }

    /// `pipeline`'s patterns, created empty if it has none yet.
    fn patterns_of(&self, pipeline: &str, spec: &AnswerBankSpec) -> Arc<Patterns> {
        self.patterns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pipeline.to_owned())
            .or_insert_with(|| Arc::new(Patterns::new(spec.max_error)))
            .clone()
    }

    /// Serve `patterns` for `pipeline` from now on (loaded from the store
    /// and fitted off the request path).
    pub fn install_patterns(&self, pipeline: &str, patterns: Arc<Patterns>) {
        self.patterns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pipeline.to_owned(), patterns.clone());
        let mut banks = self.banks.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = banks.get(pipeline) {
            let fresh = Bank::new(old.spec.clone(), patterns, self.outbox(pipeline));
            *fresh.approved.write().unwrap_or_else(|e| e.into_inner()) = old
                .approved
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            banks.insert(pipeline.to_owned(), Arc::new(fresh));
        }
    }

    /// Give `pipeline`'s bank the settings of the generation being
    /// published. A bank whose settings changed is rebuilt keeping its
    /// approved answers (unapproved ones are cheap to get again and may not
    /// fit the new bounds).
    pub fn configure(&self, pipeline: &str, spec: &AnswerBankSpec) {
        let patterns = self.patterns_of(pipeline, spec);
        patterns.retune(spec.max_error);
        let mut banks = self.banks.write().unwrap_or_else(|e| e.into_inner());
        let fresh = Bank::new(spec.clone(), patterns, self.outbox(pipeline));
        if let Some(old) = banks.get(pipeline) {
            if old.spec == *spec {
                return;
            }
            let approved = old
                .approved
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            *fresh.approved.write().unwrap_or_else(|e| e.into_inner()) = approved;
        }
        banks.insert(pipeline.to_owned(), Arc::new(fresh));
    }
}

/// Load the patterns again if the store's have changed since they were
/// last loaded (an import while the host ran), or the manifest's embeddings
/// settings have.
pub async fn reload_patterns(
    banks: &Banks,
    manifest: &crate::manifest::Manifest,
    store: &crate::store::Store,
    client: &reqwest::Client,
) -> anyhow::Result<()> {
    let version = store.bank_version().await?;
    let loaded = Some((version, embeddings_settings(manifest)));
    if *banks.loaded.lock().unwrap_or_else(|e| e.into_inner()) == loaded {
        return Ok(());
    }
    load_patterns(banks, manifest, store, client).await
}

/// What a change of requires loading the patterns again: every pipeline's
/// embeddings model, with its provider.
fn embeddings_settings(manifest: &crate::manifest::Manifest) -> String {
    let mut settings = String::new();
    for (name, pipeline) in &manifest.pipelines {
        if let Some(wanted) = &pipeline.answer_bank.embeddings {
            let spec = manifest.models.embeddings.get(wanted);
            let provider = spec.and_then(|s| manifest.models.providers.get(&s.provider));
            settings.push_str(&format!("{name}={wanted}:{spec:?}:{provider:?};"));
        }
    }
    settings
}

/// Load every pipeline's patterns from `store`, fit them (on the blocking
/// pool) and serve them from `banks`, with the manifest's settings. A
/// pipeline with an embeddings model gets its examples' stored vectors,
/// embeds those without one (through `client`) and keeps them; if the
/// endpoint fails, it starts with the lexical model and tries again later.
pub async fn load_patterns(
    banks: &Banks,
    manifest: &crate::manifest::Manifest,
    store: &crate::store::Store,
    client: &reqwest::Client,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let version = store.bank_version().await?;
    let stored = store
        .patterns()
        .await
        .context("cannot read the answer bank's patterns")?;
    for (name, pipeline) in &manifest.pipelines {
        let mine: Vec<StoredPattern> = stored
            .iter()
            .filter(|p| *name == p.pipeline)
            .cloned()
            .collect();
        let max_error = pipeline.answer_bank.max_error;
        let (embeddings, vectors) = match &pipeline.answer_bank.embeddings {
            None => (None, HashMap::new()),
            Some(wanted) => {
                let spec = &manifest.models.embeddings[wanted];
                let provider = &manifest.models.providers[&spec.provider];
                let embedder =
                    crate::embeddings::Embedder::new(wanted, spec, provider, client.clone())
                        .map_err(|why| anyhow::anyhow!("embeddings model \"{wanted}\": {why}"))?;
                let vectors: HashMap<(i64, String), Vec<f32>> = store
                    .example_vectors(name.to_string(), spec.model.clone())
                    .await
                    .context("cannot read the examples' embeddings")?
                    .into_iter()
                    .map(|(pattern, question, v)| ((pattern, question), v))
                    .collect();
                let embeddings =
                    crate::patterns::Embeddings::new(embedder, name, Some(store.clone()))
                        .tracked(banks.tasks.clone(), banks.cancel.clone());
                (Some(embeddings), vectors)
            }
        };
        let with_embeddings = embeddings.is_some();
        let patterns = tokio::task::spawn_blocking(move || {
            Patterns::fitted_with(max_error, &mine, embeddings, &vectors)
        })
        .await
        .context("the fit of the answer bank failed")?;
        let patterns = Arc::new(patterns);
        // Examples without a vector (new since the last start, or all of
        // them under a new model) are embedded before serving, as the fit
        // is done before serving; the embedded model is fitted then.
        if with_embeddings {
            match patterns.embed_pending().await {
                Ok(true) => {
                    let refit = patterns.clone();
                    tokio::task::spawn_blocking(move || refit.refit_blocking())
                        .await
                        .context("the fit of the answer bank failed")?;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(
                        pipeline = %name, reason = error.reason(), %error,
                        "cannot embed the answer bank's examples; it starts with its lexical \
                         model and tries again later"
                    );
                    patterns.resume_embedding();
                }
            }
        }
        banks.install_patterns(name, patterns);
        banks.configure(name, &pipeline.answer_bank);
    }
    *banks.loaded.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((version, embeddings_settings(manifest)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AnswerBankSpec {
        AnswerBankSpec {
            capacity: 100,
            ttl_s: 60,
            remember: vec![],
            max_error: 0.05,
            embeddings: None,
        }
    }

    #[test]
    fn a_shared_bank_sends_its_own_changes_and_applies_others_quietly() {
        let banks = Banks::default();
        let before = banks.bank("p", &spec());
        before.put(
            "k0".into(),
            "before sharing".into(),
            "stage",
            Duration::ZERO,
        );
        let mut changes = banks.share().expect("shared once");
        assert!(banks.share().is_none());
        assert!(changes.try_recv().is_err(), "nothing from before sharing");
        let bank = banks.bank("p", &spec());
        bank.put(
            "k".into(),
            "model says".into(),
            "model",
            Duration::from_secs(5),
        );
        bank.approve("k2".into(), "human says".into(), "human");
        bank.forget_unapproved("k");
        let sent: Vec<BankChange> = std::iter::from_fn(|| changes.try_recv().ok()).collect();
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[0].pipeline, "p");
        assert_eq!(
            sent[0].change,
            Change::Put {
                answer: "model says".into(),
                source: "model".into(),
                ttl_ms: 5000
            }
        );
        assert!(matches!(sent[1].change, Change::Approve { .. }));
        assert_eq!(sent[2].change, Change::Forget);

        // Another host's changes apply here and are not sent on.
        let other = Banks::default().bank("p", &spec());
        for change in sent {
            other.apply(change.key, change.change);
        }
        assert_eq!(other.get("k"), None, "put, then forgotten");
        assert!(other.get("k2").is_some_and(|e| e.approved));
        bank.apply("k3".into(), Change::Forget);
        assert!(changes.try_recv().is_err());
    }

    #[test]
    fn approved_answers_win_and_stay() {
        let bank = Banks::default().bank("p", &spec());
        bank.put("k".into(), "model says".into(), "model", Duration::ZERO);
        assert_eq!(bank.get("k").unwrap().source, "model");
        bank.approve("k".into(), "human says".into(), "human");
        bank.put("k".into(), "model again".into(), "model", Duration::ZERO);
        let entry = bank.get("k").unwrap();
        assert_eq!(
            (entry.answer.as_str(), entry.approved),
            ("human says", true)
        );
        assert!(!bank.forget_unapproved("k"));
        assert!(bank.get("k").is_some());
    }

    #[test]
    fn unapproved_answers_expire() {
        let bank = Banks::default().bank("p", &spec());
        bank.put("k".into(), "a".into(), "stage", Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(bank.get("k").is_none());
    }

    #[test]
    fn changed_settings_keep_approved_answers() {
        let banks = Banks::default();
        banks
            .bank("p", &spec())
            .approve("k".into(), "a".into(), "human");
        let mut bigger = spec();
        bigger.capacity = 1000;
        banks.configure("p", &bigger);
        assert!(banks.bank("p", &bigger).get("k").is_some());
        assert_eq!(banks.bank("p", &spec()).spec, bigger);
    }

    #[test]
    fn a_lookup_with_older_settings_does_not_rebuild_the_bank() {
        let banks = Banks::default();
        let mut bigger = spec();
        bigger.capacity = 1000;
        banks.configure("p", &bigger);
        banks
            .bank("p", &bigger)
            .put("k".into(), "a".into(), "model", Duration::ZERO);
        // A request still running on the previous generation.
        assert!(banks.bank("p", &spec()).get("k").is_some());
        assert!(banks.bank("p", &bigger).get("k").is_some());
    }
}
