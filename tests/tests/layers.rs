//! Layers 2 and 3 and the feedback loop: the answer bank absorbs repeats,
//! model tiers cost what their usage says, fall back on errors and timeouts,
//! and every correction or human answer improves the bank at once.

use std::process::Command;

use local_llm::{LocalLlm, Options};
use serde_json::{Value, json};
use strata_tests::{HostProcess, SMALL_RUNTIME, TestHost, components, toml_str};

/// rules (a canned answer for "hello") -> answer-bank -> generate, with
/// tiers `small` (model `small_model`, falling back to `large`) and `large`.
fn manifest(llm: &LocalLlm, small_model: &str, small_extra: &str) -> String {
    format!(
        "{SMALL_RUNTIME}
[models.providers.local]
base_url = \"{}\"

[models.tiers.small]
provider = \"local\"
model = \"{small_model}\"
timeout_ms = 2000
retries = 1
backoff_ms = 10
fallback = \"large\"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
{small_extra}

[models.tiers.large]
provider = \"local\"
model = \"large-model\"
retries = 0
input_usd_per_mtok = 10.0
output_usd_per_mtok = 30.0

[pipelines.p]
min_confidence = 0.5
answer_bank = {{ remember = [\"generation\"] }}

[[pipelines.p.stages]]
name = \"rules\"
layer = \"rules\"
plugin = {rules}
grants = [\"config\"]
[pipelines.p.stages.config]
intents = [{{ name = \"greeting\", keywords = [\"hello\"], answer = \"Hi!\" }}]

[[pipelines.p.stages]]
name = \"bank\"
layer = \"cache\"
plugin = {bank}
grants = [\"config\", \"cache\"]
on_error = \"skip\"

[[pipelines.p.stages]]
name = \"generate\"
layer = \"generation\"
plugin = {generate}
grants = [\"config\", \"model\"]
on_error = \"escalate\"
limits = {{ timeout_ms = 20000 }}
[pipelines.p.stages.config]
small_tier = \"small\"
large_tier = \"large\"
large_keywords = [\"dispute\"]
confidence = {{ small = 0.75, large = 0.85 }}
",
        llm.base_url(),
        rules = toml_str(components::RULES),
        bank = toml_str(components::ANSWER_BANK),
        generate = toml_str(components::GENERATE),
    )
}

async fn llm() -> LocalLlm {
    LocalLlm::start(Options::default()).await.unwrap()
}

#[tokio::test]
async fn the_answer_bank_absorbs_a_repeated_question() {
    let llm = llm().await;
    let host = TestHost::start(&manifest(&llm, "small-model", "")).await;

    let (status, first) = host.ask("p", "Where is my new card?").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["layer"], "generation");
    assert_eq!(first["model"]["tier"], "small");
    // The same question, spelled differently: the cache layer answers.
    let (status, second) = host.ask("p", "where is my NEW card").await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["layer"], "cache", "{second}");
    assert_eq!(second["stage"], "bank");
    assert_eq!(second["output"], first["output"]);
    assert_eq!(second["cost_usd"], 0.0);
    assert_eq!(
        second["stages"][1]["cache"],
        json!({"hits": 1, "misses": 0})
    );
    assert_eq!(llm.calls("small-model"), 1, "the model was called once");

    // What the rules layer answers never reaches the bank or the model.
    let (_, greeting) = host.ask("p", "hello there").await;
    assert_eq!(greeting["layer"], "rules");
    assert_eq!(llm.requests(), 1);
    host.shutdown().await;
}

#[tokio::test]
async fn cost_comes_from_reported_usage_and_tier_prices() {
    let llm = llm().await;
    let host = TestHost::start(&manifest(&llm, "small-model", "")).await;
    let (_, body) = host.ask("p", "How long does a transfer take?").await;
    let call = &body["stages"][2]["model"][0];
    let (input, output) = (
        call["input_tokens"].as_f64().unwrap(),
        call["output_tokens"].as_f64().unwrap(),
    );
    assert!(input > 0.0 && output > 0.0, "{call}");
    let expected = input * 1.0 / 1e6 + output * 2.0 / 1e6;
    assert!(
        (call["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12,
        "{call}"
    );
    assert!(
        (body["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12,
        "{body}"
    );
    assert_eq!(body["model"]["input_tokens"], input as u64);

    // A complex question goes to the large tier, at its prices.
    let (_, body) = host.ask("p", "I want to dispute a payment").await;
    assert_eq!(body["model"]["tier"], "large");
    let call = &body["stages"][2]["model"][0];
    let expected = call["input_tokens"].as_f64().unwrap() * 10.0 / 1e6
        + call["output_tokens"].as_f64().unwrap() * 30.0 / 1e6;
    assert!((body["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-12);
    host.shutdown().await;
}

#[tokio::test]
async fn a_failing_tier_falls_back() {
    let llm = llm().await;
    let host = TestHost::start(&manifest(&llm, "fail-small", "")).await;
    let (status, body) = host.ask("p", "Can I freeze my account?").await;
    assert_eq!(status, 200, "{body}");
    let calls = body["stages"][2]["model"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{body}");
    assert_eq!(calls[0]["tier"], "small");
    assert_eq!(calls[0]["ok"], false);
    assert_eq!(calls[0]["attempts"], 2, "one retry, then the fallback");
    assert_eq!(calls[0]["cost_usd"], 0.0);
    assert_eq!(calls[1]["tier"], "large");
    assert_eq!(calls[1]["ok"], true);
    assert_eq!(body["model"]["tier"], "large");
    assert_eq!(body["confidence"], 0.85, "the answering tier's confidence");
    assert_eq!(llm.calls("fail-small"), 2);
    host.shutdown().await;
}

#[tokio::test]
async fn a_slow_tier_times_out_and_falls_back() {
    let llm = llm().await;
    let host = TestHost::start(&manifest(&llm, "slow-3000-small", "")).await;
    let (status, body) = host.ask("p", "Is there a fee for this?").await;
    assert_eq!(status, 200, "{body}");
    let calls = body["stages"][2]["model"].as_array().unwrap();
    assert_eq!(calls[0]["ok"], false);
    assert!(
        calls[0]["error"]
            .as_str()
            .unwrap()
            .contains("no answer within 2000 ms"),
        "{body}"
    );
    assert_eq!(calls[1]["tier"], "large");
    host.shutdown().await;
}

#[tokio::test]
async fn rate_limits_are_retried() {
    let llm = llm().await;
    let host = TestHost::start(&manifest(&llm, "limited-1-small", "")).await;
    let (status, body) = host.ask("p", "What is my balance?").await;
    assert_eq!(status, 200, "{body}");
    let call = &body["stages"][2]["model"][0];
    assert_eq!(
        (call["tier"].as_str(), call["ok"].as_bool()),
        (Some("small"), Some(true))
    );
    assert_eq!(call["attempts"], 2, "a 429, then an answer");
    host.shutdown().await;
}

#[tokio::test]
async fn when_no_tier_answers_the_client_gets_a_ticket() {
    let llm = llm().await;
    // The small tier refuses everything (400: no retry, no fallback).
    let host = TestHost::start(&manifest(&llm, "bad-request-small", "")).await;
    let (status, body) = host.ask("p", "Open a savings account").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "escalated");
    assert_eq!(body["ticket"]["reason"], "stage \"generate\" trapped");
    assert_eq!(llm.calls("bad-request-small"), 1);
    assert_eq!(llm.calls("large-model"), 0);
    host.shutdown().await;
}

#[tokio::test]
async fn an_accepted_correction_replaces_the_banked_answer_at_once() {
    let llm = llm().await;
    let host = TestHost::start(&manifest(&llm, "small-model", "")).await;
    let (_, first) = host.ask("p", "Can I have two cards?").await;
    assert_eq!(first["layer"], "generation");
    let id = first["request_id"].as_str().unwrap();

    // Without a reviewer token the correction is a proposal; a reviewer
    // (here, on this machine) accepts it.
    let (status, body) = host
        .post(
            "/v1/feedback",
            json!({"request_id": id, "rating": "bad", "correction": "Yes: one physical and one virtual card."}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let ticket = body["ticket"]["id"].as_i64().unwrap();
    let (status, body) = host
        .post(
            &format!("/v1/tickets/{ticket}/resolve"),
            json!({"answer": "Yes: one physical and one virtual card."}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (_, again) = host.ask("p", "can I have two cards").await;
    assert_eq!(again["layer"], "cache", "{again}");
    assert_eq!(again["output"], "Yes: one physical and one virtual card.");
    assert_eq!(again["confidence"], 1.0, "an approved answer");
    assert_eq!(llm.requests(), 1);

    // A bad rating without a correction drops an unapproved answer.
    let (_, other) = host.ask("p", "Do you have branches?").await;
    let id = other["request_id"].as_str().unwrap();
    let (_, body) = host
        .post("/v1/feedback", json!({"request_id": id, "rating": "bad"}))
        .await;
    assert!(
        body["answer_bank"].as_str().unwrap().starts_with("dropped"),
        "{body}"
    );
    let (_, again) = host.ask("p", "Do you have branches?").await;
    assert_eq!(again["layer"], "generation");
    assert_eq!(llm.requests(), 3);

    // Bad feedback is refused with a reason.
    let (status, body) = host
        .post(
            "/v1/feedback",
            json!({"request_id": "nope", "rating": "good"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_request"))
    );
    let (status, _) = host
        .post("/v1/feedback", json!({"request_id": id, "rating": "meh"}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = host
        .post(
            "/v1/feedback",
            json!({"request_id": id, "rating": "good", "correction": "x"}),
        )
        .await;
    assert_eq!(status, 400);
    host.shutdown().await;
}

#[tokio::test]
async fn a_reviewers_answer_is_banked_exported_and_survives_a_restart() {
    let llm = llm().await;
    // No tier can answer: everything new becomes a ticket.
    let mut host = TestHost::start(&manifest(&llm, "bad-request-small", "")).await;
    let (status, escalated) = host.ask("p", "Why was my card declined?").await;
    assert_eq!(status, 202);
    let ticket = escalated["ticket"]["id"].as_i64().unwrap();
    let answer = "A decline usually means the card is frozen or over its limit; check the app.";
    let (status, _) = host
        .post(
            &format!("/v1/tickets/{ticket}/resolve"),
            json!({"reviewer": "sam", "answer": answer}),
        )
        .await;
    assert_eq!(status, 200);

    let (status, again) = host.ask("p", "why was my card declined").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["layer"].as_str(), again["output"].as_str()),
        (Some("cache"), Some(answer))
    );

    // A rating of that answer, then the export: resolution and rating.
    let (status, _) = host
        .post(
            "/v1/feedback",
            json!({"request_id": again["request_id"], "rating": "good"}),
        )
        .await;
    assert_eq!(status, 200);
    let response = reqwest::get(format!("{}/v1/feedback/export", host.base()))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["kind"], "resolution");
    assert_eq!(lines[0]["correction"], answer);
    assert_eq!(lines[0]["input"], "Why was my card declined?");
    assert_eq!(lines[0]["actor"], "sam");
    assert_eq!(lines[1]["kind"], "rating");
    assert_eq!(lines[1]["rating"], "good");

    host.restart().await;
    let (status, after) = host.ask("p", "Why was my card declined?").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(
        after["layer"], "cache",
        "the approved answer survived the restart"
    );
    assert_eq!(after["output"], answer);
    let response = reqwest::get(format!("{}/v1/feedback/export", host.base()))
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap().lines().count(), 2);
    host.shutdown().await;
}

/// The provider's key is read from the environment by the host and sent to
/// the provider; it is not part of anything a stage sees.
#[tokio::test]
async fn the_api_key_goes_from_the_environment_to_the_provider() {
    let llm = LocalLlm::start(Options {
        api_key: Some("sk-test-secret".to_owned()),
        ..Options::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("strata.toml");
    std::fs::write(
        &manifest_path,
        manifest(&llm, "small-model", "").replace(
            &format!("base_url = \"{}\"", llm.base_url()),
            &format!(
                "base_url = \"{}\"\napi_key_env = \"STRATA_TEST_PROVIDER_KEY\"",
                llm.base_url()
            ),
        ),
    )
    .unwrap();
    let host = HostProcess::serve(
        env!("CARGO_BIN_EXE_strata-under-test"),
        &manifest_path,
        |command| {
            command.env("STRATA_TEST_PROVIDER_KEY", "sk-test-secret");
        },
    );
    let body: Value = reqwest::Client::new()
        .post(format!("{}/v1/pipelines/p", host.base()))
        .json(&json!({"input": "What is the exchange rate?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["layer"], "generation", "{body}");
    assert_eq!(
        llm.authorizations(),
        vec![Some("Bearer sk-test-secret".to_owned())]
    );
    assert!(!body.to_string().contains("sk-test-secret"));
    host.kill();

    // Without the variable, the manifest is refused with the reason.
    let output = Command::new(env!("CARGO_BIN_EXE_strata-under-test"))
        .args(["check"])
        .arg(&manifest_path)
        .env_remove("STRATA_TEST_PROVIDER_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("environment variable STRATA_TEST_PROVIDER_KEY, which is not set"),
        "{stderr}"
    );
}
