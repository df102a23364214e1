//! The host side of every interface a stage may import, one file each.
//!
//! - [`log`]: `strata:pipeline/log`, into the host's tracing log;
//! - [`config`]: `strata:pipeline/config`, the stage's own manifest table;
//! - [`cache`]: `strata:pipeline/cache`, the pipeline's answer bank;
//! - [`model`]: `strata:pipeline/model`, completions by tier;
//! - [`wasi`]: the locked-down WASI context that std-built guests need.
//!
//! Each implements its interface for [`crate::runtime::StageState`], the data
//! of one stage invocation's store.

pub(crate) mod cache;
pub(crate) mod config;
pub(crate) mod log;
pub(crate) mod model;
pub(crate) mod wasi;

/// `strata:pipeline/types` declares types only; linking it needs this empty
/// implementation.
impl crate::runtime::bindings::strata::pipeline::types::Host for crate::runtime::StageState {}
