//! The review queue: escalations become durable tickets, reviewers claim and
//! resolve them, the resolution becomes the request's answer, and nothing is
//! lost across a restart or a crash.

use serde_json::{Value, json};
use strata_tests::{HostProcess, SMALL_RUNTIME, TestHost, components, toml_str};

fn manifest() -> String {
    format!(
        "{SMALL_RUNTIME}
[pipelines.desk]
[[pipelines.desk.stages]]
name = \"triage\"
layer = \"rules\"
plugin = {}
grants = [\"config\", \"log\"]
config = {{ outcome = \"escalate\", reason = \"a person must answer\", draft = \"draft answer\" }}
",
        toml_str(components::SCRIPTED)
    )
}

#[tokio::test]
async fn a_reviewer_claims_and_resolves_a_ticket() {
    let host = TestHost::start(&manifest()).await;
    let (status, escalated) = host.ask("desk", "please help").await;
    assert_eq!(status, 202, "{escalated}");
    assert_eq!(escalated["status"], "escalated");
    let request_id = escalated["request_id"].as_str().unwrap().to_owned();
    let ticket = escalated["ticket"]["id"].as_i64().unwrap();

    // The request is visible as escalated, with its ticket.
    let (status, state) = host.get(&format!("/v1/requests/{request_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(state["status"], "escalated");
    assert_eq!(state["ticket"]["state"], "open");

    // The ticket is in the open queue with what the reviewer needs.
    let (_, queue) = host.get("/v1/tickets").await;
    let listed = &queue["tickets"][0];
    assert_eq!(listed["id"], ticket);
    assert_eq!(listed["input"], "please help");
    assert_eq!(listed["reason"], "a person must answer");
    assert_eq!(listed["draft"], "draft answer");
    assert_eq!(listed["state"], "open");
    assert!(listed["age_seconds"].as_i64().unwrap() >= 0);

    let claim = |who: &str| json!({"reviewer": who});
    let (status, claimed) = host
        .post(&format!("/v1/tickets/{ticket}/claim"), claim("ana"))
        .await;
    assert_eq!(status, 200, "{claimed}");
    assert_eq!(claimed["state"], "claimed");
    assert_eq!(claimed["claimed_by"], "ana");
    // Claiming again is harmless for the holder, a conflict for anyone else.
    let (status, _) = host
        .post(&format!("/v1/tickets/{ticket}/claim"), claim("ana"))
        .await;
    assert_eq!(status, 200);
    let (status, body) = host
        .post(&format!("/v1/tickets/{ticket}/claim"), claim("bo"))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"]["message"],
        format!("ticket {ticket} is claimed by ana")
    );
    let resolve = |who: &str| json!({"reviewer": who, "answer": "Here is your answer."});
    let (status, _) = host
        .post(&format!("/v1/tickets/{ticket}/resolve"), resolve("bo"))
        .await;
    assert_eq!(status, 409);

    let (status, resolved) = host
        .post(&format!("/v1/tickets/{ticket}/resolve"), resolve("ana"))
        .await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(resolved["resolution"], "Here is your answer.");
    let (status, body) = host
        .post(&format!("/v1/tickets/{ticket}/resolve"), resolve("ana"))
        .await;
    assert_eq!(status, 409, "a ticket is resolved once: {body}");

    // The resolution is now the request's answer.
    let (_, state) = host.get(&format!("/v1/requests/{request_id}")).await;
    assert_eq!(state["status"], "answered", "{state}");
    assert_eq!(state["output"], "Here is your answer.");
    assert_eq!(state["layer"], "human");
    assert_eq!(state["reviewer"], "ana");
    assert!(state["completed_at"].is_string());

    // It has left the pending queue and shows under resolved.
    let (_, pending) = host.get("/v1/tickets").await;
    assert_eq!(pending["tickets"], json!([]));
    let (_, done) = host.get("/v1/tickets?state=resolved").await;
    assert_eq!(done["tickets"][0]["id"], ticket);
    host.shutdown().await;
}

#[tokio::test]
async fn tickets_and_answers_survive_a_restart() {
    let mut host = TestHost::start(&manifest()).await;
    let (_, first) = host.ask("desk", "first question").await;
    let (_, second) = host.ask("desk", "second question").await;
    let first_id = first["request_id"].as_str().unwrap().to_owned();
    let second_id = second["request_id"].as_str().unwrap().to_owned();
    let first_ticket = first["ticket"]["id"].as_i64().unwrap();
    let (status, _) = host
        .post(
            &format!("/v1/tickets/{first_ticket}/resolve"),
            json!({"reviewer": "ana", "answer": "answered before the restart"}),
        )
        .await;
    assert_eq!(status, 200);

    host.restart().await;

    let (_, state) = host.get(&format!("/v1/requests/{first_id}")).await;
    assert_eq!(state["status"], "answered", "{state}");
    assert_eq!(state["output"], "answered before the restart");
    let (_, state) = host.get(&format!("/v1/requests/{second_id}")).await;
    assert_eq!(state["status"], "escalated", "{state}");
    let second_ticket = state["ticket"]["id"].as_i64().unwrap();
    let (status, _) = host
        .post(
            &format!("/v1/tickets/{second_ticket}/resolve"),
            json!({"reviewer": "bo", "answer": "answered after the restart"}),
        )
        .await;
    assert_eq!(status, 200);

    host.restart().await;
    let (_, state) = host.get(&format!("/v1/requests/{second_id}")).await;
    assert_eq!(state["output"], "answered after the restart", "{state}");
    // Ticket numbers keep counting after a restart.
    let (_, third) = host.ask("desk", "third question").await;
    assert!(third["ticket"]["id"].as_i64().unwrap() > second_ticket);
    host.shutdown().await;
}

/// A host process that is killed (SIGKILL, no shutdown) right after it
/// answered 202 still has the ticket when it comes back.
#[tokio::test]
async fn an_acknowledged_ticket_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("strata.toml");
    std::fs::write(&manifest_path, manifest()).unwrap();
    let data = dir.path().join("data");

    let host = spawn_host(&manifest_path, &data);
    let base = host.base().to_owned();
    let client = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let response = client
            .post(format!("{base}/v1/pipelines/desk"))
            .json(&json!({"input": format!("question {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        let body: Value = response.json().await.unwrap();
        acknowledged.push(body["request_id"].as_str().unwrap().to_owned());
    }
    host.kill();

    let host = spawn_host(&manifest_path, &data);
    let base = host.base();
    for id in &acknowledged {
        let response = client
            .get(format!("{base}/v1/requests/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "request {id} was lost");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "escalated");
        assert_eq!(body["ticket"]["state"], "open");
    }
    host.kill();
}

/// `strata serve` as a process, with its state in `data`.
fn spawn_host(manifest: &std::path::Path, data: &std::path::Path) -> HostProcess {
    HostProcess::serve(
        env!("CARGO_BIN_EXE_strata-under-test"),
        manifest,
        |command| {
            command.arg("--data").arg(data);
        },
    )
}
