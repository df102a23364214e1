//! The catalogue the classifier learns from: patterns (approved answers)
//! with their example questions and the strictness their ratings earned.
//! Mutable and cheap to change; [`crate::Model`] is the fitted, immutable
//! view of it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Config;

/// A pattern's identifier, chosen by the caller (for the host, its SQLite
/// row id), so it is stable across restarts and refits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PatternId(pub u64);

impl fmt::Display for PatternId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A reviewer's or user's verdict on an answer the bank gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rating {
    /// The answer was right for the question.
    Good,
    /// The answer was wrong for the question.
    Bad,
}

/// Errors of changes to a [`Bank`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BankError {
    /// The pattern id is already taken.
    #[error("pattern {0} already exists")]
    Exists(PatternId),
    /// No pattern has this id.
    #[error("pattern {0} does not exist")]
    Unknown(PatternId),
    /// The example question has no letters or digits to learn from.
    #[error("example for pattern {0} has no words")]
    EmptyExample(PatternId),
    /// A strictness outside `[0, 1)` was given.
    #[error("strictness {1} for pattern {0} is outside [0, 1)")]
    Strictness(PatternId, f32),
    /// No example of the pattern has this serial.
    #[error("pattern {0} has no example {1}")]
    UnknownExample(PatternId, u64),
    /// An embedding vector that cannot be used.
    #[error("the vector of example {1} of pattern {0} is refused: {2}")]
    Vector(PatternId, u64, &'static str),
}

/// An example question of a pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The bank-wide order in which examples were added; a model knows
    /// which examples it was fitted on by the highest serial it saw.
    pub serial: u64,
    /// The question as given.
    pub text: String,
    /// Its embedding, scaled to unit length, once the caller attached one
    /// ([`Bank::set_vector`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Arc<[f32]>>,
}

/// An approved answer and the questions it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pattern {
    id: PatternId,
    created: u64,
    answer: String,
    label: Option<String>,
    source: String,
    examples: Vec<Example>,
    strictness: f32,
}

impl Pattern {
    /// The pattern's id.
    pub fn id(&self) -> PatternId {
        self.id
    }
    /// The serial drawn when the pattern was added (from the same counter
    /// as examples'), so a model can tell a pattern re-added under a
    /// removed id from the one it learned.
    pub fn created(&self) -> u64 {
        self.created
    }
    /// The approved answer.
    pub fn answer(&self) -> &str {
        &self.answer
    }
    /// The intent, if one was given.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }
    /// Where the answer came from: "import", "human", "correction", ...
    pub fn source(&self) -> &str {
        &self.source
    }
    /// The example questions, oldest first.
    pub fn examples(&self) -> &[Example] {
        &self.examples
    }
    /// How much stricter than the global threshold this pattern is, in
    /// `[0, 1)`: the pattern's threshold is `g + strictness × (1 − g)` for a
    /// global threshold `g`. Zero until a bad rating.
    pub fn strictness(&self) -> f32 {
        self.strictness
    }
}

/// Patterns by id, with the bookkeeping a [`crate::Model`] needs to refresh
/// cheaply. Serialisable, so a caller may snapshot it whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bank {
    config: Config,
    patterns: BTreeMap<PatternId, Pattern>,
    next_serial: u64,
    /// Examples with a vector, and the vectors' length.
    #[serde(default)]
    vectors: usize,
    #[serde(default)]
    vector_dim: Option<usize>,
}

impl Default for Bank {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl Bank {
    /// An empty bank.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            patterns: BTreeMap::new(),
            next_serial: 1,
            vectors: 0,
            vector_dim: None,
        }
    }

    /// The configuration models of this bank are fitted with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Adds a pattern without examples yet.
    pub fn add_pattern(
        &mut self,
        id: PatternId,
        answer: impl Into<String>,
        label: Option<String>,
        source: impl Into<String>,
    ) -> Result<(), BankError> {
        if self.patterns.contains_key(&id) {
            return Err(BankError::Exists(id));
        }
        let created = self.next_serial;
        self.next_serial += 1;
        self.patterns.insert(
            id,
            Pattern {
                id,
                created,
                answer: answer.into(),
                label,
                source: source.into(),
                examples: Vec::new(),
                strictness: 0.0,
            },
        );
        Ok(())
    }

    /// Adds an example question to a pattern, returning its serial. A
    /// question with no letters or digits is refused: it would match
    /// nothing and teach nothing.
    pub fn add_example(
        &mut self,
        id: PatternId,
        question: impl Into<String>,
    ) -> Result<u64, BankError> {
        let question = question.into();
        let pattern = self.patterns.get_mut(&id).ok_or(BankError::Unknown(id))?;
        if crate::text::normalise(&question).is_empty() {
            return Err(BankError::EmptyExample(id));
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        pattern.examples.push(Example {
            serial,
            text: question,
            vector: None,
        });
        Ok(serial)
    }

    /// Attaches an embedding to example `serial` of pattern `id`, scaled to
    /// unit length. Every vector of a bank has the same length: one that
    /// differs, is empty, all zeros or not finite is refused.
    pub fn set_vector(
        &mut self,
        id: PatternId,
        serial: u64,
        vector: &[f32],
    ) -> Result<(), BankError> {
        let pattern = self.patterns.get_mut(&id).ok_or(BankError::Unknown(id))?;
        let example = pattern
            .examples
            .iter_mut()
            .find(|e| e.serial == serial)
            .ok_or(BankError::UnknownExample(id, serial))?;
        // A vector replacing the only one there is may change the length.
        let replaces_only = self.vectors == 1 && example.vector.is_some();
        let dim = self.vector_dim.filter(|_| !replaces_only);
        let unit =
            crate::dense::unit(vector, dim).map_err(|why| BankError::Vector(id, serial, why))?;
        if example.vector.is_none() {
            self.vectors += 1;
        }
        self.vector_dim = Some(unit.len());
        example.vector = Some(unit.into());
        Ok(())
    }

    /// Drops every example's vector (the embeddings model changed).
    pub fn clear_vectors(&mut self) {
        for pattern in self.patterns.values_mut() {
            for example in &mut pattern.examples {
                example.vector = None;
            }
        }
        self.vectors = 0;
        self.vector_dim = None;
    }

    /// The length of the bank's vectors, if any example has one.
    pub fn vector_dim(&self) -> Option<usize> {
        self.vector_dim
    }

    /// Examples with a vector.
    pub fn vectors(&self) -> usize {
        self.vectors
    }

    /// Examples without a vector yet, as (pattern, serial, question).
    pub fn unembedded(&self) -> impl Iterator<Item = (PatternId, u64, &str)> {
        self.patterns.values().flat_map(|p| {
            p.examples
                .iter()
                .filter(|e| e.vector.is_none())
                .map(move |e| (p.id, e.serial, e.text.as_str()))
        })
    }

    /// Replaces a pattern's answer and source. Its strictness is reset,
    /// because the bad ratings that raised it were about the old answer.
    pub fn set_answer(
        &mut self,
        id: PatternId,
        answer: impl Into<String>,
        source: impl Into<String>,
    ) -> Result<(), BankError> {
        let pattern = self.patterns.get_mut(&id).ok_or(BankError::Unknown(id))?;
        pattern.answer = answer.into();
        pattern.source = source.into();
        pattern.strictness = 0.0;
        Ok(())
    }

    /// Removes a pattern and its examples, returning it.
    pub fn remove_pattern(&mut self, id: PatternId) -> Result<Pattern, BankError> {
        let removed = self.patterns.remove(&id).ok_or(BankError::Unknown(id))?;
        self.vectors -= removed
            .examples
            .iter()
            .filter(|e| e.vector.is_some())
            .count();
        if self.vectors == 0 {
            self.vector_dim = None;
        }
        Ok(removed)
    }

    /// Records a rating of an answer the bank gave for pattern `id`.
    ///
    /// A bad rating closes the given share (`RatingConfig::bad_step`) of
    /// the gap between the pattern's threshold and 1; a good one gives back
    /// a small share of the strictness (`RatingConfig::good_decay`). So
    /// distrust comes fast, trust returns slowly, and the threshold never
    /// drops below the global one. Returns the new strictness.
    pub fn rate(&mut self, id: PatternId, rating: Rating) -> Result<f32, BankError> {
        let ratings = &self.config.ratings;
        let pattern = self.patterns.get_mut(&id).ok_or(BankError::Unknown(id))?;
        pattern.strictness = match rating {
            Rating::Bad => pattern.strictness + (1.0 - pattern.strictness) * ratings.bad_step,
            Rating::Good => pattern.strictness * ratings.good_decay,
        }
        .clamp(0.0, MAX_STRICTNESS);
        Ok(pattern.strictness)
    }

    /// Restores a strictness the caller persisted (see [`Pattern::strictness`]).
    pub fn set_strictness(&mut self, id: PatternId, strictness: f32) -> Result<(), BankError> {
        if !(0.0..1.0).contains(&strictness) {
            return Err(BankError::Strictness(id, strictness));
        }
        self.patterns
            .get_mut(&id)
            .ok_or(BankError::Unknown(id))?
            .strictness = strictness;
        Ok(())
    }

    /// The pattern with this id.
    pub fn pattern(&self, id: PatternId) -> Option<&Pattern> {
        self.patterns.get(&id)
    }

    /// All patterns, by ascending id.
    pub fn patterns(&self) -> impl Iterator<Item = &Pattern> {
        self.patterns.values()
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether the bank has no pattern.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Number of examples over all patterns.
    pub fn examples(&self) -> usize {
        self.patterns.values().map(|p| p.examples.len()).sum()
    }

    /// The highest serial given to an example so far (0 if none).
    pub fn last_serial(&self) -> u64 {
        self.next_serial.saturating_sub(1)
    }
}

/// Strictness stops just short of 1 so a pattern's threshold stays a
/// number a perfect match (score 1) can still reach.
const MAX_STRICTNESS: f32 = 0.999;

/// How ratings move a pattern's threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RatingConfig {
    /// Share of the remaining gap to 1 that a bad rating closes.
    pub bad_step: f32,
    /// Factor a good rating multiplies the strictness by.
    pub good_decay: f32,
}

impl Default for RatingConfig {
    fn default() -> Self {
        Self {
            bad_step: 0.5,
            good_decay: 0.9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_the_pattern_at_fault() {
        let mut bank = Bank::new(Config::default());
        bank.add_pattern(PatternId(1), "a", None, "import").unwrap();
        assert_eq!(
            bank.add_pattern(PatternId(1), "b", None, "import")
                .unwrap_err()
                .to_string(),
            "pattern 1 already exists"
        );
        assert_eq!(
            bank.add_example(PatternId(2), "q").unwrap_err().to_string(),
            "pattern 2 does not exist"
        );
        assert_eq!(
            bank.add_example(PatternId(1), " ?! ").unwrap_err(),
            BankError::EmptyExample(PatternId(1))
        );
        assert_eq!(bank.add_example(PatternId(1), "first").unwrap(), 2);
        assert_eq!(bank.add_example(PatternId(1), "second").unwrap(), 3);
        assert_eq!(bank.examples(), 2);
    }

    #[test]
    fn vectors_are_unit_length_one_length_per_bank_and_named_when_refused() {
        let mut bank = Bank::new(Config::default());
        let id = PatternId(1);
        bank.add_pattern(id, "a", None, "import").unwrap();
        let first = bank.add_example(id, "first").unwrap();
        let second = bank.add_example(id, "second").unwrap();
        assert_eq!(bank.unembedded().count(), 2);
        bank.set_vector(id, first, &[3.0, 4.0]).unwrap();
        let stored = bank.pattern(id).unwrap().examples()[0]
            .vector
            .clone()
            .unwrap();
        assert!((stored[0] - 0.6).abs() < 1e-6);
        assert_eq!(bank.vector_dim(), Some(2));
        assert_eq!(
            bank.set_vector(id, second, &[1.0, 0.0, 0.0])
                .unwrap_err()
                .to_string(),
            "the vector of example 3 of pattern 1 is refused: its length differs from the \
             other vectors'"
        );
        assert_eq!(
            bank.set_vector(id, 99, &[1.0, 0.0]).unwrap_err(),
            BankError::UnknownExample(id, 99)
        );
        // The only vector may be replaced by one of another length.
        bank.set_vector(id, first, &[1.0, 0.0, 0.0]).unwrap();
        bank.set_vector(id, second, &[0.0, 1.0, 0.0]).unwrap();
        assert_eq!((bank.vectors(), bank.vector_dim()), (2, Some(3)));
        assert_eq!(bank.unembedded().count(), 0);
        bank.clear_vectors();
        assert_eq!((bank.vectors(), bank.vector_dim()), (0, None));
        bank.set_vector(id, first, &[1.0]).unwrap();
        bank.remove_pattern(id).unwrap();
        assert_eq!((bank.vectors(), bank.vector_dim()), (0, None));
    }

    #[test]
    fn bad_ratings_tighten_fast_and_good_ones_relax_slowly() {
        let mut bank = Bank::new(Config::default());
        let id = PatternId(7);
        bank.add_pattern(id, "a", None, "human").unwrap();
        assert_eq!(bank.rate(id, Rating::Bad).unwrap(), 0.5);
        assert_eq!(bank.rate(id, Rating::Bad).unwrap(), 0.75);
        let relaxed = bank.rate(id, Rating::Good).unwrap();
        assert!(relaxed < 0.75 && relaxed > 0.6);
        for _ in 0..1000 {
            bank.rate(id, Rating::Good).unwrap();
        }
        assert!(bank.pattern(id).unwrap().strictness() >= 0.0);
        bank.set_answer(id, "b", "correction").unwrap();
        assert_eq!(bank.pattern(id).unwrap().strictness(), 0.0);
    }
}
