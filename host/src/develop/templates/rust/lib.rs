//! Stage `{{name}}`: answers "ping" and passes every other request on
//! unchanged.
{{about}}//!
//! Replace `handle` with what your stage should do, add a case to
//! `cases.toml` for each decision it makes, and run `strata test`. Set-up
//! every request needs (a config parsed, patterns compiled) belongs in
//! `fn init() -> bool`, which the host runs once at load (see
//! `strata_sdk::Stage::init`).

use strata_sdk::{Outcome, Request, Stage, export_stage};

struct {{type}};

impl Stage for {{type}} {
    fn handle(request: Request) -> Outcome {
        if request.input.trim().eq_ignore_ascii_case("ping") {
            return Outcome::respond(reply(), 0.99);
        }
{{lookup}}        Outcome::Next(request)
    }
}

/// What "ping" is answered with.
fn reply() -> String {
    {{reply}}
}

export_stage!({{type}});
