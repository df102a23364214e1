//! The support-desk demo (`examples/support-desk/strata.toml`) end to end:
//! the manifest a new user runs is the manifest tested here, with its model
//! provider pointed at a local stand-in (or at nothing).

use local_llm::{LocalLlm, Options};
use serde_json::json;
use strata_tests::{TestHost, UNREACHABLE_PROVIDER, demo_manifest_in};

async fn demo(provider: &str) -> (TestHost, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = demo_manifest_in(dir.path(), provider);
    (TestHost::start_file(&manifest).await, dir)
}

#[tokio::test]
async fn a_known_intent_is_answered_by_the_rules_layer() {
    let (host, _dir) = demo(UNREACHABLE_PROVIDER).await;
    let (status, body) = host.ask("support", "  How do I CHANGE my PIN?? ").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "answered");
    assert_eq!(body["stage"], "faq");
    assert_eq!(body["layer"], "rules");
    assert!(
        body["output"].as_str().unwrap().contains("change your PIN"),
        "{body}"
    );
    let stages: Vec<&str> = body["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["normalise", "redact", "triage", "faq"]);
    host.shutdown().await;
}

#[tokio::test]
async fn personal_data_is_redacted_before_any_later_stage_sees_it() {
    let (host, _dir) = demo(UNREACHABLE_PROVIDER).await;
    let (status, body) = host
        .ask(
            "support",
            "My card was stolen! Call me on +44 20 7946 0958 or mail jane.doe@example.com, \
             the card is 4111 1111 1111 1111",
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["stage"], "triage");
    let ticket = body["ticket"]["id"].as_i64().unwrap();
    let (_, ticket) = host.get(&format!("/v1/tickets/{ticket}")).await;
    assert_eq!(
        ticket["input"],
        "my card was stolen! call me on [phone] or mail [email], the card is [card]"
    );
    assert_eq!(
        ticket["attributes"],
        json!({"redacted": "email,card,phone"})
    );
    assert!(
        ticket["reason"]
            .as_str()
            .unwrap()
            .starts_with("lost_or_stolen_card:"),
        "{ticket}"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn a_novel_question_goes_to_the_model_once_then_to_the_cache() {
    let llm = LocalLlm::start(Options::default()).await.unwrap();
    let (host, _dir) = demo(&llm.base_url()).await;
    let (status, first) = host
        .ask("support", "Can I get a card in another colour?")
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["stage"].as_str(), first["layer"].as_str()),
        (Some("generate"), Some("generation"))
    );
    assert_eq!(first["model"]["tier"], "small");
    assert!(first["cost_usd"].as_f64().unwrap() > 0.0);
    let (_, second) = host
        .ask("support", "can i get a card in another colour")
        .await;
    assert_eq!(
        (second["stage"].as_str(), second["layer"].as_str()),
        (Some("answer-bank"), Some("cache"))
    );
    assert_eq!(second["output"], first["output"]);
    assert_eq!(llm.requests(), 1);
    host.shutdown().await;
}

#[tokio::test]
async fn an_unanswerable_question_becomes_a_ticket_whose_answer_is_then_banked() {
    // With the model provider down, nothing automated can answer.
    let (host, _dir) = demo(UNREACHABLE_PROVIDER).await;
    let (status, body) = host.ask("support", "When will my card arrive?").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["ticket"]["reason"], "stage \"generate\" trapped");
    let id = body["request_id"].as_str().unwrap().to_owned();
    let ticket = body["ticket"]["id"].as_i64().unwrap();

    let (_, queue) = host.get("/v1/tickets?state=open").await;
    assert!(
        queue["tickets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == ticket),
        "{queue}"
    );
    let (status, _) = host
        .post(
            &format!("/v1/tickets/{ticket}/claim"),
            json!({"reviewer": "sam"}),
        )
        .await;
    assert_eq!(status, 200);
    let answer = "Cards arrive within 3 to 5 working days of ordering.";
    let (status, _) = host
        .post(
            &format!("/v1/tickets/{ticket}/resolve"),
            json!({"reviewer": "sam", "answer": answer}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, state) = host.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(state["status"], "answered");
    assert_eq!(state["output"], answer);
    assert_eq!(state["layer"], "human");

    // The reviewer's answer now answers the same question from the cache.
    let (status, again) = host.ask("support", "when will my card arrive").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["layer"], "cache");
    assert_eq!(again["output"], answer);
    host.shutdown().await;
}

#[tokio::test]
async fn empty_input_is_rejected() {
    let (host, _dir) = demo(UNREACHABLE_PROVIDER).await;
    let (status, body) = host.ask("support", "   ").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["rejection"]["code"], "empty-input");
    host.shutdown().await;
}
