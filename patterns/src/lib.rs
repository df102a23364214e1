//! The learning core of the answer bank: approved answers (patterns) and
//! their example questions, lexical features, a classifier that learns from
//! the examples, and acceptance thresholds calibrated to an error budget.
//!
//! Pure data and arithmetic: no I/O, no async, no global state, so the host
//! can call it from the request path and from command-line tools alike.
//!
//! # Layout
//! - [`bank`]: the mutable catalogue — patterns, examples, ratings.
//! - [`model`]: fitting (cross-validated calibration included), cheap
//!   refresh, lookup, statistics.
//! - [`text`]: normalisation, the input cap, raw n-gram features.
//! - [`features`]: TF-IDF vectors over a learned vocabulary.
//! - [`linear`]: multinomial logistic regression trained by SGD.
//! - [`neighbours`]: cosine nearest neighbour through an inverted index.
//! - [`dense`]: embedding vectors as extra features, the approximate
//!   nearest-neighbour (HNSW) index over them, their calibration.
//! - [`calibrate`]: thresholds from held-out predictions, risk–coverage.
//! - [`folds`]: cross-validation folds that keep near-duplicates together.
//! - [`split`]: reproducible stratified train/held-out splits.
//! - [`rng`]: the seeded generator all of the above share.
//!
//! # Use from the host
//! - Keep one [`Bank`] per pipeline behind a `Mutex`, rebuilt at start
//!   from the store: [`Bank::add_pattern`], [`Bank::add_example`] and
//!   [`Bank::set_strictness`] for each persisted row.
//! - Publish an `Arc<Model>` through `ArcSwap`. Lookups call
//!   [`Model::lookup`] on the loaded `Arc`; it takes `&self`, allocates a
//!   little, never blocks, and the model is `Send + Sync`.
//! - On every change (an example from a resolved ticket, a rating, a new
//!   or replaced answer, a removal): change the bank, then publish
//!   `current.refresh(&bank)`. This is the cheap online half: new examples
//!   are matched at once by nearest neighbour, ratings and removals take
//!   effect at once; it costs time in proportion to the examples added
//!   since the last fit.
//! - Off the request path (a background task, after N new examples or
//!   every few minutes, and at start): clone the bank, run
//!   [`Model::fit`] (which refits and recalibrates), then publish
//!   `fitted.refresh(&bank_now)` so changes made during the fit are kept.
//!   [`Stats::examples_since_fit`] says how far behind the fit is.
//! - Optionally, with an embeddings model: attach each example's vector
//!   ([`Bank::set_vector`]), fit [`Model::fit_embedded`] beside the lexical
//!   fit, and look questions up with [`Model::lookup_embedded`] and the
//!   question's vector. Keep the lexical model: it is what answers when no
//!   vector can be had (the embeddings endpoint is down). Each is
//!   calibrated on its own.
//! - [`Match::trusted`] is the decision: answer from the bank if it is
//!   true, otherwise pass the request on (the match is still a useful
//!   suggestion for a reviewer).
//!
//! # Example
//! ```
//! use strata_patterns::{Bank, Config, Model, PatternId};
//!
//! let mut bank = Bank::new(Config::default());
//! bank.add_pattern(PatternId(1), "Cards arrive in 5 days.", Some("card_arrival".into()), "import")?;
//! bank.add_example(PatternId(1), "When will my card arrive?")?;
//! let model = Model::fit(&bank); // off the request path
//! let found = model.lookup("when does my card arrive");
//! assert_eq!(found.map(|m| m.pattern), Some(PatternId(1)));
//! # Ok::<(), strata_patterns::BankError>(())
//! ```

pub mod bank;
pub mod calibrate;
pub mod dense;
pub mod features;
pub mod folds;
pub mod linear;
pub mod model;
pub mod neighbours;
pub mod rng;
pub mod split;
pub mod text;

use serde::{Deserialize, Serialize};

pub use bank::{Bank, BankError, Example, Pattern, PatternId, Rating, RatingConfig};
pub use calibrate::{Calibrated, CalibrationConfig, RiskCoverageRow, Score, Scored, risk_coverage};
pub use linear::TrainConfig;
pub use model::{Fitted, Match, Model, Override, Stats, Via};
pub use text::{FeatureConfig, MAX_QUESTION_BYTES};

/// Everything that shapes a fit and the thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The lexical features.
    pub features: FeatureConfig,
    /// The classifier's training.
    pub train: TrainConfig,
    /// The error budget and how it is checked.
    pub calibration: CalibrationConfig,
    /// How ratings move per-pattern thresholds.
    pub ratings: RatingConfig,
    /// A pattern needs this many examples to be learned by the classifier;
    /// with fewer it is matched by nearest neighbour.
    pub min_examples: usize,
    /// A trusted nearest-neighbour match at least this similar overrides a
    /// trusted classifier match for another pattern.
    pub near_duplicate: f32,
    /// A match is trusted only if at least this share of the question's
    /// word features (unigrams and bigrams) are in the vocabulary. The
    /// classifier's probabilities are relative to the patterns it knows, so
    /// a question about something else entirely can still score high; this
    /// keeps such a question from being answered.
    pub min_known_words: f32,
    /// Threads a fit may use; 0 means as many as the machine has.
    pub threads: usize,
    /// With embeddings: the weight of the dense block of a feature vector
    /// against the lexical block's 1 (see [`dense::DenseFit`]).
    pub dense_weight: f32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            features: FeatureConfig::default(),
            train: TrainConfig::default(),
            calibration: CalibrationConfig::default(),
            ratings: RatingConfig::default(),
            min_examples: 3,
            near_duplicate: 0.9,
            min_known_words: 0.3,
            threads: 0,
            dense_weight: 1.0,
        }
    }
}
