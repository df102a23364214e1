//! The `strata` command line as a user runs it: `check` and `run`.

use strata_tests::{SMALL_RUNTIME, components, demo_manifest, toml_str};

fn strata(args: &[&str]) -> (i32, String, String) {
    strata_tests::run_cli(env!("CARGO_BIN_EXE_strata-under-test"), args)
}

#[test]
fn check_prints_every_stage_with_digest_imports_and_grants() {
    let manifest = demo_manifest();
    let (code, stdout, stderr) = strata(&["check", manifest.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok (1 pipeline, 6 stages)"), "{stdout}");
    for stage in [
        "1. normalise (layer rules)",
        "2. redact",
        "3. triage",
        "4. faq",
    ] {
        assert!(stdout.contains(stage), "{stage} missing from:\n{stdout}");
    }
    assert!(stdout.contains("digest    sha256:"), "{stdout}");
    assert!(
        stdout.contains("strata:pipeline/config@0.2.0 (grant \"config\")"),
        "{stdout}"
    );
    assert!(stdout.contains("grants    config"), "{stdout}");
}

#[test]
fn check_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    std::fs::write(
        &path,
        format!(
            "{SMALL_RUNTIME}[pipelines.p]\n[[pipelines.p.stages]]\nname = \"s\"\nlayer = \
             \"rules\"\nplugin = {}\n",
            toml_str(components::READS_FILE)
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = strata(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains("pipeline \"p\", stage \"s\", key \"plugin\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("wasi:filesystem/types@0.2.6 (needs grant \"wasi:filesystem\")"),
        "{stderr}"
    );
}

#[test]
fn run_answers_one_request_without_a_server() {
    let manifest = demo_manifest();
    let (code, stdout, stderr) = strata(&[
        "run",
        manifest.to_str().unwrap(),
        "support",
        "--input",
        "How do I change my PIN?",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let result: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result["status"], "answered", "{result}");
    assert_eq!(result["stage"], "faq");
    assert_eq!(result["input"], "how do i change my pin?");

    let (code, stdout, _) = strata(&[
        "run",
        manifest.to_str().unwrap(),
        "support",
        "--input",
        "someone used my card without my permission, mail me at a@b.io",
    ]);
    assert_eq!(code, 0);
    let result: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result["status"], "escalated", "{result}");
    assert_eq!(
        result["input"],
        "someone used my card without my permission, mail me at [email]"
    );
    assert!(
        result["escalation"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("compromised_card")
    );
}

#[test]
fn run_repeats_the_request_and_times_every_stage() {
    let manifest = demo_manifest();
    let manifest = manifest.to_str().unwrap();
    let (code, stdout, stderr) = strata(&[
        "run",
        manifest,
        "support",
        "--input",
        "How do I change my PIN?",
        "--repeat",
        "3",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let result: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // The last run's answer, as a single run gives it.
    assert_eq!(result["status"], "answered", "{result}");
    assert_eq!(result["stage"], "faq");
    let timing = &result["timing"];
    assert_eq!(timing["count"], 3, "{timing}");
    let stages: Vec<&str> = timing["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stage| stage["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["normalise", "redact", "triage", "faq"], "{timing}");
    for stage in timing["stages"].as_array().unwrap() {
        assert_eq!(stage["count"], 3, "{stage}");
        let (p50, max) = (
            stage["p50_us"].as_f64().unwrap(),
            stage["max_us"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p50 <= max, "{stage}");
    }
    // A run takes at least as long as its stages.
    let stages_mean: f64 = timing["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stage| stage["mean_us"].as_f64().unwrap())
        .sum();
    assert!(
        timing["mean_us"].as_f64().unwrap() >= stages_mean - 1.0,
        "{timing}"
    );

    // Without --repeat there is no timing; with --repeat 1, one run's.
    let (code, stdout, _) = strata(&["run", manifest, "support", "--input", "hi"]);
    assert_eq!(code, 0);
    let result: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(result.get("timing").is_none(), "{result}");
    let (code, stdout, _) = strata(&["run", manifest, "support", "--input", "hi", "--repeat", "1"]);
    assert_eq!(code, 0);
    let result: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result["timing"]["count"], 1, "{result}");
    let (code, _, stderr) = strata(&["run", manifest, "support", "--input", "hi", "--repeat", "0"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--repeat"), "{stderr}");
    let (code, _, stderr) = strata(&[
        "run", manifest, "support", "--input", "hi", "--repeat", "1000001",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("1..=1000000"), "{stderr}");
}

#[test]
fn run_names_the_known_pipelines_when_given_an_unknown_one() {
    let manifest = demo_manifest();
    let (code, _, stderr) = strata(&["run", manifest.to_str().unwrap(), "sales", "--input", "hi"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no pipeline named \"sales\"; the manifest defines: support"),
        "{stderr}"
    );
}
