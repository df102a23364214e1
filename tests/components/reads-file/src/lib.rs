//! Test component `reads-file`: a stage that reads a host file, so that it
//! imports `wasi:filesystem` and must be refused at load time; it also logs,
//! so that a stage granted nothing is refused for every import at once.

use strata_sdk::{Outcome, Request, Stage, export_stage, log};

struct ReadsFile;

impl Stage for ReadsFile {
    fn handle(request: Request) -> Outcome {
        let secret = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        log::info("read a file");
        Outcome::respond(secret, 1.0 + request.input.len() as f64 * 0.0)
    }
}

export_stage!(ReadsFile);
