//! The WebAssembly runtime: one engine, the linker, limits, loading stages
//! and invoking them.
//!
//! Loading turns a validated [`StageSpec`] into a [`LoadedStage`]: the
//! component is compiled once (per digest), its exports and imports are
//! checked against the stage contract and the stage's grants, and it is
//! pre-instantiated. Invoking gives each call a fresh instance from the
//! pooling allocator, bounded by the stage's limits: epoch-based wall-clock
//! timeout (which also yields to tokio so a long stage never blocks a worker),
//! a memory cap that traps on failed growth, optional fuel, and an output
//! size cap. Any failure is a [`StageFailure`] for that one call; nothing a
//! guest does can take the process down.

//!
//! - `engine`: the engine, pool, compile cache and linker;
//! - `ticker`: the epoch ticker, asleep while no store lives;
//! - `load`: compiling, checking and pre-instantiating a stage;
//! - `init`: running a stage's `init` once at load and starting every fresh
//!   instance from the state it leaves;
//! - `invoke`: an instance per call within the stage's limits, and its
//!   failures;
//! - `retire`: a finished instance dropped (its pool slot reset) when the
//!   worker is next idle, off the request's path;
//! - `http_stage`: a `wasi:http` handler called as a stage, its response
//!   read as an outcome.

pub(crate) mod bindings;
pub use self::bindings::Contract;
pub mod capabilities;
mod engine;
mod http_stage;
pub(crate) mod imports;
mod init;
mod invoke;
mod limits;
mod load;
mod retire;
mod ticker;

pub use self::engine::Runtime;
pub use self::imports::cache::{BankAccess, CacheUse};
pub use self::imports::model::ModelAccess;
pub use self::init::{INIT_EXPORT, Snapshot};
pub(crate) use self::invoke::StageState;
pub use self::invoke::{Access, Effects, Invocation, LogTag, StageFailure};
pub use self::load::{ComponentFacts, ImportInfo, LoadedStage};
pub use self::retire::{on_worker_park, on_worker_stop};
