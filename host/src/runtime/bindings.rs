//! Host bindings for the `strata:pipeline` WIT package, generated in one
//! place, and the conversions between them and the host's own types.

use crate::request::{Outcome, Request};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { "strata:pipeline/model": async },
    exports: { default: async },
});

pub(crate) use self::strata::pipeline::types as wit;

/// The export every stage must provide.
pub(crate) const STAGE_EXPORT: &str = "strata:pipeline/stage@0.1.0";

impl From<&Request> for wit::Request {
    fn from(request: &Request) -> Self {
        wit::Request {
            id: request.id.clone(),
            pipeline: request.pipeline.clone(),
            input: request.input.clone(),
            attributes: request
                .attributes
                .iter()
                .map(|(key, value)| wit::Attribute {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }
}

impl From<wit::Outcome> for Outcome {
    fn from(outcome: wit::Outcome) -> Self {
        match outcome {
            // The id and pipeline a stage returns are ignored on purpose: a
            // stage may rewrite the input and attributes, nothing else.
            wit::Outcome::Next(request) => Outcome::Next {
                input: request.input,
                attributes: request
                    .attributes
                    .into_iter()
                    .map(|a| (a.key, a.value))
                    .collect(),
            },
            wit::Outcome::Respond(answer) => Outcome::Respond {
                output: answer.output,
                confidence: answer.confidence,
            },
            wit::Outcome::Escalate(escalation) => Outcome::Escalate {
                reason: escalation.reason,
                draft: escalation.draft,
            },
            wit::Outcome::Reject(rejection) => Outcome::Reject {
                code: rejection.code,
                message: rejection.message,
            },
        }
    }
}
