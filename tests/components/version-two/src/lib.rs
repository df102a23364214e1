//! Test component `version-two`: the other version of `version-one`.

const VERSION: &str = "v2";

#[path = "../../version-one/src/stage.rs"]
mod stage;
