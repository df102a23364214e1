//! The answer banks: one per pipeline, what the `cache` interface reads and
//! writes, and where human answers and corrections land.
//!
//! Unapproved answers (stored by stages, or remembered from a model's
//! answer) live in a bounded in-memory cache (moka) with a time to live.
//! Approved answers (a reviewer's resolution, a correction sent as feedback)
//! are kept apart, never evicted, never replaced by an unapproved one, and
//! written to the store so they survive a restart. Banks belong to the
//! process, not to a generation: a reload keeps every answer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::manifest::AnswerBankSpec;

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

/// The pattern a question matched best (the `cache.lookup` answer).
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// The pattern's answer text.
    pub answer: String,
    /// How strongly the question matches, 0..1.
    pub score: f64,
    /// Who produced the answer.
    pub source: String,
    /// Whether a person approved it.
    pub approved: bool,
    /// The pattern's label, e.g. an intent.
    pub label: Option<String>,
    /// Whether the match is trusted under the pipeline's `max_error`.
    pub trusted: bool,
}

#[derive(Debug, Clone)]
struct Expiring {
    entry: Entry,
    expires: Instant,
}

/// One pipeline's bank.
pub struct Bank {
    spec: AnswerBankSpec,
    unapproved: Cache<String, Expiring>,
    approved: RwLock<HashMap<String, Entry>>,
}

impl Bank {
    fn new(spec: AnswerBankSpec) -> Bank {
        Bank {
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
        if self
            .approved
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key)
        {
            return;
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
    }

    /// Keep an approved answer (the caller has made it durable).
    pub fn approve(&self, key: String, answer: String, source: &str) {
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

    /// The pattern that best matches `question`, if any.
    pub fn lookup(&self, question: &str) -> Option<Lookup> {
        // PLACEHOLDER: replaced by the learned lookup on merge
        let _ = question;
        None
    }

    /// Forget an unapproved answer (it was rated bad). Approved answers are
    /// only replaced, by a correction.
    pub fn forget_unapproved(&self, key: &str) -> bool {
        let had = self.unapproved.contains_key(key);
        self.unapproved.invalidate(key);
        had
    }
}

/// Every pipeline's bank.
#[derive(Default)]
pub struct Banks {
    banks: RwLock<HashMap<String, Arc<Bank>>>,
}

impl Banks {
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
            .or_insert_with(|| Arc::new(Bank::new(spec.clone())))
            .clone()
    }

    /// Give `pipeline`'s bank the settings of the generation being
    /// published. A bank whose settings changed is rebuilt keeping its
    /// approved answers (unapproved ones are cheap to get again and may not
    /// fit the new bounds).
    pub fn configure(&self, pipeline: &str, spec: &AnswerBankSpec) {
        let mut banks = self.banks.write().unwrap_or_else(|e| e.into_inner());
        let fresh = Bank::new(spec.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AnswerBankSpec {
        AnswerBankSpec {
            capacity: 100,
            ttl_s: 60,
            remember: vec![],
        }
    }

    #[test]
    fn approved_answers_win_and_stay() {
        let bank = Bank::new(spec());
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
        let bank = Bank::new(spec());
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
