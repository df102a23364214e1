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

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use tokio::sync::{mpsc, oneshot};

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
}

impl ModelRouter {
    /// Tiers from the manifest. Fails, naming the variable, when a
    /// provider's API key variable is not set.
    pub fn new(spec: &ModelsSpec, client: reqwest::Client) -> Result<ModelRouter, String> {
        let mut tiers = HashMap::new();
        for (name, tier) in &spec.tiers {
            let provider = &spec.providers[&tier.provider];
            let api_key = match &provider.api_key_env {
                None => None,
                Some(variable) => Some(std::env::var(variable).map_err(|_| {
                    format!(
                        "provider \"{}\" needs its API key in the environment variable \
                         {variable}, which is not set",
                        tier.provider
                    )
                })?),
            };
            tiers.insert(
                name.clone(),
                Tier {
                    spec: tier.clone(),
                    url: format!(
                        "{}/chat/completions",
                        provider.base_url.trim_end_matches('/')
                    ),
                    completions_url: format!(
                        "{}/completions",
                        provider.base_url.trim_end_matches('/')
                    ),
                    api_key,
                },
            );
        }
        Ok(ModelRouter {
            tiers,
            client,
            batchers: std::sync::Mutex::new(HashMap::new()),
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
                    tokio::spawn(collect_batches(
                        self.client.clone(),
                        tier.clone(),
                        batch,
                        receiver,
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
        let mut body = json!({
            "model": tier.spec.model,
            "messages": request.messages.iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect::<Vec<_>>(),
        });
        if let Some(max) = request.max_tokens {
            body["max_tokens"] = json!(max);
        }
        if let Some(temperature) = request.temperature {
            body["temperature"] = json!(temperature);
        }
        let mut backoff = Duration::from_millis(tier.spec.backoff_ms);
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
                        None => backoff,
                    }
                }
            };
            tokio::time::sleep(wait).await;
            backoff *= 2;
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

    async fn attempt(&self, tier: &Tier, body: &serde_json::Value) -> Attempt {
        let mut request = self
            .client
            .post(&tier.url)
            .timeout(Duration::from_millis(tier.spec.timeout_ms))
            .json(body);
        if let Some(key) = &tier.api_key {
            request = request.bearer_auth(key);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) if error.is_timeout() => {
                return Attempt::Retry {
                    why: format!("no answer within {} ms", tier.spec.timeout_ms),
                    after: None,
                };
            }
            Err(error) => {
                return Attempt::Retry {
                    why: format!("cannot reach the provider: {}", without_url(&error)),
                    after: None,
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = match response.text().await {
            Ok(text) => text,
            Err(error) if error.is_timeout() => {
                return Attempt::Retry {
                    why: format!("no answer within {} ms", tier.spec.timeout_ms),
                    after: None,
                };
            }
            Err(error) => {
                return Attempt::Retry {
                    why: format!("the answer broke off: {}", without_url(&error)),
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

/// One call waiting in a batch, with where its answer goes:
/// `(text, model, prompt tokens, answer tokens)`.
struct BatchItem {
    prompt: String,
    max_tokens: Option<u32>,
    reply: oneshot::Sender<Result<(String, String, u64, u64), String>>,
}

/// The chat messages as one completion prompt.
fn prompt_of(messages: &[(String, String)]) -> String {
    let mut prompt = String::new();
    for (role, content) in messages {
        prompt.push_str(&format!("{role}: {content}\n\n"));
    }
    prompt.push_str("assistant:");
    prompt
}

/// Gather calls for one tier: a batch is sent when it is full or when its
/// first call has waited `max_wait_ms`.
async fn collect_batches(
    client: reqwest::Client,
    tier: Tier,
    batch: BatchSpec,
    mut calls: mpsc::Receiver<BatchItem>,
) {
    while let Some(first) = calls.recv().await {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(batch.max_wait_ms);
        let mut items = vec![first];
        while items.len() < batch.max_size as usize {
            match tokio::time::timeout_at(deadline, calls.recv()).await {
                Ok(Some(item)) => items.push(item),
                _ => break,
            }
        }
        let client = client.clone();
        let tier = tier.clone();
        // Sent while the next batch gathers.
        tokio::spawn(async move {
            let prompts: Vec<&str> = items.iter().map(|i| i.prompt.as_str()).collect();
            let max_tokens = items.iter().filter_map(|i| i.max_tokens).max();
            match send_batch(&client, &tier, &prompts, max_tokens).await {
                Ok(answers) => {
                    for (item, answer) in items.into_iter().zip(answers) {
                        let _ = item.reply.send(Ok(answer));
                    }
                }
                Err(error) => {
                    for item in items {
                        let _ = item.reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

/// One `POST /completions` with a list of prompts. The provider reports
/// usage for the whole batch; each answer is charged its share, in
/// proportion to the length of its prompt (input) and of its text (output).
async fn send_batch(
    client: &reqwest::Client,
    tier: &Tier,
    prompts: &[&str],
    max_tokens: Option<u32>,
) -> Result<Vec<(String, String, u64, u64)>, String> {
    let mut body = json!({"model": tier.spec.model, "prompt": prompts});
    if let Some(max) = max_tokens {
        body["max_tokens"] = json!(max);
    }
    let mut request = client
        .post(&tier.completions_url)
        .timeout(Duration::from_millis(tier.spec.timeout_ms))
        .json(&body);
    if let Some(key) = &tier.api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(|e| without_url(&e))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| without_url(&e))?;
    if !status.is_success() {
        return Err(format!(
            "the provider answered {status}: {}",
            snippet(&text)
        ));
    }
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| format!("not JSON: {}", snippet(&text)))?;
    let model = value["model"]
        .as_str()
        .unwrap_or(&tier.spec.model)
        .to_owned();
    let mut texts = vec![None; prompts.len()];
    for choice in value["choices"].as_array().into_iter().flatten() {
        let index = choice["index"].as_u64().unwrap_or(u64::MAX);
        if let Some(slot) = usize::try_from(index).ok().and_then(|i| texts.get_mut(i)) {
            *slot = choice["text"].as_str().map(str::to_owned);
        }
    }
    let texts: Vec<String> = texts
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| "the provider did not answer every prompt of the batch".to_owned())?;
    let inputs = shares(
        value["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
        prompts.iter().map(|p| p.len() as u64),
    );
    let outputs = shares(
        value["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        texts.iter().map(|t| t.len() as u64),
    );
    Ok(texts
        .into_iter()
        .zip(inputs.into_iter().zip(outputs))
        .map(|(text, (input, output))| (text, model.clone(), input, output))
        .collect())
}

/// `total` split in proportion to `weights`, in whole units that add up to
/// `total` exactly (the units left by rounding down go to the largest
/// remainders).
fn shares(total: u64, weights: impl Iterator<Item = u64>) -> Vec<u64> {
    let weights: Vec<u128> = weights.map(|w| u128::from(w.max(1))).collect();
    let sum: u128 = weights.iter().sum();
    if sum == 0 {
        return Vec::new();
    }
    let total = u128::from(total);
    let mut parts: Vec<(usize, u128, u128)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| (i, total * w / sum, total * w % sum))
        .collect();
    let mut left = total - parts.iter().map(|p| p.1).sum::<u128>();
    let mut by_remainder: Vec<usize> = (0..parts.len()).collect();
    by_remainder.sort_by(|a, b| parts[*b].2.cmp(&parts[*a].2).then(a.cmp(b)));
    for i in by_remainder {
        if left == 0 {
            break;
        }
        parts[i].1 += 1;
        left -= 1;
    }
    parts
        .into_iter()
        .map(|(_, share, _)| share as u64)
        .collect()
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
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let content = value["choices"][0]["message"]["content"]
        .as_str()?
        .to_owned();
    let model = value["model"].as_str().unwrap_or_default().to_owned();
    let usage = &value["usage"];
    Some((
        content,
        model,
        usage["prompt_tokens"].as_u64().unwrap_or(0),
        usage["completion_tokens"].as_u64().unwrap_or(0),
    ))
}

/// reqwest errors name the URL; keep them short and free of query strings.
pub(crate) fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "the provider");
    }
    text
}

pub(crate) fn snippet(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
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

    #[test]
    fn batch_usage_is_shared_in_proportion_and_adds_up() {
        assert_eq!(shares(10, [1, 1].into_iter()), vec![5, 5]);
        assert_eq!(shares(10, [1, 3].into_iter()), vec![3, 7]);
        let split = shares(100, [3, 3, 3].into_iter());
        assert_eq!(split.iter().sum::<u64>(), 100);
        assert_eq!(split, vec![34, 33, 33]);
        // Empty texts still get a (small) share; nothing is lost or made up.
        assert_eq!(shares(7, [0, 0, 5].into_iter()).iter().sum::<u64>(), 7);
        assert_eq!(shares(0, [4, 2].into_iter()), vec![0, 0]);
        assert!(shares(5, std::iter::empty()).is_empty());
    }
}
