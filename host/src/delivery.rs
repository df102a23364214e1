//! Delivering callbacks: the worker that sends due callbacks, at most
//! `[callbacks] concurrency` at a time, signed, to the addresses the policy
//! checked, and records each attempt with its back-off.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use tokio::task::JoinSet;

use crate::app::App;

/// The longest wait between two attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The first wait after the store failed to read a request or to record an
/// attempt; it doubles up to [`MAX_STORE_BACKOFF`].
pub(crate) const STORE_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait between two tries of a failing store.
pub(crate) const MAX_STORE_BACKOFF: Duration = Duration::from_secs(60);

/// The callbacks being delivered, by request id, so that the worker does not
/// start a second delivery of one that is under way.
pub(crate) type InFlight = Arc<Mutex<HashSet<String>>>;

/// A delivery's claim on its request id, given up when the delivery ends
/// however it ends (a panic included).
pub(crate) struct Claim {
    pub(crate) id: String,
    pub(crate) in_flight: InFlight,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// How long a delivery attempt holds its callback: longer than an attempt
/// takes (its receiver's lookup and its request are bounded by
/// `DELIVERY_TIMEOUT` each), after which a host that died during it no
/// longer keeps it from being delivered.
const CLAIM_LEASE: Duration = Duration::from_secs(60);

/// Deliver due callbacks until the host stops, up to `[callbacks]
/// concurrency` at a time.
pub fn spawn_worker(app: Arc<App>) {
    let cancel = app.lifecycle.cancel.clone();
    app.lifecycle.clone().spawn(async move {
        let bound = app.callbacks.concurrency;
        let in_flight: InFlight = Arc::default();
        let mut running = JoinSet::new();
        loop {
            while running.try_join_next().is_some() {}
            let now = crate::store::now_millis();
            if running.len() < bound {
                // Enough rows that, after skipping the ones under way, every
                // free slot can be filled if that many are due.
                let busy = in_flight.lock().unwrap_or_else(|e| e.into_inner()).len();
                match app.store.due_callbacks(now, bound + busy).await {
                    Ok(due) => {
                        for (request_id, url, attempts) in due {
                            if running.len() >= bound {
                                break;
                            }
                            let claimed = in_flight
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(request_id.clone());
                            if !claimed {
                                continue;
                            }
                            let claim = Claim {
                                id: request_id.clone(),
                                in_flight: in_flight.clone(),
                            };
                            let app = app.clone();
                            running.spawn(async move {
                                if take(&app, &request_id, now).await {
                                    deliver(&app, request_id, &url, attempts + 1).await;
                                }
                                drop(claim);
                            });
                        }
                    }
                    Err(error) => tracing::error!(%error, "cannot read due callbacks"),
                }
            }
            // Now either every slot is busy or every due callback is under
            // way: wait for a slot to free, the next one to fall due, a new
            // one to arrive, or a second to pass (a bound against missed
            // wake-ups). Never less than a few milliseconds: a store that
            // keeps failing must not make this loop spin.
            let wait = if running.len() >= bound {
                Duration::from_secs(1)
            } else {
                match app.store.next_callback_at(now).await {
                    Ok(Some(at)) => {
                        Duration::from_millis((at - crate::store::now_millis()).max(0) as u64)
                    }
                    _ => Duration::from_secs(1),
                }
            }
            .clamp(Duration::from_millis(20), Duration::from_secs(1));
            tokio::select! {
                () = app.store.callbacks_due().notified(), if running.len() < bound => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => {
                    // Deliveries under way finish (each is bounded by its
                    // timeout); what is due and not started waits for the
                    // next start.
                    while running.join_next().await.is_some() {}
                    return;
                }
            }
        }
    });
}

/// Whether this host may make the attempt at a callback due at `now`.
/// Hosts sharing a store see the same due callbacks: the one whose lease
/// lands delivers. Alone on its store, a host's in-flight set suffices.
async fn take(app: &App, request_id: &str, now: i64) -> bool {
    if !app.store.shared() {
        return true;
    }
    let lease_until = crate::store::now_millis() + CLAIM_LEASE.as_millis() as i64;
    match app
        .store
        .claim_callback(request_id.to_owned(), now, lease_until)
        .await
    {
        Ok(taken) => taken,
        Err(error) => {
            tracing::error!(%error, request_id, "cannot take a due callback");
            false
        }
    }
}

pub(crate) async fn deliver(app: &App, request_id: String, url: &str, attempt: i64) {
    let body = match crate::views::stored_view(&app.store, &request_id).await {
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
            record(app, request_id, attempt, None, Some(why), None).await;
            app.metrics.callback_delivery("failed");
            return;
        }
        // Left due; the claim is held a while so that the next round does
        // not read it again at once.
        Err(error) => {
            tracing::error!(%request_id, %error, "cannot read a request to call back");
            tokio::time::sleep(STORE_BACKOFF).await;
            return;
        }
    };
    let (status, error) = match send(app, &request_id, url, body).await {
        Ok(status) if status.is_success() => (Some(status.as_u16()), None),
        Ok(status) if status.is_redirection() => (
            Some(status.as_u16()),
            Some(format!(
                "the receiver answered {status}; redirects are not followed"
            )),
        ),
        Ok(status) => (
            Some(status.as_u16()),
            Some(format!("the receiver answered {status}")),
        ),
        Err(why) => (None, Some(why)),
    };
    let retry_at = match &error {
        Some(_) if attempt < i64::from(app.callbacks.max_attempts) => {
            // The attempt-th wait of an exponential back-off from
            // `backoff_ms`, capped, with jitter so that callbacks failing
            // together do not retry together.
            let backoff = ExponentialBuilder::default()
                .with_min_delay(app.callbacks.backoff)
                .with_max_delay(MAX_BACKOFF)
                .with_jitter()
                .without_max_times()
                .build()
                .nth(usize::try_from(attempt - 1).unwrap_or(0))
                .unwrap_or(MAX_BACKOFF);
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
    record(app, request_id, attempt, status, error, retry_at).await;
}

/// POST `body` to `url`, signed, if the policy lets it go there; the
/// receiver's status, or why nothing was answered.
pub(crate) async fn send(
    app: &App,
    request_id: &str,
    url: &str,
    body: String,
) -> Result<http::StatusCode, String> {
    let route = app.callbacks.route(url).await?;
    let client = route.client()?;
    let timestamp = crate::store::now_millis() / 1000;
    let signature = route.sign(timestamp, body.as_bytes());
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("strata-request-id", request_id)
        .header("strata-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|error| format!("cannot deliver: {}", describe(error)))?;
    Ok(response.status())
}

/// Record an attempt, trying again with back-off while the store fails: the
/// attempt was made, and a callback left due would be POSTed again at once.
pub(crate) async fn record(
    app: &App,
    request_id: String,
    attempt: i64,
    status: Option<u16>,
    error: Option<String>,
    retry_at: Option<i64>,
) {
    let mut wait = STORE_BACKOFF;
    loop {
        match app
            .store
            .record_delivery(request_id.clone(), attempt, status, error.clone(), retry_at)
            .await
        {
            Ok(()) => return,
            Err(failure) => {
                tracing::error!(
                    %request_id,
                    error = %failure,
                    "cannot record a callback delivery; trying again in {}s",
                    wait.as_secs()
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_STORE_BACKOFF);
            }
        }
    }
}

/// A transport error with its causes ("error sending request: connection
/// refused"), without the URL, which the delivery record already names.
pub(crate) fn describe(error: reqwest::Error) -> String {
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
