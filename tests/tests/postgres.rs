//! Durable state in a real PostgreSQL server (`[store] url`): everything
//! the SQLite store keeps is kept there too; hosts pointed at one server
//! share tickets and answers; a server that goes away costs only the
//! requests that must write, which get 503 `store_unavailable`, and
//! nothing acknowledged is lost.

use serde_json::{Value, json};
use strata_tests::{PostgresServer, SMALL_RUNTIME, TestHost, components, toml_str};

/// Pipeline `desk` escalates every question, `quick` answers at once;
/// state in the PostgreSQL database at `url`.
fn manifest(url: &str) -> String {
    format!(
        "{SMALL_RUNTIME}
[store]
url = \"{url}\"

[pipelines.desk]
[[pipelines.desk.stages]]
name = \"triage\"
layer = \"rules\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"escalate\", reason = \"a person must answer\", draft = \"a draft\" }}

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

/// Escalate `input` through `host`: (request id, ticket number).
async fn escalate(host: &TestHost, input: &str) -> (String, i64) {
    let (status, body) = host.ask("desk", input).await;
    assert_eq!(status, 202, "{body}");
    (
        body["request_id"].as_str().unwrap().to_owned(),
        body["ticket"]["id"].as_i64().unwrap(),
    )
}

/// Poll `path` on `host` until `done` holds, at most 30 s.
async fn eventually(host: &TestHost, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = host.get(path).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never got there: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_host_on_postgres_keeps_tickets_feedback_jobs_and_its_audit_log() {
    let server = PostgresServer::start();
    let url = server.database("strata");
    let mut host = TestHost::start(&manifest(&url)).await;

    // An escalation: a durable ticket, claimed and resolved.
    let (request, ticket) = escalate(&host, "please help").await;
    let (status, claimed) = host
        .post(
            &format!("/v1/tickets/{ticket}/claim"),
            json!({"reviewer": "ana"}),
        )
        .await;
    assert_eq!(status, 200, "{claimed}");
    assert_eq!(claimed["claimed_by"], "ana");
    let (status, body) = host
        .post(
            &format!("/v1/tickets/{ticket}/claim"),
            json!({"reviewer": "bo"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, resolved) = host
        .post(
            &format!("/v1/tickets/{ticket}/resolve"),
            json!({"reviewer": "ana", "answer": "Here is your answer."}),
        )
        .await;
    assert_eq!(status, 200, "{resolved}");
    let (_, state) = host.get(&format!("/v1/requests/{request}")).await;
    assert_eq!(state["status"], "answered", "{state}");
    assert_eq!(state["output"], "Here is your answer.");
    assert_eq!(state["layer"], "human");

    // A plain answer is recorded, rated, and a proposed correction is
    // rejected; the dataset exports all of it.
    let (status, answered) = host.ask("quick", "hello").await;
    assert_eq!(status, 200, "{answered}");
    let answered_id = answered["request_id"].as_str().unwrap().to_owned();
    let (status, body) = host
        .post(
            "/v1/feedback",
            json!({"request_id": answered_id, "rating": "good"}),
        )
        .await;
    assert!(status == 200 || status == 202, "{status} {body}");
    let (status, body) = host
        .post(
            "/v1/feedback",
            json!({"request_id": answered_id, "rating": "bad", "correction": "done, and more"}),
        )
        .await;
    assert!(status == 200 || status == 202, "{status} {body}");
    let (_, open) = host.get("/v1/tickets").await;
    let correction = open["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "correction")
        .unwrap_or_else(|| panic!("the correction waits for a reviewer: {open}"))["id"]
        .as_i64()
        .unwrap();
    let (status, rejected) = host
        .post(
            &format!("/v1/tickets/{correction}/reject"),
            json!({"reviewer": "ana", "note": "the answer was right"}),
        )
        .await;
    assert_eq!(status, 200, "{rejected}");
    assert_eq!(rejected["state"], "rejected");
    let export = host
        .request(reqwest::Method::GET, "/v1/feedback/export")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let kinds: Vec<String> = export
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            event["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(kinds, ["resolution", "rating", "proposal"], "{export}");

    // An asynchronous request is accepted durably and completed.
    let (status, accepted) = host
        .post(
            "/v1/pipelines/quick",
            json!({"input": "later", "async": true}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let job = accepted["request_id"].as_str().unwrap().to_owned();
    let done = eventually(&host, &format!("/v1/requests/{job}"), |body| {
        body["status"] == "answered"
    })
    .await;
    assert_eq!(done["output"], "done");

    // The start is in the audit log.
    let (status, audit) = host.admin_get("/admin/audit").await;
    assert_eq!(status, 200, "{audit}");
    assert!(
        audit["entries"]
            .as_array()
            .is_some_and(|entries| entries.iter().any(|e| e["action"] == "start")),
        "{audit}"
    );

    // What the server holds outlives the host: a restart reads it back.
    let (_, waiting) = escalate(&host, "still waiting").await;
    host.restart().await;
    let (_, ticket) = host.get(&format!("/v1/tickets/{waiting}")).await;
    assert_eq!(ticket["state"], "open", "{ticket}");
    let (_, state) = host.get(&format!("/v1/requests/{request}")).await;
    assert_eq!(state["output"], "Here is your answer.");
    let rows = server.psql("strata", "SELECT count(*) FROM requests");
    assert_eq!(rows, "4", "two escalations, one answer and one job");
    host.shutdown().await;
}

#[tokio::test]
async fn two_hosts_on_one_server_share_the_review_queue() {
    let server = PostgresServer::start();
    let url = server.database("shared");
    let a = TestHost::start(&manifest(&url)).await;
    let b = TestHost::start(&manifest(&url)).await;

    let (request, ticket) = escalate(&a, "asked on A").await;
    // B sees A's ticket, and A's claim of it.
    let (_, listed) = b.get("/v1/tickets").await;
    assert_eq!(listed["tickets"][0]["id"], ticket, "{listed}");
    let (status, _) = a
        .post(
            &format!("/v1/tickets/{ticket}/claim"),
            json!({"reviewer": "ana"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, seen) = b.get(&format!("/v1/tickets/{ticket}")).await;
    assert_eq!(seen["state"], "claimed", "{seen}");
    assert_eq!(seen["claimed_by"], "ana");
    // Another reviewer on B cannot take it; the holder resolves it on B.
    let (status, body) = b
        .post(
            &format!("/v1/tickets/{ticket}/claim"),
            json!({"reviewer": "bo"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = b
        .post(
            &format!("/v1/tickets/{ticket}/resolve"),
            json!({"reviewer": "ana", "answer": "answered on B"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, state) = a.get(&format!("/v1/requests/{request}")).await;
    assert_eq!(state["output"], "answered on B", "{state}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_server_that_goes_away_costs_only_the_writes_and_loses_nothing_acknowledged() {
    let mut server = PostgresServer::start();
    let url = server.database("strata");
    let host = TestHost::start(&manifest(&url)).await;
    let (_, before) = escalate(&host, "before the outage").await;

    server.stop();
    // Answers that promise nothing durable keep coming.
    let (status, body) = host.ask("quick", "hello").await;
    assert_eq!(status, 200, "{body}");
    // An escalation cannot keep its promise: 503, not a ticket that is lost.
    let (status, body) = host.ask("desk", "during the outage").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");

    server.restart();
    // The host reconnects: escalations work again, and the ticket
    // acknowledged before the outage is there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = host.ask("desk", "after the outage").await;
        if status == 202 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "escalations never recovered: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let ticket = eventually(&host, &format!("/v1/tickets/{before}"), |_| true).await;
    assert_eq!(ticket["state"], "open", "{ticket}");
    host.shutdown().await;
}
