//! Test component `scripted`: does exactly what its config says, so tests can
//! build any pipeline shape.
//!
//! - `outcome = "next"` (default): pass on, appending `append` to the input
//!   and setting the attributes in the `set` table;
//! - `outcome = "respond"`: answer `answer` at `confidence`;
//! - `outcome = "escalate"`: escalate with `reason` and optional `draft`;
//! - `outcome = "reject"`: reject with `code` and `message`;
//! - `outcome = "echo"`: answer with the request it saw, as JSON
//!   (`{"input": ..., "attributes": {...}}`), at confidence 1.
//!
//! With `log = "text"` it also writes that line to the host log.

use serde::Deserialize;
use strata_sdk::{Outcome, Request, Stage, config, export_stage, log};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Script {
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    append: Option<String>,
    #[serde(default)]
    set: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    confidence: Option<f64>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    draft: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    log: Option<String>,
}

struct Scripted;

impl Stage for Scripted {
    fn handle(mut request: Request) -> Outcome {
        let script: Script = config::load().unwrap_or_else(|e| panic!("{e}"));
        if let Some(line) = &script.log {
            log::info(line);
        }
        match script.outcome.as_deref().unwrap_or("next") {
            "respond" => Outcome::respond(
                script.answer.unwrap_or_default(),
                script.confidence.unwrap_or(1.0),
            ),
            "escalate" => Outcome::escalate(script.reason.unwrap_or_default(), script.draft),
            "reject" => Outcome::reject(
                script.code.unwrap_or_default(),
                script.message.unwrap_or_default(),
            ),
            "echo" => {
                let attributes: serde_json::Map<String, serde_json::Value> = request
                    .attributes
                    .iter()
                    .map(|a| (a.key.clone(), a.value.clone().into()))
                    .collect();
                let seen = serde_json::json!({"input": request.input, "attributes": attributes});
                Outcome::respond(seen.to_string(), 1.0)
            }
            _ => {
                if let Some(suffix) = &script.append {
                    request.input.push_str(suffix);
                }
                for (key, value) in script.set {
                    request.set_attribute(key, value);
                }
                Outcome::Next(request)
            }
        }
    }
}

export_stage!(Scripted);
