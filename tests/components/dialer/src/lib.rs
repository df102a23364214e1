//! Test component `dialer`: opens a TCP connection to the address in the
//! request input and answers `connected` or `refused: <error>`, so tests can
//! see what a stage granted `wasi:sockets` may reach.

use strata_sdk::{Outcome, Request, Stage, export_stage};

struct Dialer;

impl Stage for Dialer {
    fn handle(request: Request) -> Outcome {
        let answer = match std::net::TcpStream::connect(request.input.trim()) {
            Ok(_) => "connected".to_owned(),
            Err(error) => format!("refused: {error}"),
        };
        Outcome::respond(answer, 1.0)
    }
}

export_stage!(Dialer);
