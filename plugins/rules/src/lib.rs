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
//! requires = ["card"]                                        # patterns only if one of these occurs
//! unless = ["wrong", "refund"]                             # but not with these phrases
//! unless_patterns = ['\bnever\b.*\barrived?\b']              # nor these expressions
//! answer = "Cards arrive within 5 working days ..."          # respond with this
//! confidence = 0.9                                           # default 0.9
//!
//! [[pipelines.support.stages.config.intents]]
//! name = "lost_or_stolen_card"
//! keywords = ["stolen", "lost my card"]
//! escalate = "possible fraud: a person must handle this"   # or hand to a human
//! ```
//!
//! An intent matches when one of its `keywords` or `patterns` matches and
//! none of its `unless` phrases or `unless_patterns` does: the exclusions
//! keep a broad keyword from firing on another intent's question ("exchange
//! rate" asked about, against an exchange rate complained about), which a
//! regular expression without look-around cannot say. Both exclusion keys are
//! optional. Intents are tried in order and the first match decides, so a
//! request an intent's exclusions turn away can still match a later intent.
//! A request no intent matches is passed on with nothing changed. Matching
//! is case-insensitive.
//!
//! The stage reads its config and compiles every pattern in `init`, which
//! the host runs once when it loads the stage; every fresh instance starts
//! from that state, so no request pays for the parse or the compile.
//! Keywords are the cheap path at match time; use patterns for what
//! keywords cannot say. An intent may list `requires`: words (plain
//! substrings) at least one of which every text its patterns match
//! contains; a text with none of them skips the intent's patterns. It must
//! not exclude anything a pattern would match: list each pattern's
//! mandatory words. (A host that does not run `init`, such as one that
//! predates it, gets the same answers: the config is then read on an
//! instance's first request and each pattern compiled when a request first
//! reaches it.)
//!
//! An invalid config, a pattern that does not compile included, fails
//! `init`: the host refuses to load the stage (`strata check` and a reload
//! name the reason) and whatever it served before keeps serving.

use std::sync::OnceLock;

use memchr::memmem::Finder;
use regex_lite::{Regex, RegexBuilder};
use serde::Deserialize;
use strata_sdk::{Outcome, Request};

// The component export exists only in the WebAssembly build. Natively the
// crate is a plain library (its tests, the rules plugin's Banking77 harness):
// there the export would collide with other stages' exports in one binary,
// and its symbol names are not ones a native linker accepts.
#[cfg(target_family = "wasm")]
mod component {
    use std::sync::OnceLock;

    use strata_sdk::{Outcome, Request, Stage, config, export_stage};

    use super::{Compiled, RulesConfig};

    struct Rules;

    /// The config, read, checked and compiled by `init` (or, on a host that
    /// does not run it, on the instance's first request).
    static RULES: OnceLock<Result<Compiled, String>> = OnceLock::new();

    fn rules() -> Result<&'static Compiled, String> {
        RULES
            .get_or_init(|| config::load::<RulesConfig>().and_then(Compiled::new))
            .as_ref()
            .map_err(String::clone)
    }

    impl Stage for Rules {
        fn init() -> bool {
            if cfg!(feature = "no-init") {
                return false;
            }
            if let Err(error) = rules().and_then(Compiled::compile_all) {
                panic!("{error}");
            }
            true
        }

        fn handle(request: Request) -> Outcome {
            rules()
                .and_then(|rules| rules.decide(request))
                .unwrap_or_else(|error| panic!("{error}"))
        }
    }

    export_stage!(Rules);
}

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
    /// Substrings at least one of which a text must contain before the
    /// patterns are tried (and compiled).
    #[serde(default)]
    pub requires: Vec<String>,
    /// Phrases (whole words) that stop the intent matching.
    #[serde(default)]
    pub unless: Vec<String>,
    /// Regular expressions (case-insensitive) that stop the intent matching.
    #[serde(default)]
    pub unless_patterns: Vec<String>,
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

/// A pattern, compiled the first time a request needs it and kept for the
/// instance's life (which, for a stage that reuses instances, spans many
/// requests).
struct Pattern {
    source: String,
    compiled: OnceLock<Regex>,
}

impl Pattern {
    fn new(source: String) -> Pattern {
        Pattern {
            source,
            compiled: OnceLock::new(),
        }
    }

    fn is_match(&self, text: &str) -> Result<bool, String> {
        if let Some(regex) = self.compiled.get() {
            return Ok(regex.is_match(text));
        }
        let regex = compile(&self.source)?;
        Ok(self.compiled.get_or_init(|| regex).is_match(text))
    }
}

/// A phrase (lower-cased) with its substring searcher, built once with the
/// config rather than for every text it is looked for in.
struct Phrase {
    finder: Finder<'static>,
}

impl Phrase {
    fn new(phrase: &str) -> Phrase {
        Phrase {
            finder: Finder::new(phrase.to_lowercase().as_bytes()).into_owned(),
        }
    }

    fn len(&self) -> usize {
        self.finder.needle().len()
    }

    /// Whether the phrase occurs in `text` at all.
    fn occurs_in(&self, text: &str) -> bool {
        self.finder.find(text.as_bytes()).is_some()
    }

    /// Whether it occurs in `text` with no letter or digit touching it on
    /// either side ("card" matches "my card." but not "cardigan").
    fn matches(&self, text: &str) -> bool {
        self.len() > 0
            && self
                .finder
                .find_iter(text.as_bytes())
                .any(|at| whole_words(text, at, self.len()))
    }
}

struct CompiledIntent {
    name: String,
    keywords: Vec<Phrase>,
    patterns: Vec<Pattern>,
    requires: Vec<Phrase>,
    unless: Vec<Phrase>,
    unless_patterns: Vec<Pattern>,
    action: Action,
}

impl CompiledIntent {
    fn matches(&self, text: &str) -> Result<bool, String> {
        // Exclusions are checked only after a match, so a request that no
        // keyword or pattern matches compiles none of them.
        let gated = !self.requires.is_empty() && !self.requires.iter().any(|r| r.occurs_in(text));
        let patterns: &[Pattern] = if gated { &[] } else { &self.patterns };
        Ok(self.any_match(text, &self.keywords, patterns)?
            && !self.any_match(text, &self.unless, &self.unless_patterns)?)
    }

    fn any_match(
        &self,
        text: &str,
        phrases: &[Phrase],
        patterns: &[Pattern],
    ) -> Result<bool, String> {
        if phrases.iter().any(|k| k.matches(text)) {
            return Ok(true);
        }
        for pattern in patterns {
            let matched = pattern
                .is_match(text)
                .map_err(|e| format!("intent \"{}\": {e}", self.name))?;
            if matched {
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
                    keywords: intent.keywords.iter().map(|k| Phrase::new(k)).collect(),
                    patterns: intent.patterns.into_iter().map(Pattern::new).collect(),
                    requires: intent.requires.iter().map(|k| Phrase::new(k)).collect(),
                    unless: intent.unless.iter().map(|k| Phrase::new(k)).collect(),
                    unless_patterns: intent
                        .unless_patterns
                        .into_iter()
                        .map(Pattern::new)
                        .collect(),
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

    /// Compile every pattern now rather than when a request first needs
    /// it; the first that does not compile is the error.
    pub fn compile_all(&self) -> Result<(), String> {
        for intent in &self.intents {
            for pattern in intent.patterns.iter().chain(&intent.unless_patterns) {
                pattern
                    .is_match("")
                    .map_err(|e| format!("intent \"{}\": {e}", intent.name))?;
            }
        }
        Ok(())
    }

    /// The intents' names in order, each with whether it escalates.
    pub fn intents(&self) -> impl Iterator<Item = (&str, bool)> {
        self.intents
            .iter()
            .map(|i| (i.name.as_str(), matches!(i.action, Action::Escalate(_))))
    }

    /// The first intent that matches `input`, if any. Fails only on a
    /// pattern that does not compile. The Banking77 harness measures the
    /// rules through this, so it sees exactly what [`Compiled::decide`] does.
    pub fn first_match(&self, input: &str) -> Result<Option<Matched<'_>>, String> {
        let text = input.to_lowercase();
        for intent in &self.intents {
            if intent.matches(&text)? {
                return Ok(Some(Matched { intent }));
            }
        }
        Ok(None)
    }

    /// Decide one request. Fails only on a pattern that does not compile.
    pub fn decide(&self, request: Request) -> Result<Outcome, String> {
        if self.reject_empty && request.input.trim().is_empty() {
            return Ok(Outcome::reject(
                "empty-input",
                "the request has no text to answer",
            ));
        }
        Ok(match self.first_match(&request.input)? {
            None => Outcome::Next(request),
            Some(Matched { intent }) => match &intent.action {
                Action::Answer(answer, confidence) => Outcome::respond(answer.clone(), *confidence),
                Action::Escalate(reason) => {
                    Outcome::escalate(format!("{}: {reason}", intent.name), None)
                }
            },
        })
    }
}

/// The intent a request matched.
pub struct Matched<'a> {
    intent: &'a CompiledIntent,
}

impl Matched<'_> {
    /// The intent's configured name.
    pub fn name(&self) -> &str {
        &self.intent.name
    }

    /// Whether the intent escalates (rather than answers).
    pub fn escalates(&self) -> bool {
        matches!(self.intent.action, Action::Escalate(_))
    }
}

/// Whether the `len` bytes of `text` at `at` have no letter or digit
/// touching them on either side. A match found by bytes may split a
/// character of `text` (never, for a phrase that is valid text itself, but
/// the check costs nothing): such a match does not count.
fn whole_words(text: &str, at: usize, len: usize) -> bool {
    let (Some(before), Some(after)) = (text.get(..at), text.get(at + len..)) else {
        return false;
    };
    !before
        .chars()
        .next_back()
        .is_some_and(char::is_alphanumeric)
        && !after.chars().next().is_some_and(char::is_alphanumeric)
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
                Phrase::new(phrase).matches(text),
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
    fn compile_all_names_the_first_pattern_that_does_not_compile() {
        let good = rules(serde_json::json!({
            "intents": [
                {"name": "rate", "patterns": ["exchange rates?"], "unless_patterns": ["\\bnever\\b"], "answer": "x"},
            ]
        }));
        assert_eq!(good.compile_all(), Ok(()));
        let bad = rules(serde_json::json!({
            "intents": [
                {"name": "rate", "patterns": ["exchange rates?"], "answer": "x"},
                {"name": "fee", "keywords": ["fee"], "unless_patterns": ["(waived"], "answer": "y"},
            ]
        }));
        let error = bad.compile_all().unwrap_err();
        assert!(
            error.starts_with("intent \"fee\": pattern \"(waived\""),
            "{error}"
        );
    }

    #[test]
    fn patterns_are_not_even_compiled_without_a_required_word() {
        // The pattern does not compile: reaching it would be an error.
        let compiled = rules(serde_json::json!({
            "intents": [
                {"name": "rate", "patterns": ["(rate"], "requires": ["rate"], "answer": "x"},
            ]
        }));
        assert!(matches!(
            compiled.decide(request("where is my card")),
            Ok(Outcome::Next(_))
        ));
        assert!(compiled.decide(request("what is the RATE")).is_err());
        let gated = rules(serde_json::json!({
            "intents": [
                {"name": "rate", "patterns": ["exchange rates?"], "requires": ["rate"], "answer": "x"},
            ]
        }));
        assert!(matches!(
            gated.decide(request("The exchange Rate?")),
            Ok(Outcome::Respond(_))
        ));
    }

    #[test]
    fn exclusions_turn_an_intent_away() {
        let compiled = rules(serde_json::json!({
            "intents": [
                {"name": "exchange_rate", "keywords": ["exchange rate"],
                 "unless": ["wrong"], "unless_patterns": ["\\bat(m|ms)\\b"],
                 "answer": "the rate"},
                {"name": "complaint", "keywords": ["wrong"], "answer": "sorry"},
            ]
        }));
        // (question, the answer or None when passed on)
        let cases = [
            ("what is your exchange rate?", Some("the rate")),
            // An exclusion phrase sends the question on to the next intent.
            ("the exchange rate was wrong", Some("sorry")),
            ("exchange rate at atms", None),
            // Exclusion phrases match whole words, like keywords.
            ("exchange rate, wrongly?", Some("the rate")),
            ("no match here", None),
        ];
        for (question, expected) in cases {
            let answer = match compiled.decide(request(question)).unwrap() {
                Outcome::Respond(a) => Some(a.output),
                Outcome::Next(_) => None,
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(answer.as_deref(), expected, "{question:?}");
        }
        let names: Vec<_> = compiled.intents().collect();
        assert_eq!(names, [("exchange_rate", false), ("complaint", false)]);
        let matched = compiled.first_match("Exchange Rate?").unwrap().unwrap();
        assert_eq!(
            (matched.name(), matched.escalates()),
            ("exchange_rate", false)
        );
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
