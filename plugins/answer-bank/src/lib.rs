//! Example stage `answer-bank` (layer 2, cache): answers a request from the
//! pipeline's answer bank when the same question was answered before, or
//! when it matches an approved pattern closely enough for the host to trust
//! the match, and otherwise names the key under which its eventual answer
//! (from a model or a reviewer) should be remembered.
//!
//! First the exact key. The key is the question with case, punctuation and
//! spacing folded away, so "How do I top up?" and "how do i top up" share
//! one answer. With `key_attribute = "intent"` in its config, a request that
//! carries that attribute (set by an earlier rules stage) is keyed by it
//! instead: one answer per intent.
//!
//! Then, when the key holds nothing, the question itself is looked up among
//! the bank's patterns (`cache::lookup`, contract 0.2.0), so a paraphrase
//! finds the answer a reviewer gave to another wording. A match the host
//! marks trusted (within the pipeline's `answer_bank.max_error`) answers;
//! an untrusted one does not, and the request goes on with its key
//! remembered as before. The stage never second-guesses `trusted` with a
//! score threshold of its own: the host calibrated it.
//!
//! Config (all optional):
//! - `key_attribute`: the attribute to key by, when the request carries it;
//! - `confidence`: of an unapproved exact-key answer (default 0.9; an answer
//!   a person approved is given at 1.0);
//! - `trusted_confidence`: of an answer from a trusted pattern match
//!   (default 0.9);
//! - `guess_attribute`: when set, an untrusted match that has a label puts
//!   that label in this attribute (e.g. `bank_guess = "card_arrival"`) on
//!   the request it passes on, as a hint for a later stage's draft. Off by
//!   default, so a pipeline sees no new attribute unless it asks.

use serde::Deserialize;
use strata_sdk::{Outcome, Request, Stage, cache, config, export_stage};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    key_attribute: Option<String>,
    #[serde(default)]
    confidence: Option<f64>,
    #[serde(default)]
    trusted_confidence: Option<f64>,
    #[serde(default)]
    guess_attribute: Option<String>,
}

struct AnswerBank;

impl Stage for AnswerBank {
    fn handle(mut request: Request) -> Outcome {
        let settings: Settings = config::load().unwrap_or_else(|e| panic!("{e}"));
        let key = match settings
            .key_attribute
            .as_deref()
            .and_then(|name| Some((name, request.attribute(name)?)))
        {
            Some((name, value)) => format!("{name}:{value}"),
            None => format!("q:{}", question_key(&request.input)),
        };
        if let Some(entry) = cache::get(&key) {
            let confidence = if entry.approved {
                1.0
            } else {
                settings.confidence.unwrap_or(0.9)
            };
            return Outcome::respond(entry.answer, confidence);
        }
        match cache::lookup(&request.input) {
            Some(found) if found.trusted => {
                return Outcome::respond(found.answer, settings.trusted_confidence.unwrap_or(0.9));
            }
            Some(found) => {
                if let (Some(name), Some(label)) = (&settings.guess_attribute, found.label) {
                    request.set_attribute(name.as_str(), label);
                }
            }
            None => {}
        }
        cache::remember_as(&key);
        Outcome::Next(request)
    }
}

export_stage!(AnswerBank);

/// Lower-case words of letters and digits, one space apart.
pub fn question_key(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::question_key;

    #[test]
    fn keys_fold_case_punctuation_and_spacing() {
        assert_eq!(question_key("How do I   top-up?"), "how do i top up");
        assert_eq!(question_key("how do i top up"), "how do i top up");
        assert_eq!(
            question_key("¿Dónde está mi tarjeta?"),
            "dónde está mi tarjeta"
        );
        assert_eq!(question_key("!!!"), "");
    }
}
