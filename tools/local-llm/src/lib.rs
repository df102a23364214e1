//! A local stand-in for a model provider. It speaks the OpenAI-compatible
//! `POST /v1/chat/completions` protocol (request: `model`, `messages`,
//! `max_tokens`; answer: `choices[0].message.content` and `usage`), and the
//! batch-capable `POST /v1/completions` (request: `prompt` as a string or a
//! list of strings; answer: one `choices[i].text` per prompt and `usage`
//! for them all), and `POST /v1/embeddings` (request: `input` as a string
//! or a list of strings; answer: `data[i].embedding` per input and `usage`),
//! so the host talks to it exactly as to OpenAI, vLLM, Ollama, llama.cpp's
//! server or Hugging Face TEI.
//! These machines cannot reach a real provider; this one lets the tests, the
//! demo and the benchmarks run the generation layer for real, over HTTP.
//!
//! Its answers are canned, not generated: a fixed sentence quoting the
//! question. Its embeddings are not a semantic model either: hashed word
//! and character-trigram counts projected onto [`EMBEDDING_DIM`] signed
//! dimensions and scaled to unit length, so texts sharing words and
//! spellings are close and paraphrases in other words are not. They are
//! deterministic, which is what tests need. Token counts are estimates
//! (about four characters a token).
//! Behaviour is chosen by the model name, so a manifest can ask for faults:
//!
//! - `fail-*`: always answers 500;
//! - `slow-<ms>-*`: waits that many milliseconds before answering;
//! - `limited-<n>-*`: answers 429 (`Retry-After: 0`) to its first `n` calls;
//! - `bad-request-*`: answers 400;
//! - anything else: answers at once.
//!
//! [`LocalLlm::set_embeddings_down`] makes `/v1/embeddings` answer 503
//! until it is turned back, whatever the model,
//! [`LocalLlm::set_embeddings_down_after`] does so after a number of
//! further calls, and [`LocalLlm::set_embeddings_delay`] makes it slow, so a
//! test can take the endpoint down or slow it under a running host.
//!
//! `GET /stats` returns `{"calls": {model: count}, "requests": n,
//! "batches": n, "batched_prompts": n, "embedding_requests": n,
//! "embedded_inputs": n}`: what reached the provider (one request per HTTP
//! call, whatever it held), counted here where a test can check it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Settings of the local provider.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Require `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Extra latency on every answer.
    pub latency: Duration,
}

#[derive(Default)]
struct State {
    calls: BTreeMap<String, u64>,
    requests: u64,
    batches: u64,
    batched_prompts: u64,
    embedding_requests: u64,
    embedded_inputs: u64,
    longest_input: usize,
    authorizations: Vec<Option<String>>,
    /// `/v1/embeddings` calls still answered before it goes down, if set.
    embeddings_left: Option<u64>,
}

/// Dimensions of the stand-in's embeddings.
pub const EMBEDDING_DIM: usize = 256;

/// A running local provider.
pub struct LocalLlm {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    embeddings_down: Arc<AtomicBool>,
    embeddings_delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl LocalLlm {
    /// Serve on `listener` until dropped.
    pub fn serve(listener: TcpListener, options: Options) -> anyhow::Result<LocalLlm> {
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let options = Arc::new(options);
        let embeddings_down = Arc::new(AtomicBool::new(false));
        let down = embeddings_down.clone();
        let embeddings_delay_ms = Arc::new(AtomicU64::new(0));
        let delay_ms = embeddings_delay_ms.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let options = options.clone();
                let down = down.clone();
                let delay_ms = delay_ms.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        let options = options.clone();
                        let faults = EmbeddingFaults {
                            down: down.load(Ordering::Relaxed),
                            delay: Duration::from_millis(delay_ms.load(Ordering::Relaxed)),
                        };
                        async move {
                            Ok::<_, Infallible>(handle(request, &state, &options, faults).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(LocalLlm {
            addr,
            state,
            embeddings_down,
            embeddings_delay_ms,
            task,
        })
    }

    /// Bind `127.0.0.1:0` and serve.
    pub async fn start(options: Options) -> anyhow::Result<LocalLlm> {
        Self::serve(TcpListener::bind("127.0.0.1:0").await?, options)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `base_url` to put in a manifest.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Chat-completion calls received per model.
    pub fn calls(&self, model: &str) -> u64 {
        self.lock().calls.get(model).copied().unwrap_or(0)
    }

    /// Calls received in all, chat and batch.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// `POST /v1/completions` calls received.
    pub fn batches(&self) -> u64 {
        self.lock().batches
    }

    /// Prompts received in `POST /v1/completions` calls.
    pub fn batched_prompts(&self) -> u64 {
        self.lock().batched_prompts
    }

    /// `POST /v1/embeddings` calls received.
    pub fn embedding_requests(&self) -> u64 {
        self.lock().embedding_requests
    }

    /// Inputs received in `POST /v1/embeddings` calls.
    pub fn embedded_inputs(&self) -> u64 {
        self.lock().embedded_inputs
    }

    /// The longest input, in bytes, any `POST /v1/embeddings` call held.
    pub fn longest_embedded_input(&self) -> usize {
        self.lock().longest_input
    }

    /// Make `/v1/embeddings` answer 503 (`true`) or work again (`false`).
    pub fn set_embeddings_down(&self, down: bool) {
        self.embeddings_down.store(down, Ordering::Relaxed);
        self.lock().embeddings_left = None;
    }

    /// Answer `calls` more `/v1/embeddings` calls, then 503 to every one
    /// until [`LocalLlm::set_embeddings_down`] turns it back.
    pub fn set_embeddings_down_after(&self, calls: u64) {
        self.lock().embeddings_left = Some(calls);
    }

    /// Make `/v1/embeddings` wait this long before answering (zero: not).
    pub fn set_embeddings_delay(&self, delay: Duration) {
        self.embeddings_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// The `Authorization` header of every call, in order.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.lock().authorizations.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for LocalLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The faults the embeddings endpoint is switched to.
#[derive(Debug, Clone, Copy)]
struct EmbeddingFaults {
    down: bool,
    delay: Duration,
}

async fn handle(
    request: Request<hyper::body::Incoming>,
    state: &Mutex<State>,
    options: &Options,
    faults: EmbeddingFaults,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    if path == "/stats" {
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        return reply(
            StatusCode::OK,
            json!({
                "calls": state.calls,
                "requests": state.requests,
                "batches": state.batches,
                "batched_prompts": state.batched_prompts,
                "embedding_requests": state.embedding_requests,
                "embedded_inputs": state.embedded_inputs,
            }),
        );
    }
    if path == "/v1/embeddings" && request.method() == hyper::Method::POST {
        return embeddings(request, state, options, faults).await;
    }
    let batch = path == "/v1/completions";
    if !(batch || path == "/v1/chat/completions") || request.method() != hyper::Method::POST {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": {"message": format!("no route {path}"), "type": "invalid_request_error"}}),
        );
    }
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": {"message": "unreadable body"}}),
            );
        }
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": "body is not JSON"}}),
        );
    };
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let prompts: Vec<String> = match &body["prompt"] {
        Value::String(one) => vec![one.clone()],
        Value::Array(many) => many
            .iter()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let count = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.requests += 1;
        if batch {
            state.batches += 1;
            state.batched_prompts += prompts.len() as u64;
        }
        state.authorizations.push(authorization.clone());
        let count = state.calls.entry(model.clone()).or_default();
        *count += 1;
        *count
    };
    if let Some(key) = &options.api_key
        && authorization.as_deref() != Some(&format!("Bearer {key}"))
    {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"message": "invalid API key", "type": "invalid_request_error"}}),
        );
    }
    // What each prompt asks, and how long its prompt is.
    let questions: Vec<(String, usize)> = if batch {
        let well_formed = match &body["prompt"] {
            Value::String(_) => true,
            Value::Array(many) => !many.is_empty() && many.iter().all(Value::is_string),
            _ => false,
        };
        if !well_formed {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": {"message": "prompt must be a string or a non-empty array of strings"}}),
            );
        }
        prompts
            .iter()
            .map(|prompt| (last_user_turn(prompt).to_owned(), prompt.len()))
            .collect()
    } else {
        let Some(messages) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": {"message": "messages must be a non-empty array"}}),
            );
        };
        let question = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned();
        let prompt_chars = messages
            .iter()
            .filter_map(|m| m["content"].as_str())
            .map(str::len)
            .sum();
        vec![(question, prompt_chars)]
    };

    if model.starts_with("fail-") {
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"message": "the model is down", "type": "server_error"}}),
        );
    }
    if model.starts_with("bad-request-") {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": "this model refuses everything", "type": "invalid_request_error"}}),
        );
    }
    if let Some(limit) = numbered(&model, "limited-")
        && count <= limit
    {
        let mut response = reply(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": {"message": "rate limited", "type": "rate_limit_error"}}),
        );
        response
            .headers_mut()
            .insert("retry-after", hyper::header::HeaderValue::from_static("0"));
        return response;
    }
    let delay = options.latency + Duration::from_millis(numbered(&model, "slow-").unwrap_or(0));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let max_tokens = body["max_tokens"].as_u64();
    let answers: Vec<(String, u64, u64)> = questions
        .iter()
        .map(|(question, prompt_chars)| {
            let quoted: String = question.chars().take(120).collect();
            let answer = format!(
                "Thank you for asking about \"{quoted}\". (This is a canned answer from the \
                 local stand-in model {model}; point the manifest at a real provider for real \
                 answers.)"
            );
            let mut completion_tokens = tokens(answer.len());
            if let Some(max) = max_tokens {
                completion_tokens = completion_tokens.min(max);
            }
            let prompt_tokens = tokens(*prompt_chars);
            (answer, prompt_tokens, completion_tokens)
        })
        .collect();
    let prompt_tokens: u64 = answers.iter().map(|a| a.1).sum();
    let completion_tokens: u64 = answers.iter().map(|a| a.2).sum();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    if batch {
        let choices: Vec<Value> = answers
            .into_iter()
            .enumerate()
            .map(|(index, (text, _, _))| {
                json!({"index": index, "text": text, "finish_reason": "stop", "logprobs": null})
            })
            .collect();
        return reply(
            StatusCode::OK,
            json!({
                "id": format!("cmpl-local-{count}"),
                "object": "text_completion",
                "created": 0,
                "model": model,
                "choices": choices,
                "usage": usage,
            }),
        );
    }
    let (answer, _, _) = answers
        .into_iter()
        .next()
        .expect("a chat call has one question");
    reply(
        StatusCode::OK,
        json!({
            "id": format!("chatcmpl-local-{count}"),
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }],
            "usage": usage,
        }),
    )
}

/// `POST /v1/embeddings`: one stand-in embedding per input.
async fn embeddings(
    request: Request<hyper::body::Incoming>,
    state: &Mutex<State>,
    options: &Options,
    faults: EmbeddingFaults,
) -> Response<Full<Bytes>> {
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Ok(body) = request.into_body().collect().await else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": "unreadable body"}}),
        );
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": "body is not JSON"}}),
        );
    };
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let mut down = faults.down;
    let inputs: Option<Vec<String>> = match &body["input"] {
        Value::String(one) => Some(vec![one.clone()]),
        Value::Array(many) if !many.is_empty() => {
            many.iter().map(|i| i.as_str().map(str::to_owned)).collect()
        }
        _ => None,
    };
    {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.requests += 1;
        state.embedding_requests += 1;
        state.embedded_inputs += inputs.as_ref().map_or(0, |i| i.len() as u64);
        let longest = inputs.iter().flatten().map(String::len).max().unwrap_or(0);
        state.longest_input = state.longest_input.max(longest);
        state.authorizations.push(authorization.clone());
        *state.calls.entry(model.clone()).or_default() += 1;
        match &mut state.embeddings_left {
            Some(0) => down = true,
            Some(left) => *left -= 1,
            None => {}
        }
    }
    if let Some(key) = &options.api_key
        && authorization.as_deref() != Some(&format!("Bearer {key}"))
    {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"message": "invalid API key", "type": "invalid_request_error"}}),
        );
    }
    if down || model.starts_with("fail-") {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": {"message": "the embeddings model is down", "type": "server_error"}}),
        );
    }
    if model.starts_with("bad-request-") {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": "this model refuses everything", "type": "invalid_request_error"}}),
        );
    }
    let Some(inputs) = inputs else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": "input must be a string or a non-empty array of strings", "type": "invalid_request_error"}}),
        );
    };
    let delay = options.latency
        + faults.delay
        + Duration::from_millis(numbered(&model, "slow-").unwrap_or(0));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let tokens: u64 = inputs.iter().map(|i| tokens(i.len())).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            json!({"object": "embedding", "index": index, "embedding": embed(input)})
        })
        .collect();
    reply(
        StatusCode::OK,
        json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    )
}

/// The stand-in embedding of `text`: lower-cased words and the character
/// trigrams of each word (with its boundaries), each hashed (FNV-1a) to a
/// dimension and a sign, counted, and scaled to unit length. An input with
/// no letter or digit gets a fixed unit vector, as a real model would give
/// it some vector.
pub fn embed(text: &str) -> Vec<f32> {
    fn hash(bytes: &[u8], seed: u64) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
    let mut v = vec![0.0f32; EMBEDDING_DIM];
    let mut add = |feature: &[u8], seed: u64, weight: f32| {
        let h = hash(feature, seed);
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        v[(h % EMBEDDING_DIM as u64) as usize] += sign * weight;
    };
    let lower = text.to_lowercase();
    for word in lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        add(word.as_bytes(), 1, 1.0);
        let padded: Vec<char> = format!(" {word} ").chars().collect();
        for gram in padded.windows(3) {
            add(gram.iter().collect::<String>().as_bytes(), 2, 0.5);
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        v[0] = 1.0;
    } else {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// The last `user:` turn of a prompt the host made from chat messages
/// (`role: content` blocks), or the whole prompt.
fn last_user_turn(prompt: &str) -> &str {
    match prompt.rfind("user: ") {
        Some(at) => {
            let turn = &prompt[at + "user: ".len()..];
            turn.split("\n\n").next().unwrap_or(turn)
        }
        None => prompt.trim(),
    }
}

/// The number after `prefix` in `model` (`slow-250-x` → 250).
fn numbered(model: &str, prefix: &str) -> Option<u64> {
    model.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

/// About four characters per token, at least one.
fn tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors_close_for_shared_words() {
        let a = embed("When will my card arrive?");
        assert_eq!(a.len(), EMBEDDING_DIM);
        assert_eq!(a, embed("when will my CARD arrive"));
        assert!((cos(&a, &a) - 1.0).abs() < 1e-5);
        let b = embed("my card has not arrived");
        let c = embed("how do I top up by bank transfer");
        assert!(
            cos(&a, &b) > cos(&a, &c) + 0.2,
            "{} {}",
            cos(&a, &b),
            cos(&a, &c)
        );
        // No words: still a unit vector, never a zero one.
        assert!((cos(&embed(""), &embed("?!")) - 1.0).abs() < 1e-5);
    }
}
