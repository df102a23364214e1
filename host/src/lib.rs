//! Strata: a gateway that runs requests through pipelines of sandboxed
//! WebAssembly stages.
//!
//! # Layout
//!
//! Modules follow the path a request takes:
//!
//! - [`manifest`]: parse and validate the TOML manifest (no wasmtime here);
//! - [`runtime`]: the wasmtime engine, limits, loading and invoking stages;
//! - `imports`: the host side of each interface a stage may import;
//! - [`request`]: the request and outcome types passed between stages;
//! - [`pipeline`]: generations and the chaining semantics of a pipeline;
//! - [`server`]: start-up, the HTTP listener, graceful shutdown;
//! - [`api`]: HTTP routes, bodies and error mapping;
//! - [`store`]: durable request records and review tickets in SQLite;
//! - [`cli`]: the `strata` command line.

pub mod api;
pub mod cli;
mod imports;
pub mod manifest;
pub mod pipeline;
pub mod request;
pub mod runtime;
pub mod server;
pub mod store;

pub use manifest::{Manifest, ManifestError, ManifestErrorKind};
pub use server::{HostOptions, RunningHost, start};
