//! Example stage `rules`: answers (or escalates) configured intents by
//! keyword or regular expression, and rejects empty input.
//!
//! Its behaviour comes entirely from the stage's `config` table:
//!
//! ```toml
//! [pipelines.support.stages.config]
//! reject_empty = true            # refuse blank input (default false)
//!
//! [[pipelines.support.stages.config.intents]]
//! name = "card_arrival"
//! keywords = ["card arrive", "card still hasn't arrived"]  # whole-word phrases
//! patterns = ['when will .*card']                            # regular expressions
//! answer = "Cards arrive within 5 working days ..."          # respond with this
//! confidence = 0.9                                           # default 0.9
//!
//! [[pipelines.support.stages.config.intents]]
//! name = "lost_or_stolen_card"
//! keywords = ["stolen", "lost my card"]
//! escalate = "possible fraud: a person must handle this"   # or hand to a human
//! ```
//!
//! Intents are tried in order and the first match decides. A request no
//! intent matches is passed on with nothing changed. Matching is
//! case-insensitive.
//!
//! Every request gets a fresh instance, so nothing compiled survives from one
//! request to the next: an intent's patterns are compiled only when a request
//! reaches that intent and none of its keywords matched. Keywords are the
//! cheap path; use patterns for what keywords cannot say.
//!
//! An invalid config (including a pattern that does not compile, when a
//! request reaches it) is a stage failure: the stage panics with the reason,
//! which the host logs, and the stage's `on_error` decides what happens.
//! `strata run` with a request that reaches every intent checks a config.

use regex_lite::{Regex, RegexBuilder};
use serde::Deserialize;
use strata_sdk::{Outcome, Request, Stage, config, export_stage};

struct Rules;

impl Stage for Rules {
    fn handle(request: Request) -> Outcome {
        match config::load::<RulesConfig>()
            .and_then(Compiled::new)
            .and_then(|rules| rules.decide(request))
        {
            Ok(outcome) => outcome,
            Err(error) => panic!("{error}"),
        }
    }
}

export_stage!(Rules);

/// The stage's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Refuse blank input.
    #[serde(default)]
    pub reject_empty: bool,
    /// The intents, tried in order.
    #[serde(default)]
    pub intents: Vec<Intent>,
}

/// One intent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    /// Its name, reported in escalation reasons.
    pub name: String,
    /// Phrases that match as whole words.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Regular expressions (case-insensitive).
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Respond with this text.
    #[serde(default)]
    pub answer: Option<String>,
    /// The answer's confidence.
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    /// Escalate with this reason instead of answering.
    #[serde(default)]
    pub escalate: Option<String>,
}

fn default_confidence() -> f64 {
    0.9
}

enum Action {
    Answer(String, f64),
    Escalate(String),
}

struct CompiledIntent {
    name: String,
    keywords: Vec<String>,
    patterns: Vec<String>,
    action: Action,
}

impl CompiledIntent {
    fn matches(&self, text: &str) -> Result<bool, String> {
        if self.keywords.iter().any(|k| contains_phrase(text, k)) {
            return Ok(true);
        }
        for pattern in &self.patterns {
            let regex = compile(pattern).map_err(|e| format!("intent \"{}\": {e}", self.name))?;
            if regex.is_match(text) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn compile(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .build()
        .map_err(|e| format!("pattern {pattern:?}: {e}"))
}

/// A config checked and ready to match.
pub struct Compiled {
    reject_empty: bool,
    intents: Vec<CompiledIntent>,
}

impl Compiled {
    /// Check the config. Patterns are compiled when first needed.
    pub fn new(config: RulesConfig) -> Result<Compiled, String> {
        let intents = config
            .intents
            .into_iter()
            .map(|intent| {
                let name = intent.name;
                let action = match (intent.answer, intent.escalate) {
                    (Some(answer), None) => Action::Answer(answer, intent.confidence),
                    (None, Some(reason)) => Action::Escalate(reason),
                    _ => {
                        return Err(format!(
                            "intent \"{name}\" needs exactly one of `answer` and `escalate`"
                        ));
                    }
                };
                if intent.keywords.is_empty() && intent.patterns.is_empty() {
                    return Err(format!("intent \"{name}\" has no keywords and no patterns"));
                }
                Ok(CompiledIntent {
                    keywords: intent.keywords.iter().map(|k| k.to_lowercase()).collect(),
                    patterns: intent.patterns,
                    action,
                    name,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Compiled {
            reject_empty: config.reject_empty,
            intents,
        })
    }

    /// Decide one request. Fails only on a pattern that does not compile.
    pub fn decide(&self, request: Request) -> Result<Outcome, String> {
        if self.reject_empty && request.input.trim().is_empty() {
            return Ok(Outcome::reject(
                "empty-input",
                "the request has no text to answer",
            ));
        }
        let text = request.input.to_lowercase();
        let mut matched = None;
        for intent in &self.intents {
            if intent.matches(&text)? {
                matched = Some(intent);
                break;
            }
        }
        Ok(match matched {
            None => Outcome::Next(request),
            Some(intent) => match &intent.action {
                Action::Answer(answer, confidence) => Outcome::respond(answer.clone(), *confidence),
                Action::Escalate(reason) => {
                    Outcome::escalate(format!("{}: {reason}", intent.name), None)
                }
            },
        })
    }
}

/// Whether `phrase` occurs in `text` with no letter or digit touching it on
/// either side ("card" matches "my card." but not "cardigan").
pub fn contains_phrase(text: &str, phrase: &str) -> bool {
    if phrase.is_empty() {
        return false;
    }
    text.match_indices(phrase).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + phrase.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(input: &str) -> Request {
        Request {
            id: "r1".into(),
            pipeline: "p".into(),
            input: input.into(),
            attributes: vec![],
        }
    }

    fn rules(toml_like: serde_json::Value) -> Compiled {
        Compiled::new(serde_json::from_value(toml_like).unwrap()).unwrap()
    }

    #[test]
    fn phrases_match_whole_words() {
        let cases = [
            ("my card is lost", "card", true),
            ("my card.", "card", true),
            ("a cardigan", "card", false),
            ("card", "card", true),
            ("lost my card today", "lost my card", true),
        ];
        for (text, phrase, expected) in cases {
            assert_eq!(
                contains_phrase(text, phrase),
                expected,
                "{text:?} / {phrase:?}"
            );
        }
    }

    #[test]
    fn first_matching_intent_decides() {
        let compiled = rules(serde_json::json!({
            "reject_empty": true,
            "intents": [
                {"name": "stolen", "keywords": ["stolen"], "escalate": "fraud"},
                {"name": "arrival", "patterns": ["when will .*card"], "answer": "soon", "confidence": 0.8},
            ]
        }));
        match compiled
            .decide(request("When will my card come? It was stolen"))
            .unwrap()
        {
            Outcome::Escalate(e) => assert_eq!(e.reason, "stolen: fraud"),
            other => panic!("unexpected {other:?}"),
        }
        match compiled
            .decide(request("when will my new card come"))
            .unwrap()
        {
            Outcome::Respond(a) => assert_eq!((a.output.as_str(), a.confidence), ("soon", 0.8)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            compiled.decide(request("hello")),
            Ok(Outcome::Next(_))
        ));
        assert!(matches!(
            compiled.decide(request("   ")),
            Ok(Outcome::Reject(_))
        ));
    }

    #[test]
    fn bad_config_is_explained() {
        let bad = serde_json::json!({"intents": [{"name": "x", "keywords": ["a"]}]});
        let error = Compiled::new(serde_json::from_value(bad).unwrap())
            .err()
            .unwrap();
        assert!(
            error.contains("exactly one of `answer` and `escalate`"),
            "{error}"
        );
        // A broken pattern is found when a request reaches it, not before a
        // keyword of the same intent matches.
        let bad = serde_json::json!({"intents": [
            {"name": "x", "keywords": ["hello"], "patterns": ["("], "answer": "a"}
        ]});
        let compiled = Compiled::new(serde_json::from_value(bad).unwrap()).unwrap();
        assert!(compiled.decide(request("hello")).is_ok());
        let error = compiled.decide(request("bye")).unwrap_err();
        assert!(error.starts_with("intent \"x\": pattern \"(\""), "{error}");
    }
}
