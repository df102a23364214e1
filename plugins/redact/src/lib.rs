//! Example stage `redact`: replaces e-mail addresses, phone numbers and
//! payment card numbers with placeholders before any later stage (or a
//! reviewer, or a model) sees them, and records which kinds it removed in the
//! `redacted` attribute.
//!
//! The scanners are hand-written rather than regular expressions: a card
//! number is only a card number if its Luhn check digit is right, and plain
//! scanning keeps a fresh instance cheap. It needs nothing of `std`, so as a
//! component it is `no_std` and imports nothing at all (see
//! `strata_sdk::no_std_runtime!`): build it on its own, `cargo build -p redact`.

#![cfg_attr(target_family = "wasm", no_std)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

// The component export exists only in the WebAssembly build. Natively the
// crate is a plain library (its tests, the rules plugin's Banking77 harness):
// there the export would collide with other stages' exports in one binary,
// and its symbol names are not ones a native linker accepts.
#[cfg(target_family = "wasm")]
mod component {
    use super::redact;
    use alloc::vec::Vec;
    use strata_sdk::{Outcome, Request, Stage, export_stage, no_std_runtime};

    struct Redact;

    impl Stage for Redact {
        fn handle(mut request: Request) -> Outcome {
            let (text, found) = redact(&request.input);
            if !found.is_empty() {
                request.input = text;
                let kinds: Vec<&str> = found.iter().map(|k| k.name()).collect();
                request.set_attribute("redacted", kinds.join(","));
            }
            Outcome::Next(request)
        }
    }

    export_stage!(Redact);
    no_std_runtime!();
}

/// A kind of personal data this stage removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// An e-mail address.
    Email,
    /// A payment card number (13 to 19 digits passing the Luhn check).
    Card,
    /// A phone number.
    Phone,
}

impl Kind {
    /// The name recorded in the `redacted` attribute.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Card => "card",
            Kind::Phone => "phone",
        }
    }

    fn placeholder(self) -> &'static str {
        match self {
            Kind::Email => "[email]",
            Kind::Card => "[card]",
            Kind::Phone => "[phone]",
        }
    }
}

/// Redact `text`; returns the new text and the kinds found (sorted, unique).
pub fn redact(text: &str) -> (String, Vec<Kind>) {
    let mut found = Vec::new();
    let text = redact_emails(text, &mut found);
    let text = redact_numbers(&text, &mut found);
    found.sort();
    found.dedup();
    (text, found)
}

fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-')
}

fn is_domain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-')
}

fn redact_emails(text: &str, found: &mut Vec<Kind>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        let before = &rest[..at];
        let after = &rest[at + 1..];
        let local_start = before
            .char_indices()
            .rev()
            .take_while(|&(_, c)| is_local_char(c))
            .last()
            .map_or(before.len(), |(i, _)| i);
        let domain_len = after
            .char_indices()
            .take_while(|&(_, c)| is_domain_char(c))
            .last()
            .map_or(0, |(i, c)| i + c.len_utf8());
        // A sentence may end right after the address: "mail a@b.com."
        let domain = after[..domain_len].trim_end_matches(['.', '-']);
        let valid_domain = domain.rsplit_once('.').is_some_and(|(name, tld)| {
            !name.is_empty() && tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())
        });
        if local_start < before.len() && valid_domain {
            out.push_str(&before[..local_start]);
            out.push_str(Kind::Email.placeholder());
            found.push(Kind::Email);
            rest = &after[domain.len()..];
        } else {
            out.push_str(&rest[..=at]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Find runs of digits and separators; decide per run whether it is a card
/// number, a phone number, or neither (an amount, a date, an id).
fn redact_numbers(text: &str, found: &mut Vec<Kind>) -> String {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        let starts_run = c.is_ascii_digit() || ((c == '+' || c == '(') && next_is_digit(&chars, i));
        let glued_to_word = i > 0 && chars[i - 1].1.is_alphanumeric();
        if !starts_run || glued_to_word {
            i += 1;
            continue;
        }
        let mut j = i;
        let mut last_digit = i;
        while j < chars.len() {
            let c = chars[j].1;
            if c.is_ascii_digit() {
                last_digit = j;
            } else if !matches!(c, ' ' | '-' | '.' | '(' | ')' | '+') {
                break;
            }
            j += 1;
        }
        let end = chars.get(last_digit + 1).map_or(text.len(), |&(b, _)| b);
        let glued_after = chars
            .get(last_digit + 1)
            .is_some_and(|&(_, c)| c.is_alphanumeric());
        let run = &text[start..end];
        if let Some(kind) = classify(run).filter(|_| !glued_after) {
            out.push_str(&text[copied..start]);
            out.push_str(kind.placeholder());
            found.push(kind);
            copied = end;
        }
        i = last_digit + 1;
    }
    out.push_str(&text[copied..]);
    out
}

fn next_is_digit(chars: &[(usize, char)], i: usize) -> bool {
    chars.get(i + 1).is_some_and(|&(_, c)| c.is_ascii_digit())
}

fn classify(run: &str) -> Option<Kind> {
    let digits: Vec<u32> = run.chars().filter_map(|c| c.to_digit(10)).collect();
    let card_separators = run
        .chars()
        .all(|c| c.is_ascii_digit() || c == ' ' || c == '-');
    if (13..=19).contains(&digits.len()) && card_separators && luhn(&digits) {
        return Some(Kind::Card);
    }
    // Nine digits or more, or seven with an international prefix: shorter
    // runs are amounts, dates and reference numbers far more often.
    let international = run.starts_with('+');
    if (9..=15).contains(&digits.len()) || (international && digits.len() >= 7) {
        return Some(Kind::Phone);
    }
    None
}

fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::{Kind, redact};

    #[test]
    fn redacts_personal_data() {
        let cases: &[(&str, &str, &[Kind])] = &[
            ("no personal data here", "no personal data here", &[]),
            (
                "mail me at jane.doe@example.com please",
                "mail me at [email] please",
                &[Kind::Email],
            ),
            ("write to a@b.co.", "write to [email].", &[Kind::Email]),
            (
                "twitter @handle is not mail",
                "twitter @handle is not mail",
                &[],
            ),
            ("x@localhost", "x@localhost", &[]),
            (
                "my card 4111 1111 1111 1111 was declined",
                "my card [card] was declined",
                &[Kind::Card],
            ),
            (
                "ref 4111-1111-1111-1112 fails luhn",
                "ref 4111-1111-1111-1112 fails luhn",
                &[],
            ),
            (
                "call +44 20 7946 0958 today",
                "call [phone] today",
                &[Kind::Phone],
            ),
            ("call (555) 123-4567", "call [phone]", &[Kind::Phone]),
            (
                "i paid 1500 on 2024-01-02",
                "i paid 1500 on 2024-01-02",
                &[],
            ),
            ("order ab123456789", "order ab123456789", &[]),
            (
                "jane@example.com 5555555555554444",
                "[email] [card]",
                &[Kind::Email, Kind::Card],
            ),
        ];
        for (input, expected, kinds) in cases {
            let (text, found) = redact(input);
            assert_eq!(text, *expected, "{input:?}");
            assert_eq!(found, *kinds, "{input:?}");
        }
    }
}
