//! Embeddings: the host side of `[models.embeddings]`, for answer banks
//! that add embedding vectors to their lexical features.
//!
//! Requests go to the provider's OpenAI-compatible
//! `POST {base_url}/embeddings` (OpenAI, vLLM, Ollama, Hugging Face TEI,
//! llama.cpp's server), with the provider's API key from the environment.
//! Examples are embedded in batches of `batch` inputs, each batch retried
//! with doubling back-off (and a 429's `Retry-After`); a lookup embeds one
//! question in one attempt, because a request is waiting and the lexical
//! model can answer without it. Inputs are cut to
//! [`strata_patterns::MAX_QUESTION_BYTES`], what the lexical model reads.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use serde::{Deserialize, Serialize};

use crate::manifest::{EmbeddingsSpec, ProviderSpec};
use crate::model::{MAX_RETRY_AFTER, PostError, Reply, post_json, snippet};

/// The body of `POST /embeddings`.
#[derive(Debug, Serialize)]
struct EmbeddingsRequest<'a> {
    model: &'a str,
    input: &'a [&'a str],
    encoding_format: &'static str,
}

/// The answer of `POST /embeddings`.
#[derive(Debug, Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingData>,
}

/// One input's vector.
#[derive(Debug, Deserialize)]
struct EmbeddingData {
    index: usize,
    embedding: Vec<f32>,
}

/// Why no vectors came.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedError {
    /// No answer within the timeout.
    Timeout(u64),
    /// Unreachable or 5xx.
    Unavailable(String),
    /// 429, with the wait the provider asked for, if it said.
    RateLimited(Option<Duration>),
    /// The provider refused the request (4xx other than 429).
    Rejected(String),
    /// The answer is not what was asked for.
    Invalid(String),
}

impl EmbedError {
    /// The `reason` label of the failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            EmbedError::Timeout(_) => "timeout",
            EmbedError::Unavailable(_) | EmbedError::RateLimited(_) => "unavailable",
            EmbedError::Rejected(_) => "rejected",
            EmbedError::Invalid(_) => "invalid",
        }
    }

    fn retried(&self) -> bool {
        matches!(
            self,
            EmbedError::Timeout(_) | EmbedError::Unavailable(_) | EmbedError::RateLimited(_)
        )
    }
}

impl std::fmt::Display for EmbedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmbedError::Timeout(ms) => write!(f, "no answer within {ms} ms"),
            EmbedError::Unavailable(why) => write!(f, "unavailable: {why}"),
            EmbedError::RateLimited(_) => write!(f, "unavailable: rate limited (429)"),
            EmbedError::Rejected(why) => write!(f, "request rejected: {why}"),
            EmbedError::Invalid(why) => write!(f, "invalid answer: {why}"),
        }
    }
}

/// A client for one embeddings model.
#[derive(Clone)]
pub struct Embedder {
    name: String,
    spec: EmbeddingsSpec,
    url: String,
    api_key: Option<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("name", &self.name)
            .field("model", &self.spec.model)
            .field("url", &self.url)
            .finish()
    }
}

impl Embedder {
    /// The client of embeddings model `name`. Fails, naming the variable,
    /// when the provider's API key variable is not set.
    pub fn new(
        name: &str,
        spec: &EmbeddingsSpec,
        provider: &ProviderSpec,
        client: reqwest::Client,
    ) -> Result<Embedder, String> {
        let api_key = provider.api_key(&spec.provider)?;
        Ok(Embedder {
            name: name.to_owned(),
            spec: spec.clone(),
            url: provider.url("embeddings"),
            api_key,
            client,
        })
    }

    /// The manifest's name for the model.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The provider's model name (stored vectors are kept per model name).
    pub fn model(&self) -> &str {
        &self.spec.model
    }

    /// Where requests go.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Examples a request when embedding many.
    pub fn batch(&self) -> usize {
        self.spec.batch.max(1) as usize
    }

    /// The vector of one question: one attempt within the timeout, or
    /// within `budget` if that is shorter.
    pub async fn embed_question(
        &self,
        question: &str,
        budget: Duration,
    ) -> Result<Vec<f32>, EmbedError> {
        let input = [strata_patterns::text::truncate(question)];
        let timeout = budget.min(Duration::from_millis(self.spec.timeout_ms));
        if timeout < Duration::from_millis(1) {
            return Err(EmbedError::Timeout(0));
        }
        let mut vectors = self.attempt(&input, timeout).await?;
        Ok(vectors.pop().expect("one vector per input, checked"))
    }

    /// The vectors of `texts`, in order, `batch` inputs a request, each
    /// request retried on timeouts, 5xx and 429.
    pub async fn embed_all(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.batch()) {
            let inputs: Vec<&str> = chunk
                .iter()
                .map(|t| strata_patterns::text::truncate(t))
                .collect();
            let mut backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(self.spec.backoff_ms))
                .with_max_delay(MAX_RETRY_AFTER)
                .with_jitter()
                .without_max_times()
                .build();
            let mut attempts = 0;
            let vectors = loop {
                attempts += 1;
                match self
                    .attempt(&inputs, Duration::from_millis(self.spec.batch_timeout_ms))
                    .await
                {
                    Ok(vectors) => break vectors,
                    Err(error) if error.retried() && attempts <= self.spec.retries => {
                        // A short Retry-After wins over the back-off.
                        let wait = match error {
                            EmbedError::RateLimited(Some(after)) if after <= MAX_RETRY_AFTER => {
                                after
                            }
                            _ => backoff.next().unwrap_or(MAX_RETRY_AFTER),
                        };
                        tokio::time::sleep(wait).await;
                    }
                    Err(error) => return Err(error),
                }
            };
            out.extend(vectors);
        }
        Ok(out)
    }

    async fn attempt(
        &self,
        inputs: &[&str],
        timeout: Duration,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let body = EmbeddingsRequest {
            model: &self.spec.model,
            input: inputs,
            encoding_format: "float",
        };
        let Reply {
            status,
            retry_after,
            text,
        } = post_json(
            &self.client,
            &self.url,
            self.api_key.as_deref(),
            timeout,
            &body,
        )
        .await
        .map_err(|error| match error {
            PostError::Timeout(ms) => EmbedError::Timeout(ms),
            other => EmbedError::Unavailable(other.to_string()),
        })?;
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            // The wait it asks for is the caller's to honour: a lookup
            // does not wait at all.
            return Err(EmbedError::RateLimited(retry_after));
        }
        if status.is_server_error() {
            return Err(EmbedError::Unavailable(format!(
                "the provider answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(EmbedError::Rejected(format!(
                "the provider answered {status}: {}",
                snippet(&text)
            )));
        }
        parse(&text, inputs.len())
    }
}

/// The vectors of an `/embeddings` answer for `n` inputs, in input order:
/// every index once, every vector of one non-zero length.
fn parse(text: &str, n: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
    let response: EmbeddingsResponse = serde_json::from_str(text).map_err(|e| {
        EmbedError::Invalid(format!("not an embeddings list ({e}): {}", snippet(text)))
    })?;
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; n];
    for item in response.data {
        let slot = vectors
            .get_mut(item.index)
            .ok_or_else(|| EmbedError::Invalid(format!("index {} out of range", item.index)))?;
        *slot = Some(item.embedding);
    }
    let vectors: Vec<Vec<f32>> = vectors
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| EmbedError::Invalid("not every input got a vector".to_owned()))?;
    let dim = vectors.first().map_or(0, Vec::len);
    if dim == 0 || vectors.iter().any(|v| v.len() != dim) {
        return Err(EmbedError::Invalid(
            "vectors are empty or of different lengths".to_owned(),
        ));
    }
    Ok(vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openai_embeddings_in_input_order() {
        let text = r#"{"object":"list","model":"m","data":[
            {"object":"embedding","index":1,"embedding":[0.0,1.0]},
            {"object":"embedding","index":0,"embedding":[1.0,0.0]}],
            "usage":{"prompt_tokens":4,"total_tokens":4}}"#;
        assert_eq!(
            parse(text, 2).unwrap(),
            vec![vec![1.0, 0.0], vec![0.0, 1.0]]
        );
    }

    #[test]
    fn refuses_answers_that_do_not_fit_the_question() {
        let one = r#"{"data":[{"index":0,"embedding":[1.0]}]}"#;
        assert_eq!(
            parse(one, 2).unwrap_err(),
            EmbedError::Invalid("not every input got a vector".to_owned())
        );
        let far = r#"{"data":[{"index":3,"embedding":[1.0]}]}"#;
        assert_eq!(parse(far, 1).unwrap_err().reason(), "invalid");
        let ragged =
            r#"{"data":[{"index":0,"embedding":[1.0]},{"index":1,"embedding":[1.0,2.0]}]}"#;
        assert!(parse(ragged, 2).is_err());
        assert!(parse(r#"{"error":"down"}"#, 1).is_err());
        assert!(parse(r#"{"data":[{"index":0,"embedding":[]}]}"#, 1).is_err());
    }
}
