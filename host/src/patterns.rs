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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use strata_patterns::{Model, PatternId, Rating};

/// A stored pattern, as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPattern {
    /// Its id in the store (unique across pipelines).
    pub id: i64,
    /// Its pipeline.
    pub pipeline: String,
    /// The approved answer.
    pub answer: String,
    /// The intent it answers, if known.
    pub label: Option<String>,
    /// `import`, `human` or `correction`.
    pub source: String,
    /// How much bad ratings raised its threshold (0 = none).
    pub strictness: f32,
    /// Its example questions.
    pub examples: Vec<String>,
}

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

/// What a lookup needs besides the model.
#[derive(Debug, Clone)]
struct Answer {
    text: String,
    source: String,
    label: Option<String>,
}

struct Snapshot {
    model: Model,
    answers: HashMap<PatternId, Answer>,
}

/// One pipeline's patterns and their model.
pub struct Patterns {
    catalogue: Mutex<strata_patterns::Bank>,
    answers: Mutex<HashMap<PatternId, Answer>>,
    current: ArcSwap<Snapshot>,
    fitting: Arc<AtomicBool>,
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
                answers: HashMap::new(),
            }),
            fitting: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A catalogue holding `stored`, fitted now (call it off the request
    /// path: a fit of ten thousand examples takes seconds).
    pub fn fitted(max_error: f64, stored: &[StoredPattern]) -> Patterns {
        let patterns = Patterns::new(max_error);
        {
            let mut bank = patterns.lock();
            let mut answers = patterns.lock_answers();
            for pattern in stored {
                add(&mut bank, &mut answers, pattern);
            }
            let model = Model::fit(&bank);
            patterns.current.store(Arc::new(Snapshot {
                model,
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

    /// The best pattern for `question`, if any pattern is close at all.
    pub fn lookup(&self, question: &str) -> Option<Lookup> {
        let snapshot = self.current.load();
        let found = snapshot.model.lookup(question)?;
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
        let model = self.current.load().model.refresh(bank);
        let due = {
            let stats = model.stats();
            stats.examples_since_fit
                >= REFIT_AFTER.max((stats.examples as f64 * REFIT_SHARE) as usize)
        };
        self.current.store(Arc::new(Snapshot { model, answers }));
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

    /// Fit on a copy of the catalogue, then publish that fit refreshed with
    /// the catalogue as it is by then.
    fn refit_now(&self) {
        let bank = self.lock().clone();
        let fitted = Model::fit(&bank);
        {
            let bank = self.lock();
            let answers = self.lock_answers().clone();
            let model = fitted.refresh(&bank);
            self.current.store(Arc::new(Snapshot { model, answers }));
        }
        self.fitting.store(false, Ordering::Release);
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
                    let _ = retuned.add_example(id, example.text.clone());
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

    /// What the model knows and how well it is expected to do.
    pub fn stats(&self) -> strata_patterns::Stats {
        self.current.load().model.stats()
    }

    /// The held-out predictions the current thresholds were calibrated on.
    pub fn risk_coverage(&self) -> Vec<strata_patterns::RiskCoverageRow> {
        strata_patterns::risk_coverage(self.current.load().model.held_out())
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
