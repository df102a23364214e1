//! Test component `version-one`: one of a pair of stage versions that differ
//! only in the marker they add, for reload and rollout tests.

const VERSION: &str = "v1";

mod stage;
