//! The host side of every interface a stage may import, one file each.
//!
//! - [`log`]: `strata:pipeline/log`, into the host's tracing log;
//! - [`config`]: `strata:pipeline/config`, the stage's own manifest table;
//! - [`cache`]: `strata:pipeline/cache`, the pipeline's answer bank;
//! - [`model`]: `strata:pipeline/model`, completions by tier;
//! - [`http`]: `wasi:http`, outgoing requests to the hosts a stage lists;
//! - [`wasi`]: the locked-down WASI context that std-built guests need;
//! - [`v0_1`]: the same interfaces as `strata:pipeline@0.1.0` declares them,
//!   delegating to the files above.
//!
//! Each file owns its interface's state for one invocation (`LogCtx`,
//! `ConfigCtx`, `CacheCtx`, `ModelCtx`), implements the interface on it and
//! links it with its own `add_to_linker`, as `wasmtime-wasi-http` does;
//! [`crate::runtime::StageState`] only holds one of each. What a caller
//! lends an invocation comes in per interface too ([`cache::BankAccess`],
//! [`model::ModelAccess`]), and so does what it reports
//! ([`cache::CacheUse`], the model calls). The files above implement the
//! current contract (0.2.0); older versions adapt to them rather than
//! repeat them.

pub(crate) mod cache;
pub(crate) mod config;
pub(crate) mod http;
pub(crate) mod log;
pub(crate) mod model;
pub(crate) mod v0_1;
pub(crate) mod wasi;

/// Link every `strata:pipeline` host interface of every contract version.
/// (`types` declares types only: there is nothing to link.)
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<crate::runtime::StageState>,
) -> wasmtime::Result<()> {
    log::add_to_linker(linker)?;
    config::add_to_linker(linker)?;
    cache::add_to_linker(linker)?;
    model::add_to_linker(linker)
}
