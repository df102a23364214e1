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

/// A job accepted now with id `id`.
fn job(id: &str) -> strata::store::Job {
    strata::store::Job {
        id: id.to_owned(),
        pipeline: "quick".to_owned(),
        input: "x".to_owned(),
        attributes: "{}".to_owned(),
        callback: None,
        created_at: strata::store::now_millis(),
        team: None,
    }
}

/// Leases on jobs, the same on either back end: one host holds a job
/// while its lease lasts, another takes it once the lease has ended, and
/// of many hosts taking a job at once exactly one gets it.
async fn leases_hold(store: strata::store::Store) {
    use strata::store::JobStart;
    let now = strata::store::now_millis;
    store.enqueue(job("held")).await.unwrap();
    let start = |owner: &str, lease_ms: i64| {
        store.start_job("held".to_owned(), 5, owner.to_owned(), now() + lease_ms)
    };
    assert_eq!(start("a", 400).await.unwrap(), JobStart::Run);
    assert_eq!(start("b", 60_000).await.unwrap(), JobStart::Elsewhere);
    let takeable = store
        .jobs_to_take("b".to_owned(), now(), now(), 10)
        .await
        .unwrap();
    assert!(takeable.is_empty(), "a holds it: {takeable:?}");
    // A renews its lease, then dies: once the lease ends, B finds and takes it.
    store
        .renew_job_leases("a".to_owned(), now() + 300)
        .await
        .unwrap();
    assert_eq!(start("b", 60_000).await.unwrap(), JobStart::Elsewhere);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let takeable = store
        .jobs_to_take("b".to_owned(), now(), now(), 10)
        .await
        .unwrap();
    assert_eq!(takeable.len(), 1, "a's lease has ended");
    assert_eq!(start("b", 60_000).await.unwrap(), JobStart::Run);
    let state = store.job_state("held".to_owned()).await.unwrap().unwrap();
    assert_eq!(state.runs, 2);

    // Eight hosts take one new job at once: one runs it.
    store.enqueue(job("raced")).await.unwrap();
    let mut takers = tokio::task::JoinSet::new();
    for host in 0..8 {
        let store = store.clone();
        takers.spawn(async move {
            store
                .start_job(
                    "raced".to_owned(),
                    5,
                    format!("host-{host}"),
                    strata::store::now_millis() + 60_000,
                )
                .await
                .unwrap()
        });
    }
    let mut runs = 0;
    while let Some(outcome) = takers.join_next().await {
        runs += usize::from(outcome.unwrap() == JobStart::Run);
    }
    assert_eq!(runs, 1);
    store.close().await;
}

#[tokio::test]
async fn job_leases_hold_on_sqlite_and_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = strata::store::Store::open(dir.path()).unwrap();
    leases_hold(sqlite).await;
    let server = PostgresServer::start();
    let url = server.database("leases");
    let postgres = tokio::task::spawn_blocking(move || strata::store::Store::connect(&url))
        .await
        .unwrap()
        .unwrap();
    leases_hold(postgres).await;
}

/// Pipeline `p`: one stage asking `llm`'s model `model`; `workers` jobs at
/// a time, leased for 2 s.
fn generating(url: &str, llm: &local_llm::LocalLlm, model: &str, workers: u32) -> String {
    format!(
        "{SMALL_RUNTIME}
[store]
url = \"{url}\"

[async]
workers = {workers}
lease_ms = 2000

[models.providers.local]
base_url = \"{base}\"

[models.tiers.small]
provider = \"local\"
model = \"{model}\"
timeout_ms = 10000
retries = 0

[pipelines.p]
min_confidence = 0.5
[[pipelines.p.stages]]
name = \"generate\"
layer = \"generation\"
plugin = {generate}
grants = [\"config\", \"model\"]
limits = {{ timeout_ms = 20000 }}
[pipelines.p.stages.config]
small_tier = \"small\"
large_tier = \"small\"
",
        base = llm.base_url(),
        generate = toml_str(components::GENERATE),
    )
}

/// A PostgreSQL server with one database, a stand-in model provider, and
/// host processes serving [`generating`] on both, each with a data
/// directory of its own.
struct Cluster {
    server: PostgresServer,
    database: &'static str,
    llm: local_llm::LocalLlm,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Hosts will run `workers` jobs at a time, asking the model `model`.
    async fn start(database: &'static str, model: &str, workers: u32) -> Cluster {
        let server = PostgresServer::start();
        let url = server.database(database);
        let llm = local_llm::LocalLlm::start(local_llm::Options::default())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("strata.toml"),
            generating(&url, &llm, model, workers),
        )
        .unwrap();
        Cluster {
            server,
            database,
            llm,
            dir,
        }
    }

    fn serve(&self, name: &str) -> strata_tests::HostProcess {
        let data = self.dir.path().join(name);
        strata_tests::HostProcess::serve(
            env!("CARGO_BIN_EXE_strata-under-test"),
            &self.dir.path().join("strata.toml"),
            |command| {
                command.arg("--data").arg(&data);
            },
        )
    }

    /// The one value `sql` selects from the database.
    fn select(&self, sql: &str) -> String {
        self.server.psql(self.database, sql)
    }
}

/// Submit `count` asynchronous requests to pipeline `p` at `base`; their ids.
async fn submit(client: &reqwest::Client, base: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..count {
        let response = client
            .post(format!("{base}/v1/pipelines/p"))
            .json(&json!({"input": format!("question {i}"), "async": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        let body: Value = response.json().await.unwrap();
        ids.push(body["request_id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Wait (at most a minute) until every request of `ids` is answered, as
/// the host at `base` sees it.
async fn all_answered(client: &reqwest::Client, base: &str, ids: &[String]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for id in ids {
        loop {
            let body: Value = client
                .get(format!("{base}/v1/requests/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if body["status"] == "answered" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "request {id} never completed: {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// `ids` as an SQL list.
fn sql_list(ids: &[String]) -> String {
    ids.iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test]
async fn three_hosts_share_the_jobs_and_those_of_a_host_killed_while_running_them_complete_once() {
    let cluster = Cluster::start("jobs", "slow-1500-model", 2).await;
    let a = cluster.serve("a");
    let b = cluster.serve("b");
    let c = cluster.serve("c");

    // Eight requests accepted by A, which runs two at a time.
    let client = reqwest::Client::new();
    let ids = submit(&client, a.base(), 8).await;
    // Kill A while it waits for the model.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while cluster.llm.requests() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "A never asked the model"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    a.kill();

    // B and C complete every one of them: A's queued ones after the grace,
    // the ones it was running once its leases end.
    all_answered(&client, b.base(), &ids).await;
    // Exactly once: one record each, every job done, none run more than
    // twice (once on A, once more on B or C).
    let list = sql_list(&ids);
    assert_eq!(
        cluster.select(&format!(
            "SELECT count(*) FROM requests WHERE id IN ({list})"
        )),
        "8"
    );
    assert_eq!(
        cluster.select(&format!(
            "SELECT count(*) FROM jobs WHERE state = 'done' AND runs <= 2 AND id IN ({list})"
        )),
        "8"
    );
    drop((b, c));
}

#[tokio::test]
async fn an_import_into_postgres_is_served_by_a_host_on_it() {
    let server = PostgresServer::start();
    let url = server.database("bank");
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("strata.toml");
    std::fs::write(
        &manifest,
        strata_tests::bank_desk(&format!("\n[store]\nurl = \"{url}\"\n"), "max_error = 0.1"),
    )
    .unwrap();
    let (file, answers) = strata_tests::bank_data::write_dataset(dir.path(), "text,label");
    let (code, _, stderr) = strata_tests::run_cli(
        env!("CARGO_BIN_EXE_strata-under-test"),
        &[
            "bank",
            "import",
            manifest.to_str().unwrap(),
            "desk",
            file.to_str().unwrap(),
            "--answers",
            answers.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(server.psql("bank", "SELECT count(*) FROM examples"), "36");
    assert_eq!(server.psql("bank", "SELECT count(*) FROM patterns"), "3");

    // A host on the same database learns the patterns and answers a
    // paraphrase it has never seen.
    let host = TestHost::serve_with(dir, manifest, strata::auth::Tokens::default())
        .await
        .unwrap();
    let (status, answered) = host.ask("desk", "When is my card going to arrive?").await;
    assert_eq!(status, 200, "{answered}");
    assert_eq!(answered["layer"], "cache");
    assert_eq!(answered["output"], strata_tests::bank_data::CARD_ARRIVAL);
    host.shutdown().await;
}

#[tokio::test]
async fn a_busy_host_offers_the_jobs_it_cannot_start_and_an_idle_one_takes_them() {
    let cluster = Cluster::start("offers", "slow-3000-model", 1).await;
    let a = cluster.serve("a");
    let mut b = cluster.serve("b");

    // A runs one request at a time: the second and third wait, and A
    // offers them; B, idle, hears the offer and takes them.
    let client = reqwest::Client::new();
    let ids = submit(&client, a.base(), 3).await;
    let taken = b.next_message("taking asynchronous requests a busy host offered");
    assert!(taken["count"].as_u64().unwrap_or(0) >= 1, "{taken}");
    all_answered(&client, a.base(), &ids).await;
    let list = sql_list(&ids);
    assert_eq!(
        cluster.select(&format!(
            "SELECT count(DISTINCT owner) FROM jobs WHERE id IN ({list})"
        )),
        "2",
        "both hosts ran some"
    );
    drop((a, b));
}
