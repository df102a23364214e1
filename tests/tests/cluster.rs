//! Hosts serving as one through a real Redis server (`[shared] redis`): an
//! operator's reload on one host is applied by all; a host whose build
//! fails keeps serving and says so; a Redis that goes away leaves every
//! host serving and operating alone, and what was done meanwhile reaches
//! the others when it is back.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_tests::{
    HostProcess, RedisServer, SMALL_RUNTIME, TestHost, bank_desk, components, toml_str,
};

/// A pipeline `p` whose one stage answers `answer`; hosts of the cluster
/// at `redis` (none if empty). Hosts do not watch files: only the cluster
/// reloads them.
fn manifest(redis: &str, answer: &str) -> String {
    let shared = if redis.is_empty() {
        String::new()
    } else {
        shared(redis)
    };
    format!(
        "{SMALL_RUNTIME}
[reload]
watch = false

{shared}
[pipelines.p]
[[pipelines.p.stages]]
name = \"answer\"
layer = \"rules\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"respond\", answer = \"{answer}\" }}
",
        scripted = toml_str(components::SCRIPTED),
    )
}

/// `[shared]` naming the Redis at `redis` and a cluster named after it
/// (and this process), so hosts of different tests never meet.
fn shared(redis: &str) -> String {
    let port = redis.rsplit(':').next().unwrap_or_default();
    format!(
        "[shared]\nredis = \"{redis}\"\ncluster = \"test-{}-{port}\"\n",
        std::process::id()
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("cannot write the manifest");
}

/// Poll `check` every 50 ms until it returns a value, at most `limit`.
async fn within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cluster as `host` sees it once it has joined and counts `hosts`
/// members.
async fn members(host: &TestHost, hosts: usize) -> Value {
    within(Duration::from_secs(15), "every host joins", || async {
        let (status, view) = host.admin_get("/admin/cluster").await;
        // `hosts` is read from Redis, so it may list this host's name
        // (written by a twin) before this host has joined itself.
        (status == 200
            && view["connected"] == true
            && view["hosts"].as_array().map(Vec::len) == Some(hosts))
        .then_some(view)
    })
    .await
}

/// Wait until `host` serves generation `generation`.
async fn serving(host: &TestHost, generation: u64) -> Value {
    within(
        Duration::from_secs(15),
        "the host serves the generation",
        || async {
            let (_, state) = host.admin_get("/admin/pipelines").await;
            (state["generation"] == generation).then_some(state)
        },
    )
    .await
}

async fn answer(host: &TestHost) -> String {
    let (status, body) = host.ask("p", "hello").await;
    assert_eq!(status, 200, "{body}");
    body["output"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_on_one_host_is_applied_by_every_host() {
    let (redis, dir, [a, b, c]) = cluster_of(|redis| manifest(redis, "first")).await;
    let path = dir.path().join("strata.toml");
    let view = members(&a, 3).await;
    assert_eq!(view["in_step"], true, "{view}");
    let name_of_a = view["host"].as_str().unwrap().to_owned();
    for host in [&a, &b, &c] {
        assert_eq!(answer(host).await, "first");
    }

    write(&path, &manifest(&redis.url(), "second"));
    let started = Instant::now();
    let (status, report) = a.admin_post("/admin/reload").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["result"], "applied", "{report}");
    for host in [&b, &c] {
        let state = serving(host, 2).await;
        let last = &state["last_operation"];
        assert_eq!(last["trigger"], "cluster", "{state}");
        assert_eq!(last["actor"], format!("host {name_of_a}"), "{state}");
        assert_eq!(state["manifest"]["sha256"], report["manifest_sha256"]);
    }
    eprintln!(
        "a reload on one host was served by all three {:?} after it was asked for",
        started.elapsed()
    );
    for host in [&a, &b, &c] {
        assert_eq!(answer(host).await, "second");
    }
    // Once, not again at the next polls.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let sent = "strata_cluster_messages_total{kind=\"operation\",direction=\"published\"} 1\n";
    assert!(a.metrics().await.contains(sent), "{}", a.metrics().await);
    let received = "strata_cluster_messages_total{kind=\"operation\",direction=\"received\"} 1\n";
    for host in [&b, &c] {
        let metrics = host.metrics().await;
        assert!(metrics.contains(received), "{metrics}");
        let (_, state) = host.admin_get("/admin/pipelines").await;
        assert_eq!(state["generation"], 2, "{state}");
    }

    // Every host's status says it is in step with the operation.
    let view = within(Duration::from_secs(15), "statuses catch up", || async {
        let (_, view) = c.admin_get("/admin/cluster").await;
        (view["hosts"]
            .as_array()
            .is_some_and(|hosts| hosts.iter().all(|h| h["generation"] == 2)))
        .then_some(view)
    })
    .await;
    assert_eq!(view["in_step"], true, "{view}");
    assert_eq!(view["connected"], true, "{view}");
    assert_eq!(view["latest_operation"]["origin"], name_of_a.as_str());
    assert_eq!(view["latest_operation"]["action"], "reload");

    // A rollback on another host is followed too.
    let (status, report) = b.admin_post("/admin/rollback").await;
    assert_eq!(status, 200, "{report}");
    for host in [&a, &c] {
        let state = serving(host, 3).await;
        assert_eq!(state["last_operation"]["action"], "rollback", "{state}");
        assert_eq!(answer(host).await, "first");
    }

    // A host that stops leaves the cluster.
    c.shutdown().await;
    members(&a, 2).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Two hosts reading one manifest and a third reading its own copy, of one
/// cluster, each manifest answering as given.
struct Trio {
    _dirs: [tempfile::TempDir; 2],
    path: std::path::PathBuf,
    own_path: std::path::PathBuf,
    a: TestHost,
    b: TestHost,
    c: TestHost,
}

impl Trio {
    async fn start(redis: &RedisServer, shared: &str, own: &str) -> Trio {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let path = dirs[0].path().join("strata.toml");
        let own_path = dirs[1].path().join("strata.toml");
        write(&path, &manifest(&redis.url(), shared));
        write(&own_path, &manifest(&redis.url(), own));
        let a = TestHost::start_file(&path).await;
        let b = TestHost::start_file(&path).await;
        let c = TestHost::start_file(&own_path).await;
        members(&a, 3).await;
        Trio {
            _dirs: dirs,
            path,
            own_path,
            a,
            b,
            c,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_build_fails_keeps_serving_and_says_so() {
    let redis = RedisServer::start();
    let Trio {
        _dirs: _kept,
        path,
        own_path,
        a,
        b,
        c,
    } = Trio::start(&redis, "first", "first").await;

    write(&path, &manifest(&redis.url(), "second"));
    // The third host's copy names a plugin that is not there.
    write(
        &own_path,
        &manifest(&redis.url(), "second")
            .replace(&toml_str(components::SCRIPTED), "\"missing.wasm\""),
    );
    let (status, report) = a.admin_post("/admin/reload").await;
    assert_eq!(status, 200, "{report}");
    serving(&b, 2).await;
    let state = within(Duration::from_secs(15), "the third host tries", || async {
        let (_, state) = c.admin_get("/admin/pipelines").await;
        (state["last_operation"]["trigger"] == "cluster").then_some(state)
    })
    .await;
    assert_eq!(state["generation"], 1, "{state}");
    assert_eq!(state["last_operation"]["result"], "failed", "{state}");
    let error = state["last_operation"]["error"].as_str().unwrap();
    assert!(error.contains("missing.wasm"), "{error}");
    assert_eq!(answer(&c).await, "first");
    assert_eq!(answer(&b).await, "second");

    // The cluster's view names the host that is out of step, and why.
    let view = within(Duration::from_secs(15), "the failure is shown", || async {
        let (_, view) = a.admin_get("/admin/cluster").await;
        let hosts = view["hosts"].as_array()?;
        hosts
            .iter()
            .any(|h| h["last_operation"]["result"] == "failed")
            .then_some(view.clone())
    })
    .await;
    assert_eq!(view["in_step"], false, "{view}");
    let hosts = view["hosts"].as_array().unwrap();
    let out: Vec<&Value> = hosts.iter().filter(|h| h["in_step"] == false).collect();
    assert_eq!(out.len(), 1, "{view}");
    assert_eq!(out[0]["generation"], 1);
    assert!(
        out[0]["last_operation"]["error"]
            .as_str()
            .unwrap()
            .contains("missing.wasm")
    );
    for host in [a, b, c] {
        host.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_hosts_serve_and_operate_alone_and_catch_up_when_it_is_back() {
    let (redis, dir, [a, b]) = cluster_of(|redis| manifest(redis, "first")).await;
    let path = dir.path().join("strata.toml");

    // Redis stops answering: connections hang, as in a partition.
    redis.pause();
    // An operator's reload still applies where it is asked for, even before
    // the host notices that Redis is gone...
    write(&path, &manifest(&redis.url(), "second"));
    let (status, report) = a.admin_post("/admin/reload").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["result"], "applied", "{report}");
    assert_eq!(answer(&a).await, "second");
    assert_eq!(answer(&b).await, "first");

    let body = within(Duration::from_secs(30), "the loss is noticed", || async {
        let (status, body) = a.admin_get("/admin/cluster").await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["error"]["code"], "shared_unavailable", "{body}");
    within(Duration::from_secs(30), "the metric says so", || async {
        let metrics = a.metrics().await;
        metrics.contains("strata_shared_connected 0").then_some(())
    })
    .await;
    // Requests need nothing from Redis.
    assert_eq!(answer(&b).await, "first");
    // A host starts without it (reading the files as they are now).
    let c = TestHost::start_file(&path).await;
    assert_eq!(answer(&c).await, "second");

    // ... and reaches the others once Redis is back.
    redis.resume();
    let state = within(Duration::from_secs(30), "the reload arrives", || async {
        let (_, state) = b.admin_get("/admin/pipelines").await;
        (state["generation"] == 2).then_some(state)
    })
    .await;
    assert_eq!(state["last_operation"]["trigger"], "cluster", "{state}");
    assert_eq!(answer(&b).await, "second");
    let view = members(&a, 3).await;
    assert_eq!(view["connected"], true, "{view}");
    for host in [a, b, c] {
        host.shutdown().await;
    }
}

#[tokio::test]
async fn a_host_without_shared_settings_serves_alone() {
    let host = TestHost::start(&manifest("", "alone")).await;
    let (status, body) = host.admin_get("/admin/cluster").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "no_cluster");
    host.shutdown().await;
}

/// Pipeline `p`: stage `first` (version one, passing on) with a canary
/// candidate that panics on every request it serves and is skipped, then
/// stage `second` answering. The error budget's short window needs ten
/// canary requests before it may trip a rollback.
fn canary_manifest(redis: &str) -> String {
    format!(
        "{SMALL_RUNTIME}
[reload]
watch = false

{shared}
[pipelines.p]
slo = {{ target = 0.9, latency_ms = 5000, windows = [{{ long_s = 120, short_s = 60, burn = 2.0 }}] }}

[[pipelines.p.stages]]
name = \"first\"
layer = \"rules\"
plugin = {one}
grants = [\"config\"]
on_error = \"skip\"

[pipelines.p.stages.candidate]
plugin = {misbehave}
mode = \"canary\"
percent = 100
max_burn_rate = 2.0
config = {{ mode = \"panic\" }}

[[pipelines.p.stages]]
name = \"second\"
layer = \"rules\"
plugin = {one}
grants = [\"config\"]
config = {{ respond = true }}
",
        one = toml_str(components::VERSION_ONE),
        misbehave = toml_str(components::MISBEHAVE),
        shared = shared(redis),
    )
}

/// The canary's short-window count as `host` sees it (its own and the
/// other hosts').
async fn canary_events(host: &TestHost) -> u64 {
    let (_, slo) = host.admin_get("/admin/pipelines/p/slo").await;
    slo["candidates"][0]["alerts"][0]["short"]["total"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_burning_the_budget_through_two_hosts_is_rolled_back_on_both() {
    let (_redis, _dir, [a, b]) = cluster_of(canary_manifest).await;

    // Six failing canary requests on each host: fewer than either needs
    // alone to trip the rollback.
    for host in [&a, &b] {
        for _ in 0..6 {
            let (status, body) = host.ask("p", "hi").await;
            assert_eq!(status, 200, "clients are not hurt by the canary: {body}");
        }
    }
    // Each host counts the other's.
    within(Duration::from_secs(15), "the counts are shared", || async {
        (canary_events(&a).await >= 12).then_some(())
    })
    .await;
    let (_, state) = a.admin_get("/admin/pipelines").await;
    assert_eq!(state["generation"], 1, "nothing tripped yet: {state}");

    // The next failure on the first host trips the rollback with seven of
    // its own: the cluster's traffic did.
    let (status, _) = a.ask("p", "hi").await;
    assert_eq!(status, 200);
    let state = serving(&a, 2).await;
    assert_eq!(
        state["last_operation"]["action"], "rollback_stage",
        "{state}"
    );
    assert_eq!(state["last_operation"]["trigger"], "burn", "{state}");
    // The second host follows: the edited manifest, without the candidate.
    let state = serving(&b, 2).await;
    assert_eq!(state["last_operation"]["trigger"], "cluster", "{state}");
    assert_eq!(
        state["pipelines"][0]["stages"][0]["candidate"],
        Value::Null,
        "{state}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Pipeline `desk`: the answer-bank stage, then a rules stage that answers
/// `generated` (remembered by the bank) or, when it is empty, escalates.
fn desk_manifest(redis: &str, generated: &str) -> String {
    let desk = bank_desk(
        &format!("[reload]\nwatch = false\n{}", shared(redis)),
        "remember = [\"rules\"]",
    );
    if generated.is_empty() {
        return desk;
    }
    desk.replace(
        "outcome = \"escalate\", reason = \"a person\"",
        &format!("outcome = \"respond\", answer = \"{generated}\""),
    )
}

/// A Redis server, a manifest written by `manifest` (given its URL) and
/// `N` hosts serving it, once they all belong to the cluster.
async fn cluster_of<const N: usize>(
    manifest: impl Fn(&str) -> String,
) -> (RedisServer, tempfile::TempDir, [TestHost; N]) {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    write(&path, &manifest(&redis.url()));
    let mut started = Vec::new();
    for _ in 0..N {
        started.push(TestHost::start_file(&path).await);
    }
    members(&started[0], N).await;
    let Ok(hosts) = <[TestHost; N]>::try_from(started) else {
        unreachable!("{N} hosts were started");
    };
    (redis, dir, hosts)
}

/// `host`'s answer to `question` once it comes from the answer bank.
async fn from_the_bank(host: &TestHost, question: &str) -> Value {
    within(Duration::from_secs(15), "the bank answers", || async {
        let (status, body) = host.ask("desk", question).await;
        (status == 200 && body["layer"] == "cache").then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewers_answer_on_one_host_is_served_from_the_bank_by_the_others() {
    let (_redis, dir, [a, b]) = cluster_of(|redis| desk_manifest(redis, "")).await;

    let question = "How do I reset my PIN?";
    let (status, escalated) = a.ask("desk", question).await;
    assert_eq!(status, 202, "{escalated}");
    let ticket = escalated["ticket"]["id"].as_i64().unwrap();
    let (status, body) = b.ask("desk", question).await;
    assert_eq!(status, 202, "nothing approved yet: {body}");
    let (status, resolved) = a
        .post(
            &format!("/v1/tickets/{ticket}/resolve"),
            serde_json::json!({"answer": "Reset it under Cards, then PIN."}),
        )
        .await;
    assert_eq!(status, 200, "{resolved}");
    let answered = from_the_bank(&b, question).await;
    assert_eq!(answered["output"], "Reset it under Cards, then PIN.");

    // A host that joins later has the approved answers too.
    let c = TestHost::start_file(&dir.path().join("strata.toml")).await;
    let answered = from_the_bank(&c, question).await;
    assert_eq!(answered["output"], "Reset it under Cards, then PIN.");
    for host in [a, b, c] {
        host.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_answer_remembered_on_one_host_is_a_hit_on_the_others() {
    let (_redis, _dir, [a, b]) =
        cluster_of(|redis| desk_manifest(redis, "generated on the first host")).await;

    let (status, body) = a.ask("desk", "what are your opening hours").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["layer"], "rules", "{body}");
    let hit = from_the_bank(&b, "what are your opening hours").await;
    assert_eq!(hit["output"], "generated on the first host");
    // An unrelated question is not.
    let (_, body) = b.ask("desk", "where is my card").await;
    assert_eq!(body["layer"], "rules", "{body}");
    a.shutdown().await;
    b.shutdown().await;
}

const TEAM_TOKEN: &str = "capped-team-token";

/// A host process (teams' tokens come from the environment) of the
/// cluster at `redis`, whose team `capped` may send three requests a
/// minute to pipeline `p`.
fn team_host(manifest: &Path, data: &Path) -> HostProcess {
    HostProcess::serve(
        env!("CARGO_BIN_EXE_strata-under-test"),
        manifest,
        |command| {
            command
                .arg("--data")
                .arg(data)
                .env("CAPPED_TOKEN", TEAM_TOKEN)
                .env("STRATA_ADMIN_TOKEN", "admin-token");
        },
    )
}

async fn team_ask(host: &HostProcess) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/pipelines/p", host.base()))
        .bearer_auth(TEAM_TOKEN)
        .json(&serde_json::json!({ "input": "hi" }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teams_rate_limit_holds_for_the_whole_cluster() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    let team = "[teams.capped]\ntoken_env = \"CAPPED_TOKEN\"\nrequests_per_minute = 3\n";
    write(&path, &format!("{team}{}", manifest(&redis.url(), "ok")));
    let a = team_host(&path, &dir.path().join("a"));
    let b = team_host(&path, &dir.path().join("b"));
    for _ in 0..2 {
        let (status, body) = team_ask(&a).await;
        assert_eq!(status, 200, "{body}");
    }
    // The second host counts the first one's two.
    let client = reqwest::Client::new();
    within(Duration::from_secs(15), "the counts are shared", || async {
        let teams: Value = client
            .get(format!("{}/admin/teams", b.admin_base()))
            .bearer_auth("admin-token")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (teams["teams"][0]["other_hosts"]["last_minute"] == 2).then_some(())
    })
    .await;
    let (status, body) = team_ask(&b).await;
    assert_eq!(status, 200, "the third request of the minute: {body}");
    let (status, body) = team_ask(&b).await;
    assert_eq!(status, 429, "the fourth, though this host saw one: {body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    a.kill();
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_given_one_name_still_follow_each_other() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    let text = manifest(&redis.url(), "first").replace("[shared]\n", "[shared]\nhost = \"twin\"\n");
    write(&path, &text);
    let a = TestHost::start_file(&path).await;
    let b = TestHost::start_file(&path).await;
    // One name, one status: both write it.
    for host in [&a, &b] {
        let view = members(host, 1).await;
        assert_eq!(view["connected"], true, "{view}");
    }
    write(
        &path,
        &text.replace("answer = \"first\"", "answer = \"second\""),
    );
    let (status, report) = a.admin_post("/admin/reload").await;
    assert_eq!(status, 200, "{report}");
    serving(&b, 2).await;
    assert_eq!(answer(&b).await, "second");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_is_followed_only_back_to_the_same_generation() {
    let redis = RedisServer::start();
    // The third host started from other files, so its previous generation
    // is not the one the others return to.
    let Trio {
        _dirs: _kept,
        path,
        own_path,
        a,
        b,
        c,
    } = Trio::start(&redis, "first", "its own first").await;

    write(&path, &manifest(&redis.url(), "second"));
    write(&own_path, &manifest(&redis.url(), "second"));
    let (status, _) = a.admin_post("/admin/reload").await;
    assert_eq!(status, 200);
    serving(&b, 2).await;
    serving(&c, 2).await;

    let (status, report) = a.admin_post("/admin/rollback").await;
    assert_eq!(status, 200, "{report}");
    let state = serving(&b, 3).await;
    assert_eq!(state["last_operation"]["action"], "rollback", "{state}");
    assert_eq!(answer(&b).await, "first");
    // Not twice: a second rollback would put "second" back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, state) = b.admin_get("/admin/pipelines").await;
    assert_eq!(state["generation"], 3, "{state}");
    assert_eq!(answer(&b).await, "first");
    let state = within(
        Duration::from_secs(15),
        "the third host refuses",
        || async {
            let (_, state) = c.admin_get("/admin/pipelines").await;
            (state["last_operation"]["action"] == "rollback").then_some(state)
        },
    )
    .await;
    assert_eq!(state["last_operation"]["result"], "failed", "{state}");
    assert_eq!(state["generation"], 2, "{state}");
    let error = state["last_operation"]["error"].as_str().unwrap();
    assert!(error.contains("previous generation"), "{error}");
    assert_eq!(answer(&c).await, "second");
    for host in [a, b, c] {
        host.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_outright_is_shown_stale_and_the_others_serve_on() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    write(&path, &manifest(&redis.url(), "first"));
    let a = TestHost::start_file(&path).await;
    let doomed = HostProcess::serve(env!("CARGO_BIN_EXE_strata-under-test"), &path, |command| {
        command.arg("--data").arg(dir.path().join("doomed"));
    });
    members(&a, 2).await;
    // SIGKILL: no shutdown, so its status stays behind.
    doomed.kill();
    let view = within(
        Duration::from_secs(30),
        "the dead host is stale",
        || async {
            let (_, view) = a.admin_get("/admin/cluster").await;
            let hosts = view["hosts"].as_array()?;
            (hosts.len() == 2 && hosts.iter().any(|h| h["stale"] == true)).then_some(view.clone())
        },
    )
    .await;
    // Only live hosts count towards being in step.
    assert_eq!(view["in_step"], true, "{view}");
    assert_eq!(answer(&a).await, "first");
    // A reload still applies, and the live host is in step after it.
    write(&path, &manifest(&redis.url(), "second"));
    let (status, report) = a.admin_post("/admin/reload").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(answer(&a).await, "second");
    let view = within(Duration::from_secs(15), "the status catches up", || async {
        let (_, view) = a.admin_get("/admin/cluster").await;
        let hosts = view["hosts"].as_array()?;
        hosts
            .iter()
            .any(|h| h["generation"] == 2 && h["in_step"] == true)
            .then_some(view.clone())
    })
    .await;
    assert_eq!(view["in_step"], true, "{view}");
    let hosts = view["hosts"].as_array().unwrap();
    assert_eq!(
        hosts.iter().filter(|h| h["stale"] == true).count(),
        1,
        "{view}"
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_restarts_empty_is_joined_again_and_numbering_starts_over() {
    let (mut redis, dir, [a, b]) = cluster_of(|redis| manifest(redis, "first")).await;
    let port = redis.port();
    let path = dir.path().join("strata.toml");
    // Number a few operations, so the hosts have seen more than a fresh
    // Redis will have.
    for (generation, answer_now) in [(2, "second"), (3, "third")] {
        write(&path, &manifest(&redis.url(), answer_now));
        let (status, _) = a.admin_post("/admin/reload").await;
        assert_eq!(status, 200);
        // Read by the other host before the file changes again.
        serving(&b, generation).await;
    }

    // Redis restarts without its data (no persistence).
    redis.kill();
    let restarted = RedisServer::start_on(port);
    members(&a, 2).await;
    members(&b, 2).await;
    // The first operation of the new data is numbered 1, below what the
    // hosts have seen, and written without a message: only a poll that
    // follows the new numbering finds it.
    write(&path, &manifest(&redis.url(), "fourth"));
    let cluster = format!("strata:test-{}-{port}", std::process::id());
    assert_eq!(
        restarted.command(&["INCR", &format!("{cluster}:seq")]),
        ":1\r\n"
    );
    let op = serde_json::json!({
        "seq": 1, "id": "written-by-hand", "origin": "elsewhere", "instance": "elsewhere",
        "action": "reload", "manifest_sha256": null, "at": 0,
    });
    let set = restarted.command(&["SET", &format!("{cluster}:op:1"), &op.to_string()]);
    assert_eq!(set, "+OK\r\n");
    for host in [&a, &b] {
        let state = serving(host, 4).await;
        assert_eq!(
            state["last_operation"]["actor"], "host elsewhere",
            "{state}"
        );
        assert_eq!(answer(host).await, "fourth");
    }
    a.shutdown().await;
    b.shutdown().await;
}
