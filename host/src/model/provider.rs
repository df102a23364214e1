//! One POST to an OpenAI-compatible provider, shared by chat completions,
//! batched completions and embeddings: the bearer key, the timeout, the
//! whole answer read, and the provider's `Retry-After`. What the answer
//! means (retry, reject, parse) is each caller's.

use std::time::Duration;

use serde::Serialize;

/// What a provider answered to one POST.
pub(crate) struct Reply {
    /// The HTTP status.
    pub status: reqwest::StatusCode,
    /// The wait its `Retry-After` header asked for.
    pub retry_after: Option<Duration>,
    /// The body, whole.
    pub text: String,
}

/// Why one POST got no whole answer.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum PostError {
    /// Nothing, or not all of it, within the timeout.
    #[error("no answer within {0} ms")]
    Timeout(u64),
    /// The provider could not be reached.
    #[error("cannot reach the provider: {0}")]
    Unreachable(String),
    /// The answer broke off while it was read.
    #[error("the answer broke off: {0}")]
    BrokenOff(String),
}

/// POST `body` as JSON to `url`, with `api_key` as the bearer token, and
/// read the whole answer, all within `timeout`.
pub(crate) async fn post_json(
    client: &reqwest::Client,
    url: &str,
    api_key: Option<&str>,
    timeout: Duration,
    body: &impl Serialize,
) -> Result<Reply, PostError> {
    let timed_out = || PostError::Timeout(timeout.as_millis() as u64);
    let mut request = client.post(url).timeout(timeout).json(body);
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(|error| {
        if error.is_timeout() {
            timed_out()
        } else {
            PostError::Unreachable(without_url(&error))
        }
    })?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after);
    let text = response.text().await.map_err(|error| {
        if error.is_timeout() {
            timed_out()
        } else {
            PostError::BrokenOff(without_url(&error))
        }
    })?;
    Ok(Reply {
        status,
        retry_after,
        text,
    })
}

/// A `Retry-After` value: seconds, or an HTTP date (RFC 9110), as a wait
/// from now (none for a date already past).
pub(crate) fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// reqwest errors name the URL; keep them short and free of query strings.
pub(crate) fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "the provider");
    }
    text
}

/// The start of a provider's answer, for an error message.
pub(crate) fn snippet(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::retry_after;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        assert_eq!(retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let waited = retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(waited > Duration::from_secs(100) && waited <= Duration::from_secs(120));
        assert_eq!(retry_after("soon"), None);
    }
}
