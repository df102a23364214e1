//! The OpenAI-compatible front door: any OpenAI client is a Strata client.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /v1/chat/completions` | `model` names a pipeline; the last `user` message is the input |
//! | `POST /v1/completions` | the same with `prompt` as the input |
//! | `GET /v1/models` | the pipelines of the serving generation, as models |
//!
//! Answers come back in OpenAI's shape, with Strata's own fields under
//! `strata` (`request_id`, `status`, `layer`, `stage`, `cost_usd`,
//! `ticket`). `stream: true` sends the answer as server-sent events, chunk
//! by chunk, ending with `data: [DONE]`. An escalation is answered (200)
//! with a message saying a person will reply, naming the ticket and where
//! to fetch the reply (`GET /v1/requests/{id}`); a rejection is a 422 error
//! with the stage's code and message; a failure the same error as on
//! `/v1/pipelines/{name}`. Sampling parameters (`temperature`,
//! `max_tokens`, ...) are accepted and ignored: the pipeline decides.
//! `user` becomes the request attribute `user`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, json_response};
use super::extract::{Arrived, Client, ClientRequestId, JsonBody, RequireRole};
use super::public::{Ran, run_real_time};
use crate::app::App;
use crate::metrics::Phase;
use crate::request::Request;
use crate::states::RequestStatus;
use crate::views::RequestView;

/// `POST /v1/chat/completions`.
#[derive(Deserialize)]
pub(super) struct ChatBody {
    model: String,
    messages: Vec<Message>,
    #[serde(flatten)]
    options: Options,
}

/// What both kinds of request may say besides their input.
#[derive(Deserialize)]
struct Options {
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// A message's content: text, or parts of which the text ones count.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// `POST /v1/completions`.
#[derive(Deserialize)]
pub(super) struct CompletionBody {
    model: String,
    prompt: Prompt,
    #[serde(flatten)]
    options: Options,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// What the two kinds of request share once read.
struct Asked {
    pipeline: String,
    input: String,
    options: Options,
}

fn one_choice(n: Option<u32>) -> Result<(), ApiError> {
    match n {
        None | Some(1) => Ok(()),
        Some(n) => Err(ApiError::bad_request(format!(
            "\"n\" is {n}: a pipeline gives one answer per request"
        ))),
    }
}

impl ChatBody {
    fn asked(self) -> Result<Asked, ApiError> {
        one_choice(self.options.n)?;
        let last = self
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .ok_or_else(|| {
                ApiError::bad_request("\"messages\" has no message with role \"user\"")
            })?;
        let input = match &last.content {
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter(|p| p.kind == "text")
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
            None => String::new(),
        };
        if input.trim().is_empty() {
            return Err(ApiError::bad_request(
                "the last \"user\" message has no text",
            ));
        }
        Ok(Asked {
            pipeline: self.model,
            input,
            options: self.options,
        })
    }
}

impl CompletionBody {
    fn asked(self) -> Result<Asked, ApiError> {
        one_choice(self.options.n)?;
        let input = match self.prompt {
            Prompt::One(text) => text,
            Prompt::Many(mut texts) if texts.len() == 1 => texts.remove(0),
            Prompt::Many(texts) => {
                return Err(ApiError::bad_request(format!(
                    "\"prompt\" has {} prompts: send one per request",
                    texts.len()
                )));
            }
        };
        if input.trim().is_empty() {
            return Err(ApiError::bad_request("\"prompt\" has no text"));
        }
        Ok(Asked {
            pipeline: self.model,
            input,
            options: self.options,
        })
    }
}

/// Which OpenAI shape an answer takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Chat,
    Text,
}

pub(super) async fn chat_completions(
    State(app): State<Arc<App>>,
    Arrived(arrived): Arrived,
    RequireRole(caller, _): RequireRole<Client>,
    ClientRequestId(client_id): ClientRequestId,
    JsonBody(body): JsonBody<ChatBody>,
) -> Result<Response, ApiError> {
    let asked = body.asked()?;
    answer(app, arrived, &caller, client_id, asked, Shape::Chat).await
}

pub(super) async fn completions(
    State(app): State<Arc<App>>,
    Arrived(arrived): Arrived,
    RequireRole(caller, _): RequireRole<Client>,
    ClientRequestId(client_id): ClientRequestId,
    JsonBody(body): JsonBody<CompletionBody>,
) -> Result<Response, ApiError> {
    let asked = body.asked()?;
    answer(app, arrived, &caller, client_id, asked, Shape::Text).await
}

pub(super) async fn models(State(app): State<Arc<App>>, _: RequireRole<Client>) -> Response {
    let generation = app.current.load_full();
    let created = generation
        .loaded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let data: Vec<Value> = generation
        .pipelines
        .keys()
        .map(
            |name| json!({"id": name, "object": "model", "created": created, "owned_by": "strata"}),
        )
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

async fn answer(
    app: Arc<App>,
    arrived: std::time::Instant,
    caller: &crate::auth::Caller,
    client_id: Option<String>,
    asked: Asked,
    shape: Shape,
) -> Result<Response, ApiError> {
    let generation = app.current.load_full();
    let Some(pipeline) = generation.pipelines.get(asked.pipeline.as_str()).cloned() else {
        return Err(ApiError::not_found(
            "model_not_found",
            format!(
                "no pipeline named \"{}\"; GET /v1/models lists them",
                asked.pipeline
            ),
        ));
    };
    let admission = app
        .teams
        .admit(
            &app.store,
            &generation.manifest,
            caller,
            pipeline.name.as_str(),
        )
        .await?;
    let mut attributes = BTreeMap::new();
    if let Some(user) = asked.options.user {
        attributes.insert("user".to_owned(), user);
    }
    let request = Request {
        id: client_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        pipeline: pipeline.name.to_string(),
        input: asked.input,
        attributes,
    };
    let created_at = crate::store::now_millis();
    app.metrics.phase(Phase::Receive, arrived.elapsed());
    let Ran { status, view, .. } = run_real_time(
        app.clone(),
        generation,
        pipeline,
        request,
        created_at,
        None,
        admission,
    )
    .await?;
    let resumed = std::time::Instant::now();
    let reply = reply(status, &view, created_at, shape, asked.options.stream);
    app.metrics.phase(Phase::Respond, resumed.elapsed());
    reply
}

/// The OpenAI-shaped response to a run that ended as `view` says.
fn reply(
    status: StatusCode,
    view: &RequestView,
    created_at: i64,
    shape: Shape,
    stream_it: bool,
) -> Result<Response, ApiError> {
    let content = match view.status {
        RequestStatus::Answered => view.output.clone().flatten().unwrap_or_default(),
        RequestStatus::Escalated => escalation_message(view),
        RequestStatus::Rejected => {
            let rejection = view.rejection.as_ref();
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "rejected",
                format!(
                    "{} ({})",
                    rejection
                        .and_then(|r| r.message.as_deref())
                        .unwrap_or("the request was rejected"),
                    rejection
                        .and_then(|r| r.code.as_deref())
                        .unwrap_or("rejected")
                ),
            ));
        }
        RequestStatus::Failed => {
            let message = view
                .error
                .as_ref()
                .and_then(|e| e.message.clone())
                .unwrap_or_else(|| "the pipeline failed".to_owned());
            let mut error = ApiError::new(status, "pipeline_failed", message);
            if status == StatusCode::SERVICE_UNAVAILABLE {
                error = error.retry_after(1);
            }
            return Err(error);
        }
    };
    let (input_tokens, output_tokens) = view
        .model
        .as_ref()
        .map_or((0, 0), |m| (m.input_tokens, m.output_tokens));
    let strata = json!({
        "request_id": view.request_id,
        "status": view.status,
        "layer": view.layer,
        "stage": view.stage,
        "cost_usd": view.cost_usd,
        "ticket": view.ticket,
    });
    let usage = json!({
        "prompt_tokens": input_tokens,
        "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    });
    let created = created_at / 1000;
    let model = json!(view.pipeline);
    let (object, prefix) = match shape {
        Shape::Chat => ("chat.completion", "chatcmpl-"),
        Shape::Text => ("text_completion", "cmpl-"),
    };
    let id = format!("{prefix}{}", view.request_id);
    if stream_it {
        return Ok(stream(shape, &id, created, &model, &content, strata, usage));
    }
    let choice = match shape {
        Shape::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
            "logprobs": null,
        }),
        Shape::Text => {
            json!({"index": 0, "text": content, "finish_reason": "stop", "logprobs": null})
        }
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": id,
            "object": object,
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": usage,
            "strata": strata,
        }),
    ))
}

/// What an OpenAI client reads when a person will answer instead.
fn escalation_message(view: &RequestView) -> String {
    let id = &view.request_id;
    match view.ticket.as_ref().map(|t| t.id) {
        Some(ticket) => format!(
            "A person will reply to this request (ticket {ticket}). \
             Fetch the reply later at GET /v1/requests/{id}."
        ),
        None => format!(
            "A person will reply to this request. Fetch the reply later at GET /v1/requests/{id}."
        ),
    }
}

/// The answer as server-sent events: the role, the text a few words at a
/// time, the finish (with `usage` and `strata`), then `[DONE]`.
fn stream(
    shape: Shape,
    id: &str,
    created: i64,
    model: &Value,
    content: &str,
    strata: Value,
    usage: Value,
) -> Response {
    let object = match shape {
        Shape::Chat => "chat.completion.chunk",
        Shape::Text => "text_completion",
    };
    let chunk = |choice: Value, extra: Option<(&Value, &Value)>| {
        let mut chunk = json!({
            "id": id, "object": object, "created": created, "model": model, "choices": [choice],
        });
        if let Some((usage, strata)) = extra {
            chunk["usage"] = usage.clone();
            chunk["strata"] = strata.clone();
        }
        format!("data: {chunk}\n\n")
    };
    let delta = |text: &str| match shape {
        Shape::Chat => json!({"index": 0, "delta": {"content": text}, "finish_reason": null}),
        Shape::Text => json!({"index": 0, "text": text, "finish_reason": null}),
    };
    let mut events = String::new();
    if shape == Shape::Chat {
        events.push_str(&chunk(
            json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}),
            None,
        ));
    }
    for piece in pieces(content, 4) {
        events.push_str(&chunk(delta(piece), None));
    }
    let finish = match shape {
        Shape::Chat => json!({"index": 0, "delta": {}, "finish_reason": "stop"}),
        Shape::Text => json!({"index": 0, "text": "", "finish_reason": "stop"}),
    };
    events.push_str(&chunk(finish, Some((&usage, &strata))));
    events.push_str("data: [DONE]\n\n");
    (
        StatusCode::OK,
        [
            (http::header::CONTENT_TYPE, "text/event-stream"),
            (http::header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from(Bytes::from(events)),
    )
        .into_response()
}

/// `text` cut after every `words` words (whitespace kept with the word
/// before it), so the pieces join back to `text` exactly.
fn pieces(text: &str, words: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut seen = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            in_space = false;
            seen += 1;
            if seen == words {
                out.push(&text[start..i]);
                start = i;
                seen = 0;
            }
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_back_to_the_text() {
        let text = "one two  three four five six\nseven";
        let cut = pieces(text, 2);
        assert_eq!(cut.concat(), text);
        assert_eq!(cut, ["one two  ", "three four ", "five six\n", "seven"]);
        assert!(pieces("", 4).is_empty());
    }

    #[test]
    fn the_last_user_message_is_the_input() {
        let body: ChatBody = serde_json::from_value(json!({
            "model": "support",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url", "image_url": {"url": "x"}}]},
            ],
            "temperature": 0.2,
        }))
        .unwrap();
        assert_eq!(body.asked().unwrap().input, "second");
        let none: ChatBody = serde_json::from_value(json!({
            "model": "support", "messages": [{"role": "system", "content": "x"}],
        }))
        .unwrap();
        assert!(none.asked().is_err());
        let many: CompletionBody =
            serde_json::from_value(json!({"model": "m", "prompt": ["a", "b"]})).unwrap();
        assert!(many.asked().is_err());
    }
}
