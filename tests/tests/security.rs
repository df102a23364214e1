//! Observability and access: roles on every route, Prometheus metrics,
//! structured logs, and `strata audit`.

use serde_json::{Value, json};
use strata::auth::Tokens;
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
config = {{ outcome = \"escalate\", reason = \"a person\", log = \"triage ran\" }}

[pipelines.crash]
[[pipelines.crash.stages]]
name = \"broken\"
layer = \"rules\"
plugin = {}
grants = [\"config\"]
on_error = \"fail\"
config = {{ mode = \"panic\" }}
",
        toml_str(components::SCRIPTED),
        toml_str(components::MISBEHAVE)
    )
}

fn tokens() -> Tokens {
    Tokens::new(
        Some("client-t".into()),
        Some("reviewer-t".into()),
        Some("admin-t".into()),
    )
}

async fn code(host: &TestHost, request: reqwest::RequestBuilder) -> (u16, String) {
    let (status, body) = host.send(request).await;
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn each_role_gets_401_without_a_token_and_403_with_another_roles() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start_in(dir, &manifest(), tokens()).await;
    let client_route = || {
        host.request(reqwest::Method::POST, "/v1/pipelines/desk")
            .json(&json!({"input": "x"}))
    };
    let reviewer_route = || host.request(reqwest::Method::GET, "/v1/tickets");

    let unauthenticated = (401, "unauthenticated".to_owned());
    let forbidden = (403, "forbidden".to_owned());
    // Client routes.
    assert_eq!(code(&host, client_route()).await, unauthenticated);
    assert_eq!(
        code(&host, client_route().bearer_auth("wrong")).await,
        unauthenticated
    );
    assert_eq!(
        code(&host, client_route().bearer_auth("reviewer-t")).await,
        forbidden
    );
    assert_eq!(
        code(&host, client_route().bearer_auth("client-t")).await.0,
        202
    );
    assert_eq!(
        code(&host, client_route().bearer_auth("admin-t")).await.0,
        202
    );
    // Reviewer routes.
    assert_eq!(code(&host, reviewer_route()).await, unauthenticated);
    assert_eq!(
        code(&host, reviewer_route().bearer_auth("client-t")).await,
        forbidden
    );
    assert_eq!(
        code(&host, reviewer_route().bearer_auth("reviewer-t"))
            .await
            .0,
        200
    );
    assert_eq!(
        code(&host, reviewer_route().bearer_auth("admin-t")).await.0,
        200
    );
    // The health check needs nothing.
    assert_eq!(host.get("/healthz").await.0, 200);
    // A 401 says how to authenticate.
    let response = client_route().send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    host.shutdown().await;
}

#[tokio::test]
async fn metrics_count_requests_answers_failures_and_operations() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start_in(dir, &manifest(), Tokens::default()).await;
    for _ in 0..3 {
        assert_eq!(host.ask("desk", "help").await.0, 202);
    }
    assert_eq!(host.ask("crash", "x").await.0, 502);
    let (_, queue) = host.get("/v1/tickets").await;
    let ticket = queue["tickets"][0]["id"].as_i64().unwrap();
    let (status, _) = host
        .post(
            &format!("/v1/tickets/{ticket}/resolve"),
            json!({"reviewer": "ana", "answer": "done"}),
        )
        .await;
    assert_eq!(status, 200);

    let response = reqwest::get(format!("{}/metrics", host.admin_base()))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    let expect = [
        "strata_requests_total{pipeline=\"desk\",status=\"escalated\",layer=\"rules\",stage=\"triage\"} 3",
        "strata_requests_total{pipeline=\"crash\",status=\"failed\",layer=\"rules\",stage=\"broken\"} 1",
        "strata_stage_failures_total{pipeline=\"crash\",stage=\"broken\",kind=\"trap\"} 1",
        "strata_answers_total{pipeline=\"desk\",layer=\"human\"} 1",
        "strata_time_to_value_seconds_count{pipeline=\"desk\",layer=\"human\"} 1",
        "strata_stage_duration_seconds_count{pipeline=\"desk\",stage=\"triage\",layer=\"rules\"} 3",
        "strata_operations_total{action=\"start\",result=\"applied\"} 1",
        "strata_generation 1",
        "strata_slo_burn_rate{pipeline=\"crash\",window=\"long:3600s\"} 99.9",
        "strata_slo_alert_firing{pipeline=\"crash\",window=\"3600s/300s\"} 1",
        "strata_slo_alert_firing{pipeline=\"desk\",window=\"3600s/300s\"} 0",
        "# TYPE strata_request_duration_seconds histogram",
    ];
    for line in expect {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    // Each of the four real-time requests passed through every phase once;
    // the reviewer's resolution is no pipeline run.
    for phase in ["receive", "handoff", "run", "keep", "respond"] {
        let line = format!("strata_request_phase_seconds_count{{phase=\"{phase}\"}} 4");
        assert!(text.contains(&line), "missing `{line}` in:\n{text}");
    }
    host.shutdown().await;
}

#[test]
fn log_lines_about_a_request_carry_its_id_pipeline_generation_stage_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("strata.toml");
    std::fs::write(&manifest, self::manifest()).unwrap();
    let mut host = HostProcess::serve(env!("CARGO_BIN_EXE_strata-under-test"), &manifest, |_| {});
    let addr = host.base().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body: Value = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("{addr}/v1/pipelines/desk"))
            .json(&json!({"input": "hi"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let guest = host.next_event(|e| e["message"] == "triage ran");
    assert_eq!(guest["request_id"], body["request_id"], "{guest}");
    assert_eq!(guest["pipeline"], "desk");
    assert_eq!(guest["generation"], 1);
    assert_eq!(guest["stage"], "triage");
    assert_eq!(guest["digest"], body["stages"][0]["digest"]);
    assert_eq!(guest["level"], "INFO");

    runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("{addr}/v1/pipelines/crash"))
            .json(&json!({"input": "hi"}))
            .send()
            .await
            .unwrap();
    });
    let failure = host.next_event(|e| e["kind"] == "trap");
    assert_eq!(failure["stage"], "broken", "{failure}");
    assert!(failure["digest"].as_str().unwrap().starts_with("sha256:"));
    // The request's span names the request, pipeline and generation.
    let span = &failure["span"];
    assert_eq!(span["pipeline"], "crash", "{failure}");
    assert_eq!(span["generation"], 1);
    assert!(span["request_id"].is_string());
    host.kill();
}

fn strata(args: &[&str]) -> (i32, String, String) {
    strata_tests::run_cli(env!("CARGO_BIN_EXE_strata-under-test"), args)
}

#[test]
fn audit_describes_every_stage_and_enforces_chosen_policies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    let digest = {
        std::fs::write(
            &path,
            format!(
                "[pipelines.p]\n[[pipelines.p.stages]]\nname = \"a\"\nlayer = \"rules\"\nplugin = {}\n",
                toml_str(components::NORMALISE)
            ),
        )
        .unwrap();
        strata::Manifest::load(&path).unwrap().pipelines["p"].stages[0]
            .plugin
            .digest
            .hex()
            .to_owned()
    };
    // One pinned stage with limits; one unpinned stage, without limits,
    // importing what it is not granted (it could never load).
    std::fs::write(
        &path,
        format!(
            "[pipelines.p]
[[pipelines.p.stages]]
name = \"clean\"
layer = \"rules\"
plugin = {}
sha256 = \"{digest}\"
limits = {{ timeout_ms = 50, memory_mib = 8 }}

[[pipelines.p.stages]]
name = \"nosy\"
layer = \"rules\"
plugin = {}
",
            toml_str(components::NORMALISE),
            toml_str(components::READS_FILE)
        ),
    )
    .unwrap();
    let manifest = path.to_str().unwrap();

    let (code, text, stderr) = strata(&["audit", manifest]);
    assert_eq!(code, 0, "flags alone do not fail an audit: {stderr}");
    assert!(text.contains("p/clean (layer rules)"), "{text}");
    assert!(
        text.contains(&format!("sha256    {digest} (pinned)")),
        "{text}"
    );
    assert!(
        text.contains(
            "! wasi:filesystem/preopens@0.2.6 (needs grant \"wasi:filesystem\", not granted)"
        ),
        "{text}"
    );
    assert!(
        text.contains("! strata:pipeline/log@0.2.0 (needs grant \"log\", not granted)"),
        "{text}"
    );
    assert!(
        text.contains("wasi:cli/stdout@0.2.6 (locked-down WASI)"),
        "{text}"
    );
    assert!(
        text.contains("  init      runs once at load, under the same grants and limits"),
        "{text}"
    );
    assert!(text.contains("flag      unpinned"), "{text}");
    assert!(text.contains("flag      no-limits"), "{text}");
    assert!(text.contains("flag      ungranted"), "{text}");

    for (deny, passes) in [
        ("unpinned", false),
        ("no-limits", false),
        ("ungranted", false),
        ("all", false),
    ] {
        let (code, text, _) = strata(&["audit", manifest, "--deny", deny]);
        assert_eq!(code == 0, passes, "--deny {deny}:\n{text}");
        assert!(text.contains("FAILS"), "{text}");
    }

    let (code, json, _) = strata(&["audit", manifest, "--json", "--deny", "unpinned"]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["passes"], false);
    let stages = report["stages"].as_array().unwrap();
    assert_eq!(stages[0]["breaks"], json!([]));
    // A stage built with the SDK exports `init` too (its default keeps
    // nothing).
    assert_eq!(
        stages[0]["exports"],
        json!(["strata:pipeline/init@0.2.0", "strata:pipeline/stage@0.2.0"])
    );
    // `normalise` is `no_std` (`no_std_runtime!`): it can reach no WASI at
    // all. If a build let `std` in, it would import `wasi:cli` and the rest.
    let imports = stages[0]["imports"].as_array().unwrap();
    assert!(
        imports
            .iter()
            .all(|i| !i["name"].as_str().unwrap().starts_with("wasi:")),
        "{imports:?}"
    );
    assert_eq!(
        stages[1]["breaks"],
        json!(["ungranted", "unpinned", "no-limits"])
    );
    let imports = stages[1]["imports"].as_array().unwrap();
    assert!(
        imports
            .iter()
            .any(|i| i["name"] == "wasi:filesystem/types@0.2.6" && i["allowed"] == false)
    );

    // A component that is not a stage always fails the audit.
    std::fs::write(
        &path,
        format!(
            "[pipelines.p]\n[[pipelines.p.stages]]\nname = \"x\"\nlayer = \"rules\"\nplugin = {}\nsha256 = \"{}\"\nlimits = {{}}\n",
            toml_str(components::NOT_A_STAGE),
            strata::Manifest::parse(&path, &format!("[pipelines.p]\n[[pipelines.p.stages]]\nname = \"x\"\nlayer = \"rules\"\nplugin = {}\n", toml_str(components::NOT_A_STAGE))).unwrap().pipelines["p"].stages[0].plugin.digest.hex()
        ),
    )
    .unwrap();
    let (code, text, _) = strata(&["audit", manifest]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("BROKEN    does not export strata:pipeline/stage@0.2.0 or @0.1.0"),
        "{text}"
    );
}

#[test]
fn audit_names_where_the_host_itself_sends_data() {
    let demo = strata_tests::demo_manifest();
    let (code, text, stderr) = strata(&["audit", demo.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(text.contains("host egress (outside any stage)"), "{text}");
    assert!(
        text.contains("  models    local http://127.0.0.1:8000/v1"),
        "{text}"
    );
    assert!(
        text.contains("  callbacks 127.0.0.1:9000 (signed with the key in STRATA_CALLBACK_SECRET)"),
        "{text}"
    );
    assert!(text.contains("  shared    none"), "{text}");
    let (_, json, _) = strata(&["audit", demo.to_str().unwrap(), "--json"]);
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        report["egress"]["callbacks"]["allow"],
        json!(["127.0.0.1:9000"])
    );
    assert_eq!(
        report["egress"]["model_providers"]["local"],
        "http://127.0.0.1:8000/v1"
    );
    assert_eq!(report["egress"]["shared"], Value::Null);

    // A host of a cluster says so, without the Redis password.
    let dir = tempfile::tempdir().unwrap();
    let clustered = strata_tests::demo_manifest_in(dir.path(), strata_tests::UNREACHABLE_PROVIDER);
    let text = std::fs::read_to_string(&clustered).unwrap()
        + "\n[shared]\nredis = \"redis://strata:s3cret@10.0.0.7:6379/0\"\ncluster = \"support\"\n";
    std::fs::write(&clustered, text).unwrap();
    let (code, text, stderr) = strata(&["audit", clustered.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        text.contains(
            "  shared    redis://***@10.0.0.7:6379/0 (cluster \"support\"): this host applies"
        ),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
}
