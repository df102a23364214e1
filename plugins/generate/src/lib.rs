//! Example stage `generate` (layer 3, generation): answers with a language
//! model, choosing a smaller tier for simpler questions.
//!
//! A question is "complex" when it has more than `large_over_words` words or
//! mentions one of `large_keywords`; complex questions go to `large_tier`,
//! the rest to `small_tier`. The answer's confidence is the one configured
//! for the tier that answered (the host may have fallen back to another).
//! When no tier can answer, the stage fails, so its `on_error` decides (the
//! demo escalates to a person).
//!
//! ```toml
//! [pipelines.support.stages.config]
//! system = "You are a bank's support assistant. Answer in two sentences."
//! small_tier = "small"
//! large_tier = "large"
//! large_over_words = 25
//! large_keywords = ["dispute", "chargeback", "complaint"]
//! max_tokens = 200
//! confidence = { small = 0.75, large = 0.85 }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use strata_sdk::{Outcome, Request, Stage, config, export_stage, model};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    system: Option<String>,
    small_tier: String,
    large_tier: String,
    #[serde(default = "default_large_over_words")]
    large_over_words: usize,
    #[serde(default)]
    large_keywords: Vec<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    confidence: BTreeMap<String, f64>,
}

fn default_large_over_words() -> usize {
    25
}

struct Generate;

impl Stage for Generate {
    fn handle(request: Request) -> Outcome {
        let settings: Settings = config::load().unwrap_or_else(|e| panic!("{e}"));
        let tier = choose_tier(&settings, &request.input);
        match model::ask(
            tier,
            settings.system.as_deref(),
            &request.input,
            settings.max_tokens,
        ) {
            Ok(answer) => {
                let confidence = settings
                    .confidence
                    .get(&answer.tier)
                    .copied()
                    .unwrap_or(0.8);
                Outcome::respond(answer.text, confidence)
            }
            // A failure, not an escalation: the stage's `on_error` decides.
            Err(error) => panic!("{}", model::explain(&error)),
        }
    }
}

export_stage!(Generate);

fn choose_tier<'a>(settings: &'a Settings, input: &str) -> &'a str {
    let words = input.split_whitespace().count();
    let lower = input.to_lowercase();
    let complex = words > settings.large_over_words
        || settings
            .large_keywords
            .iter()
            .any(|k| lower.contains(&k.to_lowercase()));
    if complex {
        &settings.large_tier
    } else {
        &settings.small_tier
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complex_questions_go_to_the_large_tier() {
        let settings = Settings {
            system: None,
            small_tier: "small".into(),
            large_tier: "large".into(),
            large_over_words: 5,
            large_keywords: vec!["Dispute".into()],
            max_tokens: None,
            confidence: BTreeMap::new(),
        };
        assert_eq!(choose_tier(&settings, "where is my card"), "small");
        assert_eq!(
            choose_tier(&settings, "one two three four five six"),
            "large"
        );
        assert_eq!(choose_tier(&settings, "i want to dispute this"), "large");
    }
}
