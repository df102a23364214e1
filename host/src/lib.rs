//! Strata: a gateway that runs requests through pipelines of sandboxed
//! WebAssembly stages.
//!
//! # Layout
//!
//! Modules follow the path a request takes:
//!
//! - [`manifest`]: parse and validate the TOML manifest (no wasmtime here);
//! - [`runtime`]: the wasmtime engine, limits, loading and invoking stages,
//!   and (`runtime::imports`) the host side of each interface a stage may
//!   import;
//! - [`request`]: the request and outcome types passed between stages;
//! - [`bank`]: per-pipeline answer banks (the `cache` interface);
//! - [`patterns`]: approved answers with examples, matched by a learned model;
//! - [`model`]: model tiers over the OpenAI-compatible protocol;
//! - [`embeddings`]: the embeddings client an answer bank may use;
//! - [`pipeline`]: generations and the chaining semantics of a pipeline;
//! - [`record`]: traffic recording for `strata replay`;
//! - [`replay`]: `strata replay`, recorded traffic against a manifest;
//! - [`ops`]: reloads, rollbacks, candidate rollouts, manifest edits, the
//!   file watcher, the audit trail and the pipelines' observer (telemetry);
//! - [`app`]: the state every handler and worker shares, and the
//!   lifecycle of the host's tasks;
//! - [`server`]: start-up and shutdown, in order;
//! - [`http`]: the HTTP edge: routers, extractors, error bodies, the tower
//!   stack and the accept loop (the API and the admin API);
//! - [`complete`]: what is kept of a finished run;
//! - [`views`]: the JSON of requests and tickets, as clients, reviewers and
//!   callback receivers see them;
//! - [`queue`]: the bounded queue of accepted asynchronous requests;
//! - [`jobs`]: the workers that run them;
//! - [`callbacks`]: the callback policy: allowed receivers, address checks,
//!   signatures;
//! - [`delivery`]: the worker that delivers due callbacks, with retries;
//! - [`auth`]: bearer tokens and roles;
//! - [`slo`]: error budgets, multiwindow burn rates;
//! - [`metrics`]: Prometheus metrics by pipeline, layer and stage;
//! - [`states`]: request, ticket and job states as types;
//! - [`store`]: durable request records and review tickets in SQLite;
//! - [`retention`]: removing records older than `[retention]` keeps;
//! - [`audit`]: `strata audit`, what every stage may do;
//! - [`cases`]: golden cases, and the reload gate they make;
//! - [`import`]: reading files of example questions (CSV, JSON lines);
//! - [`eval`]: `strata eval`, labelled questions through a pipeline, by layer;
//! - [`cli`]: the `strata` command line.

pub mod app;
pub mod audit;
pub mod auth;
pub mod bank;
pub mod callbacks;
pub mod cases;
pub mod cli;
pub mod cluster;
pub mod complete;
pub mod console;
pub mod control;
pub mod delivery;
pub mod develop;
pub mod embeddings;
pub mod eval;
pub mod http;
pub mod import;
pub mod jobs;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod patterns;
pub mod pipeline;
pub mod queue;
pub mod record;
pub mod replay;
pub mod request;
pub mod retention;
pub mod runtime;
pub mod server;
pub mod slo;
pub mod states;
pub mod store;
pub mod teams;
pub mod telemetry;
pub mod views;

pub use manifest::{Manifest, ManifestError, ManifestErrorKind};
pub use server::{HostOptions, RunningHost, start};
