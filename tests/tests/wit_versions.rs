//! Contract versions side by side: a stage built against the frozen
//! `strata:pipeline@0.1.0` loads and behaves as before in the same pipeline
//! as stages built against `0.2.0`, one grant covers an interface in both
//! versions, and a 0.2.0 stage's `cache.lookup` reaches the host.

use std::process::Command;

use serde_json::{Value, json};
use strata_tests::{SMALL_RUNTIME, TestHost, components, toml_str};

/// legacy (`cache-v1`, 0.1.0) -> bank (`answer-bank`, 0.2.0) -> last
/// (`version-one`, 0.2.0, answering with its input plus ` |v1`).
fn manifest(legacy_grants: &str) -> String {
    format!(
        "{SMALL_RUNTIME}
[pipelines.p]

[[pipelines.p.stages]]
name = \"legacy\"
layer = \"cache\"
plugin = {legacy}
grants = {legacy_grants}

[[pipelines.p.stages]]
name = \"bank\"
layer = \"cache\"
plugin = {bank}
grants = [\"config\", \"cache\"]

[[pipelines.p.stages]]
name = \"last\"
layer = \"generation\"
plugin = {last}
grants = [\"config\"]
[pipelines.p.stages.config]
respond = true
",
        legacy = toml_str(components::CACHE_V1),
        bank = toml_str(components::ANSWER_BANK),
        last = toml_str(components::VERSION_ONE),
    )
}

const GRANTED: &str = "[\"config\", \"cache\"]";

fn stage<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["stages"]
        .as_array()
        .and_then(|stages| stages.iter().find(|s| s["stage"] == name))
        .unwrap_or_else(|| panic!("no stage {name} in {body}"))
}

#[tokio::test]
async fn a_0_1_0_stage_behaves_as_before_beside_0_2_0_stages() {
    let host = TestHost::start(&manifest(GRANTED)).await;

    // First time: the 0.1.0 stage finds nothing under its key, stores an
    // answer there with `cache.put` and passes on; the 0.2.0 stages run
    // after it on the same request.
    let (status, first) = host.ask("p", "where is my card").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["stage"], "last", "{first}");
    assert_eq!(first["output"], "where is my card |v1");
    assert_eq!(stage(&first, "legacy")["result"], "next");
    assert_eq!(
        stage(&first, "legacy")["cache"],
        json!({"hits": 0, "misses": 1})
    );

    // Second time: its `cache.get` finds what it stored, in the bank the
    // pipeline's 0.2.0 stages share, and it answers as it always did
    // (an unapproved answer at 0.8); nothing after it runs.
    let (status, second) = host.ask("p", "where is my card").await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["stage"], "legacy", "{second}");
    assert_eq!(second["output"], "remembered: where is my card");
    assert_eq!(second["confidence"], 0.8);
    assert_eq!(
        stage(&second, "legacy")["cache"],
        json!({"hits": 1, "misses": 0})
    );
    assert_eq!(second["stages"].as_array().map(Vec::len), Some(1));
}

/// The lookup reaches the host: the 0.2.0 `answer-bank` asks for its exact
/// key (a miss), then calls `cache.lookup` with the question, which the host
/// counts as one more lookup in the stage's trace.
///
/// On this branch `Bank::lookup` is a placeholder that always finds nothing,
/// so the stage can only pass the request on. A test that a paraphrase gets
/// a trusted pattern's answer (and that an untrusted match passes on) is to
/// be added when the learned lookup is merged.
#[tokio::test]
async fn a_0_2_0_stage_lookup_reaches_the_host() {
    let host = TestHost::start(&manifest(GRANTED)).await;
    let (status, body) = host.ask("p", "my card has not arrived yet").await;
    assert_eq!(status, 200, "{body}");
    let bank = stage(&body, "bank");
    assert_eq!(bank["result"], "next", "{body}");
    assert_eq!(
        bank["cache"],
        json!({"hits": 0, "misses": 2}),
        "the exact key and the lookup each count: {body}"
    );
    assert_eq!(body["stage"], "last");
}

#[tokio::test]
async fn one_grant_covers_an_interface_in_every_version() {
    // Without the `cache` grant the 0.1.0 stage is refused, and the refusal
    // names its 0.1.0 import.
    let error = TestHost::try_start(&manifest("[\"config\"]"))
        .await
        .err()
        .expect("a stage importing cache without the grant is refused");
    let message = format!("{error:#}");
    assert!(
        message.contains("stage \"legacy\"")
            && message.contains("strata:pipeline/cache@0.1.0 (needs grant \"cache\")"),
        "{message}"
    );

    // With it, `strata check` shows both versions' imports under one grant.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    std::fs::write(&path, manifest(GRANTED)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_strata-under-test"))
        .args(["check", path.to_str().unwrap()])
        .env("STRATA_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for line in [
        "strata:pipeline/cache@0.1.0 (grant \"cache\")",
        "strata:pipeline/config@0.1.0 (grant \"config\")",
        "strata:pipeline/cache@0.2.0 (grant \"cache\")",
        "strata:pipeline/config@0.2.0 (grant \"config\")",
        "contract  strata:pipeline@0.1.0",
        "contract  strata:pipeline@0.2.0",
    ] {
        assert!(stdout.contains(line), "{line} missing from:\n{stdout}");
    }

    // And `strata audit` reports the 0.1.0 stage as a stage, allowed.
    let output = Command::new(env!("CARGO_BIN_EXE_strata-under-test"))
        .args(["audit", path.to_str().unwrap(), "--json"])
        .env("STRATA_LOG", "warn")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let legacy = &report["stages"][0];
    assert_eq!(legacy["broken"], Value::Null, "{report}");
    assert_eq!(legacy["exports"], json!(["strata:pipeline/stage@0.1.0"]));
    assert_eq!(legacy["contract"], "strata:pipeline@0.1.0");
    let cache = legacy["imports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "strata:pipeline/cache@0.1.0")
        .unwrap_or_else(|| panic!("no cache import in {report}"));
    assert_eq!(cache["allowed"], true, "{report}");
}
