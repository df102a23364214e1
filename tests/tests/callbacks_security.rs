//! Callbacks cannot be turned against this machine (issue 11, point 1): a
//! delivery connects only to addresses the policy allows, checked after
//! resolving, never follows a redirect, and one slow receiver does not hold
//! up deliveries to the others.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use strata_tests::{SMALL_RUNTIME, TestHost, components, toml_str};

/// Pipeline `quick`, one rules stage that answers at once, and `callbacks`
/// as the `[callbacks]` section's body.
fn manifest(callbacks: &str) -> String {
    format!(
        "{SMALL_RUNTIME}
[callbacks]
{callbacks}

[pipelines.quick]
[[pipelines.quick.stages]]
name = \"answer\"
layer = \"rules\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"respond\", answer = \"done\", confidence = 1.0 }}
",
        scripted = toml_str(components::SCRIPTED),
    )
}

/// A callback receiver on a loopback port. It answers `status`, with a
/// `Location` header when one is set, once its gate lets it (at once unless
/// `gated`), and keeps the ids of the requests it was called back for.
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<String>>>,
    location: Arc<Mutex<Option<String>>>,
    gate: Arc<tokio::sync::Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(status: u16, gated: bool) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let location: Arc<Mutex<Option<String>>> = Arc::default();
        let gate = Arc::new(tokio::sync::Semaphore::new(if gated {
            0
        } else {
            tokio::sync::Semaphore::MAX_PERMITS
        }));
        let (shared, answer_at, gate_shared) = (received.clone(), location.clone(), gate.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (received, location, gate) =
                    (shared.clone(), answer_at.clone(), gate_shared.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: http::Request<_>| {
                        let (received, location, gate) =
                            (received.clone(), location.clone(), gate.clone());
                        async move {
                            let id = request
                                .headers()
                                .get("strata-request-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let _ = BodyExt::collect(request.into_body()).await;
                            received.lock().unwrap().push(id);
                            let _permit = gate.acquire().await;
                            let mut response = http::Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            if let Some(to) = location.lock().unwrap().clone() {
                                response
                                    .headers_mut()
                                    .insert("location", to.parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            received,
            location,
            gate,
            task,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }

    /// Wait until a delivery for `id` arrived.
    async fn wait_for(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.received().iter().any(|r| r == id) {
            assert!(
                Instant::now() < deadline,
                "no delivery for {id} arrived; got {:?}",
                self.received()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Ask `quick` with a callback to `url`; the request id.
async fn ask_with_callback(host: &TestHost, url: &str) -> String {
    let (status, body) = host
        .post(
            "/v1/pipelines/quick",
            json!({"input": "hi", "callback": url}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["request_id"].as_str().unwrap().to_owned()
}

/// Wait until the callback of request `id` is no longer pending; its view.
async fn settled(host: &TestHost, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, shown) = host.get(&format!("/v1/requests/{id}")).await;
        if matches!(
            shown["callback"]["state"].as_str(),
            Some("delivered" | "failed")
        ) {
            return shown["callback"].clone();
        }
        assert!(Instant::now() < deadline, "{shown}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_without_an_address_entry() {
    let receiver = Receiver::start(200, false).await;
    let port = receiver.port();
    // `localhost` is allowed by name, and resolves to this machine; no entry
    // names 127.0.0.1:port, so nothing may be sent there.
    let host = TestHost::start(&manifest(&format!(
        "allow = [\"localhost:{port}\"]\nmax_attempts = 2\nbackoff_ms = 10"
    )))
    .await;
    let id = ask_with_callback(&host, &format!("http://localhost:{port}/hook")).await;
    let callback = settled(&host, &id).await;
    assert_eq!(callback["state"], "failed", "{callback}");
    assert_eq!(callback["attempts"], 2, "{callback}");
    for attempt in callback["deliveries"].as_array().unwrap() {
        assert!(attempt["status"].is_null(), "{attempt}");
        let error = attempt["error"].as_str().unwrap();
        assert!(
            error.contains("not a public address") && error.contains(&format!("127.0.0.1:{port}")),
            "{error}"
        );
    }
    assert!(receiver.received().is_empty(), "{:?}", receiver.received());
    host.shutdown().await;
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_called_when_its_address_is_allowed() {
    let receiver = Receiver::start(200, false).await;
    let port = receiver.port();
    let host = TestHost::start(&manifest(&format!(
        "allow = [\"localhost:{port}\", \"127.0.0.1:{port}\"]\nbackoff_ms = 10"
    )))
    .await;
    let id = ask_with_callback(&host, &format!("http://localhost:{port}/hook")).await;
    let callback = settled(&host, &id).await;
    assert_eq!(callback["state"], "delivered", "{callback}");
    assert_eq!(receiver.received(), vec![id]);
    host.shutdown().await;
}

#[tokio::test]
async fn a_redirect_to_the_admin_api_is_not_followed() {
    let receiver = Receiver::start(307, false).await;
    let host = TestHost::start(&manifest(&format!(
        "allow = [\"127.0.0.1:{}\"]\nmax_attempts = 2\nbackoff_ms = 10",
        receiver.port()
    )))
    .await;
    *receiver.location.lock().unwrap() = Some(format!("{}/admin/rollback", host.admin_base()));
    let id = ask_with_callback(&host, &format!("http://{}/hook", receiver.addr)).await;

    let callback = settled(&host, &id).await;
    assert_eq!(callback["state"], "failed", "{callback}");
    let attempts = callback["deliveries"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{callback}");
    for attempt in attempts {
        assert_eq!(attempt["status"], 307, "{attempt}");
        assert_eq!(attempt["ok"], false, "{attempt}");
        assert!(
            attempt["error"]
                .as_str()
                .unwrap()
                .contains("redirects are not followed"),
            "{attempt}"
        );
    }
    // The admin API was never called: the audit log holds the start only,
    // and generation 1 still serves.
    let (_, audit) = host.admin_get("/admin/audit").await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["start"], "{audit}");
    let (_, state) = host.admin_get("/admin/pipelines").await;
    assert_eq!(state["generation"], 1);
    host.shutdown().await;
}

#[tokio::test]
async fn a_slow_receiver_does_not_hold_up_the_others() {
    let slow = Receiver::start(200, true).await;
    let fast = Receiver::start(200, false).await;
    let host = TestHost::start(&manifest(&format!(
        "allow = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\nbackoff_ms = 10",
        slow.port(),
        fast.port()
    )))
    .await;
    let stuck = ask_with_callback(&host, &format!("http://{}/hook", slow.addr)).await;
    slow.wait_for(&stuck).await;
    // The slow receiver holds its delivery open; another goes through
    // meanwhile, and the first has no attempt recorded yet.
    let other = ask_with_callback(&host, &format!("http://{}/hook", fast.addr)).await;
    fast.wait_for(&other).await;
    assert_eq!(settled(&host, &other).await["state"], "delivered");
    let (_, shown) = host.get(&format!("/v1/requests/{stuck}")).await;
    assert_eq!(
        shown["callback"]["deliveries"],
        json!([]),
        "the slow delivery should still be under way: {shown}"
    );
    // Once the slow receiver answers, its delivery completes too.
    slow.gate.add_permits(1);
    assert_eq!(settled(&host, &stuck).await["state"], "delivered");
    host.shutdown().await;
}
