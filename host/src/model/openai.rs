//! The OpenAI-compatible protocol as types: what is sent to
//! `/chat/completions` and `/completions`, and what is read back. Fields a
//! provider may leave out default; anything else missing is a malformed
//! answer.

use serde::{Deserialize, Serialize};

/// A `POST /chat/completions` body.
#[derive(Debug, Serialize)]
pub(super) struct ChatRequest<'a> {
    pub model: &'a str,
    pub messages: Vec<ChatMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
}

/// One message of a chat.
#[derive(Debug, Serialize)]
pub(super) struct ChatMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

/// A chat completion.
#[derive(Debug, Deserialize)]
pub(super) struct ChatResponse {
    #[serde(default)]
    pub model: String,
    pub choices: Vec<ChatChoice>,
    #[serde(default)]
    pub usage: Usage,
}

/// One choice of a chat completion.
#[derive(Debug, Deserialize)]
pub(super) struct ChatChoice {
    pub message: ChatAnswer,
}

/// The assistant's message.
#[derive(Debug, Deserialize)]
pub(super) struct ChatAnswer {
    pub content: Option<String>,
}

/// Tokens a call used, as the provider counts them.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// A `POST /completions` body with several prompts (a batch).
#[derive(Debug, Serialize)]
pub(super) struct CompletionsRequest<'a> {
    pub model: &'a str,
    pub prompt: &'a [&'a str],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

/// The answer to a batch: one choice per prompt, by index.
#[derive(Debug, Deserialize)]
pub(super) struct CompletionsResponse {
    #[serde(default)]
    pub model: Option<String>,
    pub choices: Vec<CompletionChoice>,
    #[serde(default)]
    pub usage: Usage,
}

/// The answer to one prompt of a batch.
#[derive(Debug, Deserialize)]
pub(super) struct CompletionChoice {
    pub index: usize,
    pub text: String,
}
