//! Helpers for the end-to-end tests: the guest components' paths, manifests
//! written to a temporary directory, a host started on a free loopback port,
//! and a small JSON-over-HTTP client.

use std::path::{Path, PathBuf};

use serde_json::Value;
use strata::auth::Tokens;
use strata::{HostOptions, RunningHost};

pub mod bank_data;
pub mod postgres;
pub use postgres::PostgresServer;

/// Paths of the guest components built by `build.rs`.
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// The support-desk demo manifest.
pub fn demo_manifest() -> PathBuf {
    workspace_root().join("examples/support-desk/strata.toml")
}

/// The demo manifest, copied into `dir` with its plugin and cases paths made
/// absolute and its model provider at `provider` (a URL such as a `local_llm`'s
/// `base_url()`, or a closed port to make the provider unreachable).
pub fn demo_manifest_in(dir: &Path, provider: &str) -> PathBuf {
    let text = std::fs::read_to_string(demo_manifest()).expect("the demo manifest exists");
    let guests = workspace_root().join("target/guests/wasm32-wasip2/release");
    let text = text
        .replace(
            "../../target/guests/wasm32-wasip2/release",
            &guests.display().to_string(),
        )
        .replace("http://127.0.0.1:8000/v1", provider)
        .replace(
            "cases = \"cases/",
            &format!(
                "cases = \"{}/",
                workspace_root()
                    .join("examples/support-desk/cases")
                    .display()
            ),
        )
        .replace(
            "cases = \"../../plugins/",
            &format!("cases = \"{}/", workspace_root().join("plugins").display()),
        );
    let path = dir.join("strata.toml");
    std::fs::write(&path, text).expect("cannot write the manifest");
    path
}

/// A provider URL nothing listens on (the discard port).
pub const UNREACHABLE_PROVIDER: &str = "http://127.0.0.1:9/v1";

/// `path` as a TOML string literal, for building manifests with `format!`.
pub fn toml_str(path: &str) -> String {
    toml::Value::String(path.to_owned()).to_string()
}

/// The secret test hosts sign callbacks with.
pub const CALLBACK_SECRET: &str = "test-callback-secret";

/// A manifest header small enough for tests: few pooled instances.
pub const SMALL_RUNTIME: &str = "[runtime]\ninstances = 16\n";

/// Pipeline `desk` with answer bank settings `answer_bank` (the inside of
/// its `{ ... }`): the answer-bank stage (exact keys, then `lookup`), then a
/// stage that escalates. `preamble` goes first (a `[models]` section, say).
pub fn bank_desk(preamble: &str, answer_bank: &str) -> String {
    format!(
        "{SMALL_RUNTIME}{preamble}
[pipelines.desk]
answer_bank = {{ {answer_bank} }}

[[pipelines.desk.stages]]
name = \"bank\"
layer = \"cache\"
plugin = {bank}
grants = [\"config\", \"cache\"]
on_error = \"skip\"

[[pipelines.desk.stages]]
name = \"triage\"
layer = \"rules\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"escalate\", reason = \"a person\" }}
",
        bank = toml_str(components::ANSWER_BANK),
        scripted = toml_str(components::SCRIPTED),
    )
}

/// A host serving a manifest from a temporary directory.
pub struct TestHost {
    host: Option<RunningHost>,
    dir: tempfile::TempDir,
    manifest: PathBuf,
    client: reqwest::Client,
    base: String,
    admin: String,
    tokens: Tokens,
}

/// Route the host's logs to the test output; `STRATA_LOG` filters them
/// (nothing is shown by default).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Options serving `manifest` on free loopback ports, state in `dir/data`.
fn options(manifest: &Path, dir: &Path, tokens: Tokens) -> HostOptions {
    let mut options = HostOptions::new(manifest);
    options.listen = Some("127.0.0.1:0".parse().expect("a valid address"));
    options.admin_listen = Some("127.0.0.1:0".parse().expect("a valid address"));
    options.data_dir = Some(dir.join("data"));
    options.tokens = Some(tokens);
    options.callback_secret = Some(CALLBACK_SECRET.to_owned());
    // `scripts/test` runs some tests a second time with their state in a
    // PostgreSQL server: a database of its own for each host's directory.
    // (A manifest with a `[store]` of its own keeps it.)
    let own_store = std::fs::read_to_string(manifest).is_ok_and(|text| text.contains("[store]"));
    if let Ok(server) = std::env::var(postgres::SUITE_SERVER)
        && !own_store
    {
        options.store_url = Some(postgres::database_for(&server, dir));
    }
    // Compiled components are shared by every test host (and kept between
    // runs): the Python and JavaScript ones take seconds to compile.
    options.compile_cache = Some(workspace_root().join("target").join("test-compile-cache"));
    options
}

impl TestHost {
    /// Write `manifest` to a fresh directory and serve it. Panics (failing
    /// the test) if the host does not start.
    pub async fn start(manifest: &str) -> TestHost {
        match Self::try_start(manifest).await {
            Ok(host) => host,
            Err(error) => panic!("the host did not start: {error:#}"),
        }
    }

    /// Write `manifest` to a fresh directory and try to serve it.
    pub async fn try_start(manifest: &str) -> anyhow::Result<TestHost> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("strata.toml");
        std::fs::write(&path, manifest)?;
        Self::serve(dir, path).await
    }

    /// Write `manifest` into `dir` (which may already hold plugins the
    /// manifest names by relative path) and serve it with `tokens`.
    pub async fn start_in(dir: tempfile::TempDir, manifest: &str, tokens: Tokens) -> TestHost {
        let path = dir.path().join("strata.toml");
        std::fs::write(&path, manifest).expect("cannot write the manifest");
        match Self::serve_with(dir, path, tokens).await {
            Ok(host) => host,
            Err(error) => panic!("the host did not start: {error:#}"),
        }
    }

    /// Serve an existing manifest file, with state in a fresh directory.
    pub async fn start_file(manifest: &Path) -> TestHost {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        match Self::serve(dir, manifest.to_owned()).await {
            Ok(host) => host,
            Err(error) => panic!("the host did not start: {error:#}"),
        }
    }

    async fn serve(dir: tempfile::TempDir, manifest: PathBuf) -> anyhow::Result<TestHost> {
        Self::serve_with(dir, manifest, Tokens::default()).await
    }

    /// Serve `manifest` from `dir`, with these tokens.
    pub async fn serve_with(
        dir: tempfile::TempDir,
        manifest: PathBuf,
        tokens: Tokens,
    ) -> anyhow::Result<TestHost> {
        init_logging();
        let host = strata::start(options(&manifest, dir.path(), tokens.clone())).await?;
        let base = format!("http://{}", host.addr());
        let admin = format!("http://{}", host.admin_addr());
        Ok(TestHost {
            host: Some(host),
            dir,
            manifest,
            client: reqwest::Client::new(),
            base,
            admin,
            tokens,
        })
    }

    /// The directory holding the manifest (if written here) and the data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The admin API's base URL.
    pub fn admin_base(&self) -> &str {
        &self.admin
    }

    /// The manifest file being served.
    pub fn manifest(&self) -> &Path {
        &self.manifest
    }

    /// The running host.
    pub fn host(&self) -> &RunningHost {
        self.host.as_ref().expect("the host is running")
    }

    /// POST to the admin API (an empty JSON body, as the admin API wants
    /// for every POST); returns the status and the JSON.
    pub async fn admin_post(&self, path: &str) -> (u16, Value) {
        self.send(
            self.client
                .post(format!("{}{path}", self.admin))
                .header("content-type", "application/json"),
        )
        .await
    }

    /// The Prometheus text the admin listener serves at `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self
            .client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("the admin listener answers");
        response.text().await.expect("a text body")
    }

    /// GET from the admin API; returns the status and the JSON.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        self.send(self.client.get(format!("{}{path}", self.admin)))
            .await
    }

    /// Stop the host and start it again on the same manifest and data
    /// directory (on a new port).
    pub async fn restart(&mut self) {
        if let Some(host) = self.host.take() {
            host.shutdown().await;
        }
        let host = strata::start(options(
            &self.manifest,
            self.dir.path(),
            self.tokens.clone(),
        ))
        .await
        .expect("the host did not restart");
        self.base = format!("http://{}", host.addr());
        self.admin = format!("http://{}", host.admin_addr());
        self.host = Some(host);
    }

    /// Stop the host gracefully.
    pub async fn shutdown(mut self) {
        if let Some(host) = self.host.take() {
            host.shutdown().await;
        }
    }

    /// Stop the host gracefully and keep its directory (and data) alive.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(host) = self.host.take() {
            host.shutdown().await;
        }
        self.dir
    }

    /// POST a JSON body; returns the status and the JSON response.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.client.post(self.url(path)).json(&body))
            .await
    }

    /// POST raw bytes; returns the status and the JSON response.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        self.send(
            self.client
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    /// GET; returns the status and the JSON response.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.client.get(self.url(path))).await
    }

    /// Send any request; returns the status and the JSON response.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("the host did not answer");
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .expect("cannot read the response body");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {text}"));
        (status, json)
    }

    /// A request builder for `path` with this host's client.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Ask pipeline `name` to handle `input`.
    pub async fn ask(&self, pipeline: &str, input: &str) -> (u16, Value) {
        self.post(
            &format!("/v1/pipelines/{pipeline}"),
            serde_json::json!({ "input": input }),
        )
        .await
    }

    /// Ask `pipeline` a `question` it escalates, and resolve its ticket
    /// with `answer` as a reviewer would; returns the ticket's id.
    pub async fn answer_by_reviewer(&self, pipeline: &str, question: &str, answer: &str) -> i64 {
        let (_, escalated) = self.ask(pipeline, question).await;
        let ticket = escalated["ticket"]["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no ticket: {escalated}"));
        let (status, resolved) = self
            .post(
                &format!("/v1/tickets/{ticket}/resolve"),
                serde_json::json!({ "answer": answer }),
            )
            .await;
        assert_eq!(status, 200, "{resolved}");
        ticket
    }
}

/// Run the `strata` binary (a test's `env!("CARGO_BIN_EXE_strata-under-test")`)
/// with `args`, its logs at `warn`: the exit code, stdout and stderr.
pub fn run_cli(binary: &str, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(binary)
        .args(args)
        .env("STRATA_LOG", "warn")
        .output()
        .expect("cannot run strata");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `strata serve` running as a real process (so that a test can kill it
/// without a shutdown), logging JSON lines that the test can wait for.
pub struct HostProcess {
    child: std::process::Child,
    events: std::sync::mpsc::Receiver<Value>,
    base: String,
    admin: String,
}

impl HostProcess {
    /// Run `binary` (a test's `env!("CARGO_BIN_EXE_strata-under-test")`)
    /// as `serve manifest` on free loopback ports; `configure` adds
    /// arguments (`--data`) or environment variables. Returns once the host
    /// logs that it is serving.
    pub fn serve(
        binary: &str,
        manifest: &Path,
        configure: impl FnOnce(&mut std::process::Command),
    ) -> HostProcess {
        use std::io::{BufRead, BufReader};

        let mut command = std::process::Command::new(binary);
        command
            .args(["--log-format", "json", "serve"])
            .arg(manifest)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        configure(&mut command);
        let mut child = command.spawn().expect("cannot start the host process");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (sender, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    let _ = sender.send(event);
                }
            }
        });
        let mut process = HostProcess {
            child,
            events,
            base: String::new(),
            admin: String::new(),
        };
        let serving = process.next_event(|e| e["message"] == "strata is serving");
        process.base = format!("http://{}", serving["addr"].as_str().unwrap_or_default());
        process.admin = format!(
            "http://{}",
            serving["admin_addr"].as_str().unwrap_or_default()
        );
        process
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The admin API's base URL.
    pub fn admin_base(&self) -> &str {
        &self.admin
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next log event `wanted` accepts (earlier ones are dropped).
    /// Panics when the host is quiet for a minute.
    pub fn next_event(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        loop {
            let event = self
                .events
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the host process went quiet (or exited)");
            if wanted(&event) {
                return event;
            }
        }
    }

    /// The next log event whose message contains `text`.
    pub fn next_message(&mut self, text: &str) -> Value {
        self.next_event(|e| e["message"].as_str().is_some_and(|m| m.contains(text)))
    }

    /// Kill the process at once (SIGKILL: no shutdown, nothing flushed).
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `redis-server` on a loopback port, with nothing saved to disk,
/// stopped (SIGKILL) when dropped. `scripts/test` installs Debian's
/// `redis-server`; `STRATA_TEST_REDIS_SERVER` names another binary.
pub struct RedisServer {
    child: Option<std::process::Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start one on a free port and wait until it answers.
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        Self::start_on(port)
    }

    /// Start one on `port` (again, after [`RedisServer::kill`]).
    pub fn start_on(port: u16) -> RedisServer {
        let binary =
            std::env::var("STRATA_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let dir = tempfile::tempdir().expect("a temporary directory");
        let child = std::process::Command::new(&binary)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot run {binary} ({error}); scripts/test installs Debian's redis-server")
            });
        let mut server = RedisServer {
            child: Some(child),
            port,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !server.answers() || !server.running() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server on port {port} did not answer PING within 20 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        server
    }

    /// Whether the process is still running (one that found its port
    /// taken has exited, and whoever holds the port would answer instead).
    fn running(&mut self) -> bool {
        let running = self
            .child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)));
        assert!(running, "redis-server on port {} exited", self.port);
        running
    }

    fn answers(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Its URL, `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stop it answering (SIGSTOP), as a network partition would: the port
    /// stays its own, connections are accepted by the kernel and hang.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Let it answer again (SIGCONT) after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server is running").id();
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Run one command (arguments as given) and return Redis's reply as
    /// it comes on the wire, e.g. `:1\r\n` or `+OK\r\n`.
    pub fn command(&self, args: &[&str]) -> String {
        use std::io::{Read as _, Write as _};
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("Redis accepts");
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).expect("Redis reads");
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let mut reply = [0u8; 512];
        let read = stream.read(&mut reply).expect("Redis replies");
        String::from_utf8_lossy(&reply[..read]).into_owned()
    }

    /// Kill it (SIGKILL) and wait until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
