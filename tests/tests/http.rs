//! The HTTP edge: every malformed or misdirected call gets a typed JSON 4xx
//! naming what is wrong, and the host keeps serving.

use reqwest::Method;
use serde_json::json;
use strata_tests::{SMALL_RUNTIME, TestHost, components, toml_str};

fn manifest() -> String {
    format!(
        "{SMALL_RUNTIME}
[server]
max_body_kib = 1

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

fn error_code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[tokio::test]
async fn health_and_pipeline_listing() {
    let host = TestHost::start(&manifest()).await;
    let (status, body) = host.get("/healthz").await;
    assert_eq!(
        (status, body),
        (200, json!({"status": "ok", "generation": 1}))
    );
    let (status, body) = host.get("/v1/pipelines").await;
    assert_eq!(status, 200);
    assert_eq!(body["pipelines"][0]["name"], "echo");
    assert_eq!(body["pipelines"][0]["stages"][0]["name"], "echo");
    host.shutdown().await;
}

#[tokio::test]
async fn malformed_bodies_are_refused_with_the_reason() {
    let host = TestHost::start(&manifest()).await;
    let cases: &[(&str, &str, &str)] = &[
        ("{not json", "invalid_json", "key must be a string"),
        ("", "invalid_request", "the request body is empty"),
        (
            "[1, 2]",
            "invalid_json",
            "must be a JSON object, not an array",
        ),
        ("{}", "invalid_json", "missing field `input`"),
        (
            "{\"input\": 7}",
            "invalid_json",
            "invalid type: integer `7`, expected a string",
        ),
        (
            "{\"input\": \"x\", \"atributes\": {}}",
            "invalid_json",
            "unknown field `atributes`, expected one of `input`, `attributes`, `async`, `callback`",
        ),
        (
            "{\"input\": \"x\", \"attributes\": [1]}",
            "invalid_json",
            "invalid type: sequence, expected a map",
        ),
    ];
    for (body, code, message) in cases {
        let (status, response) = host.post_raw("/v1/pipelines/echo", *body).await;
        assert_eq!(status, 400, "{body}: {response}");
        assert_eq!(error_code(&response), *code, "{body}: {response}");
        let text = response["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{body}: {text}");
    }
    // Still serving.
    let (status, _) = host.ask("echo", "still here").await;
    assert_eq!(status, 200);
    host.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_whether_announced_or_streamed() {
    let host = TestHost::start(&manifest()).await;
    let big = json!({"input": "x".repeat(2048)}).to_string();
    let (status, body) = host.post_raw("/v1/pipelines/echo", big.clone()).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(error_code(&body), "body_too_large");
    assert_eq!(
        body["error"]["message"],
        "the request body is larger than the limit of 1024 bytes"
    );

    // Without a Content-Length (chunked), the limit applies while reading.
    let chunks = futures_stream(big);
    let (status, body) = host
        .send(
            host.request(Method::POST, "/v1/pipelines/echo")
                .body(reqwest::Body::wrap_stream(chunks)),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    host.shutdown().await;
}

fn futures_stream(
    text: String,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = text
        .into_bytes()
        .chunks(100)
        .map(|c| Ok(c.to_vec()))
        .collect();
    tokio_stream::iter(chunks)
}

#[tokio::test]
async fn unknown_things_are_404s_that_say_what_exists() {
    let host = TestHost::start(&manifest()).await;
    let (status, body) = host.ask("nope", "x").await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "unknown_pipeline");
    assert_eq!(
        body["error"]["message"],
        "no pipeline named \"nope\"; this host serves: echo"
    );
    let (status, body) = host.get("/v2/everything").await;
    assert_eq!((status, error_code(&body)), (404, "no_route"));
    let (status, body) = host.get("/v1/requests/does-not-exist").await;
    assert_eq!((status, error_code(&body)), (404, "unknown_request"));
    let (status, body) = host.get("/v1/tickets/12345").await;
    assert_eq!((status, error_code(&body)), (404, "unknown_ticket"));
    let (status, body) = host.get("/v1/tickets/abc").await;
    assert_eq!((status, error_code(&body)), (404, "unknown_ticket"));
    let (status, body) = host
        .post("/v1/tickets/12345/claim", json!({"reviewer": "ana"}))
        .await;
    assert_eq!((status, error_code(&body)), (404, "not_found"), "{body}");
    host.shutdown().await;
}

#[tokio::test]
async fn wrong_methods_are_405s_with_allow() {
    let host = TestHost::start(&manifest()).await;
    for (method, path, allow) in [
        (Method::GET, "/v1/pipelines/echo", "POST"),
        (Method::PUT, "/v1/pipelines/echo", "POST"),
        (Method::DELETE, "/v1/tickets/1", "GET"),
        (Method::POST, "/healthz", "GET"),
        (Method::GET, "/v1/tickets/1/resolve", "POST"),
    ] {
        let response = host.request(method.clone(), path).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], allow);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "method_not_allowed");
    }
    host.shutdown().await;
}

#[tokio::test]
async fn bad_reviewer_calls_are_400s() {
    let host = TestHost::start(&manifest()).await;
    let (status, body) = host.get("/v1/tickets?state=lost").await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "invalid_request"),
        "{body}"
    );
    let (status, body) = host.get("/v1/tickets?limit=0").await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "invalid_request"),
        "{body}"
    );
    let (status, body) = host.get("/v1/tickets?sort=age").await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "invalid_request"),
        "{body}"
    );
    let (status, body) = host
        .post("/v1/tickets/1/claim", json!({"reviewer": " "}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "invalid_request"),
        "{body}"
    );
    let (status, body) = host
        .post(
            "/v1/tickets/1/resolve",
            json!({"reviewer": "ana", "answer": ""}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "invalid_request"),
        "{body}"
    );
    let (status, body) = host
        .post("/v1/tickets/1/claim", json!({"who": "ana"}))
        .await;
    assert_eq!((status, error_code(&body)), (400, "invalid_json"), "{body}");
    host.shutdown().await;
}
