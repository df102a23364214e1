//! Example stage `answer-bank` (layer 2, cache): answers a request from the
//! pipeline's answer bank when the same question was answered before, and
//! otherwise names the key under which its eventual answer (from a model or
//! a reviewer) should be remembered.
//!
//! The key is the question with case, punctuation and spacing folded away,
//! so "How do I top up?" and "how do i top up" share one answer. With
//! `key_attribute = "intent"` in its config, a request that carries that
//! attribute (set by an earlier rules stage) is keyed by it instead: one
//! answer per intent.
//!
//! Config: `key_attribute` (optional), `confidence` of an unapproved answer
//! (default 0.9; an answer a person approved is given at 1.0).

use serde::Deserialize;
use strata_sdk::{Outcome, Request, Stage, cache, config, export_stage};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    key_attribute: Option<String>,
    #[serde(default)]
    confidence: Option<f64>,
}

struct AnswerBank;

impl Stage for AnswerBank {
    fn handle(request: Request) -> Outcome {
        let settings: Settings = config::load().unwrap_or_else(|e| panic!("{e}"));
        let key = match settings
            .key_attribute
            .as_deref()
            .and_then(|name| Some((name, request.attribute(name)?)))
        {
            Some((name, value)) => format!("{name}:{value}"),
            None => format!("q:{}", question_key(&request.input)),
        };
        match cache::get(&key) {
            Some(entry) => {
                let confidence = if entry.approved {
                    1.0
                } else {
                    settings.confidence.unwrap_or(0.9)
                };
                Outcome::respond(entry.answer, confidence)
            }
            None => {
                cache::remember_as(&key);
                Outcome::Next(request)
            }
        }
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
