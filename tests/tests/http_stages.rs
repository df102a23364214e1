//! `wasi:http/incoming-handler` components as stages: each request reaches
//! the handler as `POST /` with a JSON body, and each kind of response maps
//! to an outcome (or a failure under `on_error`); outgoing HTTP needs the
//! `wasi:http` grant and reaches only the hosts the stage lists.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

use serde_json::{Value, json};
use strata_tests::{SMALL_RUNTIME, TestHost, components, toml_str};

/// Pipeline `p`: the HTTP stage `web` (`http-stage`, with `extra` lines),
/// then `after`, which answers with the request it saw.
fn manifest(extra: &str) -> String {
    format!(
        "{SMALL_RUNTIME}
[pipelines.p]
[[pipelines.p.stages]]
name = \"web\"
layer = \"rules\"
plugin = {}
on_error = \"fail\"
limits = {{ timeout_ms = 2000, output_kib = 64 }}
{extra}

[[pipelines.p.stages]]
name = \"after\"
layer = \"rules\"
plugin = {}
grants = [\"config\", \"log\"]
config = {{ outcome = \"echo\" }}
",
        toml_str(components::HTTP_STAGE),
        toml_str(components::SCRIPTED),
    )
}

#[tokio::test]
async fn an_http_handler_answers_passes_on_escalates_and_rejects_as_a_stage() {
    let host = TestHost::start(&manifest("kind = \"http\"")).await;

    let (status, body) = host.ask("p", "hello").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], "hello from web");
    assert_eq!(body["stage"], "web");
    assert_eq!(body["stages"][0]["result"], "respond");

    // 200 with `next`: the next stage sees the new input and attributes.
    let (status, body) = host.ask("p", "pass").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stage"], "after");
    let seen: Value = serde_json::from_str(body["output"].as_str().unwrap()).unwrap();
    assert_eq!(seen["input"], "passed: pass");
    assert_eq!(seen["attributes"]["seen_by"], "web");

    // 204: passed on unchanged.
    let (status, body) = host.ask("p", "nothing to say").await;
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(body["output"].as_str().unwrap()).unwrap();
    assert_eq!(seen["input"], "nothing to say");
    assert_eq!(body["stages"][0]["result"], "next");

    // 202: a ticket with the handler's reason and draft.
    let (status, body) = host.ask("p", "human").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["ticket"]["reason"], "asks for a person");
    let (_, ticket) = host
        .get(&format!("/v1/tickets/{}", body["ticket"]["id"]))
        .await;
    assert_eq!(ticket["draft"], "a draft");
    assert_eq!(ticket["stage"], "web");

    // 4xx: a typed rejection with the handler's code and message.
    let (status, body) = host.ask("p", "bad").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["rejection"],
        json!({"code": "bad_input", "message": "no thanks"})
    );
    host.shutdown().await;
}

#[tokio::test]
async fn the_handler_receives_a_json_post_naming_the_request() {
    let host = TestHost::start(&manifest("")).await;
    let (status, body) = host
        .post(
            "/v1/pipelines/p",
            json!({"input": "echo", "attributes": {"lang": "en"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let seen = body["output"].as_str().unwrap();
    let (start, json_body) = seen.split_at(seen.find('{').expect("a JSON body"));
    assert_eq!(start, "POST / ");
    let sent: Value = serde_json::from_str(json_body).unwrap();
    assert_eq!(sent["id"], body["request_id"], "{sent}");
    assert_eq!(sent["pipeline"], "p");
    assert_eq!(sent["input"], "echo");
    assert_eq!(sent["attributes"], json!({"lang": "en"}));
    host.shutdown().await;
}

#[tokio::test]
async fn responses_that_are_no_outcome_fail_the_stage_by_name() {
    let host = TestHost::start(&manifest("")).await;
    for (input, failure, message) in [
        ("boom", "http", "stage \"web\" answered HTTP 500"),
        ("panic", "trap", "stage \"web\" trapped"),
        (
            "garbage",
            "invalid_outcome",
            "stage \"web\" returned an invalid outcome",
        ),
        ("big", "output_too_large", "stage \"web\" returned"),
    ] {
        let (status, body) = host.ask("p", input).await;
        assert_eq!(status, 502, "{input}: {body}");
        assert_eq!(body["stages"][0]["failure"], failure, "{input}: {body}");
        let said = body["error"]["message"].as_str().unwrap();
        assert!(said.starts_with(message), "{input}: {said}");
    }
    // The host is unharmed: the next request is answered.
    let (status, body) = host.ask("p", "hello").await;
    assert_eq!(status, 200, "{body}");
    host.shutdown().await;
}

#[tokio::test]
async fn an_http_stage_can_reuse_its_instances() {
    let host = TestHost::start(&manifest("reuse = { max_uses = 100, max_idle = 2 }")).await;
    for _ in 0..5 {
        let (status, body) = host.ask("p", "hello").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["output"], "hello from web");
    }
    // A failure discards the instance; the next request gets a fresh one.
    let (status, _) = host.ask("p", "panic").await;
    assert_eq!(status, 502);
    let (status, body) = host.ask("p", "hello").await;
    assert_eq!(status, 200, "{body}");
    host.shutdown().await;
}

#[tokio::test]
async fn a_declared_kind_must_match_the_component() {
    let error = TestHost::try_start(&manifest("kind = \"pipeline\""))
        .await
        .err()
        .expect("an HTTP handler declared a pipeline stage is refused");
    let message = format!("{error:#}");
    assert!(
        message.contains("stage \"web\"")
            && message.contains("declares kind = \"pipeline\"")
            && message.contains("wasi:http/incoming-handler@0.2"),
        "{message}"
    );
}

/// A one-stage pipeline `d` running `http-dialer` with `extra` lines.
fn dialer(extra: &str) -> String {
    format!(
        "{SMALL_RUNTIME}
[pipelines.d]
[[pipelines.d.stages]]
name = \"dial\"
layer = \"rules\"
plugin = {}
on_error = \"fail\"
limits = {{ timeout_ms = 5000 }}
{extra}
",
        toml_str(components::HTTP_DIALER),
    )
}

/// A server on loopback answering every request `200 hello`, for as long
/// as the test runs.
fn hello_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buffer[..n]),
                }
            }
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
            );
        }
    });
    port
}

#[tokio::test]
async fn outgoing_http_needs_the_grant_and_reaches_only_listed_hosts() {
    // Without the grant the component does not load, and the refusal names
    // the import and the grant it needs.
    let error = TestHost::try_start(&dialer(""))
        .await
        .err()
        .expect("an outgoing-handler import without the grant is refused");
    let message = format!("{error:#}");
    assert!(
        message.contains("stage \"dial\"")
            && message.contains("wasi:http/outgoing-handler@0.2")
            && message.contains("(needs grant \"wasi:http\")"),
        "{message}"
    );

    // Hosts without the grant are a manifest error.
    let error = TestHost::try_start(&dialer("wasi = { http = [\"127.0.0.1:1\"] }"))
        .await
        .err()
        .unwrap();
    assert!(
        format!("{error:#}").contains("hosts need the \"wasi:http\" grant"),
        "{error:#}"
    );
    let error = TestHost::try_start(&dialer(
        "grants = [\"wasi:http\"]\nwasi = { http = [\"http://127.0.0.1/\"] }",
    ))
    .await
    .err()
    .unwrap();
    assert!(
        format!("{error:#}").contains("\"http://127.0.0.1/\" is not a host or host:port"),
        "{error:#}"
    );

    // Granted, with one host listed: that one answers, another is refused
    // before any connection.
    let listed = hello_server();
    let unlisted = hello_server();
    let host = TestHost::start(&dialer(&format!(
        "grants = [\"wasi:http\"]\nwasi = {{ http = [\"127.0.0.1:{listed}\"] }}"
    )))
    .await;
    let (status, body) = host
        .ask("d", &format!("http://127.0.0.1:{listed}/ping"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], "200 hello");
    let (status, body) = host
        .ask("d", &format!("http://127.0.0.1:{unlisted}/ping"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], "error: ErrorCode::HttpRequestDenied");
    host.shutdown().await;
}

#[tokio::test]
async fn audit_shows_an_http_stages_contract_imports_and_grants() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    std::fs::write(
        &path,
        dialer("grants = [\"wasi:http\"]\nwasi = { http = [\"api.example.com\"] }"),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_strata-under-test"))
        .args(["audit", path.to_str().unwrap(), "--json"])
        .env("STRATA_LOG", "warn")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    let stage = &report["stages"][0];
    assert_eq!(
        stage["contract"], "wasi:http/incoming-handler@0.2",
        "{report}"
    );
    assert_eq!(stage["grants"], json!(["wasi:http"]), "{report}");
    assert_eq!(
        stage["wasi"]["http"],
        json!(["api.example.com"]),
        "{report}"
    );
    let imports = stage["imports"].as_array().unwrap();
    let outgoing = imports
        .iter()
        .find(|i| {
            i["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("wasi:http/outgoing-handler@0.2"))
        })
        .unwrap_or_else(|| panic!("no outgoing-handler import in {report}"));
    assert_eq!(outgoing["allowed"], true, "{report}");
    assert!(
        imports.iter().any(|i| i["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("wasi:http/types@0.2"))),
        "{report}"
    );
}
