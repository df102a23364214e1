//! Text normalisation and the raw lexical features of a question: word
//! unigrams and bigrams, and character n-grams within word boundaries, each
//! named by a stable 64-bit hash so nothing has to be allocated per feature.

use serde::{Deserialize, Serialize};

/// The longest question, in bytes, that is read; the rest is ignored.
///
/// Real questions are a few hundred bytes at most. The cap bounds the time
/// and memory a lookup can take whatever a client sends (a 1 MB body costs
/// the same as a 4 KiB one), and the beginning of a question is where its
/// intent is.
pub const MAX_QUESTION_BYTES: usize = 4096;

/// Which lexical features to extract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureConfig {
    /// Word n-grams from 1 up to this length (2: unigrams and bigrams).
    pub word_ngrams: usize,
    /// Shortest character n-gram, counted in bytes of the normalised text.
    pub char_min: usize,
    /// Longest character n-gram.
    pub char_max: usize,
    /// A feature must occur in at least this many examples to be learned.
    /// Raising it to 2 drops features seen once (mostly typos) and saves
    /// memory on a large bank, but on a small one it drops most words.
    pub min_df: u32,
    /// The share of a vector's squared length given to the word block (the
    /// character block has the rest) when a question has both.
    pub word_weight: f32,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        Self {
            word_ngrams: 2,
            char_min: 3,
            char_max: 5,
            min_df: 1,
            word_weight: 0.5,
        }
    }
}

/// The two groups of features; each is weighted to unit length on its own
/// so the many character n-grams do not drown the few words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Word unigrams and bigrams.
    Words,
    /// Character n-grams within word boundaries.
    Chars,
}

/// Cuts `text` to at most [`MAX_QUESTION_BYTES`], at a character boundary.
pub fn truncate(text: &str) -> &str {
    if text.len() <= MAX_QUESTION_BYTES {
        return text;
    }
    let mut end = MAX_QUESTION_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Lower-case words of letters and digits, one space apart.
///
/// Apostrophes are dropped rather than split on, so "hasn't" and "hasnt"
/// meet; every other non-alphanumeric character separates words. The input
/// is truncated first (see [`MAX_QUESTION_BYTES`]).
pub fn normalise(text: &str) -> String {
    let text = truncate(text);
    let mut out = String::with_capacity(text.len());
    let mut gap = false;
    for c in text.chars() {
        if c == '\'' || c == '\u{2019}' {
            continue;
        }
        if c.is_alphanumeric() {
            if gap && !out.is_empty() {
                out.push(' ');
            }
            gap = false;
            out.extend(c.to_lowercase());
        } else {
            gap = true;
        }
    }
    out
}

/// FNV-1a over the given byte slices, seeded by a tag, so a word and a
/// character n-gram with the same bytes are different features. FNV is
/// stable across platforms and releases, unlike the standard library's
/// hasher.
fn fnv(tag: u8, parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    };
    eat(tag);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            eat(b' ');
        }
        part.iter().copied().for_each(&mut eat);
    }
    hash
}

/// Keys that near-duplicate questions share: the key of the question's set
/// of words (so order and repetition do not matter) and, for questions of
/// at least [`NEAR_MIN_WORDS`] distinct words, the key of each set with one
/// word left out (so a question with a word dropped, added or replaced
/// shares a key with the original). Calibration keeps questions that share
/// a key on one side of every split, so a question is never judged by how
/// well its own near-copy was learned.
pub fn near_keys(normalised: &str) -> Vec<u64> {
    let mut words: Vec<&[u8]> = normalised
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::as_bytes)
        .collect();
    words.sort_unstable();
    words.dedup();
    let mut keys = vec![fnv(b'k', &words)];
    if words.len() >= NEAR_MIN_WORDS {
        let mut rest = Vec::with_capacity(words.len() - 1);
        for skip in 0..words.len() {
            rest.clear();
            rest.extend(
                words
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != skip)
                    .map(|(_, w)| *w),
            );
            keys.push(fnv(b'k', &rest));
        }
    }
    keys
}

/// Questions shorter than this (in distinct words) are near-duplicates
/// only when they have the same words: "my card" and "my pin" differ in a
/// word but are different questions.
pub const NEAR_MIN_WORDS: usize = 4;

/// Calls `emit(block, hash)` for every feature occurrence of a normalised
/// question (repeats included; the caller counts them).
pub fn features(normalised: &str, config: &FeatureConfig, mut emit: impl FnMut(Block, u64)) {
    let words: Vec<&[u8]> = normalised
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::as_bytes)
        .collect();
    for n in 1..=config.word_ngrams.max(1) {
        for gram in words.windows(n) {
            emit(Block::Words, fnv(b'w' + n as u8, gram));
        }
    }
    // Each word is padded with a space on both sides so n-grams can tell a
    // word's start and end apart from its middle, as scikit-learn's
    // `char_wb` analyser does.
    let mut padded = Vec::with_capacity(64);
    for word in &words {
        padded.clear();
        padded.push(b' ');
        padded.extend_from_slice(word);
        padded.push(b' ');
        for n in config.char_min.max(1)..=config.char_max {
            if n > padded.len() {
                break;
            }
            for gram in padded.windows(n) {
                emit(Block::Chars, fnv(b'c', &[gram]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_folds_case_punctuation_and_apostrophes() {
        let cases = [
            (
                "I am still waiting on my card?",
                "i am still waiting on my card",
            ),
            ("  Hasn't it   ARRIVED?!", "hasnt it arrived"),
            ("top-up/transfer", "top up transfer"),
            ("Ünïcode Straße", "ünïcode straße"),
            ("", ""),
            ("?!.,", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(normalise(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        let long = "é".repeat(MAX_QUESTION_BYTES);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_QUESTION_BYTES);
        assert!(cut.len() >= MAX_QUESTION_BYTES - 1);
    }

    #[test]
    fn near_keys_join_reorderings_and_one_word_edits_of_longer_questions() {
        let shares = |a: &str, b: &str| near_keys(a).iter().any(|k| near_keys(b).contains(k));
        assert!(shares("my card arrived", "card card my arrived"));
        assert!(shares(
            "my new card has not arrived",
            "my card has not arrived"
        ));
        assert!(shares(
            "my new card has not arrived",
            "my old card has not arrived"
        ));
        assert!(!shares("my card", "my pin"));
        assert!(!shares("my card arrived", "my card"));
        assert!(!shares("where is my new card", "how do i top up"));
    }

    #[test]
    fn features_of_a_short_question() {
        let mut words = 0;
        let mut chars = 0;
        features(
            "my card",
            &FeatureConfig::default(),
            |block, _| match block {
                Block::Words => words += 1,
                Block::Chars => chars += 1,
            },
        );
        // "my", "card", "my card"; " my " has 2+1 grams of 3..5 and
        // " card " has 4+3+2.
        assert_eq!(words, 3);
        assert_eq!(chars, 3 + 9);
    }
}
