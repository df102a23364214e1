//! `strata:pipeline/cache`: the pipeline's answer bank (see [`crate::bank`]):
//! answers under keys, and (since 0.2.0) patterns matched by similarity.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{HasSelf, Linker};

use crate::bank::Bank;
use crate::patterns::PatternFeatures;
use crate::runtime::bindings::v0_2::strata::pipeline::cache::{Entry, Host, PatternMatch};
use crate::runtime::bindings::{v0_1, v0_2};
use crate::runtime::{LogTag, StageState};

/// The longest key a stage may use.
const MAX_KEY_BYTES: usize = 1024;
/// The longest answer a stage may store.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The longest question `lookup` searches for. A longer one is not a
/// customer's question; searching it would only cost the host time, so it
/// gets `none` (the contract promises this bound to plugin authors).
const MAX_QUESTION_BYTES: usize = 16 * 1024;

/// The answer bank an invocation may use.
#[derive(Clone, Default)]
pub struct BankAccess {
    /// The pipeline's answer bank; `None` leaves every lookup empty.
    pub bank: Option<Arc<Bank>>,
    /// A shadow run reads the bank but must not change it.
    pub read_only: bool,
}

/// What a stage did with the answer bank in one invocation.
#[derive(Debug, Clone, Default)]
pub struct CacheUse {
    /// The key the stage asked its request's final answer be kept under.
    pub remember_key: Option<String>,
    /// Lookups that found an answer.
    pub hits: u32,
    /// Lookups that found nothing.
    pub misses: u32,
    /// The pattern the stage's last `lookup` matched.
    pub pattern: Option<i64>,
    /// Its `lookup` calls by result: trusted, untrusted, no match.
    pub pattern_lookups: [u32; 3],
    /// Its `lookup` calls by the model that matched them.
    pub pattern_features: PatternFeatures,
}

/// What `cache` needs of one invocation.
pub(crate) struct CacheCtx {
    access: BankAccess,
    tag: LogTag,
    /// When the invocation's wall-clock limit runs out: a lookup that waits
    /// on an embeddings endpoint keeps within it.
    deadline: Instant,
    used: CacheUse,
}

impl CacheCtx {
    pub(crate) fn new(tag: LogTag) -> CacheCtx {
        CacheCtx {
            access: BankAccess::default(),
            tag,
            deadline: Instant::now(),
            used: CacheUse::default(),
        }
    }

    /// Start an invocation with its bank and deadline.
    pub(crate) fn restart(&mut self, access: &BankAccess, tag: &LogTag, deadline: Instant) {
        self.access = access.clone();
        if self.tag.request_id != tag.request_id {
            self.tag = tag.clone();
        }
        self.deadline = deadline;
        self.used = CacheUse::default();
    }

    /// What the invocation did with the bank, leaving a clean slate.
    pub(crate) fn take_use(&mut self) -> CacheUse {
        std::mem::take(&mut self.used)
    }
}

/// Link `cache` of every contract version, served from
/// [`StageState::cache`].
pub(crate) fn add_to_linker(linker: &mut Linker<StageState>) -> wasmtime::Result<()> {
    v0_2::strata::pipeline::cache::add_to_linker::<_, HasSelf<CacheCtx>>(linker, |s| &mut s.cache)?;
    v0_1::strata::pipeline::cache::add_to_linker::<_, HasSelf<CacheCtx>>(linker, |s| &mut s.cache)
}

impl Host for CacheCtx {
    fn get(&mut self, key: String) -> Option<Entry> {
        let bank = self.access.bank.as_ref()?;
        match bank.get(&key) {
            Some(entry) => {
                self.used.hits += 1;
                Some(Entry {
                    answer: entry.answer,
                    source: entry.source,
                    approved: entry.approved,
                })
            }
            None => {
                self.used.misses += 1;
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
        if let Some(bank) = self.access.bank.as_ref().filter(|_| !self.access.read_only) {
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
            self.used.remember_key = Some(key);
        }
    }

    async fn lookup(&mut self, question: String) -> Option<PatternMatch> {
        let bank = self.access.bank.clone()?;
        let searchable = !question.trim().is_empty() && question.len() <= MAX_QUESTION_BYTES;
        let found = if searchable {
            // Half the stage's remaining time at most goes to embedding the
            // question, so a slow endpoint leaves time for the lexical
            // model and the stage's own work.
            let budget = self.deadline.saturating_duration_since(Instant::now()) / 2;
            let (found, served) = bank.lookup(&question, budget).await;
            self.used.pattern_features.count(served);
            found
        } else {
            None
        };
        // Only a trusted match is a hit: an untrusted one is a guess the
        // bank cannot answer with, so the hit rate keeps meaning "traffic
        // the bank could absorb".
        if found.as_ref().is_some_and(|m| m.trusted) {
            self.used.hits += 1;
        } else {
            self.used.misses += 1;
        }
        // Kept so that a rating of the answer the stage gives from this
        // match counts for or against the pattern.
        self.used.pattern = found.as_ref().filter(|m| m.trusted).map(|m| m.pattern);
        let result = match &found {
            Some(m) if m.trusted => 0,
            Some(_) => 1,
            None => 2,
        };
        self.used.pattern_lookups[result] += 1;
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
