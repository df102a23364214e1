//! Live operations: reloads under load, refused candidates, the file watch,
//! canary and shadow rollouts, automatic rollback, promotion, rollback to the
//! previous generation, the admin API's tokens, and the audit log.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use strata::auth::Tokens;
use strata_tests::{HostProcess, SMALL_RUNTIME, TestHost, components};

/// Copy `from` over `to` the way a careful deploy does: write aside, rename.
fn install(from: &str, to: &Path) {
    let aside = to.with_extension("wasm.part");
    std::fs::copy(from, &aside).unwrap();
    std::fs::rename(&aside, to).unwrap();
}

/// A two-stage pipeline whose stages both run `stage.wasm` from the test
/// directory: the answer carries both stages' version markers.
fn versioned_manifest(extra_stage: &str, reload: &str) -> String {
    format!(
        "{SMALL_RUNTIME}
[reload]
{reload}

[pipelines.p]
[[pipelines.p.stages]]
name = \"first\"
layer = \"rules\"
plugin = \"stage.wasm\"
grants = [\"config\"]
{extra_stage}

[[pipelines.p.stages]]
name = \"second\"
layer = \"rules\"
plugin = \"stage.wasm\"
grants = [\"config\"]
config = {{ respond = true }}
"
    )
}

fn directory_with(version: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    install(version, &dir.path().join("stage.wasm"));
    dir
}

/// One response seen by the load generator.
#[derive(Debug)]
struct Seen {
    status: u16,
    generation: u64,
    output: String,
    digests: Vec<String>,
}

/// Send requests from `clients` tasks until `stop` is set.
fn load(
    base: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Seen>>> {
    (0..clients)
        .map(|_| {
            let url = format!("{base}/v1/pipelines/p");
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let response = client.post(&url).json(&json!({"input": "hi"})).send().await;
                    let Ok(response) = response else {
                        seen.push(Seen {
                            status: 0,
                            generation: 0,
                            output: String::new(),
                            digests: vec![],
                        });
                        continue;
                    };
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    seen.push(Seen {
                        status,
                        generation: body["generation"].as_u64().unwrap_or(0),
                        output: body["output"].as_str().unwrap_or_default().to_owned(),
                        digests: body["stages"]
                            .as_array()
                            .map(|s| {
                                s.iter()
                                    .map(|s| s["digest"].as_str().unwrap_or("").to_owned())
                                    .collect()
                            })
                            .unwrap_or_default(),
                    });
                }
                seen
            })
        })
        .collect()
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Vec<Seen>>>) -> Vec<Seen> {
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

fn digest_of(file: &str) -> String {
    let bytes = std::fs::read(file).unwrap();
    // The host reports digests as sha256:<hex>; compute the same here from
    // what `strata check` style loading reports, via a manifest load.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.wasm"), &bytes).unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        "[pipelines.x]\n[[pipelines.x.stages]]\nname = \"x\"\nlayer = \"x\"\nplugin = \"c.wasm\"\n",
    )
    .unwrap();
    let manifest = strata::Manifest::load(&dir.path().join("m.toml")).unwrap();
    manifest.pipelines["x"].stages[0].plugin.digest.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_nothing_and_never_mix_generations() {
    let dir = directory_with(components::VERSION_ONE);
    let stage = dir.path().join("stage.wasm");
    let host = TestHost::start_in(
        dir,
        &versioned_manifest("", "watch = false"),
        Tokens::default(),
    )
    .await;
    let digests = HashMap::from([
        ("v1", digest_of(components::VERSION_ONE)),
        ("v2", digest_of(components::VERSION_TWO)),
    ]);

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(host.base(), 4, stop.clone());
    // Which version each generation serves.
    let mut versions = BTreeMap::from([(1u64, "v1")]);
    for round in 0..60 {
        let (version, file) = if round % 2 == 0 {
            ("v2", components::VERSION_TWO)
        } else {
            ("v1", components::VERSION_ONE)
        };
        install(file, &stage);
        let (status, report) = host.admin_post("/admin/reload").await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["result"], "applied", "{report}");
        let generation = report["to_generation"].as_u64().unwrap();
        assert_eq!(generation, report["from_generation"].as_u64().unwrap() + 1);
        versions.insert(generation, version);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let seen = collect(clients).await;

    assert!(seen.len() > 100, "only {} requests ran", seen.len());
    let mut per_generation: BTreeMap<u64, usize> = BTreeMap::new();
    for response in &seen {
        assert_eq!(
            response.status, 200,
            "a request failed during reloads: {response:?}"
        );
        let version = versions[&response.generation];
        // Both stages ran the version of the generation the response names.
        assert_eq!(
            response.output,
            format!("hi |{version} |{version}"),
            "{response:?}"
        );
        assert!(
            response.digests.iter().all(|d| *d == digests[version]),
            "a response mixed stage versions: {response:?}"
        );
        *per_generation.entry(response.generation).or_default() += 1;
    }
    assert!(
        per_generation.len() > 10,
        "traffic reached only {per_generation:?}"
    );
    host.shutdown().await;
}

/// A way to break the candidate: what it is, how, and what the refusal says.
type Attempt<'a> = (&'static str, Box<dyn Fn() + 'a>, &'static str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_candidates_are_refused_while_traffic_continues() {
    let dir = directory_with(components::VERSION_ONE);
    let stage = dir.path().join("stage.wasm");
    let host = TestHost::start_in(
        dir,
        &versioned_manifest("", "watch = false"),
        Tokens::default(),
    )
    .await;
    let manifest = std::fs::read_to_string(host.manifest()).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(host.base(), 2, stop.clone());

    let attempts: Vec<Attempt> = vec![
        (
            "does not compile",
            Box::new(|| std::fs::write(&stage, b"\0asm\x01\0\0\0 garbage").unwrap()),
            "is not a valid component",
        ),
        (
            "truncated mid-write",
            Box::new(|| {
                let bytes = std::fs::read(components::VERSION_TWO).unwrap();
                std::fs::write(&stage, &bytes[..bytes.len() / 2]).unwrap();
            }),
            "is not a valid component",
        ),
        (
            "imports what it is not granted",
            Box::new(|| install(components::READS_FILE, &stage)),
            "imports what the stage is not granted",
        ),
        (
            "digest mismatch",
            Box::new(|| {
                install(components::VERSION_TWO, &stage);
                let pinned = manifest.replace(
                    "name = \"first\"",
                    &format!("name = \"first\"\nsha256 = \"{}\"", "ab".repeat(32)),
                );
                std::fs::write(host.manifest(), pinned).unwrap();
            }),
            "digest mismatch",
        ),
    ];
    for (what, break_it, expected) in &attempts {
        break_it();
        let (status, body) = host.admin_post("/admin/reload").await;
        assert_eq!(status, 422, "{what}: {body}");
        assert_eq!(body["error"]["code"], "reload_failed", "{what}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{what}: {message}");
        assert_eq!(
            body["report"]["to_generation"], 1,
            "{what}: nothing changes"
        );
        let (_, state) = host.admin_get("/admin/pipelines").await;
        assert_eq!(state["generation"], 1);
        assert_eq!(state["last_operation"]["result"], "failed");
        assert!(
            state["last_operation"]["error"]
                .as_str()
                .unwrap()
                .contains(expected)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let seen = collect(clients).await;
    assert!(!seen.is_empty());
    for response in &seen {
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.generation, 1);
        assert_eq!(response.output, "hi |v1 |v1");
    }
    let (_, audit) = host.admin_get("/admin/audit").await;
    let failed = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] == "failed")
        .count();
    assert_eq!(failed, attempts.len(), "{audit}");
    drop(attempts);
    host.shutdown().await;
}

async fn wait_for_generation(host: &TestHost, generation: u64) -> Value {
    for _ in 0..200 {
        let (_, state) = host.admin_get("/admin/pipelines").await;
        if state["generation"].as_u64() == Some(generation) {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("generation {generation} never came");
}

#[tokio::test]
async fn the_file_watch_reloads_once_files_settle() {
    let dir = directory_with(components::VERSION_ONE);
    let stage = dir.path().join("stage.wasm");
    let host = TestHost::start_in(
        dir,
        &versioned_manifest("", "watch = true\ndebounce_ms = 200"),
        Tokens::default(),
    )
    .await;

    install(components::VERSION_TWO, &stage);
    let state = wait_for_generation(&host, 2).await;
    assert_eq!(state["last_operation"]["trigger"], "watch");
    let (_, body) = host.ask("p", "hi").await;
    assert_eq!(body["output"], "hi |v2 |v2");

    // A file written in place in two halves with a pause: the half file is
    // refused (it does not compile), then the whole one loads.
    let bytes = std::fs::read(components::VERSION_ONE).unwrap();
    std::fs::write(&stage, &bytes[..bytes.len() / 2]).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, body) = host.ask("p", "hi").await;
    assert_eq!(
        body["output"], "hi |v2 |v2",
        "a half-written file must never serve"
    );
    std::fs::write(&stage, &bytes).unwrap();
    wait_for_generation(&host, 3).await;
    let (_, body) = host.ask("p", "hi").await;
    assert_eq!(body["output"], "hi |v1 |v1");
    host.shutdown().await;
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_token() {
    let dir = directory_with(components::VERSION_ONE);
    let tokens = Tokens::new(
        Some("client-t".into()),
        Some("reviewer-t".into()),
        Some("admin-t".into()),
    );
    let host = TestHost::start_in(dir, &versioned_manifest("", "watch = false"), tokens).await;
    let url = format!("{}/admin/reload", host.admin_base());
    let client = reqwest::Client::new();
    let status = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (
            status,
            body["error"]["code"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert_eq!(
        status(client.post(&url)).await,
        (401, "unauthenticated".to_owned())
    );
    assert_eq!(
        status(client.post(&url).bearer_auth("nope")).await,
        (401, "unauthenticated".to_owned())
    );
    assert_eq!(
        status(client.post(&url).bearer_auth("reviewer-t")).await,
        (403, "forbidden".to_owned())
    );
    assert_eq!(
        status(client.post(&url).bearer_auth("client-t")).await,
        (403, "forbidden".to_owned())
    );
    assert_eq!(
        status(
            client
                .post(&url)
                .bearer_auth("admin-t")
                .header("content-type", "application/json")
        )
        .await
        .0,
        200
    );
    let (_, audit) = host
        .send(
            client
                .get(format!("{}/admin/audit", host.admin_base()))
                .bearer_auth("admin-t"),
        )
        .await;
    let actor = audit["entries"][0]["actor"].as_str().unwrap();
    assert!(
        actor.starts_with("admin:"),
        "the audit log names the token: {actor}"
    );
    assert!(!actor.contains("admin-t"), "never the token itself");
    host.shutdown().await;
}

const CANARY: &str = "
[pipelines.p.stages.candidate]
plugin = \"candidate.wasm\"
mode = \"canary\"
percent = 30
";

#[tokio::test]
async fn a_canary_gets_its_share_and_a_retry_meets_the_same_version() {
    let dir = directory_with(components::VERSION_ONE);
    install(components::VERSION_TWO, &dir.path().join("candidate.wasm"));
    // Only the first stage has a candidate; the second stays v1.
    let host = TestHost::start_in(
        dir,
        &versioned_manifest(CANARY, "watch = false"),
        Tokens::default(),
    )
    .await;
    let mut candidate = 0;
    let total = 1000;
    for i in 0..total {
        let (status, body) = host
            .send(
                host.request(reqwest::Method::POST, "/v1/pipelines/p")
                    .header("x-request-id", format!("req-{i}"))
                    .json(&json!({"input": "hi"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        match body["output"].as_str().unwrap() {
            "hi |v2 |v1" => {
                candidate += 1;
                assert_eq!(body["stages"][0]["version"], "candidate");
            }
            "hi |v1 |v1" => assert_eq!(body["stages"][0]["version"], "live"),
            other => panic!("unexpected output {other}"),
        }
    }
    // 30 % of 1000, within five points.
    assert!(
        (250..=350).contains(&candidate),
        "the canary served {candidate} of {total}"
    );

    let mut outputs = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let (_, body) = host
            .send(
                host.request(reqwest::Method::POST, "/v1/pipelines/p")
                    .header("x-request-id", "the-same-id")
                    .json(&json!({"input": "hi"})),
            )
            .await;
        outputs.insert(body["output"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        outputs.len(),
        1,
        "a retried id saw different versions: {outputs:?}"
    );

    // Every request counted towards the pipeline's budget; none was bad.
    let (status, slo) = host.admin_get("/admin/pipelines/p/slo").await;
    assert_eq!(status, 200);
    assert_eq!(slo["target"], 0.99);
    let alert = &slo["alerts"][0];
    assert_eq!(alert["long_s"], 3600);
    assert_eq!(alert["short_s"], 300);
    assert_eq!(alert["long"]["total"], total + 10);
    assert_eq!(alert["long"]["bad"], 0);
    assert_eq!(alert["firing"], false);
    let canary = &slo["candidates"][0];
    assert_eq!(canary["stage"], "first");
    let retried_on_candidate = if outputs.contains("hi |v2 |v1") {
        10
    } else {
        0
    };
    assert_eq!(
        canary["alerts"][0]["long"]["total"],
        candidate + retried_on_candidate
    );
    host.shutdown().await;
}

#[tokio::test]
async fn shadow_outcomes_are_recorded_and_diffed_never_returned() {
    let dir = directory_with(components::VERSION_ONE);
    install(components::VERSION_TWO, &dir.path().join("candidate.wasm"));
    let shadow = CANARY.replace("mode = \"canary\"\npercent = 30", "mode = \"shadow\"");
    let host = TestHost::start_in(
        dir,
        &versioned_manifest(&shadow, "watch = false"),
        Tokens::default(),
    )
    .await;
    for _ in 0..20 {
        let (status, body) = host.ask("p", "hi").await;
        assert_eq!(status, 200);
        assert_eq!(
            body["output"], "hi |v1 |v1",
            "a shadow's outcome is never returned"
        );
    }
    let mut summary = Value::Null;
    for _ in 0..100 {
        let (_, body) = host.admin_get("/admin/pipelines/p/shadow").await;
        if body["stages"][0]["runs"].as_i64() == Some(20) {
            summary = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stage = &summary["stages"][0];
    assert_eq!(stage["stage"], "first", "{summary}");
    assert_eq!(stage["differing"], 20, "{summary}");
    let example = &stage["differences"][0];
    assert_eq!(example["live"]["input"], "hi |v1");
    assert_eq!(example["candidate"]["input"], "hi |v2");
    host.shutdown().await;
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_automatically() {
    let dir = directory_with(components::VERSION_ONE);
    install(components::MISBEHAVE, &dir.path().join("candidate.wasm"));
    let canary = "
on_error = \"skip\"
[pipelines.p.stages.candidate]
plugin = \"candidate.wasm\"
mode = \"canary\"
percent = 50
max_burn_rate = 2.0
config = { mode = \"panic\" }
";
    let manifest = versioned_manifest(canary, "watch = false").replace(
        "[pipelines.p]\n",
        "[pipelines.p]\nslo = { target = 0.9, latency_ms = 5000, windows = [{ long_s = 30, short_s = 5, burn = 2.0 }] }\n",
    );
    let host = TestHost::start_in(dir, &manifest, Tokens::default()).await;
    let mut rolled_back = false;
    for _ in 0..200 {
        let (status, _) = host.ask("p", "hi").await;
        // The failing canary stage is skipped: clients are not hurt.
        assert_eq!(status, 200);
        let (_, state) = host.admin_get("/admin/pipelines").await;
        if state["last_operation"]["action"] == "rollback_stage" {
            assert_eq!(state["generation"], 2);
            assert_eq!(state["pipelines"][0]["stages"][0]["candidate"], Value::Null);
            assert_eq!(state["last_operation"]["trigger"], "burn");
            rolled_back = true;
            break;
        }
    }
    assert!(rolled_back, "the canary was never rolled back");
    let written = std::fs::read_to_string(host.manifest()).unwrap();
    assert!(
        !written.contains("candidate.wasm"),
        "the manifest still has the candidate:\n{written}"
    );
    // The audit entry is written right after the operation is published.
    let mut audit = Value::Null;
    for _ in 0..100 {
        let (_, entries) = host.admin_get("/admin/audit").await;
        if entries["entries"][0]["action"] == "rollback_stage" {
            audit = entries;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let entry = &audit["entries"][0];
    assert_eq!(entry["action"], "rollback_stage", "{audit}");
    assert!(
        entry["actor"].as_str().unwrap().contains("burn rate"),
        "{entry}"
    );
    assert_eq!(entry["changes"][0]["stage"], "first");
    assert!(entry["changes"][0]["new_candidate"].is_null());
    host.shutdown().await;
}

#[tokio::test]
async fn promote_rollback_and_previous_generation() {
    let dir = directory_with(components::VERSION_ONE);
    install(components::VERSION_TWO, &dir.path().join("candidate.wasm"));
    let manifest = format!(
        "# kept by edits\n{}",
        versioned_manifest(CANARY, "watch = false")
    );
    let host = TestHost::start_in(dir, &manifest, Tokens::default()).await;
    let v2 = digest_of(components::VERSION_TWO);

    let (status, report) = host
        .admin_post("/admin/pipelines/p/stages/first/promote")
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["to_generation"], 2);
    assert_eq!(report["changes"][0]["new_digest"], v2);
    let written = std::fs::read_to_string(host.manifest()).unwrap();
    assert!(
        written.starts_with("# kept by edits"),
        "comments survive:\n{written}"
    );
    assert!(
        written.contains("plugin = \"candidate.wasm\"")
            && !written.contains("[pipelines.p.stages.candidate]")
    );
    let (_, body) = host.ask("p", "hi").await;
    assert_eq!(body["output"], "hi |v2 |v1");

    let (status, body) = host
        .admin_post("/admin/pipelines/p/stages/first/rollback")
        .await;
    assert_eq!(status, 409, "no candidate left to roll back: {body}");
    let (status, _) = host
        .admin_post("/admin/pipelines/p/stages/nope/promote")
        .await;
    assert_eq!(status, 404);

    // One call serves the previous generation again, under a new number.
    let (status, report) = host.admin_post("/admin/rollback").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["to_generation"], 3);
    let (_, body) = host.ask("p", "hi").await;
    assert_eq!(body["generation"], 3);
    // Generation 1 had v1 live and v2 as a canary: so does generation 3.
    let (_, state) = host.admin_get("/admin/pipelines").await;
    let first = &state["pipelines"][0]["stages"][0];
    assert_eq!(
        first["digest"],
        digest_of(components::VERSION_ONE),
        "{state}"
    );
    assert_eq!(first["candidate"]["digest"], v2, "{state}");
    assert_eq!(first["candidate"]["mode"], "canary");
    host.shutdown().await;
}

#[tokio::test]
async fn the_audit_log_records_capability_changes() {
    let dir = directory_with(components::VERSION_ONE);
    let host = TestHost::start_in(
        dir,
        &versioned_manifest("", "watch = false"),
        Tokens::default(),
    )
    .await;
    let manifest = std::fs::read_to_string(host.manifest()).unwrap();
    let scripted = strata_tests::toml_str(components::SCRIPTED);
    let changed = manifest.replacen(
        "plugin = \"stage.wasm\"\ngrants = [\"config\"]\n",
        &format!(
            "plugin = {scripted}\ngrants = [\"config\", \"log\"]\nconfig = {{ log = \"hi\" }}\n"
        ),
        1,
    );
    std::fs::write(host.manifest(), changed).unwrap();
    let (status, report) = host.admin_post("/admin/reload").await;
    assert_eq!(status, 200, "{report}");
    let (_, audit) = host.admin_get("/admin/audit?limit=1").await;
    let change = &audit["entries"][0]["changes"][0];
    assert_eq!(change["stage"], "first");
    assert_eq!(change["change"], "changed");
    assert_eq!(change["grants_added"], json!(["log"]));
    assert_eq!(
        change["imports_added"],
        json!(["strata:pipeline/log@0.2.0"])
    );
    assert_eq!(change["settings_changed"], true);
    assert_ne!(change["old_digest"], change["new_digest"]);
    assert_eq!(audit["entries"][0]["result"], "applied");
    host.shutdown().await;
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk() {
    // Started directly, with the default cache in the data directory.
    let dir = directory_with(components::VERSION_ONE);
    let manifest = dir.path().join("strata.toml");
    std::fs::write(&manifest, versioned_manifest("", "watch = false")).unwrap();
    let mut options = strata::HostOptions::new(&manifest);
    options.listen = Some("127.0.0.1:0".parse().unwrap());
    options.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    options.data_dir = Some(dir.path().join("data"));
    options.tokens = Some(Tokens::default());
    let host = strata::start(options.clone()).await.unwrap();
    host.shutdown().await;
    let cache = dir.path().join("data").join("compile-cache");
    let files = walk(&cache);
    assert!(
        !files.is_empty(),
        "nothing was cached in {}",
        cache.display()
    );
    // A restart finds them (and serves as before).
    let host = strata::start(options).await.unwrap();
    let body: Value = reqwest::Client::new()
        .post(format!("http://{}/v1/pipelines/p", host.addr()))
        .json(&json!({"input": "hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["output"], "hi |v1 |v1");
    assert_eq!(
        walk(&cache).len(),
        files.len(),
        "nothing was compiled again"
    );
    host.shutdown().await;
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// SIGHUP reloads a host running as its own process.
#[cfg(unix)]
#[test]
fn sighup_reloads() {
    let dir = directory_with(components::VERSION_ONE);
    let manifest = dir.path().join("strata.toml");
    std::fs::write(&manifest, versioned_manifest("", "watch = false")).unwrap();
    let mut host = HostProcess::serve(env!("CARGO_BIN_EXE_strata-under-test"), &manifest, |_| {});

    install(components::VERSION_TWO, &dir.path().join("stage.wasm"));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &host.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let event = host.next_message("reload applied");
    assert_eq!(event["trigger"], "signal");
    assert_eq!(event["generation"], 2);
    host.kill();
}
