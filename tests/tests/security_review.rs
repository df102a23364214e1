//! Regression tests for the findings of the security review (issue 11):
//! each test is named after the point it guards.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strata::auth::{Tokens, parse_named};
use strata::store::{Job, Store};
use strata_tests::{HostProcess, SMALL_RUNTIME, TestHost, components, toml_str};

/// answer-bank -> a stage that answers everything (layer `generation`, so
/// its answers are remembered) with `answer`.
fn banked(answer: &str) -> String {
    format!(
        "{SMALL_RUNTIME}
[pipelines.p]
answer_bank = {{ remember = [\"generation\"] }}

[[pipelines.p.stages]]
name = \"bank\"
layer = \"cache\"
plugin = {bank}
grants = [\"config\", \"cache\"]
on_error = \"skip\"

[[pipelines.p.stages]]
name = \"answer\"
layer = \"generation\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"respond\", answer = \"{answer}\", confidence = 0.9 }}
",
        bank = toml_str(components::ANSWER_BANK),
        scripted = toml_str(components::SCRIPTED),
    )
}

fn reviewers() -> Tokens {
    Tokens::new(
        Some("client-token".into()),
        None,
        Some("admin-token".into()),
    )
    .with_named_reviewers(parse_named("sam=token-of-sam,alex=token-of-alex").unwrap())
}

async fn ask_as(host: &TestHost, token: &str, input: &str) -> Value {
    let (status, body) = host
        .send(
            host.request(reqwest::Method::POST, "/v1/pipelines/p")
                .bearer_auth(token)
                .json(&json!({ "input": input })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn post_as(host: &TestHost, token: Option<&str>, path: &str, body: Value) -> (u16, Value) {
    let mut request = host.request(reqwest::Method::POST, path).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    host.send(request).await
}

#[tokio::test]
async fn feedback_a_client_correction_is_only_a_proposal_until_a_reviewer_accepts_it() {
    let host = TestHost::start_in(
        tempfile::tempdir().unwrap(),
        &banked("Machine answer."),
        reviewers(),
    )
    .await;
    let first = ask_as(&host, "client-token", "Can I have two cards?").await;
    assert_eq!(first["layer"], "generation");
    let id = first["request_id"].as_str().unwrap();

    // The client's correction changes nothing yet: it is a review item.
    let (status, body) = post_as(
        &host,
        Some("client-token"),
        "/v1/feedback",
        json!({"request_id": id, "rating": "bad", "correction": "Client text."}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["ticket"]["kind"], "correction");
    let ticket = body["ticket"]["id"].as_i64().unwrap();
    let again = ask_as(&host, "client-token", "Can I have two cards?").await;
    assert_eq!(again["output"], "Machine answer.", "{again}");

    // The proposal shows in the queue as a correction, with the proposer.
    let (_, shown) = host
        .send(
            host.request(reqwest::Method::GET, &format!("/v1/tickets/{ticket}"))
                .bearer_auth("token-of-sam"),
        )
        .await;
    assert_eq!(shown["kind"], "correction");
    assert_eq!(shown["draft"], "Client text.");
    assert!(
        shown["proposed_by"]
            .as_str()
            .unwrap()
            .starts_with("client:")
    );

    // A reviewer accepts it (edited): now it is the approved answer.
    let (status, resolved) = post_as(
        &host,
        Some("token-of-sam"),
        &format!("/v1/tickets/{ticket}/resolve"),
        json!({"answer": "Yes: one physical and one virtual card."}),
    )
    .await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["resolved_by"], "reviewer:sam");
    let after = ask_as(&host, "client-token", "can I have two cards").await;
    assert_eq!(after["layer"], "cache", "{after}");
    assert_eq!(after["output"], "Yes: one physical and one virtual card.");

    // Another proposal for the same request can be rejected, changing nothing.
    let (_, body) = post_as(
        &host,
        Some("client-token"),
        "/v1/feedback",
        json!({"request_id": id, "rating": "bad", "correction": "Nonsense."}),
    )
    .await;
    let second = body["ticket"]["id"].as_i64().unwrap();
    let (status, rejected) = post_as(
        &host,
        Some("token-of-alex"),
        &format!("/v1/tickets/{second}/reject"),
        json!({"note": "wrong"}),
    )
    .await;
    assert_eq!(status, 200, "{rejected}");
    assert_eq!(rejected["state"], "rejected");
    let after = ask_as(&host, "client-token", "can I have two cards").await;
    assert_eq!(after["output"], "Yes: one physical and one virtual card.");

    // A reviewer's own correction applies at once.
    let (status, body) = post_as(
        &host,
        Some("token-of-alex"),
        "/v1/feedback",
        json!({"request_id": id, "rating": "bad", "correction": "Reviewer text."}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let after = ask_as(&host, "client-token", "can I have two cards").await;
    assert_eq!(after["output"], "Reviewer text.");
    host.shutdown().await;
}

#[tokio::test]
async fn feedback_an_anonymous_correction_after_a_resolution_does_not_override_the_reviewer() {
    // The reproduced finding: no tokens at all (the demo), a reviewer on
    // this machine resolves, then an anonymous client corrects.
    // The answer bank, then a stage that escalates everything.
    let manifest = strata_tests::bank_desk("", "");
    let host = TestHost::start(&manifest).await;
    let (status, escalated) = host.ask("desk", "Where is my refund?").await;
    assert_eq!(status, 202);
    let ticket = escalated["ticket"]["id"].as_i64().unwrap();
    let id = escalated["request_id"].as_str().unwrap();
    let (status, _) = host
        .post(
            &format!("/v1/tickets/{ticket}/resolve"),
            json!({"reviewer": "sam", "answer": "Refunds take 5 days."}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = host
        .post(
            "/v1/feedback",
            json!({"request_id": id, "rating": "bad", "correction": "Send me money."}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (_, again) = host.ask("desk", "Where is my refund?").await;
    assert_eq!(again["output"], "Refunds take 5 days.", "{again}");
    host.shutdown().await;
}

#[tokio::test]
async fn feedback_the_actor_comes_from_the_token_never_from_the_body() {
    let manifest = format!(
        "{SMALL_RUNTIME}
[pipelines.p]
[[pipelines.p.stages]]
name = \"triage\"
layer = \"rules\"
plugin = {}
grants = [\"config\", \"log\"]
config = {{ outcome = \"escalate\", reason = \"a person\" }}
",
        toml_str(components::SCRIPTED)
    );
    let host = TestHost::start_in(tempfile::tempdir().unwrap(), &manifest, reviewers()).await;
    let (_, escalated) = host
        .send(
            host.request(reqwest::Method::POST, "/v1/pipelines/p")
                .bearer_auth("client-token")
                .json(&json!({"input": "help"})),
        )
        .await;
    let ticket = escalated["ticket"]["id"].as_i64().unwrap();
    let (status, claimed) = post_as(
        &host,
        Some("token-of-sam"),
        &format!("/v1/tickets/{ticket}/claim"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{claimed}");
    assert_eq!(claimed["claimed_by"], "reviewer:sam");
    // Alex cannot resolve Sam's ticket by sending Sam's name...
    let (status, body) = post_as(
        &host,
        Some("token-of-alex"),
        &format!("/v1/tickets/{ticket}/resolve"),
        json!({"reviewer": "sam", "answer": "hijacked"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    // ...nor as themself.
    let (status, body) = post_as(
        &host,
        Some("token-of-alex"),
        &format!("/v1/tickets/{ticket}/resolve"),
        json!({"answer": "hijacked"}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, resolved) = post_as(
        &host,
        Some("token-of-sam"),
        &format!("/v1/tickets/{ticket}/resolve"),
        json!({"answer": "done"}),
    )
    .await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["resolved_by"], "reviewer:sam");
    host.shutdown().await;
}

#[tokio::test]
async fn store_reads_an_export_nobody_reads_does_not_stall_other_reads() {
    let host = TestHost::start(&banked("ok")).await;
    // Enough feedback that the export fills every buffer between the store
    // and a client that never reads.
    let big = "x".repeat(48 * 1024);
    for i in 0..120 {
        let (status, body) = host.ask("p", &format!("{i} {big}")).await;
        assert_eq!(status, 200, "{body}");
        let (status, _) = host
            .post(
                "/v1/feedback",
                json!({"request_id": body["request_id"], "rating": "good"}),
            )
            .await;
        assert_eq!(status, 200);
    }
    // Ask for the export and never read the body.
    let stalled = reqwest::get(format!("{}/v1/feedback/export", host.base()))
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reads = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..5 {
            let (status, _) = host.get("/v1/tickets").await;
            assert_eq!(status, 200);
        }
    })
    .await;
    assert!(reads.is_ok(), "reads stalled behind an unread export");
    drop(stalled);
    host.shutdown().await;
}

/// Two instances; a stage that spins until its timeout holds one each.
fn two_slots(extra: &str) -> String {
    format!(
        "[runtime]
instances = 2
slot_wait_ms = 100

[async]
workers = 1

[pipelines.spin]
[[pipelines.spin.stages]]
name = \"spin\"
layer = \"rules\"
plugin = {misbehave}
grants = [\"config\", \"log\"]
on_error = \"skip\"
limits = {{ timeout_ms = 3000 }}
config = {{ mode = \"loop\" }}

[pipelines.quick]
[[pipelines.quick.stages]]
name = \"quick\"
layer = \"rules\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"respond\", answer = \"ok\" }}
{extra}",
        misbehave = toml_str(components::MISBEHAVE),
        scripted = toml_str(components::SCRIPTED),
    )
}

#[tokio::test]
async fn instance_pool_waiting_for_a_slot_is_bounded_then_503_overloaded() {
    let host = TestHost::start(&two_slots("")).await;
    let spin = |host: &TestHost| {
        host.request(reqwest::Method::POST, "/v1/pipelines/spin")
            .json(&json!({"input": "x"}))
            .send()
    };
    let first = tokio::spawn(spin(&host));
    let second = tokio::spawn(spin(&host));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let response = host
        .request(reqwest::Method::POST, "/v1/pipelines/quick")
        .json(&json!({"input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(started.elapsed() < Duration::from_millis(2500));
    // The spinning requests end with their stage skipped, and then the pool
    // serves again.
    assert_eq!(first.await.unwrap().unwrap().status(), 202);
    assert_eq!(second.await.unwrap().unwrap().status(), 202);
    let (status, body) = host.ask("quick", "x").await;
    assert_eq!((status, body["output"].as_str()), (200, Some("ok")));
    host.shutdown().await;
}

fn reusing(answer: &str) -> String {
    format!(
        "[runtime]
instances = 4
slot_wait_ms = 200

[pipelines.a]
[[pipelines.a.stages]]
name = \"count\"
layer = \"rules\"
plugin = {counter}
reuse = {{ max_uses = 1000, max_idle = 1 }}

[pipelines.b]
[[pipelines.b.stages]]
name = \"count\"
layer = \"rules\"
plugin = {counter}
reuse = {{ max_uses = 1000, max_idle = 1 }}

[pipelines.c]
[[pipelines.c.stages]]
name = \"quick\"
layer = \"rules\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"respond\", answer = \"{answer}\" }}
",
        counter = toml_str(components::COUNTER),
        scripted = toml_str(components::SCRIPTED),
    )
}

#[tokio::test]
async fn instance_pool_a_reload_does_not_strand_the_previous_generations_idle_instances() {
    let host = TestHost::start(&reusing("one")).await;
    // Two instances wait idle, holding two of the four slots.
    assert_eq!(host.ask("a", "x").await.0, 200);
    assert_eq!(host.ask("b", "x").await.0, 200);
    std::fs::write(host.manifest(), reusing("two")).unwrap();
    let (status, report) = host.admin_post("/admin/reload").await;
    assert_eq!(
        (status, report["result"].as_str()),
        (200, Some("applied")),
        "{report}"
    );
    // The new generation's instances take two more slots; if the old ones
    // were still held, nothing would be left for pipeline c.
    assert_eq!(host.ask("a", "x").await.0, 200);
    assert_eq!(host.ask("b", "x").await.0, 200);
    let (status, body) = host.ask("c", "x").await;
    assert_eq!(
        (status, body["output"].as_str()),
        (200, Some("two")),
        "{body}"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn instance_pool_a_manifest_whose_idle_instances_could_fill_the_pool_is_refused() {
    let manifest = reusing("x").replace("max_idle = 1", "max_idle = 2");
    let error = TestHost::try_start(&manifest).await.err().expect("refused");
    let message = format!("{error:#}");
    assert!(message.contains("runtime.instances"), "{message}");
    assert!(
        message.contains("a.count (2)") && message.contains("b.count (2)"),
        "{message}"
    );
}

#[tokio::test]
async fn exactly_once_a_synchronous_request_reusing_an_accepted_async_id_gets_409() {
    let host = TestHost::start(&two_slots("")).await;
    let (status, _) = host
        .send(
            host.request(reqwest::Method::POST, "/v1/pipelines/spin")
                .header("x-request-id", "order-7")
                .json(&json!({"input": "x", "async": true})),
        )
        .await;
    assert_eq!(status, 202);
    let (status, body) = host
        .send(
            host.request(reqwest::Method::POST, "/v1/pipelines/quick")
                .header("x-request-id", "order-7")
                .json(&json!({"input": "x"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("duplicate_request")),
        "{body}"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn exactly_once_a_job_that_never_completes_goes_to_the_dead_letter_state() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = two_slots("");
    // A job accepted, then started three times by hosts that died while
    // running it: the store remembers each start.
    let store = Store::open(&dir.path().join("data")).unwrap();
    store
        .enqueue(Job {
            id: "doomed".to_owned(),
            pipeline: "quick".to_owned(),
            input: "x".to_owned(),
            attributes: "{}".to_owned(),
            callback: None,
            created_at: strata::store::now_millis(),
            team: None,
        })
        .await
        .unwrap();
    for host in ["host-1", "host-2", "host-3"] {
        // Each took it with a lease that has ended (its host died).
        let ended = strata::store::now_millis() - 1;
        assert_eq!(
            store
                .start_job("doomed".to_owned(), 3, host.to_owned(), ended)
                .await
                .unwrap(),
            strata::store::JobStart::Run
        );
    }
    store.close().await;
    let host = TestHost::start_in(dir, &manifest, Tokens::default()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let view = loop {
        let (status, view) = host.get("/v1/requests/doomed").await;
        assert_eq!(status, 200, "{view}");
        if view["status"] == "failed" || Instant::now() > deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["error"]["code"], "dead_letter", "{view}");
    assert_eq!(view["async"]["state"], "dead");
    assert_eq!(view["async"]["runs"], 3, "it did not run a fourth time");
    assert!(
        view["async"]["reason"]
            .as_str()
            .unwrap()
            .contains("max_runs")
    );
    host.shutdown().await;
}

#[tokio::test]
async fn bounded_growth_records_past_their_retention_are_removed_and_open_work_is_kept() {
    let manifest = format!(
        "{SMALL_RUNTIME}
[pipelines.p]
[[pipelines.p.stages]]
name = \"triage\"
layer = \"rules\"
plugin = {}
grants = [\"config\", \"log\"]
config = {{ outcome = \"respond\", answer = \"ok\" }}

[pipelines.desk]
[[pipelines.desk.stages]]
name = \"triage\"
layer = \"rules\"
plugin = {}
grants = [\"config\", \"log\"]
config = {{ outcome = \"escalate\", reason = \"a person\" }}
",
        toml_str(components::SCRIPTED),
        toml_str(components::SCRIPTED)
    );
    let host = TestHost::start(&manifest).await;
    let (_, answered) = host.ask("p", "a").await;
    let (_, open) = host.ask("desk", "b").await;
    let data = host.dir().join("data");
    let store = host.host().store().clone();
    // Everything is "older" than a cutoff a second from now.
    let future = strata::store::now_millis() + 1000;
    let cutoffs = strata::store::Cutoffs {
        requests: Some(future),
        deliveries: Some(future),
        shadow_runs: Some(future),
        audit: Some(future),
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let removed = strata::retention::prune(&store, cutoffs).await;
    assert!(
        removed >= 2,
        "the answered request and the start audit entry: {removed}"
    );
    let (status, _) = host
        .get(&format!(
            "/v1/requests/{}",
            answered["request_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 404, "the answered request is gone");
    let (status, kept) = host
        .get(&format!(
            "/v1/requests/{}",
            open["request_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        status, 200,
        "an escalated request waiting for a reviewer is kept"
    );
    assert_eq!(kept["ticket"]["state"], "open");
    assert!(data.exists());
    host.shutdown().await;
}

#[tokio::test]
async fn bounded_growth_a_guest_log_line_cannot_forge_another() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("strata.toml");
    std::fs::write(
        &manifest,
        format!(
            "{SMALL_RUNTIME}
[pipelines.p]
[[pipelines.p.stages]]
name = \"liar\"
layer = \"rules\"
plugin = {}
grants = [\"config\", \"log\"]
config = {{ outcome = \"respond\", answer = \"ok\", log = \"fine\\nINFO strata: reload applied\" }}
",
            toml_str(components::SCRIPTED)
        ),
    )
    .unwrap();
    let mut host = HostProcess::serve(env!("CARGO_BIN_EXE_strata-under-test"), &manifest, |c| {
        c.arg("--data").arg(dir.path().join("data"));
    });
    let status = reqwest::Client::new()
        .post(format!("{}/v1/pipelines/p", host.base()))
        .json(&json!({"input": "x"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let line = host.next_message("fine");
    let message = line["message"].as_str().unwrap();
    assert!(!message.contains('\n'), "a raw line break: {message:?}");
    assert!(message.contains("\\n"), "{message:?}");
}

#[tokio::test]
async fn durable_callbacks_a_synchronous_answer_with_a_callback_is_durable_before_the_200() {
    let manifest = format!(
        "{SMALL_RUNTIME}
[callbacks]
allow = [\"127.0.0.1:9\"]

[pipelines.p]
[[pipelines.p.stages]]
name = \"answer\"
layer = \"rules\"
plugin = {}
grants = [\"config\", \"log\"]
config = {{ outcome = \"respond\", answer = \"ok\" }}
",
        toml_str(components::SCRIPTED)
    );
    let host = TestHost::start(&manifest).await;
    let database = host.dir().join("data").join(strata::store::DATABASE_FILE);
    for i in 0..20 {
        let (status, body) = host
            .post(
                "/v1/pipelines/p",
                json!({"input": format!("q{i}"), "callback": "http://127.0.0.1:9/hook"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let id = body["request_id"].as_str().unwrap().to_owned();
        // Read straight from the database, as a restarted host would.
        let conn = rusqlite::Connection::open_with_flags(
            &database,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let found: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM callbacks WHERE request_id = ?1",
                [&id],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(
            found, 1,
            "request {id} answered before its callback was durable"
        );
    }
    host.shutdown().await;
}

#[tokio::test]
async fn generation_switches_a_request_on_the_old_generation_does_not_rebuild_the_bank() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let manifest = |capacity: u32| {
        banked("Machine answer.").replace(
            "answer_bank = { remember = [\"generation\"] }",
            &format!("answer_bank = {{ remember = [\"generation\"], capacity = {capacity} }}"),
        )
    };
    let host = TestHost::start(&manifest(100)).await;
    // Request A takes the serving generation, then sends its body slowly.
    let body = json!({"input": "question a"}).to_string();
    let mut slow = tokio::net::TcpStream::connect(host.base().trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/pipelines/p HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body.as_bytes()[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A reload changes the bank's settings; request B, on the new
    // generation, leaves an answer in the bank.
    std::fs::write(host.manifest(), manifest(200)).unwrap();
    let (status, report) = host.admin_post("/admin/reload").await;
    assert_eq!(status, 200, "{report}");
    let (_, health) = host.get("/healthz").await;
    assert_eq!(health["generation"], 2);
    let (_, b) = host.ask("p", "question b").await;
    assert_eq!(b["layer"], "generation");

    // Request A finishes on the old generation...
    slow.write_all(&body.as_bytes()[5..]).await.unwrap();
    let mut response = String::new();
    slow.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"generation\":1"), "{response}");

    // ...and B's answer is still in the bank.
    let (_, again) = host.ask("p", "question b").await;
    assert_eq!(again["layer"], "cache", "{again}");
    host.shutdown().await;
}
