//! The stage shared by the `version-one` and `version-two` test
//! components: each crate defines `VERSION` and mounts this file as its
//! `stage` module.

use strata_sdk::{Outcome, Request, Stage, config, export_stage};

use crate::VERSION;

struct Versioned;

impl Stage for Versioned {
    /// Pass the request on with ` |VERSION` appended, or (with config
    /// `respond = true`) answer with the input plus ` |VERSION`.
    fn handle(mut request: Request) -> Outcome {
        request.input.push_str(" |");
        request.input.push_str(VERSION);
        if config::get("respond").as_deref() == Some("true") {
            Outcome::respond(request.input, 1.0)
        } else {
            Outcome::Next(request)
        }
    }
}

export_stage!(Versioned);
