//! The rule writer's loop, through the real binary: `strata new` in each
//! language, `strata build`, `strata test` on the template's own cases, and
//! `strata watch` serving a stage, picking up an edit, and keeping the old
//! version when an edit does not build or fails its cases.
//!
//! Projects are created in a temporary directory, outside this repository.
//! The tests reach no registry: `scripts/test` installs the Python and
//! JavaScript toolchains into `target/toolchains` first (`strata
//! toolchains`), pip and npm are told to stay offline, and cargo builds the
//! Rust projects offline from the dependencies the workspace already has, in
//! the shared `target/new-stages`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_tests::workspace_root;

const STRATA: &str = env!("CARGO_BIN_EXE_strata-under-test");

/// `strata ARGS` in `dir` with the shared caches; its output, and whether
/// it succeeded.
fn strata(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = command(dir).args(args).output().expect("cannot run strata");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn command(dir: &Path) -> Command {
    let target = workspace_root().join("target");
    let mut command = Command::new(STRATA);
    command
        .current_dir(dir)
        .env("STRATA_TOOLCHAINS", target.join("toolchains"))
        .env("CARGO_TARGET_DIR", target.join("new-stages"))
        .env("CARGO_NET_OFFLINE", "true")
        .env("PIP_NO_INDEX", "1")
        .env("npm_config_offline", "true")
        .env_remove("STRATA_ADMIN_TOKEN")
        .env_remove("STRATA_CLIENT_TOKEN");
    command
}

/// `strata new stage NAME --lang LANG --world WORLD`, then build and test
/// it with its own manifest.
fn new_build_test(lang: &str, world: &str) {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("hello-{lang}");
    let (ok, text) = strata(
        dir.path(),
        &["new", "stage", &name, "--lang", lang, "--world", world],
    );
    assert!(ok, "strata new failed:\n{text}");
    let project = dir.path().join(&name);
    for file in ["strata.toml", "cases.toml"] {
        assert!(project.join(file).is_file(), "{file} missing:\n{text}");
    }

    let (ok, text) = strata(&project, &["build"]);
    assert!(ok, "strata build failed:\n{text}");
    assert!(text.contains("1 built, 0 failed"), "{text}");
    assert!(text.contains("digest   sha256:"), "{text}");
    assert!(text.contains("imports  "), "{text}");
    assert!(project.join(format!("build/{name}.wasm")).is_file());

    // `test` loads the component with the manifest's grants (an ungranted
    // import would fail here) and runs the template's cases.
    let (ok, text) = strata(&project, &["test", "strata.toml"]);
    assert!(ok, "the template's own cases failed:\n{text}");
    assert!(text.contains("2 cases in 1 file: all passed"), "{text}");
}

#[test]
fn a_new_rust_stage_builds_and_passes_its_cases() {
    new_build_test("rust", "plugin");
}

#[test]
fn a_new_python_stage_builds_and_passes_its_cases() {
    new_build_test("python", "configured");
}

#[test]
fn a_new_javascript_stage_builds_and_passes_its_cases() {
    new_build_test("js", "plugin");
}

#[test]
fn new_refuses_a_bad_name_and_an_existing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = strata(dir.path(), &["new", "stage", "Bad Name", "--lang", "rust"]);
    assert!(!ok);
    assert!(text.contains("stage name"), "{text}");

    std::fs::create_dir(dir.path().join("taken")).unwrap();
    let (ok, text) = strata(dir.path(), &["new", "stage", "taken", "--lang", "js"]);
    assert!(!ok);
    assert!(text.contains("already exists"), "{text}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("taken")).unwrap().count(),
        0,
        "nothing written into the existing directory"
    );
}

#[test]
fn build_names_the_stage_that_fails_and_keeps_its_component() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("old.wasm"), b"old").unwrap();
    std::fs::write(
        dir.path().join("strata.toml"),
        "[pipelines.p]\n[[pipelines.p.stages]]\nname = \"broken\"\nlayer = \"rules\"\n\
         plugin = \"old.wasm\"\nbuild = { command = \"echo no compiler here >&2; exit 3\" }\n",
    )
    .unwrap();
    let (ok, text) = strata(dir.path(), &["build"]);
    assert!(!ok, "{text}");
    assert!(text.contains("broken: build FAILED"), "{text}");
    assert!(text.contains("no compiler here"), "{text}");
    assert_eq!(std::fs::read(dir.path().join("old.wasm")).unwrap(), b"old");

    let (ok, text) = strata(dir.path(), &["build", "--stage", "nope"]);
    assert!(!ok);
    assert!(
        text.contains("no stage named \"nope\"") && text.contains("broken"),
        "{text}"
    );
}

/// `strata watch` as a process, its output lines on a channel.
struct Watch {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    base: String,
    admin: String,
}

impl Watch {
    /// `strata watch` serving the project's `strata.toml` itself.
    fn start(project: &Path) -> Watch {
        let mut watch = Watch::spawn(
            project,
            &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        );
        let serving = watch.line_with("serving ");
        // "serving strata.toml on http://A (admin http://B)"
        let urls: Vec<&str> = serving
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
            .filter(|w| w.starts_with("http://"))
            .collect();
        watch.base = urls[0].to_owned();
        watch.admin = urls[1].to_owned();
        watch.line_with("watching ");
        watch
    }

    /// `strata watch strata.toml ARGS` in `project`.
    fn spawn(project: &Path, args: &[&str]) -> Watch {
        let mut child = command(project)
            .args(["watch", "strata.toml", "--debounce-ms", "200"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start strata watch");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        Watch {
            child,
            lines,
            base: String::new(),
            admin: String::new(),
        }
    }

    /// The next output line containing `text` (earlier ones are dropped).
    fn line_with(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!(
            "no line with {text:?}; the watcher printed:\n{}",
            seen.join("\n")
        );
    }

    /// What the pipeline answers "ping" with, and the stage's digest.
    async fn ping(&self) -> (String, String) {
        let body = post_echo(&self.base, "ping").await;
        (
            body["output"].as_str().unwrap_or_default().to_owned(),
            body["stages"][0]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

// Multi-threaded: the test blocks on the watcher's output between requests.
#[tokio::test(flavor = "multi_thread")]
async fn watch_serves_edits_keeps_the_old_version_when_an_edit_is_bad_and_follows_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = strata(dir.path(), &["new", "stage", "echo", "--lang", "rust"]);
    assert!(ok, "{text}");
    let project: PathBuf = dir.path().join("echo");
    let source = project.join("src/lib.rs");
    let cases = project.join("cases.toml");

    let mut watch = Watch::start(&project);
    let (output, first) = watch.ping().await;
    assert_eq!(output, "pong");

    // A good edit (and its case): built, tested, reloaded, served.
    edit(&cases, "output = \"pong\"", "output = \"pang\"");
    edit(&source, "\"pong\".to_owned()", "\"pang\".to_owned()");
    // (If the two saves settle apart, the first build, old source against
    // the new case, is refused, and the second one is served.)
    let line = watch.line_with("reload applied");
    assert!(
        line.contains("echo: built") && line.contains("2 case(s) passed"),
        "{line}"
    );
    let (output, second) = watch.ping().await;
    assert_eq!(output, "pang", "{line}");
    assert_ne!(second, first, "a new digest serves");
    assert!(line.contains(&second), "{line} names {second}");

    // An edit that does not compile: the previous version keeps serving.
    edit(&source, "\"pang\".to_owned()", "\"pang\".to_owned(");
    let line = watch.line_with("echo: build failed");
    assert!(line.contains("previous version keeps serving"), "{line}");
    assert_eq!(watch.ping().await, ("pang".to_owned(), second.clone()));

    // An edit that compiles but fails a golden case: not installed.
    edit(&source, "\"pang\".to_owned(", "\"pung\".to_owned()");
    let line = watch.line_with("echo: built");
    assert!(line.contains("not installed"), "{line}");
    watch.line_with("FAIL \"answers ping\"");
    assert_eq!(watch.ping().await, ("pang".to_owned(), second));

    // The admin API serves the same digest the responses name.
    let pipelines: Value = reqwest::get(format!("{}/admin/pipelines", watch.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (_, serving) = watch.ping().await;
    assert!(pipelines.to_string().contains(&serving), "{pipelines}");

    // A stage added to the manifest is built, served and watched.
    let manifest = project.join("strata.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let added = format!(
        "{text}\n[[pipelines.echo.stages]]\nname = \"tail\"\nlayer = \"rules\"\n\
         plugin = \"build/tail.wasm\"\ngrants = [\"config\"]\nconfig = {{ respond = \"true\" }}\n\
         build = {{ command = 'cp \"$(cat source)\" \"$STRATA_OUT\"', path = \"tail\" }}\n"
    );
    // The stage's source names the component its command copies.
    let tail = project.join("tail");
    std::fs::create_dir(&tail).unwrap();
    std::fs::write(tail.join("source"), strata_tests::components::VERSION_ONE).unwrap();
    std::fs::write(&manifest, added).unwrap();
    let line = watch.line_with("tail: built");
    assert!(line.contains("reload applied"), "{line}");
    assert_eq!(ask(&watch.base, "hello").await, "hello |v1");
    std::fs::write(tail.join("source"), strata_tests::components::VERSION_TWO).unwrap();
    let line = watch.line_with("tail: built");
    assert!(line.contains("reload applied"), "{line}");
    assert_eq!(ask(&watch.base, "hello").await, "hello |v2");
}

/// Pipeline `echo` at `base` asked `input`: the response body.
async fn post_echo(base: &str, input: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{base}/v1/pipelines/echo"))
        .json(&serde_json::json!({ "input": input }))
        .send()
        .await
        .expect("the served pipeline answers")
        .json()
        .await
        .expect("the answer is JSON")
}

/// What pipeline `echo` at `base` answers `input` with.
async fn ask(base: &str, input: &str) -> String {
    let body = post_echo(base, input).await;
    body["output"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_reloads_a_running_host_through_its_admin_api() {
    use strata_tests::components::{VERSION_ONE, VERSION_TWO};

    // A stage built by a command that copies `variant.wasm`; the host does
    // not watch files itself, so only the admin API can make it reload.
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("variant");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::copy(VERSION_ONE, project.join("variant.wasm")).unwrap();
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    std::fs::copy(VERSION_ONE, dir.path().join("out/v.wasm")).unwrap();
    std::fs::write(
        dir.path().join("strata.toml"),
        "[reload]\nwatch = false\n\n[pipelines.echo]\n[[pipelines.echo.stages]]\n\
         name = \"v\"\nlayer = \"rules\"\nplugin = \"out/v.wasm\"\ngrants = [\"config\"]\n\
         config = { respond = \"true\" }\n\
         build = { command = 'cp variant.wasm \"$STRATA_OUT\"', path = \"variant\" }\n",
    )
    .unwrap();
    let host = strata_tests::HostProcess::serve(STRATA, &dir.path().join("strata.toml"), |c| {
        c.env_remove("STRATA_ADMIN_TOKEN")
            .env_remove("STRATA_CLIENT_TOKEN");
    });
    assert_eq!(ask(host.base(), "ping").await, "ping |v1");

    let mut watch = Watch::spawn(dir.path(), &["--admin", host.admin_base()]);
    watch.line_with("reloading the host at");
    watch.line_with("watching ");

    std::fs::copy(VERSION_TWO, project.join("variant.wasm")).unwrap();
    let line = watch.line_with("v: built");
    assert!(line.contains("reload applied"), "{line}");
    assert_eq!(ask(host.base(), "ping").await, "ping |v2");
    host.kill();
}

#[test]
fn an_unreachable_package_registry_is_named() {
    // A fresh toolchain cache and registries on a closed port.
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    for lang in ["python", "js"] {
        let (ok, text) = strata(dir.path(), &["new", "stage", lang, "--lang", lang]);
        assert!(ok, "{text}");
        let output = command(&dir.path().join(lang))
            .args(["build", "--toolchains"])
            .arg(cache.path())
            .env("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
            .env("PIP_RETRIES", "0")
            .env("PIP_TIMEOUT", "2")
            .env("PIP_NO_CACHE_DIR", "1")
            .env("npm_config_registry", "http://127.0.0.1:9/")
            .env("npm_config_fetch_retries", "0")
            .env("npm_config_cache", cache.path().join("npm-cache"))
            .env("npm_config_prefer_online", "true")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "{text}");
        let (tool, registry) = match lang {
            "python" => ("componentize-py", "Python package index"),
            _ => ("componentize-js", "npm registry"),
        };
        assert!(
            text.contains(&format!("cannot install {tool}")) && text.contains(registry),
            "{text}"
        );
        assert!(
            !cache
                .path()
                .join(format!("{tool}-0.25.1/bin/{tool}"))
                .exists(),
            "nothing half-installed"
        );
    }
}
