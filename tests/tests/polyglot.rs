//! Stages written in Python and JavaScript, next to Rust ones, and the
//! sandbox holding for a Python stage that tries to connect out.

use strata_tests::{SMALL_RUNTIME, TestHost, components, toml_str, workspace_root};

/// The polyglot example, with absolute plugin paths.
fn example(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(workspace_root().join("examples/polyglot/strata.toml"))
        .unwrap()
        .replace(
            "../../target/",
            &format!("{}/", workspace_root().join("target").display()),
        );
    let path = dir.join("strata.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn python_and_javascript_stages_run_in_a_pipeline_with_rust_ones() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start_file(&example(dir.path())).await;

    let (status, body) = host.ask("polyglot", "Thanks!").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stage"], "smalltalk", "answered in JavaScript");
    assert_eq!(body["output"], "You're welcome!");

    let (status, body) = host
        .ask("polyglot", "This is RIDICULOUS, my card is blocked")
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["stage"], "tone", "escalated in Python");
    assert_eq!(
        body["ticket"]["reason"],
        "upset customer: a person should answer"
    );

    let (status, body) = host.ask("polyglot", "How do I change my PIN?").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stage"], "faq");
    let stages: Vec<(&str, &str)> = body["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap(), s["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        stages,
        [
            ("smalltalk", "next"),
            ("normalise", "next"),
            ("tone", "next"),
            ("faq", "respond")
        ]
    );
    host.shutdown().await;
}

fn connect_stage(extra: &str) -> String {
    format!(
        "{SMALL_RUNTIME}
[pipelines.p]
[[pipelines.p.stages]]
name = \"connect\"
layer = \"rules\"
plugin = {}
grants = [\"wasi:filesystem\", \"wasi:sockets\"]
limits = {{ timeout_ms = 5000, memory_mib = 128 }}
{extra}
",
        toml_str(components::CONNECT_PY)
    )
}

#[tokio::test]
async fn a_python_stage_cannot_connect_out_unless_the_address_is_listed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();

    let host = TestHost::start(&connect_stage("")).await;
    let (status, body) = host.ask("p", &address).await;
    assert_eq!(status, 200, "{body}");
    let answer = body["output"].as_str().unwrap();
    assert!(answer.starts_with("refused: PermissionError"), "{answer}");
    host.shutdown().await;

    let host = TestHost::start(&connect_stage(&format!(
        "wasi = {{ allow = [\"{address}\"] }}"
    )))
    .await;
    let (_, body) = host.ask("p", &address).await;
    assert_eq!(body["output"], "connected");
    host.shutdown().await;
}

#[tokio::test]
async fn a_python_stage_must_be_granted_what_python_imports() {
    let refused = TestHost::try_start(&connect_stage("").replace(
        "grants = [\"wasi:filesystem\", \"wasi:sockets\"]",
        "grants = []",
    ))
    .await;
    let error = refused.err().unwrap().to_string();
    assert!(error.contains("wasi:sockets/tcp@"), "{error}");
    assert!(error.contains("wasi:filesystem/preopens@"), "{error}");
    assert!(error.contains("(needs grant \"wasi:sockets\")"), "{error}");
}
