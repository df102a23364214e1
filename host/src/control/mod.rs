//! What operators and the host do to the serving generation, given the
//! application: reloads and rollbacks (`reload`), candidates promoted or
//! rolled back by hand or on a burn (`rollout`), the manifest edited in
//! place (`edit`), the file watcher (`watch`), and the other hosts'
//! operations applied here (`cluster`). The state they act on
//! (`Operations`, the audit trail, the pipelines' observer) is in
//! [`crate::ops`], below the application.

mod cluster;
mod edit;
mod reload;
mod rollout;
mod watch;

pub use self::cluster::join_cluster;
pub use self::reload::{files_changed, reload, rollback};
pub use self::rollout::{settle_candidate, spawn_burn_worker};
pub use self::watch::spawn_watcher;
