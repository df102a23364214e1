//! `strata:pipeline/cache`: the pipeline's answer bank (see [`crate::bank`]):
//! answers under keys, and (since 0.2.0) patterns matched by similarity.

use std::time::Duration;

use crate::runtime::StageState;
use crate::runtime::bindings::v0_2::strata::pipeline::cache::{Entry, Host, PatternMatch};

/// The longest key a stage may use.
const MAX_KEY_BYTES: usize = 1024;
/// The longest answer a stage may store.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The longest question `lookup` searches for. A longer one is not a
/// customer's question; searching it would only cost the host time, so it
/// gets `none` (the contract promises this bound to plugin authors).
const MAX_QUESTION_BYTES: usize = 16 * 1024;

impl Host for StageState {
    fn get(&mut self, key: String) -> Option<Entry> {
        let bank = self.services.bank.as_ref()?;
        match bank.get(&key) {
            Some(entry) => {
                self.effects.cache_hits += 1;
                Some(Entry {
                    answer: entry.answer,
                    source: entry.source,
                    approved: entry.approved,
                })
            }
            None => {
                self.effects.cache_misses += 1;
                None
            }
        }
    }

    fn put(&mut self, key: String, answer: String, ttl_seconds: u32) {
        if key.len() > MAX_KEY_BYTES || answer.len() > MAX_ANSWER_BYTES {
            tracing::warn!(
                request_id = %self.tag.request_id, stage = %self.tag.stage,
                "answer-bank entry over {MAX_KEY_BYTES} key bytes or {MAX_ANSWER_BYTES} answer \
                 bytes was not stored"
            );
            return;
        }
        if let Some(bank) = self
            .services
            .bank
            .as_ref()
            .filter(|_| !self.services.read_only_bank)
        {
            bank.put(
                key,
                answer,
                "stage",
                Duration::from_secs(u64::from(ttl_seconds)),
            );
        }
    }

    fn remember_as(&mut self, key: String) {
        if key.len() <= MAX_KEY_BYTES {
            self.effects.remember_key = Some(key);
        }
    }

    async fn lookup(&mut self, question: String) -> Option<PatternMatch> {
        let bank = self.services.bank.clone()?;
        let searchable = !question.trim().is_empty() && question.len() <= MAX_QUESTION_BYTES;
        let found = if searchable {
            // Half the stage's remaining time at most goes to embedding the
            // question, so a slow endpoint leaves time for the lexical
            // model and the stage's own work.
            let budget = self
                .deadline
                .saturating_duration_since(std::time::Instant::now())
                / 2;
            let (found, served) = bank.lookup(&question, budget).await;
            self.effects.pattern_features.count(served);
            found
        } else {
            None
        };
        // Only a trusted match is a hit: an untrusted one is a guess the
        // bank cannot answer with, so the hit rate keeps meaning "traffic
        // the bank could absorb".
        if found.as_ref().is_some_and(|m| m.trusted) {
            self.effects.cache_hits += 1;
        } else {
            self.effects.cache_misses += 1;
        }
        // Kept so that a rating of the answer the stage gives from this
        // match counts for or against the pattern.
        self.effects.pattern = found.as_ref().filter(|m| m.trusted).map(|m| m.pattern);
        let result = match &found {
            Some(m) if m.trusted => 0,
            Some(_) => 1,
            None => 2,
        };
        self.effects.pattern_lookups[result] += 1;
        found.map(|m| PatternMatch {
            answer: m.answer,
            score: m.score,
            source: m.source,
            approved: m.approved,
            label: m.label,
            trusted: m.trusted,
        })
    }
}
