//! The host side of every interface a stage may import, one file each.
//!
//! - [`log`]: `strata:pipeline/log`, into the host's tracing log;
//! - [`config`]: `strata:pipeline/config`, the stage's own manifest table;
//! - [`cache`]: `strata:pipeline/cache`, the pipeline's answer bank;
//! - [`model`]: `strata:pipeline/model`, completions by tier;
//! - [`wasi`]: the locked-down WASI context that std-built guests need;
//! - [`v0_1`]: the same interfaces as `strata:pipeline@0.1.0` declares them,
//!   delegating to the files above.
//!
//! Each implements its interface for [`crate::runtime::StageState`], the data
//! of one stage invocation's store. The files above implement the current
//! contract (0.2.0); older versions adapt to them rather than repeat them.

pub(crate) mod cache;
pub(crate) mod config;
pub(crate) mod log;
pub(crate) mod model;
pub(crate) mod v0_1;
pub(crate) mod wasi;

/// `strata:pipeline/types` declares types only; linking it needs this empty
/// implementation.
impl crate::runtime::bindings::v0_2::strata::pipeline::types::Host for crate::runtime::StageState {}
