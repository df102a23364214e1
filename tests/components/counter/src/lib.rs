//! Test component `counter`: answers with how many requests this instance
//! has handled, so tests can see instance reuse. The input `boom` makes it
//! panic (after counting), `sleep` makes it spin past any timeout.

use std::sync::atomic::{AtomicU32, Ordering};

use strata_sdk::{Outcome, Request, Stage, export_stage};

static CALLS: AtomicU32 = AtomicU32::new(0);

struct Counter;

impl Stage for Counter {
    fn handle(request: Request) -> Outcome {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        match request.input.as_str() {
            "boom" => panic!("counter: deliberate panic after {calls} calls"),
            "sleep" => loop {
                std::hint::black_box(calls);
            },
            _ => Outcome::respond(calls.to_string(), 1.0),
        }
    }
}

export_stage!(Counter);
