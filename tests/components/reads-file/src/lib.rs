//! Test component `reads-file`: reads the file named by the request input
//! and answers with its contents (or the error), so that it imports
//! `wasi:filesystem`; it also logs, so a stage granted nothing is refused for
//! every import at once.

use strata_sdk::{Outcome, Request, Stage, export_stage, log};

struct ReadsFile;

impl Stage for ReadsFile {
    fn handle(request: Request) -> Outcome {
        log::info("reading a file");
        match std::fs::read_to_string(request.input.trim()) {
            Ok(text) => Outcome::respond(text, 1.0),
            Err(error) => Outcome::respond(format!("error: {error}"), 1.0),
        }
    }
}

export_stage!(ReadsFile);
