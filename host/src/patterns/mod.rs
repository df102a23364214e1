//! The learned half of an answer bank: approved answers (patterns) with the
//! example questions they answer, and the model that matches a new
//! question to them (see the `strata-patterns` crate).
//!
//! Lookups read an immutable snapshot published through an `ArcSwap`, so
//! the request path never waits for a change or a fit. A change (a pattern
//! imported, a reviewer's answer learned, a rating) is applied to the
//! catalogue under a mutex and published at once with a cheap refresh: new
//! examples are matched by nearest neighbour straight away. When enough
//! examples have arrived since the last fit, the classifier is refitted and
//! recalibrated on the blocking pool and swapped in, keeping whatever
//! changed meanwhile.
//!
//! What is learned is made durable by the store before it gets here; at
//! start the host loads every pipeline's patterns from the store.
//!
//! With an embeddings model (`answer_bank.embeddings`), each example also
//! gets a vector from the provider, kept in the store per model name, and a
//! second model is fitted with those vectors as extra features beside the
//! lexical one; each is calibrated on its own. A lookup embeds the question
//! and asks the embedded model; when the endpoint fails or is slow, it asks
//! the lexical model instead, logs (at most once a minute per pipeline) and
//! says so, for the metrics. Examples the endpoint could not embed are
//! tried again when the next example arrives, or a minute later.

mod embedding;

pub use crate::store::StoredPattern;

pub use self::embedding::{Embeddings, FALLBACK_REASONS, PatternFeatures};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use strata_patterns::{Model, PatternId, Rating};

use self::embedding::attach;
use crate::embeddings::EmbedError;

/// The best match for a question.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// The pattern.
    pub pattern: i64,
    /// Its answer.
    pub answer: String,
    /// The model's score for it, 0 to 1.
    pub score: f64,
    /// Where the answer came from (`import`, `human`, `correction`).
    pub source: String,
    /// Always true: a pattern is an approved answer.
    pub approved: bool,
    /// The intent the answer belongs to, if known.
    pub label: Option<String>,
    /// Whether the match clears its calibrated threshold, so that answering
    /// keeps within the pipeline's error budget.
    pub trusted: bool,
}

/// Which model answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The model fitted with embeddings, given the question's vector.
    Embeddings,
    /// The lexical model: the bank has no embeddings model, or no embedded
    /// fit yet.
    Lexical,
    /// The lexical model because embedding the question failed, with the
    /// reason (`timeout`, `unavailable`, `rejected`, `invalid`).
    Fallback(&'static str),
}

impl Served {
    /// The `features` label of the lookup metric.
    pub fn features(self) -> &'static str {
        match self {
            Served::Embeddings => "embeddings",
            Served::Lexical => "lexical",
            Served::Fallback(_) => "lexical_fallback",
        }
    }
}

/// What a lookup needs besides the model.
#[derive(Debug, Clone)]
struct Answer {
    text: String,
    source: String,
    label: Option<String>,
}

struct Snapshot {
    model: Model,
    /// The model fitted with embeddings, once every example had a vector.
    dense: Option<Model>,
    answers: HashMap<PatternId, Answer>,
}

/// One pipeline's patterns and their model.
pub struct Patterns {
    catalogue: Mutex<strata_patterns::Bank>,
    answers: Mutex<HashMap<PatternId, Answer>>,
    current: ArcSwap<Snapshot>,
    fitting: Arc<AtomicBool>,
    embeddings: Option<Embeddings>,
}

impl std::fmt::Debug for Patterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Patterns")
            .field("patterns", &self.current.load().answers.len())
            .finish()
    }
}

/// Refit when this many examples arrived since the last fit, or this share
/// of the bank, whichever is larger: below, nearest neighbour serves them.
const REFIT_AFTER: usize = 50;

const REFIT_SHARE: f64 = 0.1;

impl Patterns {
    /// An empty catalogue whose thresholds keep the error of trusted
    /// answers within `max_error`.
    pub fn new(max_error: f64) -> Patterns {
        let bank = strata_patterns::Bank::new(config(max_error));
        let model = Model::fit(&bank);
        Patterns {
            catalogue: Mutex::new(bank),
            answers: Mutex::new(HashMap::new()),
            current: ArcSwap::from_pointee(Snapshot {
                model,
                dense: None,
                answers: HashMap::new(),
            }),
            fitting: Arc::new(AtomicBool::new(false)),
            embeddings: None,
        }
    }

    /// A catalogue holding `stored`, fitted now (call it off the request
    /// path: a fit of ten thousand examples takes seconds).
    pub fn fitted(max_error: f64, stored: &[StoredPattern]) -> Patterns {
        Self::fitted_with(max_error, stored, None, &HashMap::new())
    }

    /// Like [`Patterns::fitted`], with `embeddings` and the examples'
    /// vectors known so far, by (pattern, question): when every example
    /// has one, the embedded model is fitted too.
    pub fn fitted_with(
        max_error: f64,
        stored: &[StoredPattern],
        embeddings: Option<Embeddings>,
        vectors: &HashMap<(i64, String), Vec<f32>>,
    ) -> Patterns {
        let mut patterns = Patterns::new(max_error);
        patterns.embeddings = embeddings;
        {
            let mut bank = patterns.lock();
            let mut answers = patterns.lock_answers();
            for pattern in stored {
                add(&mut bank, &mut answers, pattern);
            }
            if !vectors.is_empty() {
                attach(&mut bank, vectors);
            }
            let model = Model::fit(&bank);
            let dense = patterns
                .embeddings
                .as_ref()
                .and_then(|_| Model::fit_embedded(&bank));
            patterns.current.store(Arc::new(Snapshot {
                model,
                dense,
                answers: answers.clone(),
            }));
        }
        patterns
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, strata_patterns::Bank> {
        self.catalogue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_answers(&self) -> std::sync::MutexGuard<'_, HashMap<PatternId, Answer>> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The best pattern for `question`, if any pattern is close at all,
    /// and which model found it. With embeddings, the question is embedded
    /// first (one attempt within the model's timeout, or `budget` if that
    /// is shorter); if that fails, the lexical model answers.
    pub async fn lookup(&self, question: &str, budget: Duration) -> (Option<Lookup>, Served) {
        let snapshot = self.current.load_full();
        let (found, served) = match (&self.embeddings, &snapshot.dense) {
            (Some(embeddings), Some(dense)) if !question.trim().is_empty() => {
                let result = match embeddings.embedder.embed_question(question, budget).await {
                    Ok(v) if Some(v.len()) == dense.embedding_dim() => Ok(v),
                    Ok(v) => Err(EmbedError::Invalid(format!(
                        "a vector of {} dimensions; the bank's have {}",
                        v.len(),
                        dense.embedding_dim().unwrap_or(0)
                    ))),
                    Err(error) => Err(error),
                };
                match result {
                    Ok(v) => (dense.lookup_embedded(question, &v), Served::Embeddings),
                    Err(error) => {
                        embeddings.failed(&error, "looking a question up");
                        (
                            snapshot.model.lookup(question),
                            Served::Fallback(error.reason()),
                        )
                    }
                }
            }
            _ => (snapshot.model.lookup(question), Served::Lexical),
        };
        (self.answer(&snapshot, found), served)
    }

    /// The lexical model's best pattern for `question`, without asking the
    /// embeddings endpoint.
    pub fn lookup_lexical(&self, question: &str) -> Option<Lookup> {
        let snapshot = self.current.load_full();
        let found = snapshot.model.lookup(question);
        self.answer(&snapshot, found)
    }

    fn answer(&self, snapshot: &Snapshot, found: Option<strata_patterns::Match>) -> Option<Lookup> {
        let found = found?;
        let answer = snapshot.answers.get(&found.pattern)?;
        Some(Lookup {
            pattern: found.pattern.0 as i64,
            answer: answer.text.clone(),
            score: f64::from(found.score),
            source: answer.source.clone(),
            approved: true,
            label: answer.label.clone(),
            trusted: found.trusted,
        })
    }

    /// Learn `stored` (a new pattern, or new examples or a new answer of a
    /// known one), published at once; refits in the background when due.
    pub fn learn(self: &Arc<Self>, stored: &StoredPattern) {
        let (new, due) = {
            let mut bank = self.lock();
            let new = bank.pattern(PatternId(stored.id as u64)).is_none();
            let mut answers = self.lock_answers();
            add(&mut bank, &mut answers, stored);
            (new, self.publish(&bank, answers.clone()))
        };
        // A new answer brings words the model's vocabulary lacks: until a
        // fit has seen them, its paraphrases look like nothing known.
        if new || due {
            self.refit_in_background();
        }
        self.embed_in_background();
    }

    /// Count a rating of an answer the pattern gave; returns its new
    /// strictness, for the store to keep.
    pub fn rate(self: &Arc<Self>, pattern: i64, good: bool) -> Option<f32> {
        let rating = if good { Rating::Good } else { Rating::Bad };
        // A rating adds no example, so it never makes a refit due.
        let mut bank = self.lock();
        let strictness = bank.rate(PatternId(pattern as u64), rating).ok()?;
        let answers = self.lock_answers().clone();
        self.publish(&bank, answers);
        Some(strictness)
    }

    /// Publish the model refreshed with `bank`; returns whether enough
    /// examples arrived since the fit that a refit is due (the caller starts
    /// it once the catalogue is unlocked). Called with the catalogue locked,
    /// so changes publish in the order they were made and the catalogue is
    /// never copied for it; lookups read the previous snapshot meanwhile.
    fn publish(&self, bank: &strata_patterns::Bank, answers: HashMap<PatternId, Answer>) -> bool {
        let current = self.current.load();
        let model = current.model.refresh(bank);
        let dense = current.dense.as_ref().map(|d| d.refresh(bank));
        let due = {
            let stats = model.stats();
            stats.examples_since_fit
                >= REFIT_AFTER.max((stats.examples as f64 * REFIT_SHARE) as usize)
        };
        self.current.store(Arc::new(Snapshot {
            model,
            dense,
            answers,
        }));
        due
    }

    /// Fit again on the blocking pool, then publish the fit refreshed with
    /// whatever changed meanwhile. One fit at a time.
    fn refit_in_background(self: &Arc<Self>) {
        if self.fitting.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (a command-line tool): refit here.
            self.refit_now();
            return;
        };
        let this = self.clone();
        runtime.spawn_blocking(move || this.refit_now());
    }

    /// Fit now, on this thread (call it on the blocking pool), unless a
    /// fit is running already.
    pub fn refit_blocking(&self) {
        if !self.fitting.swap(true, Ordering::AcqRel) {
            self.refit_now();
        }
    }

    /// Fit on a copy of the catalogue, then publish that fit refreshed with
    /// the catalogue as it is by then.
    fn refit_now(&self) {
        let bank = self.lock().clone();
        let fitted = Model::fit(&bank);
        // Without a vector for every example (the endpoint was down), the
        // previous embedded fit serves on, refreshed, until one can be made.
        let dense = self
            .embeddings
            .as_ref()
            .and_then(|_| Model::fit_embedded(&bank));
        {
            let bank = self.lock();
            let answers = self.lock_answers().clone();
            let model = fitted.refresh(&bank);
            let dense = dense
                .or_else(|| self.current.load().dense.clone())
                .map(|d| d.refresh(&bank));
            self.current.store(Arc::new(Snapshot {
                model,
                dense,
                answers,
            }));
        }
        self.fitting.store(false, Ordering::Release);
        // The last vectors the embedded model waited for may have come
        // while this fit ran on a copy without them: fit again for it.
        let embedded_since = self.embeddings.is_some() && self.current.load().dense.is_none() && {
            let bank = self.lock();
            bank.vectors() > 0 && bank.unembedded().next().is_none()
        };
        if embedded_since {
            self.refit_blocking();
        }
    }

    /// Hold trusted answers to a new error budget: the catalogue is kept,
    /// the thresholds are calibrated again (in the background).
    pub fn retune(self: &Arc<Self>, max_error: f64) {
        {
            let mut bank = self.lock();
            if bank.config().calibration.max_error == max_error {
                return;
            }
            let mut retuned = strata_patterns::Bank::new(config(max_error));
            for pattern in bank.patterns() {
                let id = pattern.id();
                let _ = retuned.add_pattern(
                    id,
                    pattern.answer().to_owned(),
                    pattern.label().map(str::to_owned),
                    pattern.source().to_owned(),
                );
                let _ = retuned.set_strictness(id, pattern.strictness());
                for example in pattern.examples() {
                    if let Ok(serial) = retuned.add_example(id, example.text.clone())
                        && let Some(v) = &example.vector
                    {
                        let _ = retuned.set_vector(id, serial, v);
                    }
                }
            }
            *bank = retuned;
        }
        self.refit_in_background();
    }

    /// Every pattern's answer with its label (those that have one).
    pub fn answer_labels(&self) -> Vec<(String, String)> {
        self.current
            .load()
            .answers
            .values()
            .filter_map(|a| Some((a.text.clone(), a.label.clone()?)))
            .collect()
    }

    /// What the model knows and how well it is expected to do: the
    /// embedded model when there is one (it is the one lookups ask first),
    /// else the lexical one.
    pub fn stats(&self) -> strata_patterns::Stats {
        let current = self.current.load();
        current.dense.as_ref().unwrap_or(&current.model).stats()
    }

    /// The lexical model's statistics, whatever else there is.
    pub fn lexical_stats(&self) -> strata_patterns::Stats {
        self.current.load().model.stats()
    }

    /// The held-out predictions the current thresholds were calibrated on.
    pub fn risk_coverage(&self) -> Vec<strata_patterns::RiskCoverageRow> {
        let current = self.current.load();
        strata_patterns::risk_coverage(current.dense.as_ref().unwrap_or(&current.model).held_out())
    }
}

fn add(
    bank: &mut strata_patterns::Bank,
    answers: &mut HashMap<PatternId, Answer>,
    stored: &StoredPattern,
) {
    let id = PatternId(stored.id as u64);
    let answer = Answer {
        text: stored.answer.clone(),
        source: stored.source.clone(),
        label: stored.label.clone(),
    };
    match bank.pattern(id) {
        Some(known) if known.answer() != stored.answer => {
            let _ = bank.set_answer(id, stored.answer.clone(), stored.source.clone());
        }
        Some(_) => {}
        None => {
            let _ = bank.add_pattern(
                id,
                stored.answer.clone(),
                stored.label.clone(),
                stored.source.clone(),
            );
            if stored.strictness > 0.0 {
                let _ = bank.set_strictness(id, stored.strictness);
            }
        }
    }
    for question in &stored.examples {
        let _ = bank.add_example(id, question.clone());
    }
    answers.insert(id, answer);
}

/// The learning settings for an error budget of `max_error`.
pub fn config(max_error: f64) -> strata_patterns::Config {
    let mut config = strata_patterns::Config::default();
    config.calibration.max_error = max_error;
    config
}
