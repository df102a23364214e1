//! The fitted answer bank: fitting the classifier and calibrating its
//! thresholds (the expensive part, run off the request path), refreshing a
//! fitted model with what changed since (cheap), and looking questions up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::bank::{Bank, PatternId};
use crate::calibrate::{self, Calibrated, Scored};
use crate::dense::{self, DenseFit, DenseIndex};
use crate::features::{SparseVec, Vectoriser};
use crate::folds;
use crate::linear::Linear;
use crate::neighbours::Neighbours;
use crate::rng::SplitMix64;
use crate::text;

/// How a match was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Via {
    /// The classifier, trained on patterns with enough examples; the score
    /// is the probability it gives the pattern.
    Classifier,
    /// The most similar single example; the score is its cosine
    /// similarity. Used for patterns with too few examples to learn from
    /// and for examples added since the last fit.
    Neighbour,
}

/// The answer to a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Match {
    /// The pattern whose answer fits best.
    pub pattern: PatternId,
    /// Its score in `[0, 1]`, on the scale `via` says.
    pub score: f32,
    /// Whether the score clears the pattern's calibrated threshold: the
    /// answer may be given without a person looking at it.
    pub trusted: bool,
    /// Which of the two matchers found it.
    pub via: Via,
}

/// What a fit produced: everything that is expensive to compute and does
/// not change until the next fit. Serialisable, so it can be snapshotted
/// and later turned back into a [`Model`] with [`Model::from_fitted`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Fitted {
    vectoriser: Vectoriser,
    /// Absent when fewer than two patterns have enough examples.
    linear: Option<Linear>,
    /// The pattern of each class of `linear`.
    classes: Vec<PatternId>,
    /// The creation serial of each class's pattern at fit time.
    created: Vec<u64>,
    /// The highest example serial the fit saw.
    fitted_upto: u64,
    classifier: Calibrated,
    neighbour: Calibrated,
    held_out: Vec<Scored>,
    /// What the classifier's threshold applies to.
    #[serde(default)]
    score: calibrate::Score,
    /// Present when fitted with embeddings ([`Model::fit_embedded`]).
    #[serde(default)]
    dense: Option<DenseFit>,
}

/// A per-pattern threshold above the global one, from bad ratings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Override {
    /// The pattern.
    pub pattern: PatternId,
    /// Its strictness (see [`crate::Pattern::strictness`]).
    pub strictness: f32,
    /// Its classifier threshold, if the classifier trusts anything.
    pub classifier_threshold: Option<f32>,
    /// Its nearest-neighbour threshold, if that trusts anything.
    pub neighbour_threshold: Option<f32>,
}

/// What a model knows and how well it is expected to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Patterns in the bank the model was last refreshed from.
    pub patterns: usize,
    /// Their examples.
    pub examples: usize,
    /// Patterns the classifier was trained on.
    pub classifier_patterns: usize,
    /// Examples answered by nearest neighbour: those of patterns with too
    /// few examples, and those added since the fit.
    pub neighbour_examples: usize,
    /// Examples added since the fit; refit when this grows.
    pub examples_since_fit: usize,
    /// Features in the vocabulary.
    pub features: usize,
    /// The classifier's global threshold, with the coverage and precision
    /// it had on cross-validated held-out predictions.
    pub classifier: Calibrated,
    /// The same for nearest-neighbour matches (leave-one-out).
    pub neighbour: Calibrated,
    /// Patterns with a threshold above the global ones.
    pub overrides: Vec<Override>,
    /// Approximate heap size of the model in bytes.
    pub heap_bytes: usize,
    /// The embeddings' length, for a model fitted with them.
    #[serde(default)]
    pub embedding_dim: Option<usize>,
}

/// A fitted, immutable answer bank that answers lookups.
///
/// Share it as `Arc<Model>` and swap in a new one (fitted with
/// [`Model::fit`] or refreshed with [`Model::refresh`]) when the bank
/// changes; lookups in flight keep the model they started with.
#[derive(Debug, Clone)]
pub struct Model {
    fitted: Arc<Fitted>,
    /// Whether each class's pattern is still in the bank.
    live: Arc<Vec<bool>>,
    neighbours: Arc<Neighbours<PatternId>>,
    /// The vectors behind `neighbours`, by example serial, so a refresh
    /// vectorises only the examples it has not seen.
    vectors: Arc<FxHashMap<u64, SparseVec>>,
    strictness: Arc<FxHashMap<PatternId, f32>>,
    /// With embeddings: the vectors of examples added since the fit,
    /// searched exactly, and the patterns (id, creation serial) still in
    /// the bank, which the fit's index is filtered by.
    recent: Arc<Vec<(Arc<[f32]>, PatternId)>>,
    alive: Arc<FxHashSet<(PatternId, u64)>>,
    near_duplicate: f32,
    min_known_words: f32,
    patterns: usize,
    examples: usize,
    examples_since_fit: usize,
}

impl Model {
    /// Fits the classifier on `bank` and calibrates thresholds to its
    /// error budget. Expensive (seconds for ten thousand examples): run it
    /// off the request path and swap the result in.
    pub fn fit(bank: &Bank) -> Model {
        Self::fit_with(bank, None)
    }

    /// Fits like [`Model::fit`] with every example's embedding as extra
    /// features (see [`crate::dense`]): the classifier learns from both,
    /// and nearest neighbours are found by dense cosine through an
    /// approximate index. `None` while some example has no vector (or the
    /// bank has no example): fit the lexical model alone meanwhile.
    /// Look questions up with [`Model::lookup_embedded`].
    pub fn fit_embedded(bank: &Bank) -> Option<Model> {
        let (dim, vectors) = dense::example_vectors(bank)?;
        Some(Self::fit_with(bank, Some((dim, vectors))))
    }

    fn fit_with(bank: &Bank, dense: Option<(usize, Vec<Arc<[f32]>>)>) -> Model {
        let config = bank.config();
        let mut pattern_of: Vec<PatternId> = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        for pattern in bank.patterns() {
            for example in pattern.examples() {
                pattern_of.push(pattern.id());
                texts.push(text::normalise(&example.text));
            }
        }
        let vectoriser = Vectoriser::fit(texts.iter().map(String::as_str), &config.features);
        let mut xs: Vec<SparseVec> = texts
            .iter()
            .map(|t| vectoriser.vectorise_normalised(t))
            .collect();
        // With embeddings, each vector gets its dense block after the
        // vocabulary's indices.
        let offset = vectoriser.dim();
        let mut dense = dense.map(|(dim, vectors)| {
            let fit = DenseFit {
                dim,
                weight: config.dense_weight,
                index: DenseIndex::build(dim, Vec::new()),
            };
            for (x, v) in xs.iter_mut().zip(&vectors) {
                *x = fit.combine(x, v, offset);
            }
            (fit, vectors)
        });

        let classes: Vec<PatternId> = bank
            .patterns()
            .filter(|p| p.examples().len() >= config.min_examples.max(1))
            .map(|p| p.id())
            .collect();
        let class_of: FxHashMap<PatternId, usize> =
            classes.iter().enumerate().map(|(k, &id)| (id, k)).collect();
        let trained: Vec<usize> = if classes.len() >= 2 {
            (0..xs.len())
                .filter(|&i| class_of.contains_key(&pattern_of[i]))
                .collect()
        } else {
            Vec::new()
        };
        let ys: Vec<usize> = trained.iter().map(|&i| class_of[&pattern_of[i]]).collect();

        // Folds are stratified by pattern and keep near-duplicate
        // questions together (see `folds::assign`).
        let keys: Vec<Vec<u64>> = texts.iter().map(|t| text::near_keys(t)).collect();
        let folds = config.calibration.folds.max(2);
        let trained_keys: Vec<Vec<u64>> = trained.iter().map(|&i| keys[i].clone()).collect();
        let fold_of = folds::assign(&ys, &trained_keys, folds, config.calibration.seed);

        // Jobs: one per fold, the final fit, and the neighbour calibration.
        // They are independent and run on up to `threads` threads; each is
        // deterministic, so the result does not depend on the thread count.
        enum Done {
            Fold(Vec<Scored>),
            Final(Linear),
            Neighbour(Vec<Scored>),
        }
        let dim = offset + dense.as_ref().map_or(0, |(fit, _)| fit.dim);
        // Every model, fold or final, takes the same number of SGD steps:
        // `epochs` passes over an average fold's training part. With weak
        // regularisation the weights, and so the scores, grow with the
        // number of steps; a final model trained for more steps than the
        // fold models would score more confidently than the thresholds
        // calibrated on them assume, and trust answers it should not.
        let steps = config.train.epochs * (trained.len() * (folds - 1)).div_ceil(folds);
        let train_on = |keep: &dyn Fn(usize) -> bool| {
            let mut fx = Vec::new();
            let mut fy = Vec::new();
            for (j, &i) in trained.iter().enumerate() {
                if keep(j) {
                    fx.push(&xs[i]);
                    fy.push(ys[j]);
                }
            }
            Linear::train(&fx, &fy, classes.len(), dim, steps, &config.train)
        };
        let has_linear = !trained.is_empty();
        let jobs = if has_linear { folds + 2 } else { 1 };
        let done = parallel(jobs, config.threads, |job| {
            if job == jobs - 1 {
                let (queries, seed) = (
                    config.calibration.neighbour_queries,
                    config.calibration.seed,
                );
                return Done::Neighbour(match &dense {
                    Some((_, vectors)) => {
                        dense::neighbour_held_out(vectors, &pattern_of, &keys, queries, seed)
                    }
                    None => neighbour_held_out(&xs, &pattern_of, &keys, queries, seed),
                });
            }
            if job == folds {
                return Done::Final(train_on(&|_| true));
            }
            let model = train_on(&|j| fold_of[j] != job);
            let mut probs = Vec::new();
            let scored = (0..trained.len())
                .filter(|&j| fold_of[j] == job)
                .map(|j| {
                    model.probabilities(&xs[trained[j]], |_| true, &mut probs);
                    let (k, p) = argmax(&probs).expect("a fold model has classes");
                    Scored {
                        score: config.calibration.score.of(&probs, p),
                        correct: k == ys[j],
                    }
                })
                .collect::<Vec<_>>();
            Done::Fold(scored)
        });
        let mut held_out = Vec::new();
        let mut linear = None;
        let mut neighbour_scored = Vec::new();
        for result in done {
            match result {
                Done::Fold(s) => held_out.extend(s),
                Done::Final(l) => linear = Some(l),
                Done::Neighbour(s) => neighbour_scored = s,
            }
        }
        // The dense index holds every example: an approximate search is
        // cheap however many there are, and the dense neighbour threshold
        // was calibrated on all of them, so a question the classifier
        // cannot vouch for (its words are unknown) may still be answered
        // by a close enough meaning.
        if let Some((fit, vectors)) = &mut dense {
            let points = (0..xs.len())
                .map(|i| {
                    let created = bank.pattern(pattern_of[i]).map_or(0, |p| p.created());
                    (vectors[i].clone(), (pattern_of[i], created))
                })
                .collect();
            fit.index = DenseIndex::build(fit.dim, points);
        }
        let calibration = &config.calibration;
        let fitted = Fitted {
            vectoriser,
            classifier: calibrate::threshold(&held_out, calibration.max_error, calibration.z),
            neighbour: calibrate::threshold(
                &neighbour_scored,
                calibration.max_error,
                calibration.z,
            ),
            linear,
            created: if has_linear {
                classes
                    .iter()
                    .map(|&id| bank.pattern(id).map_or(0, |p| p.created()))
                    .collect()
            } else {
                Vec::new()
            },
            classes: if has_linear { classes } else { Vec::new() },
            fitted_upto: bank.last_serial(),
            held_out,
            score: calibration.score,
            dense: dense.map(|(fit, _)| fit),
        };
        Model::from_fitted(Arc::new(fitted), bank)
    }

    /// A model from a fit (possibly a deserialised snapshot) and the
    /// current bank: patterns removed since are never answered, examples
    /// added since are matched by nearest neighbour, and ratings take
    /// effect. Costs time in proportion to the examples added since the fit
    /// and those of patterns too small for the classifier.
    pub fn from_fitted(fitted: Arc<Fitted>, bank: &Bank) -> Model {
        Self::assemble(fitted, bank, &FxHashMap::default())
    }

    fn assemble(fitted: Arc<Fitted>, bank: &Bank, known: &FxHashMap<u64, SparseVec>) -> Model {
        let classes: FxHashSet<(PatternId, u64)> = fitted
            .classes
            .iter()
            .copied()
            .zip(fitted.created.iter().copied())
            .collect();
        // A class stays live while its pattern is the one the fit learned:
        // removed, or removed and re-added under the same id, it is not.
        let live = fitted
            .classes
            .iter()
            .zip(&fitted.created)
            .map(|(&id, &created)| bank.pattern(id).is_some_and(|p| p.created() == created))
            .collect();
        let mut neighbours = Neighbours::new();
        let mut vectors = FxHashMap::default();
        let mut examples_since_fit = 0;
        let dense_dim = fitted.dense.as_ref().map(|d| d.dim);
        let mut recent = Vec::new();
        for pattern in bank.patterns() {
            let learned = classes.contains(&(pattern.id(), pattern.created()));
            for example in pattern.examples() {
                let new = example.serial > fitted.fitted_upto;
                examples_since_fit += usize::from(new);
                if dense_dim.is_some() {
                    // The fit's index holds the older examples; a new one
                    // is found once the caller has attached its vector.
                    if let Some(v) = example
                        .vector
                        .as_ref()
                        .filter(|v| Some(v.len()) == dense_dim)
                        && new
                    {
                        recent.push((v.clone(), pattern.id()));
                    }
                } else if new || !learned {
                    let x = known
                        .get(&example.serial)
                        .cloned()
                        .unwrap_or_else(|| fitted.vectoriser.vectorise(&example.text));
                    neighbours.insert(&x, pattern.id());
                    vectors.insert(example.serial, x);
                }
            }
        }
        let strictness = bank
            .patterns()
            .filter(|p| p.strictness() > 0.0)
            .map(|p| (p.id(), p.strictness()))
            .collect();
        let alive = if dense_dim.is_some() {
            bank.patterns().map(|p| (p.id(), p.created())).collect()
        } else {
            FxHashSet::default()
        };
        Model {
            fitted,
            live: Arc::new(live),
            neighbours: Arc::new(neighbours),
            vectors: Arc::new(vectors),
            strictness: Arc::new(strictness),
            recent: Arc::new(recent),
            alive: Arc::new(alive),
            near_duplicate: bank.config().near_duplicate,
            min_known_words: bank.config().min_known_words,
            patterns: bank.len(),
            examples: bank.examples(),
            examples_since_fit,
        }
    }

    /// This model's fit brought up to date with `bank` (see
    /// [`Model::from_fitted`]). Call it after every change to the bank;
    /// it is the cheap, online half of learning.
    pub fn refresh(&self, bank: &Bank) -> Model {
        Self::assemble(Arc::clone(&self.fitted), bank, &self.vectors)
    }

    /// The fit, to snapshot with serde.
    pub fn fitted(&self) -> &Arc<Fitted> {
        &self.fitted
    }

    /// The best pattern for `question`, or `None` when the question shares
    /// no known feature with any pattern (it is empty, or about nothing the
    /// bank has seen). Questions longer than
    /// [`text::MAX_QUESTION_BYTES`] are read up to that length. A model
    /// fitted with embeddings needs the question's vector
    /// ([`Model::lookup_embedded`]) and answers `None` here.
    pub fn lookup(&self, question: &str) -> Option<Match> {
        if self.fitted.dense.is_some() {
            return None;
        }
        self.lookup_with(question, None)
    }

    /// The embeddings' length, for a model fitted with them.
    pub fn embedding_dim(&self) -> Option<usize> {
        self.fitted.dense.as_ref().map(|d| d.dim)
    }

    /// The best pattern for `question` whose embedding is `vector`, for a
    /// model fitted with embeddings (for a lexical one, `vector` is
    /// ignored). `None` also when `vector` is not of
    /// [`Model::embedding_dim`] dimensions or cannot be scaled to unit
    /// length: check the length before, to fall back to the lexical model.
    pub fn lookup_embedded(&self, question: &str, vector: &[f32]) -> Option<Match> {
        let Some(fit) = &self.fitted.dense else {
            return self.lookup_with(question, None);
        };
        let v = dense::unit(vector, Some(fit.dim)).ok()?;
        self.lookup_with(question, Some(&v))
    }

    fn lookup_with(&self, question: &str, vector: Option<&[f32]>) -> Option<Match> {
        let fitted = &*self.fitted;
        let mut x = fitted.vectoriser.vectorise(question);
        if let (Some(fit), Some(v)) = (&fitted.dense, vector) {
            x = fit.combine(&x, v, fitted.vectoriser.dim());
        }
        if x.is_empty() {
            return None;
        }
        let classifier = fitted.linear.as_ref().and_then(|linear| {
            let mut probs = Vec::with_capacity(linear.classes());
            linear.probabilities(&x, |k| self.live[k], &mut probs);
            let (k, p) = argmax(&probs)?;
            let score = fitted.score.of(&probs, p);
            (p > 0.0).then(|| self.judge(fitted.classes[k], score, Via::Classifier))
        });
        let mut scratch = Vec::new();
        let nearest = match (&fitted.dense, vector) {
            (Some(fit), Some(v)) => self.dense_nearest(fit, v),
            _ => self
                .neighbours
                .nearest(&x, |_| true, |_| false, &mut scratch),
        };
        let neighbour = nearest.map(|(id, sim)| self.judge(id, sim.min(1.0), Via::Neighbour));
        let found = match (classifier, neighbour) {
            (Some(c), Some(n)) => {
                // A near-duplicate of an example someone just approved is
                // stronger evidence than the classifier, which has not seen
                // that example yet.
                // So is a trusted match to a pattern the classifier was
                // not trained on (too few examples, or new): its
                // probabilities cannot speak for that pattern, so the
                // better margin over its own threshold decides.
                let unknown_to_classifier = !self.fitted.classes.contains(&n.pattern);
                if n.trusted
                    && (!c.trusted
                        || n.score >= self.near_duplicate
                        || (unknown_to_classifier && self.margin(&n) > self.margin(&c)))
                {
                    Some(n)
                } else if c.trusted
                    && unknown_to_classifier
                    && n.pattern != c.pattern
                    && n.score >= 0.5
                {
                    // The question is much like an example of a pattern the
                    // classifier cannot weigh: the two disagree, so neither
                    // is trusted and a person decides.
                    Some(Match {
                        trusted: false,
                        ..n
                    })
                } else if c.trusted || !n.trusted && self.margin(&c) >= self.margin(&n) {
                    Some(c)
                } else {
                    Some(n)
                }
            }
            (c, n) => c.or(n),
        };
        // A question mostly about words the bank has never seen is about
        // something else: the classifier's guess is offered, never trusted.
        // (A nearest-neighbour match is a similarity to a real example, and
        // examples added since the fit bring words the vocabulary lacks.)
        found.map(|mut m| {
            if m.trusted
                && m.via == Via::Classifier
                && fitted.vectoriser.known_word_share(question) < self.min_known_words
            {
                m.trusted = false;
            }
            m
        })
    }

    /// The example most like unit vector `v` by dense cosine: through the
    /// fit's approximate index (patterns still in the bank only) and,
    /// exactly, among the examples added since.
    fn dense_nearest(&self, fit: &DenseFit, v: &[f32]) -> Option<(PatternId, f32)> {
        let indexed = fit
            .index
            .nearest(v, |tag| self.alive.contains(&tag))
            .map(|((id, _), sim)| (id, sim));
        self.recent
            .iter()
            .map(|(u, id)| (*id, dense::dot(v, u)))
            .chain(indexed)
            .filter(|&(_, sim)| sim > 0.0)
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    fn judge(&self, pattern: PatternId, score: f32, via: Via) -> Match {
        let trusted = self.threshold(pattern, via).is_some_and(|t| score >= t);
        Match {
            pattern,
            score,
            trusted,
            via,
        }
    }

    /// How far a match is above (or below) its threshold; a matcher that
    /// trusts nothing counts its threshold as 1.
    fn margin(&self, m: &Match) -> f32 {
        m.score - self.threshold(m.pattern, m.via).unwrap_or(1.0)
    }

    /// The threshold pattern `id` must reach through `via`, or `None` if
    /// that matcher trusts nothing.
    pub fn threshold(&self, id: PatternId, via: Via) -> Option<f32> {
        let global = match via {
            Via::Classifier => self.fitted.classifier.threshold,
            Via::Neighbour => self.fitted.neighbour.threshold,
        }?;
        let strictness = self.strictness.get(&id).copied().unwrap_or(0.0);
        Some(global + strictness * (1.0 - global).max(0.0))
    }

    /// The cross-validated held-out predictions of the classifier that the
    /// threshold was calibrated on; feed them to
    /// [`calibrate::risk_coverage`] for the trade-off table.
    pub fn held_out(&self) -> &[Scored] {
        &self.fitted.held_out
    }

    /// Counts, thresholds and expected quality.
    pub fn stats(&self) -> Stats {
        let fitted = &*self.fitted;
        let mut overrides: Vec<Override> = self
            .strictness
            .iter()
            .map(|(&pattern, &strictness)| Override {
                pattern,
                strictness,
                classifier_threshold: self.threshold(pattern, Via::Classifier),
                neighbour_threshold: self.threshold(pattern, Via::Neighbour),
            })
            .collect();
        overrides.sort_by_key(|o| o.pattern);
        Stats {
            patterns: self.patterns,
            examples: self.examples,
            classifier_patterns: self.live.iter().filter(|&&l| l).count(),
            neighbour_examples: self.neighbours.len()
                + self.recent.len()
                + fitted.dense.as_ref().map_or(0, |d| d.index.len()),
            examples_since_fit: self.examples_since_fit,
            features: fitted.vectoriser.dim(),
            classifier: fitted.classifier,
            neighbour: fitted.neighbour,
            overrides,
            heap_bytes: self.heap_bytes(),
            embedding_dim: self.embedding_dim(),
        }
    }

    /// Approximate heap size in bytes of the model's data.
    pub fn heap_bytes(&self) -> usize {
        let fitted = &*self.fitted;
        fitted.vectoriser.heap_bytes()
            + fitted.linear.as_ref().map_or(0, Linear::heap_bytes)
            + fitted.held_out.capacity() * std::mem::size_of::<Scored>()
            + self.neighbours.heap_bytes()
            + self
                .vectors
                .values()
                .map(|x| x.idx.capacity() * 4 + x.val.capacity() * 4 + 8 + 48)
                .sum::<usize>()
            + fitted.dense.as_ref().map_or(0, |d| d.index.heap_bytes())
            + self
                .recent
                .iter()
                .map(|(v, _)| v.len() * 4 + 32)
                .sum::<usize>()
    }
}

/// The most probable class and its probability.
///
/// The probability is the score thresholds apply to. Its lead over the
/// runner-up was tried too: cross-validation inside the Banking77 training
/// split trusted more answers with it (84.5 % against 83.1 %), but it also
/// trusted an off-topic question ("Who won the football world cup in
/// 2018?") that the probability refuses. Calibration only sees questions
/// the bank can answer, so the score that is more cautious about the rest
/// was kept.
fn argmax(values: &[f32]) -> Option<(usize, f32)> {
    values
        .iter()
        .copied()
        .enumerate()
        .fold(None, |best, (k, v)| {
            if best.is_none_or(|(_, b)| v > b) {
                Some((k, v))
            } else {
                best
            }
        })
}

/// Leave-one-out nearest-neighbour predictions for a sample of examples:
/// each sampled example is matched against a pool of others (itself and
/// examples with the same words left out, as in the folds) and scored by
/// its cosine to the nearest. The pool is a sample of at
/// most twice the query count, which bounds the cost on a large bank;
/// the neighbour matcher in production holds few examples, so a pool of a
/// few thousand is, if anything, the harder case.
fn neighbour_held_out(
    xs: &[SparseVec],
    pattern_of: &[PatternId],
    keys: &[Vec<u64>],
    queries: usize,
    seed: u64,
) -> Vec<Scored> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    SplitMix64::new(seed ^ 0x6e65_6967_6862_6f75).shuffle(&mut order);
    order.truncate(queries.saturating_mul(2));
    let mut pool = Neighbours::new();
    for &i in &order {
        pool.insert(&xs[i], pattern_of[i]);
    }
    let mut scratch = Vec::new();
    order
        .iter()
        .enumerate()
        .take(queries)
        .filter_map(|(slot, &i)| {
            let (id, sim) = pool.nearest(
                &xs[i],
                |_| true,
                |other| other == slot || keys[order[other]].iter().any(|k| keys[i].contains(k)),
                &mut scratch,
            )?;
            Some(Scored {
                score: sim.min(1.0),
                correct: id == pattern_of[i],
            })
        })
        .collect()
}

/// Runs `job(0..jobs)` on up to `threads` threads (0: as many as the
/// machine has) and returns the results in job order.
fn parallel<T: Send>(jobs: usize, threads: usize, job: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    }
    .clamp(1, jobs.max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..jobs).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs {
                        break;
                    }
                    let result = job(i);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect()
}
