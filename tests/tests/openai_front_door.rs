//! The OpenAI-compatible front door, called by the official `openai`
//! Python package (installed by `scripts/test` into `target/tools/openai`):
//! models, chat and text completions, streaming, an escalation, a
//! rejection, an unknown model and a wrong key, as an application sees them.

use std::process::Command;

use serde_json::Value;
use strata::auth::Tokens;
use strata_tests::{SMALL_RUNTIME, TestHost, components, toml_str, workspace_root};

const KEY: &str = "client-key";

fn manifest() -> String {
    format!(
        "{SMALL_RUNTIME}
[pipelines.desk]
[[pipelines.desk.stages]]
name = \"faq\"
layer = \"rules\"
plugin = {rules}
grants = [\"config\", \"log\"]
[[pipelines.desk.stages.config.intents]]
name = \"greeting\"
keywords = [\"hello\"]
answer = \"Hello! How can I help with your banking today?\"
[[pipelines.desk.stages.config.intents]]
name = \"stolen\"
keywords = [\"stolen\"]
escalate = \"possible fraud: a person must handle this\"

[pipelines.strict]
[[pipelines.strict.stages]]
name = \"gate\"
layer = \"rules\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"reject\", code = \"off_topic\", message = \"ask about banking\" }}
",
        rules = toml_str(components::RULES),
        scripted = toml_str(components::SCRIPTED),
    )
}

#[tokio::test]
async fn the_official_openai_client_talks_to_pipelines() {
    let python = workspace_root().join("target/tools/openai/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: scripts/test installs the openai package there",
        python.display()
    );
    let host = TestHost::start_in(
        tempfile::tempdir().unwrap(),
        &manifest(),
        Tokens::new(Some(KEY.into()), None, None),
    )
    .await;
    let base = host.base().to_owned();
    let script = workspace_root().join("tests/clients/openai_client.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(base)
            .arg(KEY)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();

    assert_eq!(seen["models"], serde_json::json!(["desk", "strict"]));

    let chat = &seen["chat"];
    assert_eq!(
        chat["content"],
        "Hello! How can I help with your banking today?"
    );
    assert_eq!(chat["finish_reason"], "stop");
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["model"], "desk");
    assert_eq!(chat["strata"]["status"], "answered");
    assert_eq!(chat["strata"]["layer"], "rules");
    assert_eq!(chat["strata"]["stage"], "faq");
    let id = chat["strata"]["request_id"].as_str().unwrap();
    // The host kept the request under the id it returned.
    let (_, kept) = host
        .send(
            host.request(reqwest::Method::GET, &format!("/v1/requests/{id}"))
                .bearer_auth(KEY),
        )
        .await;
    assert_eq!(kept["status"], "answered", "{kept}");

    let stream = &seen["stream"];
    let pieces = stream["pieces"].as_array().unwrap();
    assert!(pieces.len() > 1, "streamed in pieces: {stream}");
    let joined: String = pieces.iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(joined, "Hello! How can I help with your banking today?");
    assert_eq!(stream["finish_reason"], "stop");
    assert_eq!(stream["strata"]["status"], "answered");

    let escalated = &seen["escalated"];
    let ticket = escalated["strata"]["ticket"]["id"].as_i64().unwrap();
    assert_eq!(escalated["strata"]["status"], "escalated");
    let content = escalated["content"].as_str().unwrap();
    assert!(
        content.contains("A person will reply") && content.contains(&format!("ticket {ticket}")),
        "{content}"
    );

    assert_eq!(
        seen["completion"]["text"],
        "Hello! How can I help with your banking today?"
    );
    assert_eq!(seen["completion"]["object"], "text_completion");
    assert_eq!(
        seen["completion_stream"],
        "Hello! How can I help with your banking today?"
    );

    assert_eq!(seen["unknown_model"]["status"], 404, "{seen}");
    assert!(
        seen["unknown_model"]["message"]
            .as_str()
            .unwrap()
            .contains("no pipeline named \"no-such-pipeline\""),
        "{seen}"
    );
    assert_eq!(seen["rejected"]["status"], 422, "{seen}");
    assert!(
        seen["rejected"]["message"]
            .as_str()
            .unwrap()
            .contains("ask about banking"),
        "{seen}"
    );
    assert_eq!(seen["wrong_key"]["status"], 401, "{seen}");
    // Six requests ran a pipeline (a chat and a text completion, each also
    // streamed, the escalation and the rejection; the unknown model and the
    // wrong key were refused before): each passed through every phase of
    // the host once.
    let metrics = host.metrics().await;
    for phase in ["receive", "handoff", "run", "keep", "respond"] {
        let line = format!("strata_request_phase_seconds_count{{phase=\"{phase}\"}} 6");
        assert!(metrics.contains(&line), "missing `{line}` in:\n{metrics}");
    }
    host.shutdown().await;
}
