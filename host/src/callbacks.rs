//! Completion callbacks: when a request that named a callback URL is final
//! (answered, rejected or failed; an escalated one when a reviewer resolves
//! it), the host POSTs its result there, signed, retrying with back-off.
//!
//! Only hosts the manifest allows may be called (`[callbacks] allow`), and a
//! URL naming any other is refused when the request is submitted. The body
//! is the request's JSON as `GET /v1/requests/{id}` shows it. Two headers
//! let a receiver check it came from this host and was not replayed:
//!
//! ```text
//! Strata-Request-Id: <id>
//! Strata-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! ```
//!
//! To verify: take `t` and `v1` from the header, compute HMAC-SHA256 with
//! the shared secret over the bytes of `t`, a `.`, and the raw body, compare
//! with `v1` in constant time, and refuse a `t` too far from now. The secret
//! is read from the environment variable `[callbacks] secret_env` names
//! (default `STRATA_CALLBACK_SECRET`).
//!
//! Deliveries are durable: what is due is kept in the store, a worker sends
//! it (after a restart too), and every attempt is recorded and shown under
//! the request's `callback`. A 2xx answer delivers; anything else, or no
//! answer within ten seconds, is retried after `backoff_ms`, doubling (to an hour at most),
//! up to `max_attempts`. Delivery is at least once: a receiver should treat
//! a second delivery with the same `Strata-Request-Id` as a repeat.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::manifest::CallbackSettings;
use crate::server::App;

/// How long one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Who may be called back, and how deliveries are signed and retried.
pub struct Callbacks {
    allow: Vec<(String, Option<u16>)>,
    secret: Option<Vec<u8>>,
    secret_env: String,
    max_attempts: u32,
    backoff: Duration,
}

impl Callbacks {
    /// The policy from the manifest, the secret from the environment.
    pub fn new(settings: &CallbackSettings) -> Callbacks {
        Self::with_secret(
            settings,
            std::env::var(&settings.secret_env)
                .ok()
                .filter(|s| !s.is_empty()),
        )
    }

    /// The policy with a secret given directly (tests, embedding).
    pub fn with_secret(settings: &CallbackSettings, secret: Option<String>) -> Callbacks {
        let allow = settings
            .allow
            .iter()
            .map(|entry| match entry.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() => {
                    (host.to_ascii_lowercase(), port.parse().ok())
                }
                _ => (entry.to_ascii_lowercase(), None),
            })
            .collect();
        Callbacks {
            allow,
            secret: secret.map(String::into_bytes),
            secret_env: settings.secret_env.clone(),
            max_attempts: settings.max_attempts,
            backoff: Duration::from_millis(settings.backoff_ms),
        }
    }

    /// Check a callback URL a client sent; the reason when it is refused.
    pub fn check(&self, url: &str) -> Result<(), String> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| format!("\"{url}\" is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("\"{url}\" is not an http:// or https:// URL"));
        }
        if self.secret.is_none() {
            return Err(format!(
                "this host cannot sign callbacks: {} is not set",
                self.secret_env
            ));
        }
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = parsed.port_or_known_default();
        let allowed = self
            .allow
            .iter()
            .any(|(h, p)| *h == host && (p.is_none() || *p == port));
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "callbacks to {host}{} are not allowed; the manifest's [callbacks] allow lists \
                 the hosts that are",
                port.map(|p| format!(":{p}")).unwrap_or_default()
            ))
        }
    }

    /// The `Strata-Signature` header value for `body` at `timestamp`.
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> Option<String> {
        let secret = self.secret.as_ref()?;
        Some(format!(
            "t={timestamp},v1={}",
            signature(secret, timestamp, body)
        ))
    }
}

/// Hex HMAC-SHA256 of `"<timestamp>.<body>"`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Deliver due callbacks until the host stops.
pub fn spawn_worker(app: Arc<App>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder().timeout(DELIVERY_TIMEOUT).build() {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "cannot build the callback client; callbacks are off");
                return;
            }
        };
        loop {
            let now = crate::store::now_millis();
            match app.store.due_callbacks(now).await {
                Ok(due) => {
                    for (request_id, url, attempts) in due {
                        deliver(&app, &client, request_id, &url, attempts + 1).await;
                    }
                }
                Err(error) => tracing::error!(%error, "cannot read due callbacks"),
            }
            // Sleep until the next one is due, a new one arrives, or a
            // second passes (a bound against missed wake-ups).
            // Never less than a few milliseconds: a store that keeps
            // failing must not make this loop spin.
            let wait = match app.store.next_callback_at().await {
                Ok(Some(at)) => {
                    Duration::from_millis((at - crate::store::now_millis()).max(0) as u64)
                }
                _ => Duration::from_secs(1),
            }
            .clamp(Duration::from_millis(20), Duration::from_secs(1));
            tokio::select! {
                () = app.store.callbacks_due().notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => return,
            }
        }
    });
}

async fn deliver(app: &App, client: &reqwest::Client, request_id: String, url: &str, attempt: i64) {
    let body = match crate::api::stored_view(app, &request_id).await {
        Ok(Some(mut view)) => {
            // The receiver gets the request, not the history of deliveries.
            if let Some(fields) = view.as_object_mut() {
                fields.remove("callback");
            }
            view.to_string()
        }
        Ok(None) => {
            tracing::error!(%request_id, "a due callback names a request the store does not have");
            let why = "the store has no request with this id".to_owned();
            if let Err(error) = app
                .store
                .record_delivery(request_id, attempt, None, Some(why), None)
                .await
            {
                tracing::error!(%error, "cannot record a callback delivery");
            }
            app.metrics.callback_delivery("failed");
            return;
        }
        // Left due: the next round tries again.
        Err(error) => {
            tracing::error!(%request_id, %error, "cannot read a request to call back");
            return;
        }
    };
    let timestamp = crate::store::now_millis() / 1000;
    // Without a secret (the host restarted without it) nothing is sent: the
    // attempt fails and is retried like any other.
    let (status, error) = match app.callbacks.sign(timestamp, body.as_bytes()) {
        None => (
            None,
            Some(format!(
                "not sent: no signing secret ({} is not set)",
                app.callbacks.secret_env
            )),
        ),
        Some(signature) => {
            let result = client
                .post(url)
                .header("content-type", "application/json")
                .header("strata-request-id", &request_id)
                .header("strata-signature", signature)
                .body(body)
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => {
                    (Some(response.status().as_u16()), None)
                }
                Ok(response) => (
                    Some(response.status().as_u16()),
                    Some(format!("the receiver answered {}", response.status())),
                ),
                Err(error) => (None, Some(format!("cannot deliver: {}", describe(error)))),
            }
        }
    };
    let retry_at = match &error {
        Some(_) if attempt < i64::from(app.callbacks.max_attempts) => {
            let backoff =
                (app.callbacks.backoff * 2u32.saturating_pow(attempt as u32 - 1)).min(MAX_BACKOFF);
            Some(crate::store::now_millis() + backoff.as_millis() as i64)
        }
        _ => None,
    };
    let outcome = match (&error, retry_at) {
        (None, _) => "delivered",
        (Some(_), Some(_)) => "retrying",
        (Some(_), None) => "failed",
    };
    app.metrics.callback_delivery(outcome);
    match &error {
        None => tracing::info!(%request_id, attempt, "callback delivered"),
        Some(why) => tracing::warn!(%request_id, attempt, outcome, "callback not delivered: {why}"),
    }
    if let Err(error) = app
        .store
        .record_delivery(request_id, attempt, status, error, retry_at)
        .await
    {
        tracing::error!(%error, "cannot record a callback delivery");
    }
}

/// A transport error with its causes ("error sending request: connection
/// refused"), without the URL, which the delivery record already names.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> Callbacks {
        Callbacks::with_secret(
            &CallbackSettings {
                allow: allow.iter().map(|s| s.to_string()).collect(),
                ..CallbackSettings::default()
            },
            Some("s3cret".to_owned()),
        )
    }

    #[test]
    fn only_allowed_hosts_may_be_called_back() {
        let policy = policy(&["hooks.example.com", "127.0.0.1:9000"]);
        assert!(policy.check("https://hooks.example.com/strata").is_ok());
        assert!(policy.check("http://HOOKS.example.com:8080/x").is_ok());
        assert!(policy.check("http://127.0.0.1:9000/done").is_ok());
        assert!(policy.check("http://127.0.0.1:9001/done").is_err());
        assert!(policy.check("https://evil.example.com/").is_err());
        assert!(policy.check("ftp://hooks.example.com/").is_err());
        assert!(policy.check("not a url").is_err());
    }

    #[test]
    fn without_a_secret_no_callback_is_accepted() {
        let policy = Callbacks::with_secret(
            &CallbackSettings {
                allow: vec!["127.0.0.1".to_owned()],
                ..CallbackSettings::default()
            },
            None,
        );
        let refused = policy.check("http://127.0.0.1/x").unwrap_err();
        assert!(
            refused.contains("STRATA_CALLBACK_SECRET is not set"),
            "{refused}"
        );
        assert_eq!(policy.sign(1, b"{}"), None);
    }

    #[test]
    fn signatures_are_hmac_sha256_over_timestamp_and_body() {
        let policy = policy(&[]);
        let header = policy.sign(1_700_000_000, b"{}").unwrap();
        // HMAC-SHA256("s3cret", "1700000000.{}"), computed with Python's hmac.
        assert_eq!(
            header,
            "t=1700000000,v1=97926816e98fbb41ccb1673225ff29a2f35369099990e1b1561651e7bd097ebf"
        );
        assert_ne!(
            signature(b"s3cret", 1, b"{}"),
            signature(b"s3cret", 2, b"{}")
        );
        assert_eq!(signature(b"key", 0, b"").len(), 64);
    }
}
