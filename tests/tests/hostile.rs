//! Hostile stages: each misbehaviour fails only its own request, with an
//! error naming the stage and the limit, and the host keeps serving.

use serde_json::Value;
use strata_tests::{SMALL_RUNTIME, TestHost, components, toml_str};

/// One pipeline per misbehaviour (`misbehave` stage with `on_error =
/// "fail"`), plus a healthy pipeline.
fn manifest() -> String {
    let misbehave = toml_str(components::MISBEHAVE);
    let scripted = toml_str(components::SCRIPTED);
    let pipeline = |name: &str, mode: &str, limits: &str| {
        format!(
            "
[pipelines.{name}]
[[pipelines.{name}.stages]]
name = \"{name}\"
layer = \"rules\"
plugin = {misbehave}
grants = [\"config\"]
on_error = \"fail\"
limits = {{ {limits} }}
config = {{ mode = \"{mode}\" }}

[[pipelines.{name}.stages]]
name = \"after\"
layer = \"rules\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"respond\", answer = \"reached\" }}
"
        )
    };
    [
        SMALL_RUNTIME.to_owned(),
        pipeline("spin", "loop", "timeout_ms = 100"),
        pipeline("fuel", "loop", "timeout_ms = 10000, fuel = 1000000"),
        pipeline("bomb", "memory", "memory_mib = 16"),
        pipeline("crash", "panic", ""),
        pipeline("flood", "huge-output", "output_kib = 64"),
        pipeline("liar", "bad-confidence", ""),
        pipeline("chatty", "chatty", ""),
        pipeline("healthy", "none", ""),
    ]
    .concat()
}

async fn expect_failure(host: &TestHost, pipeline: &str, message: &str) {
    let (status, body) = host.ask(pipeline, "hello").await;
    assert_eq!(status, 502, "{pipeline}: {body}");
    assert_eq!(body["status"], "failed", "{body}");
    assert_eq!(body["stage"], pipeline, "{body}");
    assert_eq!(body["error"]["code"], "stage_failed", "{body}");
    assert_eq!(body["error"]["message"], message, "{body}");
    // Guest and engine internals stay in the log.
    let text = body.to_string();
    for internal in ["wasm", "backtrace", "panicked", "unreachable"] {
        assert!(!text.contains(internal), "{internal} leaked: {text}");
    }
    // The next request is served normally.
    let (status, body) = host.ask("healthy", "hello").await;
    assert_eq!(status, 200, "after {pipeline}: {body}");
    assert_eq!(body["output"], "reached");
}

#[tokio::test]
async fn every_limit_fails_only_its_own_request() {
    let host = TestHost::start(&manifest()).await;
    expect_failure(&host, "spin", "stage \"spin\" timed out after 100 ms").await;
    expect_failure(
        &host,
        "fuel",
        "stage \"fuel\" ran out of fuel (budget 1000000)",
    )
    .await;
    expect_failure(
        &host,
        "bomb",
        "stage \"bomb\" exceeded its memory limit of 16 MiB",
    )
    .await;
    expect_failure(&host, "crash", "stage \"crash\" trapped").await;
    expect_failure(
        &host,
        "flood",
        "stage \"flood\" returned 1048576 bytes of output, over its limit of 65536 bytes",
    )
    .await;
    expect_failure(
        &host,
        "liar",
        "stage \"liar\" returned an invalid outcome: confidence 7 is outside 0..=1",
    )
    .await;
    host.shutdown().await;
}

#[tokio::test]
async fn a_chatty_stage_is_bounded_not_failed() {
    let host = TestHost::start(&manifest()).await;
    let (status, body) = host.ask("chatty", "hello").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], "reached");
    host.shutdown().await;
}

#[tokio::test]
async fn hostile_requests_in_parallel_do_not_disturb_healthy_ones() {
    let host = TestHost::start(&manifest()).await;
    let mut tasks = Vec::new();
    for round in 0..4 {
        for pipeline in ["spin", "bomb", "crash", "healthy"] {
            let client = reqwest::Client::new();
            let url = format!("{}/v1/pipelines/{pipeline}", host.base());
            tasks.push(tokio::spawn(async move {
                let response = client
                    .post(url)
                    .json(&serde_json::json!({"input": format!("round {round}")}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap();
                (pipeline, status, body)
            }));
        }
    }
    for task in tasks {
        let (pipeline, status, body) = task.await.unwrap();
        let expected = if pipeline == "healthy" { 200 } else { 502 };
        assert_eq!(status, expected, "{pipeline}: {body}");
    }
    host.shutdown().await;
}
