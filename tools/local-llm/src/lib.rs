//! A local stand-in for a model provider. It speaks the OpenAI-compatible
//! `POST /v1/chat/completions` protocol (request: `model`, `messages`,
//! `max_tokens`; answer: `choices[0].message.content` and `usage`), and the
//! batch-capable `POST /v1/completions` (request: `prompt` as a string or a
//! list of strings; answer: one `choices[i].text` per prompt and `usage`
//! for them all), so the host talks to it exactly as to OpenAI, vLLM,
//! Ollama or llama.cpp's server.
//! These machines cannot reach a real provider; this one lets the tests, the
//! demo and the benchmarks run the generation layer for real, over HTTP.
//!
//! Its answers are canned, not generated: a fixed sentence quoting the
//! question. Token counts are estimates (about four characters a token).
//! Behaviour is chosen by the model name, so a manifest can ask for faults:
//!
//! - `fail-*`: always answers 500;
//! - `slow-<ms>-*`: waits that many milliseconds before answering;
//! - `limited-<n>-*`: answers 429 (`Retry-After: 0`) to its first `n` calls;
//! - `bad-request-*`: answers 400;
//! - anything else: answers at once.
//!
//! `GET /stats` returns `{"calls": {model: count}, "requests": n,
//! "batches": n, "batched_prompts": n}`: what reached the provider (one
//! request per HTTP call, whatever it held), counted here where a test can
//! check it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
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
    authorizations: Vec<Option<String>>,
}

/// A running local provider.
pub struct LocalLlm {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl LocalLlm {
    /// Serve on `listener` until dropped.
    pub fn serve(listener: TcpListener, options: Options) -> anyhow::Result<LocalLlm> {
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let options = Arc::new(options);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let options = options.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        let options = options.clone();
                        async move { Ok::<_, Infallible>(handle(request, &state, &options).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(LocalLlm { addr, state, task })
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

async fn handle(
    request: Request<hyper::body::Incoming>,
    state: &Mutex<State>,
    options: &Options,
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
            }),
        );
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
