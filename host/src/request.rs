//! The request and outcome types the host passes between stages.
//!
//! These mirror `strata:pipeline/types` but belong to the host: the runtime
//! converts at the component boundary, so the pipeline and the HTTP layer
//! never depend on generated bindings.

use std::collections::BTreeMap;

/// A request travelling through a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Host-assigned id, fixed for the request's life.
    pub id: String,
    /// The pipeline running the request.
    pub pipeline: String,
    /// The input text, as the previous stage left it.
    pub input: String,
    /// Attributes, as the previous stage left them.
    pub attributes: BTreeMap<String, String>,
}

/// What one stage decided.
///
/// As JSON (shadow comparisons keep it so) it is tagged by `kind`:
/// `{"kind": "respond", "output": "...", "confidence": 0.9}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Pass the request on with this input and these attributes.
    Next {
        /// The rewritten input.
        input: String,
        /// The rewritten attributes.
        attributes: BTreeMap<String, String>,
    },
    /// A final answer.
    Respond {
        /// The answer text.
        output: String,
        /// Confidence in 0..=1 (the runtime has checked the range).
        confidence: f64,
    },
    /// Hand to a human.
    Escalate {
        /// Why.
        reason: String,
        /// A proposed answer.
        draft: Option<String>,
    },
    /// Refuse the input.
    Reject {
        /// Machine-readable code.
        code: String,
        /// Explanation for the caller.
        message: String,
    },
}

impl Outcome {
    /// A short name of the outcome's kind, as used in traces and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Next { .. } => "next",
            Outcome::Respond { .. } => "respond",
            Outcome::Escalate { .. } => "escalate",
            Outcome::Reject { .. } => "reject",
        }
    }

    /// The bytes of text this outcome carries, for the output-size limit.
    pub fn size(&self) -> usize {
        match self {
            Outcome::Next { input, attributes } => {
                input.len()
                    + attributes
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            }
            Outcome::Respond { output, .. } => output.len(),
            Outcome::Escalate { reason, draft } => {
                reason.len() + draft.as_ref().map_or(0, String::len)
            }
            Outcome::Reject { code, message } => code.len() + message.len(),
        }
    }
}

/// The FNV-1a offset basis, the starting value of [`fnv1a`].
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// 64-bit FNV-1a: stable across builds and platforms, unlike std's hasher.
pub fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a(b"", super::FNV_OFFSET), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a", super::FNV_OFFSET), 0xaf63_dc4c_8601_ec8c);
    }
}
