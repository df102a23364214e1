//! Write a Strata pipeline stage in Rust: one struct, one impl, one macro.
//!
//! ```ignore
//! use strata_sdk::{Outcome, Request, Stage, export_stage};
//!
//! struct Shout;
//!
//! impl Stage for Shout {
//!     fn handle(mut request: Request) -> Outcome {
//!         request.input = request.input.to_uppercase();
//!         Outcome::Next(request)
//!     }
//! }
//!
//! export_stage!(Shout);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`: the `.wasm` in
//! `target/wasm32-wasip2/release/` is a component the host loads. The crate
//! must be a `cdylib`.
//!
//! A stage only imports the host interfaces it calls: one that never calls
//! [`log`] needs no `log` grant, one that never calls [`config`] needs no
//! `config` grant. The contract itself is `wit/pipeline.wit` (shipped in this
//! crate), which documents every type below.
//!
//! A fresh instance serves each request, so set-up that every request
//! needs (a config parsed, patterns compiled) belongs in [`Stage::init`]:
//! the host runs it once when it loads the stage and starts every fresh
//! instance from the state it leaves.
//!
//! ```ignore
//! use std::sync::OnceLock;
//! use strata_sdk::{Outcome, Request, Stage, config, export_stage};
//!
//! static GREETING: OnceLock<String> = OnceLock::new();
//!
//! struct Greet;
//!
//! impl Stage for Greet {
//!     fn init() -> bool {
//!         GREETING.get_or_init(|| config::get("greeting").unwrap_or_default());
//!         true
//!     }
//!
//!     fn handle(request: Request) -> Outcome {
//!         let greeting = GREETING.get_or_init(|| config::get("greeting").unwrap_or_default());
//!         Outcome::respond(format!("{greeting} {}", request.input), 1.0)
//!     }
//! }
//!
//! export_stage!(Greet);
//! ```
//!
//! The SDK targets `strata:pipeline@0.2.0`, so a stage built with it needs a
//! host that links 0.2.0. Stages built with an older SDK (0.1.0) keep
//! loading: the host links every version.

/// Generated bindings for the `strata:pipeline` package. Stage authors use
/// the re-exports at the crate root instead.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        // The crate's own copy, so the published crate carries its contract.
        path: "wit",
        // `plugin` and the optional `init` export, which every stage of
        // this SDK exports (see `Stage::init`).
        world: "plugin-with-init",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "::strata_sdk::bindings",
    });
}

pub use bindings::strata::pipeline::types::{
    Answer, Attribute, Escalation, Outcome, Rejection, Request,
};

/// A pipeline stage. Each invocation gets a fresh instance, so `handle` is an
/// associated function: there is no state to keep between requests.
pub trait Stage {
    /// Set-up to run once, when the host loads the stage, instead of in
    /// every fresh instance: read and parse the config, compile patterns,
    /// build tables, into statics (a `OnceLock`, say). Return true to have
    /// every fresh instance start from the memory this leaves; false (the
    /// default) when there is nothing worth keeping.
    ///
    /// It may read [`config`] and write [`log`]; [`cache`] finds nothing
    /// and [`model`] calls fail here, since there is no request. The clock
    /// is fixed and randomness is seeded from the component's digest (so
    /// predictable: make no secrets here). It runs twice when it returns
    /// true. It must not write to stdout or stderr nor leave a file open
    /// when it returns true: the host refuses a snapshot holding a host
    /// resource. A panic fails the load with its message, so a bad config
    /// is refused by `strata check` and by a reload rather than failing
    /// requests.
    fn init() -> bool {
        false
    }

    /// Decide what to do with one request.
    fn handle(request: Request) -> Outcome;
}

/// Export a type implementing [`Stage`] as the component's stage.
#[macro_export]
macro_rules! export_stage {
    ($stage:ident) => {
        impl $crate::bindings::exports::strata::pipeline::stage::Guest for $stage {
            fn handle(request: $crate::Request) -> $crate::Outcome {
                <$stage as $crate::Stage>::handle(request)
            }
        }
        impl $crate::bindings::exports::strata::pipeline::init::Guest for $stage {
            fn initialize() -> bool {
                <$stage as $crate::Stage>::init()
            }
        }
        $crate::bindings::__export_plugin!($stage with_types_in $crate::bindings);
    };
}

impl Request {
    /// The value of attribute `key`, if set.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.key == key)
            .map(|a| a.value.as_str())
    }

    /// Set attribute `key` to `value`, replacing any earlier value.
    pub fn set_attribute(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.attributes.iter_mut().find(|a| a.key == key) {
            Some(attribute) => attribute.value = value,
            None => self.attributes.push(Attribute { key, value }),
        }
    }

    /// Remove attribute `key`, returning its value if it was set.
    pub fn remove_attribute(&mut self, key: &str) -> Option<String> {
        let index = self.attributes.iter().position(|a| a.key == key)?;
        Some(self.attributes.remove(index).value)
    }
}

impl Outcome {
    /// Answer with `output` at `confidence` (0.0 to 1.0).
    pub fn respond(output: impl Into<String>, confidence: f64) -> Outcome {
        Outcome::Respond(Answer {
            output: output.into(),
            confidence,
        })
    }

    /// Hand the request to a human, with an optional draft answer.
    pub fn escalate(reason: impl Into<String>, draft: Option<String>) -> Outcome {
        Outcome::Escalate(Escalation {
            reason: reason.into(),
            draft,
        })
    }

    /// Refuse the request; `code` and `message` reach the client.
    pub fn reject(code: impl Into<String>, message: impl Into<String>) -> Outcome {
        Outcome::Reject(Rejection {
            code: code.into(),
            message: message.into(),
        })
    }
}

/// Write to the host log (needs the `log` grant).
pub mod log {
    use crate::bindings::strata::pipeline::log::{Level, log};

    /// Log at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }

    /// Log at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    /// Log at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    /// Log at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// Read the stage's own `config` table (needs the `config` grant).
pub mod config {
    use crate::bindings::strata::pipeline::config;

    /// One top-level value: strings as they are, anything else as JSON.
    pub fn get(key: &str) -> Option<String> {
        config::get(key)
    }

    /// The whole table, deserialized into `T`.
    ///
    /// Errors name the problem, so a stage can turn them into an escalation
    /// or a log line instead of a panic.
    pub fn load<T: serde::de::DeserializeOwned>() -> Result<T, String> {
        serde_json::from_str(&config::get_json()).map_err(|e| format!("invalid stage config: {e}"))
    }
}

/// The pipeline's answer bank (needs the `cache` grant).
pub mod cache {
    use crate::bindings::strata::pipeline::cache;
    pub use crate::bindings::strata::pipeline::cache::{Entry, PatternMatch};

    /// The answer remembered under `key`.
    pub fn get(key: &str) -> Option<Entry> {
        cache::get(key)
    }

    /// Remember `answer` under `key` for `ttl_seconds` (0: the pipeline's
    /// default).
    pub fn put(key: &str, answer: &str, ttl_seconds: u32) {
        cache::put(key, answer, ttl_seconds);
    }

    /// Ask the host to remember this request's final answer under `key`
    /// when a later layer (or a reviewer) answers it.
    pub fn remember_as(key: &str) {
        cache::remember_as(key);
    }

    /// The approved pattern that best matches `question` (usually the
    /// request's input), by similarity rather than exact text. Answer with
    /// it only when [`PatternMatch::trusted`] is set: the host sets it when
    /// the match keeps the pipeline within its error budget. `None` when
    /// nothing matches, the bank has no patterns yet, or the question is
    /// empty or over 16 KiB.
    pub fn lookup(question: &str) -> Option<PatternMatch> {
        cache::lookup(question)
    }
}

/// Model completions by tier (needs the `model` grant).
pub mod model {
    use crate::bindings::strata::pipeline::model;
    pub use crate::bindings::strata::pipeline::model::{
        Completion, CompletionRequest, Message, ModelError,
    };

    /// Ask tier `tier` to answer `prompt`, after `system` instructions.
    pub fn ask(
        tier: &str,
        system: Option<&str>,
        prompt: &str,
        max_tokens: Option<u32>,
    ) -> Result<Completion, ModelError> {
        let mut messages = Vec::new();
        if let Some(system) = system {
            messages.push(Message {
                role: "system".to_owned(),
                content: system.to_owned(),
            });
        }
        messages.push(Message {
            role: "user".to_owned(),
            content: prompt.to_owned(),
        });
        model::complete(&CompletionRequest {
            tier: tier.to_owned(),
            messages,
            max_tokens,
            temperature: None,
        })
    }

    /// Send a full request.
    pub fn complete(request: &CompletionRequest) -> Result<Completion, ModelError> {
        model::complete(request)
    }

    /// A one-line description of `error`, for logs and panics.
    pub fn explain(error: &ModelError) -> String {
        match error {
            ModelError::UnknownTier(tier) => format!("no model tier named \"{tier}\""),
            ModelError::Unavailable(why) => format!("model unavailable: {why}"),
            ModelError::Rejected(why) => format!("model request rejected: {why}"),
        }
    }
}
