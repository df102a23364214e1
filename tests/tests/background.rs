//! Asynchronous requests, batching, callbacks and back-pressure: an accepted
//! request is never lost (a crash included) and completes once; its model
//! calls share provider calls with others; its result reaches a callback,
//! signed, retried until delivered; a full queue says 429 and when to retry.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use local_llm::{LocalLlm, Options};
use serde_json::{Value, json};
use strata_tests::{CALLBACK_SECRET, HostProcess, SMALL_RUNTIME, TestHost, components, toml_str};

/// One stage, `generate`, on tier `small` (model `model`, with `tier_extra`
/// lines), with `extra` top-level sections; and pipeline `quick`, a rules
/// stage that answers at once.
fn manifest(llm: &LocalLlm, model: &str, tier_extra: &str, extra: &str) -> String {
    format!(
        "{SMALL_RUNTIME}
{extra}

[models.providers.local]
base_url = \"{base}\"

[models.tiers.small]
provider = \"local\"
model = \"{model}\"
timeout_ms = 5000
retries = 0
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
{tier_extra}

[pipelines.p]
min_confidence = 0.5

[[pipelines.p.stages]]
name = \"generate\"
layer = \"generation\"
plugin = {generate}
grants = [\"config\", \"model\"]
limits = {{ timeout_ms = 20000 }}
[pipelines.p.stages.config]
small_tier = \"small\"
large_tier = \"small\"

[pipelines.quick]
[[pipelines.quick.stages]]
name = \"answer\"
layer = \"rules\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"respond\", answer = \"done\", confidence = 1.0 }}
",
        base = llm.base_url(),
        generate = toml_str(components::GENERATE),
        scripted = toml_str(components::SCRIPTED),
    )
}

async fn llm() -> LocalLlm {
    LocalLlm::start(Options::default()).await.unwrap()
}

/// Submit `input` to pipeline `p` asynchronously; the 202 body.
async fn submit(host: &TestHost, input: &str) -> Value {
    let (status, body) = host
        .post("/v1/pipelines/p", json!({"input": input, "async": true}))
        .await;
    assert_eq!(status, 202, "{body}");
    body
}

/// Poll a request until it is no longer accepted or running.
async fn finished(base: &str, id: &str) -> Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = client
            .get(format!("{base}/v1/requests/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "request {id} is unknown");
        let body: Value = response.json().await.unwrap();
        if !matches!(body["status"].as_str(), Some("accepted" | "running")) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "request {id} never finished: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn an_async_request_is_accepted_at_once_and_answered_in_the_background() {
    let llm = llm().await;
    let host = TestHost::start(&manifest(&llm, "slow-1000-model", "", "")).await;
    let accepted = submit(&host, "Where is my card?").await;
    assert_eq!(accepted["status"], "accepted");
    let id = accepted["request_id"].as_str().unwrap();
    assert_eq!(accepted["links"]["self"], format!("/v1/requests/{id}"));

    // The model takes a second: the request is not answered yet.
    let (status, pending) = host.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(status, 200);
    assert!(
        matches!(pending["status"].as_str(), Some("accepted" | "running")),
        "{pending}"
    );
    assert_eq!(pending["pipeline"], "p");

    let done = finished(host.base(), id).await;
    assert_eq!(done["status"], "answered", "{done}");
    assert_eq!(done["layer"], "generation");
    assert_eq!(done["async"]["runs"], 1);
    assert!(
        done["output"]
            .as_str()
            .unwrap()
            .contains("Where is my card?")
    );
    assert!(done["cost_usd"].as_f64().unwrap() > 0.0);

    // `Prefer: respond-async` asks the same without touching the body.
    let (status, body) = host
        .send(
            host.request(reqwest::Method::POST, "/v1/pipelines/p")
                .header("prefer", "wait=10, respond-async")
                .json(&json!({"input": "And my PIN?"})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "accepted");
    finished(host.base(), body["request_id"].as_str().unwrap()).await;
    host.shutdown().await;
}

#[tokio::test]
async fn an_accepted_request_survives_a_crash_and_completes_once() {
    let llm = llm().await;
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("strata.toml");
    std::fs::write(
        &manifest_path,
        manifest(&llm, "slow-1500-model", "", "[async]\nworkers = 1\n"),
    )
    .unwrap();
    let data = dir.path().join("data");
    let serve = || {
        HostProcess::serve(
            env!("CARGO_BIN_EXE_strata-under-test"),
            &manifest_path,
            |command| {
                command.arg("--data").arg(&data);
            },
        )
    };

    let host = serve();
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let response = client
            .post(format!("{}/v1/pipelines/p", host.base()))
            .json(&json!({"input": format!("question {i}"), "async": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        let body: Value = response.json().await.unwrap();
        ids.push(body["request_id"].as_str().unwrap().to_owned());
    }
    // Kill the host while the first request waits for the model.
    let deadline = Instant::now() + Duration::from_secs(30);
    while llm.requests() == 0 {
        assert!(Instant::now() < deadline, "the first request never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    host.kill();

    let host = serve();
    for (i, id) in ids.iter().enumerate() {
        let done = finished(host.base(), id).await;
        assert_eq!(done["status"], "answered", "{done}");
        assert!(
            done["output"]
                .as_str()
                .unwrap()
                .contains(&format!("question {i}"))
        );
        // The one that was running when the host died ran again; the others
        // ran once. Each has one answer.
        let runs = if i == 0 { 2 } else { 1 };
        assert_eq!(done["async"]["runs"], runs, "{done}");
    }
    // The model was asked four times: once for each, and again for the
    // interrupted one.
    assert_eq!(llm.requests(), 4);

    // Completed requests do not run a third time.
    host.kill();
    let host = serve();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(llm.requests(), 4);
    host.kill();
}

#[tokio::test]
async fn a_graceful_stop_finishes_the_running_request_and_keeps_the_queue() {
    let llm = llm().await;
    let mut host = TestHost::start(&manifest(
        &llm,
        "slow-400-model",
        "",
        "[async]\nworkers = 1\n",
    ))
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(submit(&host, &format!("question {i}")).await["request_id"].clone());
    }
    while llm.requests() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    host.restart().await;
    for id in &ids {
        let done = finished(host.base(), id.as_str().unwrap()).await;
        assert_eq!(done["status"], "answered", "{done}");
        // The running one finished before the stop; nothing ran twice.
        assert_eq!(done["async"]["runs"], 1, "{done}");
    }
    assert_eq!(llm.requests(), 3);
    host.shutdown().await;
}

#[tokio::test]
async fn async_model_calls_are_batched_and_each_request_pays_its_share() {
    let llm = llm().await;
    let host = TestHost::start(&manifest(
        &llm,
        "small-model",
        "batch = { max_size = 8, max_wait_ms = 300 }",
        "[async]\nworkers = 8\n",
    ))
    .await;
    let questions: Vec<String> = (0..8)
        .map(|i| format!("question number {i} {}", "about cards ".repeat(i)))
        .collect();
    // Submitted together, as a burst of offline work would be.
    let submissions: Vec<_> = questions
        .iter()
        .map(|question| {
            let request = host
                .request(reqwest::Method::POST, "/v1/pipelines/p")
                .json(&json!({"input": question, "async": true}));
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                assert_eq!(response.status().as_u16(), 202);
                response.json::<Value>().await.unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for submission in submissions {
        let accepted = submission.await.unwrap();
        answers.push(finished(host.base(), accepted["request_id"].as_str().unwrap()).await);
    }
    // Eight prompts reached the provider in fewer calls than eight.
    assert_eq!(llm.batched_prompts(), 8);
    assert!(
        llm.batches() < 8,
        "{} provider calls for 8 prompts",
        llm.batches()
    );
    assert_eq!(llm.requests(), llm.batches(), "no call went unbatched");

    let mut costs = Vec::new();
    for (answer, question) in answers.iter().zip(&questions) {
        assert_eq!(answer["status"], "answered", "{answer}");
        assert!(answer["output"].as_str().unwrap().contains(question.trim()));
        let call = &answer["stages"][0]["model"][0];
        assert_eq!(call["batched"], true, "{call}");
        let (input, output) = (
            call["input_tokens"].as_u64().unwrap(),
            call["output_tokens"].as_u64().unwrap(),
        );
        assert!(input > 0 && output > 0, "{call}");
        let cost = call["cost_usd"].as_f64().unwrap();
        let expected = input as f64 * 1.0 / 1e6 + output as f64 * 2.0 / 1e6;
        assert!((cost - expected).abs() < 1e-12, "{cost} != {expected}");
        assert_eq!(answer["cost_usd"].as_f64().unwrap(), cost);
        costs.push(input);
    }
    // Longer questions pay for more input tokens than shorter ones.
    assert!(costs[7] > costs[0], "{costs:?}");

    // A real-time request is never held back for a batch.
    let (status, body) = host.ask("p", "right now please").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stages"][0]["model"][0]["batched"], false);
    assert_eq!(llm.requests(), llm.batches() + 1);
    host.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let llm = llm().await;
    let host = TestHost::start(&manifest(
        &llm,
        "slow-500-model",
        "",
        "[async]\nqueue = 2\nworkers = 1\n",
    ))
    .await;
    let first = submit(&host, "one").await;
    let second = submit(&host, "two").await;
    let response = host
        .request(reqwest::Method::POST, "/v1/pipelines/p")
        .json(&json!({"input": "three", "async": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_full", "{body}");

    // Real-time requests are not queued behind asynchronous ones.
    let (status, quick) = host.ask("quick", "now").await;
    assert_eq!(status, 200, "{quick}");

    for body in [&first, &second] {
        finished(host.base(), body["request_id"].as_str().unwrap()).await;
    }
    // With room again, the next one is accepted.
    submit(&host, "three").await;
    let metrics = host.metrics().await;
    assert!(
        metrics.contains("strata_async_refused_total{pipeline=\"p\"} 1"),
        "{metrics}"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn a_request_id_is_accepted_once() {
    let llm = llm().await;
    let host = TestHost::start(&manifest(&llm, "model", "", "")).await;
    let send = || {
        host.send(
            host.request(reqwest::Method::POST, "/v1/pipelines/p")
                .header("x-request-id", "order-17")
                .json(&json!({"input": "hello", "async": true})),
        )
    };
    let (status, _) = send().await;
    assert_eq!(status, 202);
    let (status, body) = send().await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "duplicate_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GET /v1/requests/order-17")
    );
    let done = finished(host.base(), "order-17").await;
    assert_eq!(done["status"], "answered");
    // Nor may it reuse the id of a request that already ran.
    let (status, _) = send().await;
    assert_eq!(status, 409);
    host.shutdown().await;
}

/// A receiver of callbacks on a loopback port: it answers with the next
/// status of its script (200 when the script is spent) and keeps what it
/// received.
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let shared = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let received = shared.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: http::Request<_>| {
                        let received = received.clone();
                        let script = script.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body: Bytes = BodyExt::collect(body)
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            received.lock().unwrap().push((parts.headers, body));
                            let status = script.lock().unwrap().pop_front().unwrap_or(200);
                            let mut response = http::Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
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
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/strata", self.addr)
    }

    /// Wait until `n` deliveries arrived; all of them.
    async fn wait_for(&self, n: usize) -> Vec<(http::HeaderMap, Bytes)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let received = self.received.lock().unwrap().clone();
            if received.len() >= n {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} deliveries arrived",
                received.len()
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

/// Check a delivery's signature as a receiver would; its body as JSON.
fn verified(headers: &http::HeaderMap, body: &[u8]) -> Value {
    let header = headers["strata-signature"].to_str().unwrap();
    let (t, v1) = header
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("malformed signature header {header}"));
    let t: i64 = t.parse().unwrap();
    let now = strata::store::now_millis() / 1000;
    assert!((now - t).abs() < 300, "timestamp {t} is not recent");
    assert_eq!(
        v1,
        strata::callbacks::signature(CALLBACK_SECRET.as_bytes(), t, body),
        "the signature does not match the body"
    );
    // Any change to the body breaks it.
    let mut tampered = body.to_vec();
    tampered.push(b' ');
    assert_ne!(
        v1,
        strata::callbacks::signature(CALLBACK_SECRET.as_bytes(), t, &tampered)
    );
    serde_json::from_slice(body).unwrap()
}

#[tokio::test]
async fn a_callback_is_signed_retried_and_recorded() {
    let llm = llm().await;
    let receiver = Receiver::start(&[500]).await;
    let callbacks = format!(
        "[callbacks]\nallow = [\"127.0.0.1:{}\"]\nbackoff_ms = 50\n",
        receiver.addr.port()
    );
    let host = TestHost::start(&manifest(&llm, "model", "", &callbacks)).await;
    let (status, answered) = host
        .post(
            "/v1/pipelines/quick",
            json!({"input": "hi", "callback": receiver.url()}),
        )
        .await;
    assert_eq!(status, 200, "{answered}");
    let id = answered["request_id"].as_str().unwrap().to_owned();

    // The first delivery meets a 500; the second is taken.
    let deliveries = receiver.wait_for(2).await;
    for (headers, body) in &deliveries {
        assert_eq!(headers["strata-request-id"], id.as_str());
        assert_eq!(headers["content-type"], "application/json");
        let result = verified(headers, body);
        assert_eq!(result["request_id"], id.as_str());
        assert_eq!(result["status"], "answered");
        assert_eq!(result["output"], "done");
        assert!(result.get("callback").is_none(), "{result}");
    }

    // The request shows its callback's history.
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let (_, shown) = host.get(&format!("/v1/requests/{id}")).await;
        if shown["callback"]["state"] == "delivered" {
            break shown;
        }
        assert!(Instant::now() < deadline, "{shown}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let callback = &shown["callback"];
    assert_eq!(callback["url"], receiver.url());
    assert_eq!(callback["attempts"], 2);
    let attempts = callback["deliveries"].as_array().unwrap();
    assert_eq!(attempts[0]["status"], 500);
    assert_eq!(attempts[0]["ok"], false);
    assert!(attempts[0]["error"].as_str().unwrap().contains("500"));
    assert_eq!(attempts[1]["status"], 200);
    assert_eq!(attempts[1]["ok"], true);
    // Delivered once: no third attempt.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.received.lock().unwrap().len(), 2);
    host.shutdown().await;
}

#[tokio::test]
async fn a_callback_gives_up_after_max_attempts() {
    let llm = llm().await;
    let receiver = Receiver::start(&[503, 503, 503, 503]).await;
    let callbacks = format!(
        "[callbacks]\nallow = [\"127.0.0.1:{}\"]\nbackoff_ms = 10\nmax_attempts = 3\n",
        receiver.addr.port()
    );
    let host = TestHost::start(&manifest(&llm, "model", "", &callbacks)).await;
    let (_, body) = host
        .post(
            "/v1/pipelines/quick",
            json!({"input": "hi", "callback": receiver.url()}),
        )
        .await;
    let id = body["request_id"].as_str().unwrap();
    receiver.wait_for(3).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, shown) = host.get(&format!("/v1/requests/{id}")).await;
        if shown["callback"]["state"] == "failed" {
            assert_eq!(shown["callback"]["attempts"], 3);
            break;
        }
        assert!(Instant::now() < deadline, "{shown}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.received.lock().unwrap().len(), 3);
    host.shutdown().await;
}

#[tokio::test]
async fn an_escalated_request_calls_back_once_a_reviewer_answers() {
    let llm = llm().await;
    let receiver = Receiver::start(&[]).await;
    let callbacks = format!(
        "[callbacks]\nallow = [\"127.0.0.1:{}\"]\n",
        receiver.addr.port()
    );
    let manifest = manifest(&llm, "model", "", &callbacks).replace(
        "config = { outcome = \"respond\", answer = \"done\", confidence = 1.0 }",
        "config = { outcome = \"escalate\", reason = \"a person must answer\" }",
    );
    let host = TestHost::start(&manifest).await;
    let (status, accepted) = host
        .post(
            "/v1/pipelines/quick",
            json!({"input": "hi", "async": true, "callback": receiver.url()}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["request_id"].as_str().unwrap();
    let escalated = finished(host.base(), id).await;
    assert_eq!(escalated["status"], "escalated", "{escalated}");
    assert_eq!(escalated["callback"]["state"], "waiting");
    // Nothing is sent while the request waits for a person.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.received.lock().unwrap().is_empty());

    let ticket = escalated["ticket"]["id"].as_i64().unwrap();
    let (status, _) = host
        .post(
            &format!("/v1/tickets/{ticket}/resolve"),
            json!({"reviewer": "ana", "answer": "Here is the answer."}),
        )
        .await;
    assert_eq!(status, 200);
    let deliveries = receiver.wait_for(1).await;
    let result = verified(&deliveries[0].0, &deliveries[0].1);
    assert_eq!(result["status"], "answered");
    assert_eq!(result["layer"], "human");
    assert_eq!(result["output"], "Here is the answer.");
    assert_eq!(result["reviewer"], "ana");
    host.shutdown().await;
}

#[tokio::test]
async fn a_callback_to_a_host_not_allowed_is_refused_before_anything_runs() {
    let llm = llm().await;
    let host = TestHost::start(&manifest(
        &llm,
        "model",
        "",
        "[callbacks]\nallow = [\"hooks.example.com\"]\n",
    ))
    .await;
    for (url, says) in [
        (
            "http://127.0.0.1:9/hook",
            "callbacks to 127.0.0.1:9 are not allowed",
        ),
        (
            "https://evil.example.com/x",
            "callbacks to evil.example.com:443 are not allowed",
        ),
        ("file:///etc/passwd", "is not an http:// or https:// URL"),
        ("not a url", "is not a URL"),
    ] {
        let (status, body) = host
            .send(
                host.request(reqwest::Method::POST, "/v1/pipelines/quick")
                    .header("x-request-id", "refused-1")
                    .json(&json!({"input": "hi", "callback": url})),
            )
            .await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["code"], "callback_refused");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{url}: {message}");
    }
    // Nothing ran, nothing was kept.
    let (status, _) = host.get("/v1/requests/refused-1").await;
    assert_eq!(status, 404);
    host.shutdown().await;
}
