//! Test component `version-two`: the other version of `version-one`.

const VERSION: &str = "v2";

include!("../../version-one/src/stage.rs");
