//! Hostile clients: slow, truncated, malformed and oversized HTTP, and
//! generated request bodies. The host answers each with a 4xx or closes the
//! connection, and keeps serving everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;
use strata_tests::{SMALL_RUNTIME, TestHost, components, toml_str};

fn manifest() -> String {
    format!(
        "{SMALL_RUNTIME}
[server]
max_body_kib = 4
header_timeout_ms = 500
body_timeout_ms = 500

[pipelines.echo]
[[pipelines.echo.stages]]
name = \"echo\"
layer = \"rules\"
plugin = {}
grants = [\"config\", \"log\"]
config = {{ outcome = \"echo\" }}
",
        toml_str(components::SCRIPTED)
    )
}

/// Open a raw connection to the host.
fn connect(host: &TestHost) -> TcpStream {
    let addr = host.base().trim_start_matches("http://");
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Read until the server closes (or the read timeout), returning what came.
fn read_all(stream: &mut TcpStream) -> String {
    let mut buffer = Vec::new();
    let _ = stream.read_to_end(&mut buffer);
    String::from_utf8_lossy(&buffer).into_owned()
}

async fn still_serving(host: &TestHost) {
    let (status, body) = host.ask("echo", "still here").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_trickled_slowly_are_cut_off() {
    let host = TestHost::start(&manifest()).await;
    let mut stream = connect(&host);
    let started = Instant::now();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            for byte in b"POST /v1/pipelines/echo HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaa" {
                if stream.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let reply = tokio::task::spawn_blocking(move || read_all(&mut stream))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the slow client was held for {waited:?}"
    );
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "unexpected reply: {reply}"
    );
    let _ = writer.join();
    still_serving(&host).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_a_408() {
    let host = TestHost::start(&manifest()).await;
    let mut stream = connect(&host);
    stream
        .write_all(
            b"POST /v1/pipelines/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"input\":",
        )
        .unwrap();
    let reply = tokio::task::spawn_blocking(move || read_all(&mut stream))
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("\"code\":\"body_timeout\""), "{reply}");
    still_serving(&host).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_body_is_refused() {
    let host = TestHost::start(&manifest()).await;
    let mut stream = connect(&host);
    stream
        .write_all(
            b"POST /v1/pipelines/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"input\":",
        )
        .unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let reply = tokio::task::spawn_blocking(move || read_all(&mut stream))
        .await
        .unwrap();
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
        "unexpected reply: {reply}"
    );
    still_serving(&host).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_http_is_refused() {
    let host = TestHost::start(&manifest()).await;
    let attempts: Vec<(&str, Vec<u8>)> = vec![
        ("garbage request line", b"THIS IS NOT HTTP\r\n\r\n".to_vec()),
        ("bad header", b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n".to_vec()),
        ("binary", vec![0u8, 159, 146, 150, 13, 10, 13, 10]),
        (
            "huge headers",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(2 << 20)
            )
            .into_bytes(),
        ),
        (
            "conflicting lengths",
            b"POST /v1/pipelines/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello".to_vec(),
        ),
    ];
    for (what, bytes) in attempts {
        let mut stream = connect(&host);
        // The server may close before everything is written.
        let _ = stream.write_all(&bytes);
        let reply = tokio::task::spawn_blocking(move || read_all(&mut stream))
            .await
            .unwrap();
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 4"),
            "{what}: unexpected reply {reply}"
        );
        still_serving(&host).await;
    }
    host.shutdown().await;
}

/// Any body a client may send gets an answer or a 4xx, never a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_bodies_never_get_a_5xx() {
    let host = TestHost::start(&manifest()).await;
    let url = format!("{}/v1/pipelines/echo", host.base());
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,8}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    // Bodies shaped like requests (with odd inputs and attributes), any
    // JSON at all, and raw bytes.
    let body = prop_oneof![
        (
            ".{0,200}",
            prop::collection::btree_map("[ -~]{0,12}", value.clone(), 0..5)
        )
            .prop_map(|(input, attributes)| {
                json!({"input": input, "attributes": attributes}).to_string()
            }),
        value.prop_map(|v| v.to_string()),
        prop::collection::vec(any::<u8>(), 0..300)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let mut cases = Vec::new();
    for _ in 0..200 {
        cases.push(body.new_tree(&mut runner).unwrap().current());
    }
    let client = reqwest::Client::new();
    for body in cases {
        let response = client.post(&url).body(body.clone()).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert!(status < 500, "{status} for body {body:?}: {text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        if status >= 400 {
            assert!(json["error"]["message"].is_string(), "{text}");
        }
    }
    still_serving(&host).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_in_flight_limit_are_shed_with_a_typed_503() {
    let manifest = manifest().replace(
        "body_timeout_ms = 500",
        "body_timeout_ms = 3000\nmax_in_flight = 1",
    );
    let host = TestHost::start(&manifest).await;
    // One request holds the only slot: its body never finishes arriving.
    let mut holder = connect(&host);
    holder
        .write_all(
            b"POST /v1/pipelines/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"in",
        )
        .unwrap();
    // Give the host time to start handling it.
    let mut shed = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (status, body) = host.get("/healthz").await;
        if status == 503 {
            shed = Some(body);
            break;
        }
    }
    let body = shed.expect("a second request while the slot was held was not shed");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    // The held request ends (408), and the slot is free again.
    let reply = tokio::task::spawn_blocking(move || read_all(&mut holder))
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    still_serving(&host).await;
    host.shutdown().await;
}

#[tokio::test]
async fn a_trailing_slash_names_the_same_route() {
    let host = TestHost::start(&manifest()).await;
    let (status, body) = host.get("/healthz/").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = host
        .post("/v1/pipelines/echo/", json!({"input": "hi"}))
        .await;
    assert_eq!(status, 200, "{body}");
    host.shutdown().await;
}

/// A pipeline whose one stage spins until its `timeout_ms` stops it (and
/// is then skipped), served with `server` as the `[server]` table.
fn spinning(server: &str, timeout_ms: u32) -> String {
    format!(
        "{SMALL_RUNTIME}
[server]
{server}

[pipelines.spin]
[[pipelines.spin.stages]]
name = \"spin\"
layer = \"rules\"
plugin = {}
grants = [\"config\", \"log\"]
on_error = \"skip\"
limits = {{ timeout_ms = {timeout_ms} }}
config = {{ mode = \"loop\" }}
",
        toml_str(components::MISBEHAVE)
    )
}

/// The record of request `id`, waiting up to 5 s for it to be kept.
async fn record_of(host: &TestHost, id: &str) -> serde_json::Value {
    for _ in 0..100 {
        let (status, body) = host.get(&format!("/v1/requests/{id}")).await;
        if status == 200 {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("request {id} was never recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_the_request_timeout_answers_504_and_is_still_kept() {
    let host = TestHost::start(&spinning("request_timeout_ms = 200", 1500)).await;
    let started = Instant::now();
    let (status, body) = host
        .send(
            host.request(reqwest::Method::POST, "/v1/pipelines/spin")
                .header("X-Request-Id", "slow-1")
                .json(&json!({"input": "x"})),
        )
        .await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "still_running", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("/v1/requests/slow-1"), "{message}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the client waited for the whole run"
    );
    // The run went on after its client was answered, and was recorded: the
    // stage's timeout skipped it, so the request ended unanswered.
    let record = record_of(&host, "slow-1").await;
    assert_eq!(record["request_id"], "slow-1", "{record}");
    assert_eq!(record["stages"][0]["failure"], "timeout", "{record}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_client_hangs_up_goes_on_and_is_kept() {
    let host = TestHost::start(&spinning("", 600)).await;
    // The client gives up (and closes its connection) while the stage
    // still spins; the run is polled by the request's own task until then.
    let sent = host
        .request(reqwest::Method::POST, "/v1/pipelines/spin")
        .header("X-Request-Id", "gone-1")
        .json(&json!({"input": "x"}))
        .timeout(Duration::from_millis(150))
        .send()
        .await;
    assert!(
        sent.as_ref().is_err_and(reqwest::Error::is_timeout),
        "the client was answered before it gave up: {sent:?}"
    );
    let record = record_of(&host, "gone-1").await;
    assert_eq!(record["stages"][0]["failure"], "timeout", "{record}");
    host.shutdown().await;
}
