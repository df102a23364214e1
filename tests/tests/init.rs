//! A stage's `init`: run once when the host loads the stage, and every fresh
//! instance starts from the state it left; a failing `init` refuses the
//! stage with the guest's own message and keeps the generation served.

use strata::auth::Tokens;
use strata_tests::{SMALL_RUNTIME, TestHost, components, toml_str};

fn primed(config: &str, extra: &str) -> String {
    format!(
        "{SMALL_RUNTIME}
[reload]
watch = false

[pipelines.p]
[[pipelines.p.stages]]
name = \"primed\"
layer = \"rules\"
plugin = {}
grants = [\"config\"]
on_error = \"fail\"
limits = {{ timeout_ms = 500, memory_mib = 16 }}
config = {{ {config} }}
{extra}
",
        toml_str(components::PRIMED)
    )
}

/// Why the host refused to start with `manifest`.
async fn refusal(manifest: &str, why: &str) -> String {
    match TestHost::try_start(manifest).await {
        Ok(_) => panic!("the host started, yet {why}"),
        Err(error) => format!("{error:#}"),
    }
}

async fn answer(host: &TestHost, input: &str) -> String {
    let (status, body) = host.ask("p", input).await;
    assert_eq!(status, 200, "{body}");
    body["output"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_fresh_instance_starts_from_the_state_init_left() {
    let host = TestHost::start(&primed("greeting = \"bonjour\"", "")).await;
    for _ in 0..3 {
        // `init` ran once, before the snapshot; `handle` counts from zero in
        // every instance, so nothing a request did is seen by the next.
        assert_eq!(answer(&host, "hi").await, "bonjour inits=1 calls=1");
    }
    host.shutdown().await;
}

#[tokio::test]
async fn an_init_that_asks_not_to_be_kept_leaves_nothing() {
    let host = TestHost::start(&primed("keep = \"false\"", "")).await;
    assert_eq!(answer(&host, "hi").await, "(none) inits=0 calls=1");
    let (_, state) = host.admin_get("/admin/pipelines").await;
    let stage = &state["pipelines"][0]["stages"][0];
    assert_eq!(stage["name"], "primed", "{state}");
    assert_eq!(stage["snapshot"], serde_json::Value::Null, "{state}");
    host.shutdown().await;
}

#[tokio::test]
async fn operators_see_which_stages_start_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("strata.toml");
    std::fs::write(&manifest, primed("greeting = \"hi\"", "")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_strata-under-test"))
        .args(["check", manifest.to_str().unwrap()])
        .env("STRATA_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("     init      kept: fresh instances start from sha256:"),
        "{text}"
    );

    let host = TestHost::start(&primed("greeting = \"hi\"", "")).await;
    let (_, state) = host.admin_get("/admin/pipelines").await;
    let stage = &state["pipelines"][0]["stages"][0];
    assert_eq!(stage["name"], "primed", "{state}");
    let snapshot = &stage["snapshot"];
    assert!(
        snapshot["digest"].as_str().unwrap().starts_with("sha256:"),
        "{state}"
    );
    assert_ne!(snapshot["digest"], stage["digest"]);
    assert!(snapshot["bytes"].as_u64().unwrap() > 0);
    host.shutdown().await;
}

#[tokio::test]
async fn a_reused_instance_starts_from_init_too() {
    let host = TestHost::start(&primed("", "reuse = { max_uses = 2, max_idle = 1 }")).await;
    let seen = [
        answer(&host, "a").await,
        answer(&host, "b").await,
        answer(&host, "c").await,
    ];
    assert_eq!(
        seen,
        [
            "hello inits=1 calls=1",
            "hello inits=1 calls=2",
            "hello inits=1 calls=1"
        ]
    );
    host.shutdown().await;
}

#[tokio::test]
async fn a_panic_in_init_refuses_the_stage_with_its_message() {
    let message = refusal(
        &primed("greeting = \"panic\"", ""),
        "the host must refuse the stage",
    )
    .await;
    assert!(
        message.contains("stage \"primed\"")
            && message.contains("failed to initialise: `initialize` trapped")
            && message.contains("primed: told to panic in init"),
        "{message}"
    );
    assert!(!message.contains("RUST_BACKTRACE"), "{message}");
}

#[tokio::test]
async fn an_init_that_keeps_a_host_resource_is_not_snapshotted() {
    let message = refusal(
        &primed("print = \"true\"", ""),
        "a stdout stream held in the snapshot would dangle",
    )
    .await;
    assert!(
        message.contains("`initialize` returned holding host resources"),
        "{message}"
    );
    // Printing is fine when nothing is kept.
    let host = TestHost::start(&primed("print = \"true\", keep = \"false\"", "")).await;
    assert_eq!(answer(&host, "hi").await, "(none) inits=0 calls=1");
    host.shutdown().await;
}

#[tokio::test]
async fn init_is_held_to_the_stage_memory_limit() {
    let message = refusal(
        &primed("grow_mib = \"64\"", ""),
        "64 MiB is over the stage's 16",
    )
    .await;
    assert!(
        message.contains("`initialize` exceeded its memory limit of 16 MiB"),
        "{message}"
    );
    // Within the limit, what `init` holds is in every instance's memory.
    let host = TestHost::start(&primed("grow_mib = \"4\"", "")).await;
    assert_eq!(answer(&host, "hi").await, "hello inits=1 calls=1");
    host.shutdown().await;
}

#[tokio::test]
async fn a_reload_whose_init_fails_keeps_the_generation_served() {
    let host = TestHost::start_in(
        tempfile::tempdir().unwrap(),
        &primed("greeting = \"hej\"", ""),
        Tokens::default(),
    )
    .await;
    assert_eq!(answer(&host, "hi").await, "hej inits=1 calls=1");

    std::fs::write(host.manifest(), primed("greeting = \"panic\"", "")).unwrap();
    let (status, body) = host.admin_post("/admin/reload").await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("told to panic in init"), "{message}");
    assert_eq!(answer(&host, "hi").await, "hej inits=1 calls=1");

    // A changed config is a new init: the snapshot is per config.
    std::fs::write(host.manifest(), primed("greeting = \"hallo\"", "")).unwrap();
    let (status, body) = host.admin_post("/admin/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer(&host, "hi").await, "hallo inits=1 calls=1");
    host.shutdown().await;
}

#[tokio::test]
async fn the_rules_stage_refuses_a_pattern_that_does_not_compile_at_load() {
    let manifest = format!(
        "{SMALL_RUNTIME}
[pipelines.p]
[[pipelines.p.stages]]
name = \"faq\"
layer = \"rules\"
plugin = {}
grants = [\"config\"]

[[pipelines.p.stages.config.intents]]
name = \"fees\"
keywords = [\"fee\"]
unless_patterns = ['(waived']
answer = \"No fees.\"
",
        toml_str(components::RULES)
    );
    let message = refusal(
        &manifest,
        "a pattern that does not compile is refused at load",
    )
    .await;
    assert!(
        message.contains("stage \"faq\"")
            && message.contains("intent \"fees\": pattern \"(waived\""),
        "{message}"
    );
}
