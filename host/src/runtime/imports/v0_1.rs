//! The host interfaces of `strata:pipeline@0.1.0`, served by the current
//! implementation.
//!
//! 0.1.0 declares `log`, `config`, `cache` (without `lookup`) and `model`
//! exactly as 0.2.0 does, but its bindings have their own traits and records
//! (see `runtime::bindings`). Each method here converts its arguments,
//! calls the 0.2.0 implementation and converts the result back, so both
//! versions share one implementation and cannot drift apart: a 0.1.0
//! component behaves as it did because the same code serves it. Each
//! interface's `add_to_linker` (in its own file) links both versions.

use std::sync::Arc;

use super::cache::CacheCtx;
use super::config::ConfigCtx;
use super::log::LogCtx;
use super::model::ModelCtx;
use crate::runtime::bindings::v0_1::strata::pipeline as old;
use crate::runtime::bindings::v0_2::strata::pipeline as current;

impl old::log::Host for LogCtx {
    fn log(&mut self, level: old::log::Level, message: String) {
        let level = match level {
            old::log::Level::Trace => current::log::Level::Trace,
            old::log::Level::Debug => current::log::Level::Debug,
            old::log::Level::Info => current::log::Level::Info,
            old::log::Level::Warn => current::log::Level::Warn,
            old::log::Level::Error => current::log::Level::Error,
        };
        current::log::Host::log(self, level, message);
    }
}

impl old::config::Host for Arc<ConfigCtx> {
    fn get(&mut self, key: String) -> Option<String> {
        current::config::Host::get(self, key)
    }

    fn get_json(&mut self) -> String {
        current::config::Host::get_json(self)
    }
}

impl old::cache::Host for CacheCtx {
    fn get(&mut self, key: String) -> Option<old::cache::Entry> {
        current::cache::Host::get(self, key).map(|entry| old::cache::Entry {
            answer: entry.answer,
            source: entry.source,
            approved: entry.approved,
        })
    }

    fn put(&mut self, key: String, answer: String, ttl_seconds: u32) {
        current::cache::Host::put(self, key, answer, ttl_seconds);
    }

    fn remember_as(&mut self, key: String) {
        current::cache::Host::remember_as(self, key);
    }
}

impl old::model::Host for ModelCtx {
    async fn complete(
        &mut self,
        request: old::model::CompletionRequest,
    ) -> Result<old::model::Completion, old::model::ModelError> {
        let request = current::model::CompletionRequest {
            tier: request.tier,
            messages: request
                .messages
                .into_iter()
                .map(|m| current::model::Message {
                    role: m.role,
                    content: m.content,
                })
                .collect(),
            max_tokens: request.max_tokens,
            temperature: request.temperature,
        };
        match current::model::Host::complete(self, request).await {
            Ok(c) => Ok(old::model::Completion {
                text: c.text,
                tier: c.tier,
                model: c.model,
                input_tokens: c.input_tokens,
                output_tokens: c.output_tokens,
                cost_usd: c.cost_usd,
            }),
            Err(current::model::ModelError::UnknownTier(why)) => {
                Err(old::model::ModelError::UnknownTier(why))
            }
            Err(current::model::ModelError::Unavailable(why)) => {
                Err(old::model::ModelError::Unavailable(why))
            }
            Err(current::model::ModelError::Rejected(why)) => {
                Err(old::model::ModelError::Rejected(why))
            }
        }
    }
}
