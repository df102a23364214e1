//! Example stage `normalise`: trims the input, folds it to lower case and
//! collapses runs of whitespace into one space, so that later stages (rules,
//! the answer bank) see one spelling of the same question.
//!
//! It needs nothing of `std`, so as a component it is `no_std` and imports
//! nothing at all (see `strata_sdk::no_std_runtime!`): build it on its own,
//! `cargo build -p normalise`.

#![cfg_attr(target_family = "wasm", no_std)]

extern crate alloc;

use alloc::string::String;

// The component export exists only in the WebAssembly build. Natively the
// crate is a plain library (its tests, the rules plugin's Banking77 harness):
// there the export would collide with other stages' exports in one binary,
// and its symbol names are not ones a native linker accepts.
#[cfg(target_family = "wasm")]
mod component {
    use super::normalise;
    use strata_sdk::{Outcome, Request, Stage, export_stage, no_std_runtime};

    struct Normalise;

    impl Stage for Normalise {
        fn handle(mut request: Request) -> Outcome {
            request.input = normalise(&request.input);
            Outcome::Next(request)
        }
    }

    export_stage!(Normalise);
    no_std_runtime!();
}

/// Trim, lower-case (Unicode-aware) and collapse whitespace.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn normalises() {
        let cases = [
            ("", ""),
            ("   ", ""),
            ("Hello", "hello"),
            ("  Where is   my\tCARD?\n", "where is my card?"),
            ("ÉCOLE  Straße", "école straße"),
            ("line\r\nbreaks", "line breaks"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalise(input), expected, "{input:?}");
        }
    }
}
