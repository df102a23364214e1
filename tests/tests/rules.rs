//! Rule-writer tooling: golden cases (`strata test` and the reload gate),
//! traffic recording, `strata replay`, and deterministic stages.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use strata::auth::Tokens;
use strata_tests::{
    SMALL_RUNTIME, TestHost, UNREACHABLE_PROVIDER, components, demo_manifest_in, toml_str,
};

const PIN_ANSWER: &str = "You can change your PIN in the app under Card > Security > Change PIN, or at any of our ATMs. The new PIN works at once.";

fn strata(args: &[&str]) -> (i32, String, String) {
    strata_tests::run_cli(env!("CARGO_BIN_EXE_strata-under-test"), args)
}

/// The demo manifest with the faq's PIN answer changed: a deliberately
/// changed rule.
fn change_the_pin_rule(manifest: &Path) {
    let text = std::fs::read_to_string(manifest).unwrap();
    let changed = text.replace(PIN_ANSWER, "Call us to change your PIN.");
    assert_ne!(text, changed, "the demo's PIN answer moved");
    std::fs::write(manifest, changed).unwrap();
}

#[test]
fn strata_test_passes_the_demo_and_catches_a_changed_rule_with_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = demo_manifest_in(dir.path(), UNREACHABLE_PROVIDER);
    let path = manifest.to_str().unwrap();

    let (code, stdout, stderr) = strata(&["test", path]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("25 cases in 5 files: all passed"),
        "{stdout}"
    );

    change_the_pin_rule(&manifest);
    let (code, stdout, _) = strata(&["test", path]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("FAIL support/faq: 8/9 passed"), "{stdout}");
    assert!(stdout.contains("FAIL \"pin change\""), "{stdout}");
    assert!(
        stdout.contains("expected: respond \"You can change your PIN"),
        "{stdout}"
    );
    assert!(
        stdout.contains("actual:   respond \"Call us to change your PIN.\""),
        "{stdout}"
    );
    assert!(stdout.contains("^ first difference"), "{stdout}");
    assert!(stdout.contains("1 FAILED"), "{stdout}");

    // One file, JSON.
    let faq_cases = strata_tests::workspace_root().join("examples/support-desk/cases/faq.toml");
    let named = dir.path().join("faq-named.toml");
    std::fs::write(
        &named,
        format!(
            "pipeline = \"support\"\nstage = \"faq\"\n{}",
            std::fs::read_to_string(faq_cases).unwrap()
        ),
    )
    .unwrap();
    let (code, stdout, _) = strata(&["test", path, named.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1);
    let reports: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(reports[0]["failures"][0]["case"], "pin change");

    // A file that does not say what it tests is refused with the fix.
    let (code, _, stderr) = strata(&[
        "test",
        path,
        strata_tests::workspace_root()
            .join("examples/support-desk/cases/faq.toml")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("say which pipeline (and stage) the cases are for"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_reload_gate_refuses_a_stage_or_candidate_that_fails_its_cases() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = demo_manifest_in(dir.path(), UNREACHABLE_PROVIDER);
    let text = std::fs::read_to_string(&manifest).unwrap();
    let host = TestHost::start_file(&manifest).await;

    change_the_pin_rule(&manifest);
    let (status, body) = host.admin_post("/admin/reload").await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("golden cases failed:"), "{message}");
    assert!(
        message.contains("pipeline \"support\" stage \"faq\" fails 1 of 9 golden cases"),
        "{message}"
    );
    assert!(message.contains("\"pin change\""), "{message}");
    let (_, answer) = host.ask("support", "how do I change my PIN").await;
    assert_eq!(answer["output"], PIN_ANSWER, "the old rule keeps serving");

    // A candidate version is held to the stage's cases too: here, a
    // component that is not a rules stage at all.
    let faq = text.find("name = \"faq\"").unwrap();
    let next_stage = text[faq..].find("[[pipelines.support.stages]]").unwrap() + faq;
    let mut broken = text.clone();
    broken.insert_str(
        next_stage,
        &format!(
            "[pipelines.support.stages.candidate]\nplugin = {}\nmode = \"canary\"\npercent = 50\n\n",
            toml_str(components::NORMALISE)
        ),
    );
    std::fs::write(&manifest, broken).unwrap();
    let (status, body) = host.admin_post("/admin/reload").await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("pipeline \"support\" stage \"faq\" (candidate) fails"),
        "{message}"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn recorded_traffic_replays_and_a_changed_rule_shows_up() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = demo_manifest_in(dir.path(), UNREACHABLE_PROVIDER);
    let host = TestHost::start_file(&manifest).await;
    for question in [
        "How do I change my PIN?",
        "My card was stolen, mail me at jane@example.com",
        "Which ATMs take this card?",
        "   ",
        "When will my card arrive?",
    ] {
        host.ask("support", question).await;
    }
    let state = host.stop().await;
    let log = state
        .path()
        .join("data")
        .join("traffic")
        .join("support.jsonl");

    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(
        lines[1]["input"], "my card was stolen, mail me at [email]",
        "recorded after redaction"
    );
    assert_eq!(lines[1]["after"], "redact");
    assert_eq!(lines[0]["stage"], "faq");
    assert_eq!(lines[0]["generation"], 1);

    let (code, stdout, stderr) =
        strata(&["replay", manifest.to_str().unwrap(), log.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("replayed 5 recorded requests: 0 changed"),
        "{stdout}"
    );

    // The changed rule, replayed against the recording.
    let changed = dir.path().join("changed.toml");
    std::fs::copy(&manifest, &changed).unwrap();
    change_the_pin_rule(&changed);
    let (_, stdout, _) = strata(&["replay", changed.to_str().unwrap(), log.to_str().unwrap()]);
    assert!(
        stdout.starts_with("replayed 5 recorded requests: 1 changed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("answered by faq -> answered by faq"),
        "{stdout}"
    );
    assert!(stdout.contains("Call us to change your PIN."), "{stdout}");

    // And one manifest against the other, as JSON.
    let (_, stdout, _) = strata(&[
        "replay",
        manifest.to_str().unwrap(),
        log.to_str().unwrap(),
        "--against",
        changed.to_str().unwrap(),
        "--json",
    ]);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["replayed"], 5);
    assert_eq!(report["changed"], 1);
    assert_eq!(report["examples"][0]["before"]["text"], PIN_ANSWER);
    assert_eq!(
        report["examples"][0]["after"]["text"],
        "Call us to change your PIN."
    );
    // Requests that reached the model layers count as passed on, alike.
    assert_eq!(report["by_change"].as_object().unwrap().len(), 1);
}

fn clockwork(deterministic: &str) -> String {
    format!(
        "{SMALL_RUNTIME}
[pipelines.p]
[[pipelines.p.stages]]
name = \"clock\"
layer = \"rules\"
plugin = {}
{deterministic}
",
        toml_str(components::CLOCKWORK)
    )
}

#[tokio::test]
async fn a_deterministic_stage_sees_a_fixed_clock_and_seeded_randomness() {
    let host = TestHost::start_in(
        tempfile::tempdir().unwrap(),
        &clockwork("deterministic = true\nseed = 7"),
        Tokens::default(),
    )
    .await;
    let (_, first) = host.ask("p", "same input").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_, second) = host.ask("p", "same input").await;
    let (_, other) = host.ask("p", "other input").await;
    let first = first["output"].as_str().unwrap().to_owned();
    let (time, _) = first.split_once(' ').unwrap();
    assert_eq!(time, "1704067200000000000", "2024-01-01T00:00:00Z");
    assert_eq!(
        second["output"],
        first.as_str(),
        "the same input decides alike"
    );
    assert_ne!(
        other["output"],
        first.as_str(),
        "the seed mixes in the input"
    );
    host.shutdown().await;

    let host = TestHost::start_in(
        tempfile::tempdir().unwrap(),
        &clockwork(""),
        Tokens::default(),
    )
    .await;
    let (_, first) = host.ask("p", "same input").await;
    let (_, second) = host.ask("p", "same input").await;
    assert_ne!(
        first["output"], second["output"],
        "a normal stage sees real time and randomness"
    );
    host.shutdown().await;

    // A seed without determinism is a mistake the manifest names.
    let refused = TestHost::try_start(&clockwork("seed = 7")).await;
    let error = refused.err().unwrap().to_string();
    assert!(
        error.contains("a seed only applies to a stage with deterministic = true"),
        "{error}"
    );
}
