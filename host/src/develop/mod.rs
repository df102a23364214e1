//! The rule writer's loop: `strata new` writes a stage project from a
//! template, `strata build` turns each stage's source into its component
//! with a pinned toolchain, and `strata watch` rebuilds, tests and reloads
//! on every save.
//!
//! Nothing here runs inside a serving host: these are development commands
//! that use the same manifest, runtime and golden cases the host does.

mod build;
mod new;
mod toolchains;
mod watch;

pub use self::build::{Built, build, component_imports};
pub use self::new::{Lang, new_stage};
pub use self::toolchains::{
    COMPONENTIZE_JS, COMPONENTIZE_PY, PIPELINE_WIT, RUST_TARGET, Toolchains,
};
pub use self::watch::{Reloads, watch};
