//! TF-IDF weighting of the lexical features: the vocabulary and document
//! frequencies learned from the examples, and the sparse unit vectors every
//! other part of the crate works with.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::text::{self, Block, FeatureConfig};

/// A sparse vector: feature indices in ascending order and their weights.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseVec {
    /// Feature indices, ascending, no repeats.
    pub idx: Vec<u32>,
    /// The weight of each index.
    pub val: Vec<f32>,
}

impl SparseVec {
    /// Whether the vector has no non-zero weight.
    pub fn is_empty(&self) -> bool {
        self.idx.is_empty()
    }

    /// Number of stored weights.
    pub fn len(&self) -> usize {
        self.idx.len()
    }

    /// Pairs of index and weight.
    pub fn iter(&self) -> impl Iterator<Item = (usize, f32)> + '_ {
        self.idx
            .iter()
            .map(|&i| i as usize)
            .zip(self.val.iter().copied())
    }

    /// Dot product of two sparse vectors (a merge of the sorted indices).
    pub fn dot(&self, other: &SparseVec) -> f32 {
        let (mut i, mut j, mut sum) = (0, 0, 0.0);
        while i < self.idx.len() && j < other.idx.len() {
            match self.idx[i].cmp(&other.idx[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    sum += self.val[i] * other.val[j];
                    i += 1;
                    j += 1;
                }
            }
        }
        sum
    }
}

/// Maps questions to L2-normalised TF-IDF vectors over a fixed vocabulary.
///
/// Term frequency is sublinear (`1 + ln tf`), inverse document frequency is
/// smoothed (`ln((1 + n) / (1 + df)) + 1`, as scikit-learn does), and the
/// word block and the character block are each scaled to unit length before
/// the whole vector is, so both count equally. Features outside the
/// vocabulary (seen in fewer than `min_df` examples at fit time) are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vectoriser {
    config: FeatureConfig,
    /// Feature hash to (index, is a word feature).
    vocabulary: FxHashMap<u64, (u32, bool)>,
    idf: Vec<f32>,
}

impl Vectoriser {
    /// Learns the vocabulary and document frequencies from normalised texts.
    pub fn fit<'a>(normalised: impl IntoIterator<Item = &'a str>, config: &FeatureConfig) -> Self {
        let mut df: FxHashMap<u64, (u32, bool)> = FxHashMap::default();
        let mut seen: FxHashMap<u64, bool> = FxHashMap::default();
        let mut docs = 0u32;
        for text in normalised {
            docs += 1;
            seen.clear();
            text::features(text, config, |block, hash| {
                seen.insert(hash, block == Block::Words);
            });
            for (&hash, &word) in &seen {
                df.entry(hash).or_insert((0, word)).0 += 1;
            }
        }
        // Indices go to the most frequent features first, so the weight
        // rows that nearly every question touches sit together and stay in
        // cache; ties are broken by hash so the same examples always give
        // the same vectors, whatever order the hash map iterates in.
        let mut kept: Vec<(u64, u32, bool)> = df
            .into_iter()
            .filter(|&(_, (n, _))| n >= config.min_df.max(1))
            .map(|(hash, (n, word))| (hash, n, word))
            .collect();
        kept.sort_unstable_by_key(|&(hash, count, _)| (std::cmp::Reverse(count), hash));
        let n = f64::from(docs);
        let mut vocabulary = FxHashMap::default();
        vocabulary.reserve(kept.len());
        let mut idf = Vec::with_capacity(kept.len());
        for (i, (hash, count, word)) in kept.into_iter().enumerate() {
            vocabulary.insert(hash, (i as u32, word));
            idf.push((((1.0 + n) / (1.0 + f64::from(count))).ln() + 1.0) as f32);
        }
        Self {
            config: config.clone(),
            vocabulary,
            idf,
        }
    }

    /// Number of features in the vocabulary.
    pub fn dim(&self) -> usize {
        self.idf.len()
    }

    /// The share of a question's word features (unigrams and bigrams) that
    /// are in the vocabulary; 0 for a question without words.
    pub fn known_word_share(&self, question: &str) -> f32 {
        let (mut words, mut known) = (0u32, 0u32);
        text::features(&text::normalise(question), &self.config, |block, hash| {
            if block == Block::Words {
                words += 1;
                known += u32::from(self.vocabulary.contains_key(&hash));
            }
        });
        if words == 0 {
            0.0
        } else {
            known as f32 / words as f32
        }
    }

    /// The TF-IDF vector of a question given raw (it is normalised here).
    pub fn vectorise(&self, question: &str) -> SparseVec {
        self.vectorise_normalised(&text::normalise(question))
    }

    /// The TF-IDF vector of an already normalised question.
    pub fn vectorise_normalised(&self, normalised: &str) -> SparseVec {
        let mut counts: Vec<(u32, bool, f32)> = Vec::with_capacity(64);
        text::features(normalised, &self.config, |_, hash| {
            if let Some(&(i, word)) = self.vocabulary.get(&hash) {
                counts.push((i, word, 1.0));
            }
        });
        counts.sort_unstable_by_key(|&(i, _, _)| i);
        counts.dedup_by(|later, first| {
            let same = later.0 == first.0;
            if same {
                first.2 += 1.0;
            }
            same
        });
        let mut norms = [0.0f32; 2];
        for (i, word, tf) in &mut counts {
            *tf = (1.0 + tf.ln()) * self.idf[*i as usize];
            norms[usize::from(*word)] += *tf * *tf;
        }
        // Each block is scaled to unit length, then to its share of the
        // whole (all of it when the other block is empty).
        let both = norms.iter().all(|&n| n > 0.0);
        let word_weight = self.config.word_weight.clamp(0.0, 1.0);
        let shares = [1.0 - word_weight, word_weight];
        let mut scale = [0.0f32; 2];
        for b in 0..2 {
            if norms[b] > 0.0 {
                let share = if both { shares[b] } else { 1.0 };
                scale[b] = (share / norms[b]).sqrt();
            }
        }
        SparseVec {
            idx: counts.iter().map(|c| c.0).collect(),
            val: counts
                .iter()
                .map(|c| c.2 * scale[usize::from(c.1)])
                .collect(),
        }
    }

    /// Approximate heap size in bytes.
    pub fn heap_bytes(&self) -> usize {
        // A hash-map slot holds the key, the value and a control byte; the
        // table keeps some slack, hence the factor.
        self.vocabulary.capacity() * (8 + 8 + 1) + self.idf.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectoriser() -> Vectoriser {
        let texts = [
            "where is my card",
            "my card has not arrived",
            "how do i top up",
            "top up by card",
        ];
        Vectoriser::fit(
            texts,
            &FeatureConfig {
                min_df: 1,
                ..FeatureConfig::default()
            },
        )
    }

    #[test]
    fn vectors_have_unit_length_and_sorted_indices() {
        let v = vectoriser().vectorise("Where is my CARD?");
        let norm: f32 = v.val.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        assert!(v.idx.windows(2).all(|w| w[0] < w[1]));
        assert!((v.dot(&v) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn unknown_and_empty_questions_give_empty_vectors() {
        let vectoriser = vectoriser();
        assert!(vectoriser.vectorise("").is_empty());
        assert!(vectoriser.vectorise("zzqx").is_empty());
    }

    #[test]
    fn related_questions_are_closer_than_unrelated_ones() {
        let vectoriser = vectoriser();
        let a = vectoriser.vectorise("where is my card");
        let b = vectoriser.vectorise("my card, where is it?");
        let c = vectoriser.vectorise("how do i top up");
        assert!(a.dot(&b) > a.dot(&c) + 0.3);
    }
}
