//! Test component `primed`: a stage with an `init`, which the host runs once
//! when it loads the stage. `init` reads the config key `greeting` and counts
//! itself; `handle` answers with the greeting, how many times `init` ran in
//! this instance's past and how many requests it has handled, so tests see
//! whether a fresh instance starts from the initialised state.
//!
//! Config: `keep = "false"` makes `init` ask not to be kept; `greeting =
//! "panic"` makes it panic; `grow_mib = N` makes it hold N MiB; `print =
//! "true"` makes it write to stdout (which leaves wasi-libc holding the
//! stream).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use strata_sdk::{Outcome, Request, Stage, config, export_stage};

static INITS: AtomicU32 = AtomicU32::new(0);
static CALLS: AtomicU32 = AtomicU32::new(0);
static GREETING: OnceLock<String> = OnceLock::new();
static BALLAST: OnceLock<Vec<u8>> = OnceLock::new();

struct Primed;

impl Stage for Primed {
    fn init() -> bool {
        let greeting = config::get("greeting").unwrap_or_else(|| "hello".to_owned());
        if greeting == "panic" {
            panic!("primed: told to panic in init");
        }
        if let Some(mib) = config::get("grow_mib").and_then(|n| n.parse::<usize>().ok()) {
            BALLAST.get_or_init(|| vec![1; mib << 20]);
        }
        if config::get("print").as_deref() == Some("true") {
            println!("primed: initialising");
        }
        GREETING.get_or_init(|| greeting);
        INITS.fetch_add(1, Ordering::Relaxed);
        config::get("keep").is_none_or(|keep| keep != "false")
    }

    fn handle(_request: Request) -> Outcome {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        let greeting = GREETING.get().map_or("(none)", String::as_str);
        let inits = INITS.load(Ordering::Relaxed);
        Outcome::respond(format!("{greeting} inits={inits} calls={calls}"), 1.0)
    }
}

export_stage!(Primed);
