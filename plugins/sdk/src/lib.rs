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
//!
//! # Stages without `std`
//!
//! A stage that uses Rust's `std` imports about thirteen WASI interfaces
//! (standard streams, environment, exit) whether it calls them or not, and
//! the host gives every fresh instance a locked-down WASI context for them.
//! A stage that needs only `core` and `alloc` can be `no_std` and import
//! nothing but what it calls from the host: [`no_std_runtime!`] supplies
//! what `std` otherwise would (an allocator, a panic handler, the
//! canonical ABI's `cabi_realloc`). Such an instance starts faster, and
//! `strata audit` shows a stage that can reach no WASI at all.
//!
//! ```ignore
//! #![no_std]
//! extern crate alloc;
//!
//! use alloc::string::String;
//! use strata_sdk::{Outcome, Request, Stage, export_stage, no_std_runtime};
//!
//! struct Trim;
//!
//! impl Stage for Trim {
//!     fn handle(mut request: Request) -> Outcome {
//!         request.input = String::from(request.input.trim());
//!         Outcome::Next(request)
//!     }
//! }
//!
//! export_stage!(Trim);
//! no_std_runtime!();
//! ```
//!
//! Every dependency of such a stage must be `no_std` as well, with `std`
//! off in every crate of the build: Cargo unifies a shared dependency's
//! features across the packages one command builds, so build a `no_std`
//! stage on its own (`cargo build -p NAME`), not together with stages that
//! turn on `std` in `serde`, `serde_json`, `memchr` or `wit-bindgen`. If `std` slips
//! in, the build fails with "found duplicate lang item `panic_impl`". A
//! panic in a `no_std` stage traps without its message (`std` would write
//! it to stderr, which the host logs).

#![no_std]

extern crate alloc;

use alloc::string::String;

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

/// What `std` would give a stage, for a `no_std` stage: a global allocator
/// (dlmalloc, the allocator `std` itself uses on WebAssembly), a panic
/// handler (a trap: the host reports the stage failed) and the canonical
/// ABI's `cabi_realloc` export, through which the host hands the stage its
/// request. Invoke it once, anywhere in a crate that is `#![no_std]` when
/// built for WebAssembly (the crate root, or the module that exports the
/// stage). See the crate's documentation.
#[macro_export]
macro_rules! no_std_runtime {
    () => {
        #[cfg(target_family = "wasm")]
        #[global_allocator]
        static __STRATA_ALLOCATOR: $crate::__runtime::Allocator = $crate::__runtime::Allocator;

        #[cfg(target_family = "wasm")]
        #[panic_handler]
        fn __strata_panic(_: &::core::panic::PanicInfo<'_>) -> ! {
            ::core::arch::wasm32::unreachable()
        }

        /// The canonical ABI's allocation function (see `no_std_runtime!`).
        ///
        /// # Safety
        /// Called by the host only, with a block this function returned
        /// (or null with `old_len` 0), its size and alignment.
        #[cfg(target_family = "wasm")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn cabi_realloc(
            old: *mut u8,
            old_len: usize,
            align: usize,
            new_len: usize,
        ) -> *mut u8 {
            // SAFETY: the caller's contract is `cabi_realloc`'s own.
            unsafe { $crate::__runtime::realloc(old, old_len, align, new_len) }
        }
    };
}

/// The pieces [`no_std_runtime!`] installs; not an API.
#[doc(hidden)]
pub mod __runtime {
    #[cfg(target_family = "wasm")]
    pub use dlmalloc::GlobalDlmalloc as Allocator;

    use alloc::alloc::{Layout, alloc, handle_alloc_error, realloc as grow};

    // `core` calls `memcmp`, which on WASI comes from wasi-libc, the C
    // library `std` links; a `no_std` stage links it for that alone (it
    // brings no imports). A `std` stage links it anyway.
    #[cfg(all(target_family = "wasm", target_os = "wasi"))]
    #[link(name = "c")]
    unsafe extern "C" {}

    /// The canonical ABI's `cabi_realloc` over the global allocator: a new
    /// block when `old_len` is 0, otherwise `old` resized; a zero-sized
    /// request gets a dangling, aligned pointer. Out of memory aborts (the
    /// instance traps).
    ///
    /// # Safety
    /// `align` is a power of two; `old`, when `old_len` is not 0, is a
    /// block this function returned with that size and alignment.
    pub unsafe fn realloc(old: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
        let Ok(layout) = Layout::from_size_align(new_len, align) else {
            panic!("cabi_realloc: invalid size {new_len} or alignment {align}");
        };
        if new_len == 0 {
            return core::ptr::without_provenance_mut(align);
        }
        let block = if old_len == 0 {
            // SAFETY: the layout's size is not zero.
            unsafe { alloc(layout) }
        } else {
            // SAFETY: the caller promises `old` came from here with
            // `old_len` and `align`, which is then a valid layout.
            unsafe {
                grow(
                    old,
                    Layout::from_size_align_unchecked(old_len, align),
                    new_len,
                )
            }
        };
        if block.is_null() {
            handle_alloc_error(layout);
        }
        block
    }
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
    use alloc::string::String;

    /// One top-level value: strings as they are, anything else as JSON.
    pub fn get(key: &str) -> Option<String> {
        config::get(key)
    }

    /// The whole table, deserialized into `T`.
    ///
    /// Errors name the problem, so a stage can turn them into an escalation
    /// or a log line instead of a panic.
    pub fn load<T: serde::de::DeserializeOwned>() -> Result<T, String> {
        serde_json::from_str(&config::get_json())
            .map_err(|e| alloc::format!("invalid stage config: {e}"))
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
    use alloc::borrow::ToOwned;
    use alloc::format;
    use alloc::string::String;
    use alloc::vec::Vec;

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
