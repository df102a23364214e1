//! The admin API cannot be driven by a web page, and its manifest edits are
//! safe (issue 11, point 6): POSTs need a JSON content type or the admin
//! header, same-machine trust needs a loopback `Host`, the promote/drop edit
//! keeps the file's mode and symlink, and it never undoes a rollback.

use serde_json::Value;
use strata::auth::Tokens;
use strata_tests::{SMALL_RUNTIME, TestHost, components, toml_str};

/// Pipeline `p`: stage `first` (version one, with version two as a canary
/// candidate when `candidate`), then `second` (version one, answering).
/// The answer carries each stage's version marker.
fn manifest(candidate: bool) -> String {
    let candidate = if candidate {
        format!(
            "[pipelines.p.stages.candidate]\nplugin = {}\nmode = \"canary\"\npercent = 30\n",
            toml_str(components::VERSION_TWO)
        )
    } else {
        String::new()
    };
    format!(
        "# kept by edits
{SMALL_RUNTIME}
[reload]
watch = false

[pipelines.p]
[[pipelines.p.stages]]
name = \"first\"
layer = \"rules\"
plugin = {one}
grants = [\"config\"]
{candidate}

[[pipelines.p.stages]]
name = \"second\"
layer = \"rules\"
plugin = {one}
grants = [\"config\"]
config = {{ respond = true }}
",
        one = toml_str(components::VERSION_ONE),
    )
}

/// The actions in the audit log, oldest first.
async fn audited(host: &TestHost) -> Vec<String> {
    let (_, audit) = host.admin_get("/admin/audit").await;
    let mut actions: Vec<String> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    actions.reverse();
    actions
}

#[tokio::test]
async fn admin_posts_need_json_or_the_admin_header() {
    let host = TestHost::start(&manifest(false)).await;
    let url = format!("{}/admin/reload", host.admin_base());
    let client = reqwest::Client::new();
    // What a web page can send across origins without a preflight.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let mut request = client.post(&url).body("{}");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let (status, body) = host.send(request).await;
        assert_eq!(status, 415, "{content_type:?}: {body}");
        assert_eq!(body["error"]["code"], "unsupported_media_type");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Content-Type: application/json"),
            "{body}"
        );
    }
    assert_eq!(audited(&host).await, ["start"], "nothing was reloaded");

    let (status, body) = host
        .send(
            client
                .post(&url)
                .header("content-type", "application/json; charset=utf-8"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = host
        .send(client.post(&url).header("x-strata-admin", "1"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(audited(&host).await, ["start", "reload", "reload"]);
    host.shutdown().await;
}

#[tokio::test]
async fn same_machine_trust_needs_a_loopback_host_header() {
    let host = TestHost::start(&manifest(false)).await;
    let port = host.admin_base().rsplit(':').next().unwrap().to_owned();
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, host_header: String| {
        client
            .request(method, format!("{}{path}", host.admin_base()))
            .header("host", host_header)
            .header("content-type", "application/json")
    };
    // A page on rebind.example.com whose name now resolves to 127.0.0.1: the
    // connection is local, the name is the page's.
    for method in [reqwest::Method::POST, reqwest::Method::GET] {
        let path = if method == reqwest::Method::POST {
            "/admin/rollback"
        } else {
            "/admin/pipelines"
        };
        let (status, body) = host
            .send(call(method, path, format!("rebind.example.com:{port}")))
            .await;
        assert_eq!(status, 403, "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("localhost") && message.contains("STRATA_ADMIN_TOKEN"),
            "{message}"
        );
    }
    assert_eq!(audited(&host).await, ["start"], "no rollback was attempted");

    for name in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "localhost".to_owned(),
    ] {
        let (status, body) = host
            .send(call(reqwest::Method::GET, "/admin/pipelines", name.clone()))
            .await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    host.shutdown().await;

    // With an admin token, the token is what is trusted, whatever the name.
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::start_in(
        dir,
        &manifest(false),
        Tokens::new(None, None, Some("admin-t".into())),
    )
    .await;
    let (status, body) = host
        .send(
            client
                .get(format!("{}/admin/pipelines", host.admin_base()))
                .header("host", "gateway.example.com")
                .bearer_auth("admin-t"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    host.shutdown().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_manifest_edit_keeps_the_mode_and_the_symlink() {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("deployed");
    std::fs::create_dir(&real).unwrap();
    let file = real.join("strata.toml");
    std::fs::write(&file, manifest(true)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = dir.path().join("strata.toml");
    std::os::unix::fs::symlink(&file, &link).unwrap();

    let host = TestHost::serve_with(dir, link.clone(), Tokens::default())
        .await
        .unwrap();
    let (status, report) = host
        .admin_post("/admin/pipelines/p/stages/first/promote")
        .await;
    assert_eq!(status, 200, "{report}");
    assert!(report["note"].is_null(), "the file was edited: {report}");
    let (_, body) = host.ask("p", "hi").await;
    assert_eq!(body["output"], "hi |v2 |v1");

    // The link is still a link to the same file, and that file was edited.
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the symlink was replaced by a file"
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), file);
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.starts_with("# kept by edits"), "{written}");
    assert!(
        written.contains(&toml_str(components::VERSION_TWO))
            && !written.contains("[pipelines.p.stages.candidate]"),
        "{written}"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the mode is now {mode:o}");
    // Nothing is left beside it.
    let left: Vec<_> = std::fs::read_dir(&real)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["strata.toml"]);
    host.shutdown().await;
}

/// The names of the pipelines `GET /admin/pipelines` shows, and its stage
/// `first` of pipeline `p`.
fn served(state: &Value) -> (Vec<String>, Value) {
    let pipelines = state["pipelines"].as_array().unwrap();
    let names = pipelines
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    let first = pipelines
        .iter()
        .find(|p| p["name"] == "p")
        .map(|p| p["stages"][0].clone())
        .unwrap();
    (names, first)
}

#[tokio::test]
async fn settling_a_candidate_does_not_undo_a_rollback() {
    let host = TestHost::start(&manifest(true)).await;
    // A change to the file is loaded, then rolled back.
    let extra = format!(
        "{}
[pipelines.extra]
[[pipelines.extra.stages]]
name = \"answer\"
layer = \"rules\"
plugin = {}
grants = [\"config\"]
config = {{ respond = true }}
",
        manifest(true),
        toml_str(components::VERSION_ONE)
    );
    std::fs::write(host.manifest(), &extra).unwrap();
    let (status, report) = host.admin_post("/admin/reload").await;
    assert_eq!(status, 200, "{report}");
    let (status, report) = host.admin_post("/admin/rollback").await;
    assert_eq!(status, 200, "{report}");
    let (_, state) = host.admin_get("/admin/pipelines").await;
    let (names, first) = served(&state);
    assert_eq!(names, ["p"]);
    let v2 = first["candidate"]["digest"].clone();

    let (status, report) = host
        .admin_post("/admin/pipelines/p/stages/first/promote")
        .await;
    assert_eq!(status, 200, "{report}");
    assert!(
        report["note"]
            .as_str()
            .unwrap_or_default()
            .contains("a rollback is in force"),
        "{report}"
    );
    // The rolled-back pipelines still serve, with the candidate promoted;
    // the file is as the operator left it.
    let (_, state) = host.admin_get("/admin/pipelines").await;
    let (names, first) = served(&state);
    assert_eq!(names, ["p"], "the rollback was undone: {state}");
    assert_eq!(first["digest"], v2, "{state}");
    assert!(first["candidate"].is_null(), "{state}");
    let (status, _) = host.ask("extra", "hi").await;
    assert_eq!(status, 404);
    let (_, body) = host.ask("p", "hi").await;
    assert_eq!(body["output"], "hi |v2 |v1");
    assert_eq!(std::fs::read_to_string(host.manifest()).unwrap(), extra);

    // Reloading the file ends the rollback, as it says.
    let (status, report) = host.admin_post("/admin/reload").await;
    assert_eq!(status, 200, "{report}");
    let (_, state) = host.admin_get("/admin/pipelines").await;
    assert_eq!(served(&state).0, ["extra", "p"]);
    host.shutdown().await;
}
