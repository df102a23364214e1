//! Model tiers: the host side of the `model` interface.
//!
//! A stage asks for a tier by name; the router sends the request to the
//! tier's provider over the OpenAI-compatible `POST {base_url}/chat/completions`
//! protocol, with the tier's timeout per attempt, retries with doubling
//! back-off on timeouts, connection errors, 5xx and 429 (whose `Retry-After`
//! is honoured), and then the tier's fallback, if any. Every attempt group is
//! reported as a [`ModelCall`] with the tokens the provider reported and
//! their cost at the tier's prices. API keys are read from the environment
//! here and never reach a stage.

mod batch;
mod openai;
mod provider;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder as _, ExponentialBuilder};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use self::batch::{BatchItem, collect_batches, prompt_of};
pub(crate) use self::provider::{PostError, Reply, post_json, snippet};
use crate::manifest::{BatchSpec, ModelsSpec, TierSpec};

/// The longest `Retry-After` honoured; longer ones count as giving up.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// What a stage asks.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    /// The tier.
    pub tier: String,
    /// `(role, content)` messages.
    pub messages: Vec<(String, String)>,
    /// Cap on the answer's tokens.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The text.
    pub text: String,
    /// The tier that answered.
    pub tier: String,
    /// The provider's model name.
    pub model: String,
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Answer tokens.
    pub output_tokens: u32,
    /// Cost in US dollars.
    pub cost_usd: f64,
}

/// Why no answer came.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelError {
    /// No such tier.
    UnknownTier(String),
    /// Every attempt and fallback failed.
    Unavailable(String),
    /// The provider refused the request (4xx other than 429).
    Rejected(String),
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelError::UnknownTier(tier) => write!(f, "no model tier named \"{tier}\""),
            ModelError::Unavailable(why) => write!(f, "model unavailable: {why}"),
            ModelError::Rejected(why) => write!(f, "model request rejected: {why}"),
        }
    }
}

/// One tier's share of a completion: its attempts, tokens and cost.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelCall {
    /// The tier.
    pub tier: String,
    /// The provider's model name.
    pub model: String,
    /// Whether the tier answered.
    pub ok: bool,
    /// HTTP attempts made.
    pub attempts: u32,
    /// Prompt tokens reported.
    pub input_tokens: u64,
    /// Answer tokens reported.
    pub output_tokens: u64,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// Wall-clock milliseconds across attempts.
    pub ms: f64,
    /// The last error, when it failed.
    pub error: Option<String>,
    /// Whether the call went to the provider in a batch with others (its
    /// tokens are then its share of the batch's).
    pub batched: bool,
}

#[derive(Debug, Clone)]
struct Tier {
    spec: TierSpec,
    url: String,
    completions_url: String,
    api_key: Option<String>,
}

/// The tiers of one generation.
pub struct ModelRouter {
    tiers: HashMap<String, Tier>,
    client: reqwest::Client,
    /// One collector per batching tier, started on first use.
    batchers: std::sync::Mutex<HashMap<String, mpsc::Sender<BatchItem>>>,
    /// Where batches are sent from (the host's task tracker).
    tasks: tokio_util::task::TaskTracker,
}

impl ModelRouter {
    /// Tiers from the manifest. Fails, naming the variable, when a
    /// provider's API key variable is not set.
    pub fn new(
        spec: &ModelsSpec,
        client: reqwest::Client,
        tasks: tokio_util::task::TaskTracker,
    ) -> Result<ModelRouter, String> {
        let mut tiers = HashMap::new();
        for (name, tier) in &spec.tiers {
            let provider = &spec.providers[&tier.provider];
            let api_key = provider.api_key(&tier.provider)?;
            tiers.insert(
                name.clone(),
                Tier {
                    spec: tier.clone(),
                    url: provider.url("chat/completions"),
                    completions_url: provider.url("completions"),
                    api_key,
                },
            );
        }
        Ok(ModelRouter {
            tiers,
            client,
            batchers: std::sync::Mutex::new(HashMap::new()),
            tasks,
        })
    }

    /// Ask `request.tier`, falling back as the manifest says. Returns the
    /// answer (or why none came) and every tier's call record.
    /// A `batched` call (from an asynchronous request) to a tier with
    /// `batch` settings joins a batch; if the batch call fails, it is made
    /// on its own, with the tier's retries and fallback.
    pub async fn complete(
        &self,
        request: &CompletionRequest,
        batched: bool,
    ) -> (Result<Completion, ModelError>, Vec<ModelCall>) {
        let mut calls = Vec::new();
        let mut tried = BTreeSet::new();
        let mut name = request.tier.clone();
        let mut failures = Vec::new();
        loop {
            let Some(tier) = self.tiers.get(&name) else {
                return (Err(ModelError::UnknownTier(name)), calls);
            };
            tried.insert(name.clone());
            if batched && let Some(batch) = tier.spec.batch {
                match self.call_batched(&name, tier, batch, request).await {
                    Ok((completion, call)) => {
                        calls.push(call);
                        return (Ok(completion), calls);
                    }
                    Err(error) => {
                        tracing::warn!(tier = %name, %error, "batch call failed; calling alone");
                    }
                }
            }
            let (result, call) = self.call_tier(&name, tier, request).await;
            calls.push(call);
            match result {
                Ok(completion) => return (Ok(completion), calls),
                Err(ModelError::Rejected(why)) => {
                    return (Err(ModelError::Rejected(why)), calls);
                }
                Err(error) => failures.push(format!("tier \"{name}\": {error}")),
            }
            match &tier.spec.fallback {
                Some(next) if !tried.contains(next) => name = next.clone(),
                _ => return (Err(ModelError::Unavailable(failures.join("; "))), calls),
            }
        }
    }

    async fn call_batched(
        &self,
        name: &str,
        tier: &Tier,
        batch: BatchSpec,
        request: &CompletionRequest,
    ) -> Result<(Completion, ModelCall), String> {
        let started = Instant::now();
        let sender = {
            let mut batchers = self.batchers.lock().unwrap_or_else(|e| e.into_inner());
            batchers
                .entry(name.to_owned())
                .or_insert_with(|| {
                    let (sender, receiver) = mpsc::channel(batch.max_size as usize * 4);
                    // The gathering loop holds nothing durable and ends when
                    // this router (its generation) goes, so it is not one of
                    // the host's tasks (shutdown would wait for it forever);
                    // each batch it sends is.
                    tokio::spawn(collect_batches(
                        self.client.clone(),
                        tier.clone(),
                        batch,
                        receiver,
                        self.tasks.clone(),
                    ));
                    sender
                })
                .clone()
        };
        let (reply, answer) = oneshot::channel();
        sender
            .send(BatchItem {
                prompt: prompt_of(&request.messages),
                max_tokens: request.max_tokens,
                reply,
            })
            .await
            .map_err(|_| "the batch collector stopped".to_owned())?;
        let (text, model, input, output) = answer
            .await
            .map_err(|_| "the batch collector dropped the call".to_owned())??;
        let cost = input as f64 * tier.spec.input_usd_per_mtok / 1e6
            + output as f64 * tier.spec.output_usd_per_mtok / 1e6;
        Ok((
            Completion {
                text,
                tier: name.to_owned(),
                model: model.clone(),
                input_tokens: u32::try_from(input).unwrap_or(u32::MAX),
                output_tokens: u32::try_from(output).unwrap_or(u32::MAX),
                cost_usd: cost,
            },
            ModelCall {
                tier: name.to_owned(),
                model,
                ok: true,
                attempts: 1,
                input_tokens: input,
                output_tokens: output,
                cost_usd: cost,
                ms: started.elapsed().as_secs_f64() * 1000.0,
                error: None,
                batched: true,
            },
        ))
    }

    async fn call_tier(
        &self,
        name: &str,
        tier: &Tier,
        request: &CompletionRequest,
    ) -> (Result<Completion, ModelError>, ModelCall) {
        let started = Instant::now();
        let mut call = ModelCall {
            tier: name.to_owned(),
            model: tier.spec.model.clone(),
            ok: false,
            attempts: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            ms: 0.0,
            error: None,
            batched: false,
        };
        let body = openai::ChatRequest {
            model: &tier.spec.model,
            messages: request
                .messages
                .iter()
                .map(|(role, content)| openai::ChatMessage { role, content })
                .collect(),
            max_tokens: request.max_tokens,
            temperature: request.temperature,
        };
        // Exponential from the tier's back-off, with jitter so that callers
        // failing together do not retry together; a `Retry-After` overrides.
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(tier.spec.backoff_ms))
            .with_max_delay(MAX_RETRY_AFTER)
            .with_jitter()
            .without_max_times()
            .build();
        let result = loop {
            call.attempts += 1;
            let outcome = self.attempt(tier, &body).await;
            let last = call.attempts > tier.spec.retries;
            let wait = match outcome {
                Attempt::Answered(completion) => break Ok(completion),
                Attempt::Rejected(why) => break Err(ModelError::Rejected(why)),
                Attempt::Retry { why, after } => {
                    if last {
                        break Err(ModelError::Unavailable(why));
                    }
                    match after {
                        Some(after) if after > MAX_RETRY_AFTER => {
                            break Err(ModelError::Unavailable(format!(
                                "{why}; the provider asked to wait {after:?}"
                            )));
                        }
                        Some(after) => after,
                        None => backoff.next().unwrap_or(MAX_RETRY_AFTER),
                    }
                }
            };
            tokio::time::sleep(wait).await;
        };
        call.ms = started.elapsed().as_secs_f64() * 1000.0;
        let result = result.map(|(text, model, input, output)| {
            let cost = input as f64 * tier.spec.input_usd_per_mtok / 1e6
                + output as f64 * tier.spec.output_usd_per_mtok / 1e6;
            call.ok = true;
            call.model = model.clone();
            call.input_tokens = input;
            call.output_tokens = output;
            call.cost_usd = cost;
            Completion {
                text,
                tier: name.to_owned(),
                model,
                input_tokens: u32::try_from(input).unwrap_or(u32::MAX),
                output_tokens: u32::try_from(output).unwrap_or(u32::MAX),
                cost_usd: cost,
            }
        });
        if let Err(error) = &result {
            call.error = Some(error.to_string());
        }
        (result, call)
    }

    async fn attempt(&self, tier: &Tier, body: &openai::ChatRequest<'_>) -> Attempt {
        let timeout = Duration::from_millis(tier.spec.timeout_ms);
        let reply = post_json(
            &self.client,
            &tier.url,
            tier.api_key.as_deref(),
            timeout,
            body,
        )
        .await;
        let Reply {
            status,
            retry_after,
            text,
        } = match reply {
            Ok(reply) => reply,
            Err(error) => {
                return Attempt::Retry {
                    why: error.to_string(),
                    after: None,
                };
            }
        };
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Attempt::Retry {
                why: "rate limited (429)".to_owned(),
                after: retry_after,
            };
        }
        if status.is_server_error() {
            return Attempt::Retry {
                why: format!("the provider answered {status}"),
                after: None,
            };
        }
        if !status.is_success() {
            return Attempt::Rejected(format!(
                "the provider answered {status}: {}",
                snippet(&text)
            ));
        }
        match parse_completion(&text) {
            Some(answer) => Attempt::Answered(answer),
            None => Attempt::Retry {
                why: format!(
                    "the provider's answer is not a chat completion: {}",
                    snippet(&text)
                ),
                after: None,
            },
        }
    }
}

enum Attempt {
    /// (text, model, prompt tokens, answer tokens)
    Answered((String, String, u64, u64)),
    Rejected(String),
    Retry {
        why: String,
        after: Option<Duration>,
    },
}

fn parse_completion(text: &str) -> Option<(String, String, u64, u64)> {
    let response: openai::ChatResponse = serde_json::from_str(text).ok()?;
    let content = response.choices.into_iter().next()?.message.content?;
    Some((
        content,
        response.model,
        response.usage.prompt_tokens,
        response.usage.completion_tokens,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openai_chat_completions() {
        let text = r#"{"id":"x","object":"chat.completion","model":"m-1",
            "choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
        assert_eq!(
            parse_completion(text),
            Some(("hi".to_owned(), "m-1".to_owned(), 12, 3))
        );
        assert_eq!(parse_completion(r#"{"error":"nope"}"#), None);
    }
}
