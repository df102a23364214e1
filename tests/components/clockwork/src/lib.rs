//! Test component `clockwork`: answers with what it reads from the clock and
//! from randomness (through std: `SystemTime` and the random keys of
//! `RandomState`), so tests can see whether a stage is deterministic.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{SystemTime, UNIX_EPOCH};

use strata_sdk::{Outcome, Request, Stage, export_stage};

struct Clockwork;

impl Stage for Clockwork {
    fn handle(request: Request) -> Outcome {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let random = RandomState::new().hash_one(&request.input);
        Outcome::respond(format!("{now} {random}"), 1.0)
    }
}

export_stage!(Clockwork);
