//! What granted WASI families may reach, and instance reuse.

use serde_json::json;
use strata::auth::Tokens;
use strata_tests::{SMALL_RUNTIME, TestHost, components, toml_str};

fn one_stage(plugin: &str, extra: &str) -> String {
    format!(
        "{SMALL_RUNTIME}
[pipelines.p]
[[pipelines.p.stages]]
name = \"s\"
layer = \"rules\"
plugin = {}
on_error = \"fail\"
limits = {{ timeout_ms = 300 }}
{extra}
",
        toml_str(plugin)
    )
}

async fn answer(host: &TestHost, input: &str) -> String {
    let (status, body) = host.ask("p", input).await;
    assert!(status == 200 || status == 502, "{status}: {body}");
    body["output"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("error: {}", body["error"]["message"]))
}

#[tokio::test]
async fn a_granted_filesystem_shows_only_the_named_directory_read_only() {
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("hello.txt"), "hello from the host").unwrap();

    // Granted, but no directory named: nothing to read.
    let host = TestHost::start(&one_stage(
        components::READS_FILE,
        "grants = [\"log\", \"wasi:filesystem\"]",
    ))
    .await;
    let seen = answer(&host, "/etc/passwd").await;
    assert!(seen.starts_with("error:"), "{seen}");
    host.shutdown().await;

    let host = TestHost::start(&one_stage(
        components::READS_FILE,
        &format!(
            "grants = [\"log\", \"wasi:filesystem\"]\nwasi = {{ dirs = [{{ host = {}, guest = \"/ref\" }}] }}",
            toml_str(shared.path().to_str().unwrap())
        ),
    ))
    .await;
    assert_eq!(answer(&host, "/ref/hello.txt").await, "hello from the host");
    let outside = answer(&host, "/ref/../../etc/passwd").await;
    assert!(outside.starts_with("error:"), "{outside}");
    host.shutdown().await;

    // Naming a directory without the grant is a manifest error.
    let refused = TestHost::try_start(&one_stage(
        components::READS_FILE,
        "grants = [\"log\"]\nwasi = { dirs = [{ host = \"/tmp\", guest = \"/t\" }] }",
    ))
    .await;
    let error = refused.err().unwrap().to_string();
    assert!(
        error.contains("directories need the \"wasi:filesystem\" grant"),
        "{error}"
    );
}

#[tokio::test]
async fn granted_sockets_reach_only_listed_addresses() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().to_string();

    // Rust's std reaches sockets through file descriptors, so the component
    // imports the filesystem too: granted, with no directory behind it.
    let host = TestHost::start(&one_stage(
        components::DIALER,
        "grants = [\"wasi:sockets\", \"wasi:filesystem\"]",
    ))
    .await;
    let seen = answer(&host, &open).await;
    assert!(seen.starts_with("refused:"), "deny-all by default: {seen}");
    host.shutdown().await;

    let host = TestHost::start(&one_stage(
        components::DIALER,
        &format!(
            "grants = [\"wasi:sockets\", \"wasi:filesystem\"]\nwasi = {{ allow = [\"{open}\"] }}"
        ),
    ))
    .await;
    assert_eq!(answer(&host, &open).await, "connected");
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let elsewhere = answer(&host, &other.local_addr().unwrap().to_string()).await;
    assert!(elsewhere.starts_with("refused:"), "{elsewhere}");
    host.shutdown().await;
}

#[tokio::test]
async fn fresh_instances_keep_nothing_between_requests() {
    let host = TestHost::start(&one_stage(components::COUNTER, "")).await;
    for _ in 0..3 {
        assert_eq!(answer(&host, "count").await, "1");
    }
    host.shutdown().await;
}

#[tokio::test]
async fn a_reused_instance_serves_n_requests_and_is_dropped_after_a_failure() {
    let host = TestHost::start_in(
        tempfile::tempdir().unwrap(),
        &one_stage(
            components::COUNTER,
            "reuse = { max_uses = 3, max_idle = 1 }",
        ),
        Tokens::default(),
    )
    .await;
    let counts: Vec<String> = {
        let mut counts = Vec::new();
        for _ in 0..7 {
            counts.push(answer(&host, "count").await);
        }
        counts
    };
    assert_eq!(
        counts,
        ["1", "2", "3", "1", "2", "3", "1"],
        "N uses, then a new instance"
    );

    // A trap discards the instance: the next request starts from scratch.
    assert_eq!(answer(&host, "count").await, "2");
    let failed = answer(&host, "boom").await;
    assert!(failed.contains("trapped"), "{failed}");
    assert_eq!(answer(&host, "count").await, "1");
    // So does a timeout.
    assert_eq!(answer(&host, "count").await, "2");
    let failed = answer(&host, "sleep").await;
    assert!(failed.contains("timed out"), "{failed}");
    assert_eq!(answer(&host, "count").await, "1");

    // Concurrent requests never share an instance: each count is unique
    // within an instance, and no instance passes its N.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = format!("{}/v1/pipelines/p", host.base());
        tasks.push(tokio::spawn(async move {
            let body: serde_json::Value = reqwest::Client::new()
                .post(url)
                .json(&json!({"input": "count"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["output"].as_str().unwrap().parse::<u32>().unwrap()
        }));
    }
    for task in tasks {
        let count = task.await.unwrap();
        assert!((1..=3).contains(&count), "{count}");
    }
    host.shutdown().await;

    // A deterministic stage cannot reuse instances.
    let refused = TestHost::try_start(&one_stage(
        components::COUNTER,
        "deterministic = true\nreuse = { max_uses = 3 }",
    ))
    .await;
    let error = refused.err().unwrap().to_string();
    assert!(
        error.contains("a deterministic stage cannot reuse instances"),
        "{error}"
    );
}
