//! The pipeline semantics the host guarantees: chaining, confidence gating,
//! failure policies and fallthrough, as a client sees them over HTTP.

use serde_json::{Value, json};
use strata_tests::{SMALL_RUNTIME, TestHost, components, toml_str};

/// A pipeline `name` of scripted stages; each stage is `(name, config)`
/// where config is an inline TOML table body.
fn pipeline(name: &str, header: &str, stages: &[(&str, &str)]) -> String {
    let scripted = toml_str(components::SCRIPTED);
    let mut text = format!("\n[pipelines.{name}]\n{header}\n");
    for (stage, config) in stages {
        text.push_str(&format!(
            "[[pipelines.{name}.stages]]
name = \"{stage}\"
layer = \"{stage}-layer\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ {config} }}
"
        ));
    }
    text
}

fn failing_stage(name: &str, on_error: &str) -> String {
    let misbehave = toml_str(components::MISBEHAVE);
    let scripted = toml_str(components::SCRIPTED);
    format!(
        "
[pipelines.{name}]
[[pipelines.{name}.stages]]
name = \"broken\"
layer = \"rules\"
plugin = {misbehave}
grants = [\"config\"]
on_error = \"{on_error}\"
config = {{ mode = \"panic\" }}

[[pipelines.{name}.stages]]
name = \"answer\"
layer = \"cache\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"respond\", answer = \"from the next stage\" }}
"
    )
}

fn manifest() -> String {
    [
        SMALL_RUNTIME.to_owned(),
        pipeline(
            "chain",
            "",
            &[
                ("one", "append = \" +one\", set = { seen-by = \"one\", tier = \"gold\" }, log = \"stage one ran\""),
                ("two", "append = \" +two\", set = { seen-by = \"two\" }"),
                ("echo", "outcome = \"echo\""),
            ],
        ),
        pipeline(
            "gated",
            "min_confidence = 0.7",
            &[("guess", "outcome = \"respond\", answer = \"a guess\", confidence = 0.4")],
        ),
        pipeline(
            "sure",
            "min_confidence = 0.7",
            &[("exact", "outcome = \"respond\", answer = \"just enough\", confidence = 0.7")],
        ),
        pipeline(
            "refuse",
            "",
            &[("gate", "outcome = \"reject\", code = \"off-topic\", message = \"ask about banking\"")],
        ),
        pipeline(
            "handover",
            "",
            &[("human", "outcome = \"escalate\", reason = \"needs a person\", draft = \"maybe this\"")],
        ),
        pipeline("unanswered", "", &[("pass", "")]),
        pipeline("strict", "fallthrough = \"reject\"", &[("pass", "")]),
        failing_stage("skips", "skip"),
        failing_stage("escalates", "escalate"),
        failing_stage("fails", "fail"),
    ]
    .concat()
}

#[tokio::test]
async fn stages_run_in_order_and_see_what_the_previous_one_left() {
    let host = TestHost::start(&manifest()).await;
    let (status, body) = host
        .post(
            "/v1/pipelines/chain",
            json!({"input": "hi", "attributes": {"customer": "c-1", "tier": "basic", "vip": true}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(body["output"].as_str().unwrap()).unwrap();
    assert_eq!(seen["input"], "hi +one +two");
    assert_eq!(
        seen["attributes"],
        json!({"customer": "c-1", "seen-by": "two", "tier": "gold", "vip": "true"})
    );
    assert_eq!(body["stage"], "echo");
    assert_eq!(body["layer"], "echo-layer");
    assert_eq!(body["confidence"], 1.0);
    assert_eq!(body["generation"], 1);
    let stages = body["stages"].as_array().unwrap();
    let names: Vec<&str> = stages
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "two", "echo"]);
    let results: Vec<&str> = stages
        .iter()
        .map(|s| s["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["next", "next", "respond"]);
    for stage in stages {
        let digest = stage["digest"].as_str().unwrap();
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "{digest}"
        );
    }
    host.shutdown().await;
}

#[tokio::test]
async fn low_confidence_answers_are_escalated_with_the_answer_as_draft() {
    let host = TestHost::start(&manifest()).await;
    let (status, body) = host.ask("gated", "question").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "escalated");
    assert!(
        body.get("output").is_none(),
        "a gated answer is not returned: {body}"
    );
    let ticket = body["ticket"]["id"].as_i64().unwrap();
    let (_, ticket) = host.get(&format!("/v1/tickets/{ticket}")).await;
    assert_eq!(ticket["draft"], "a guess");
    assert_eq!(
        ticket["reason"],
        "answer confidence 0.40 is below the pipeline's minimum of 0.70"
    );
    assert_eq!(ticket["stage"], "guess");

    let (status, body) = host.ask("sure", "question").await;
    assert_eq!(
        status, 200,
        "confidence equal to the minimum is enough: {body}"
    );
    assert_eq!(body["output"], "just enough");
    host.shutdown().await;
}

#[tokio::test]
async fn rejections_and_escalations_reach_the_client_typed() {
    let host = TestHost::start(&manifest()).await;
    let (status, body) = host.ask("refuse", "what's the weather").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["status"], "rejected");
    assert_eq!(
        body["rejection"],
        json!({"code": "off-topic", "message": "ask about banking"})
    );
    assert_eq!(body["stage"], "gate");

    let (status, body) = host.ask("handover", "help").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["ticket"]["reason"], "needs a person");
    let (_, ticket) = host
        .get(&format!("/v1/tickets/{}", body["ticket"]["id"]))
        .await;
    assert_eq!(ticket["draft"], "maybe this");
    host.shutdown().await;
}

#[tokio::test]
async fn fallthrough_escalates_by_default_or_rejects_when_configured() {
    let host = TestHost::start(&manifest()).await;
    let (status, body) = host.ask("unanswered", "anything").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["ticket"]["reason"], "no stage answered this request");
    assert_eq!(body["stage"], Value::Null);

    let (status, body) = host.ask("strict", "anything").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["rejection"]["code"], "unanswered");
    host.shutdown().await;
}

#[tokio::test]
async fn on_error_policies() {
    let host = TestHost::start(&manifest()).await;

    let (status, body) = host.ask("skips", "x").await;
    assert_eq!(status, 200, "skip goes on to the next stage: {body}");
    assert_eq!(body["output"], "from the next stage");
    assert_eq!(body["stages"][0]["result"], "failed");
    assert_eq!(body["stages"][0]["failure"], "trap");

    let (status, body) = host.ask("escalates", "x").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["ticket"]["reason"], "stage \"broken\" trapped");
    assert_eq!(body["stages"].as_array().unwrap().len(), 1);

    let (status, body) = host.ask("fails", "x").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["message"], "stage \"broken\" trapped");
    host.shutdown().await;
}

#[tokio::test]
async fn a_request_can_be_looked_up_after_it_was_answered() {
    let host = TestHost::start(&manifest()).await;
    let (_, answered) = host.ask("sure", "question").await;
    let id = answered["request_id"].as_str().unwrap();
    // Answered requests are recorded without making the client wait, so
    // the record may take a moment to appear.
    let mut looked_up = Value::Null;
    for _ in 0..100 {
        let (status, body) = host.get(&format!("/v1/requests/{id}")).await;
        if status == 200 {
            looked_up = body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(looked_up["status"], "answered", "{looked_up}");
    assert_eq!(looked_up["output"], "just enough");
    assert_eq!(looked_up["stages"], answered["stages"]);
    host.shutdown().await;
}
