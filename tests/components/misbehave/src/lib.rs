//! Test component `misbehave`: a hostile stage. Its `mode` config key picks
//! the misbehaviour, so one component covers every limit:
//!
//! - `loop`: spin forever (wall-clock timeout, or fuel);
//! - `memory`: allocate until the memory cap stops it;
//! - `panic`: panic (a trap);
//! - `huge-output`: answer with 1 MiB of text (output limit);
//! - `bad-confidence`: answer with confidence 7 (contract violation);
//! - `chatty`: print 10,000 lines to stdout and stderr, then pass the
//!   request on (log budget);
//! - anything else, or no mode: pass the request on.

use strata_sdk::{Outcome, Request, Stage, config, export_stage};

struct Misbehave;

impl Stage for Misbehave {
    fn handle(request: Request) -> Outcome {
        match config::get("mode").as_deref() {
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("memory") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            Some("panic") => panic!("misbehave: deliberate panic"),
            Some("huge-output") => Outcome::respond("x".repeat(1 << 20), 1.0),
            Some("bad-confidence") => Outcome::respond("sure", 7.0),
            Some("chatty") => {
                for i in 0..10_000 {
                    println!("stdout line {i}");
                    eprintln!("stderr line {i}");
                }
                Outcome::Next(request)
            }
            _ => Outcome::Next(request),
        }
    }
}

export_stage!(Misbehave);
