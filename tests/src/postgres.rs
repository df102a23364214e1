//! A real PostgreSQL server for the tests: Debian's `postgresql` package,
//! a fresh cluster in a temporary directory, on a loopback port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A PostgreSQL server of its own (`initdb` into a temporary directory,
/// trust authentication on loopback, the superuser `strata`), stopped and
/// removed when dropped. `scripts/test` installs Debian's `postgresql`;
/// `STRATA_TEST_POSTGRES_BIN` names another directory of its programs.
/// Run as root, the server runs as the `postgres` user (PostgreSQL refuses
/// root).
pub struct PostgresServer {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

/// The directory of PostgreSQL's programs: `STRATA_TEST_POSTGRES_BIN`, or
/// the newest `/usr/lib/postgresql/N/bin` (where Debian puts them).
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("STRATA_TEST_POSTGRES_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("no PostgreSQL server found; scripts/test installs Debian's postgresql")
    })
}

/// The environment variable naming the PostgreSQL server (a URL without a
/// database, `postgres://strata@127.0.0.1:PORT`) that `scripts/test` started
/// for a run of the tests with their state there.
pub const SUITE_SERVER: &str = "STRATA_TEST_POSTGRES_URL";

/// The URL of a database for the host whose directory is `dir` on the
/// server at `server`, created if it is not there yet (a host restarted in
/// the same directory finds its state again).
pub fn database_for(server: &str, dir: &Path) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut hasher);
    let name = format!("test_{:016x}", hasher.finish());
    let server = server.trim_end_matches('/');
    let psql = |sql: &str| psql(&bin_dir(), &format!("{server}/postgres"), sql);
    if psql(&format!(
        "SELECT 1 FROM pg_database WHERE datname = '{name}'"
    ))
    .is_empty()
    {
        psql(&format!("CREATE DATABASE {name}"));
    }
    format!("{server}/{name}")
}

/// Run SQL in the database at `url` with the `psql` in `bin` and return
/// what it printed (unaligned, tuples only); a failure fails the test.
fn psql(bin: &Path, url: &str, sql: &str) -> String {
    let out = Command::new(bin.join("psql"))
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql failed on {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// A command for `program` in `bin`, as the `postgres` user when root.
fn command(bin: &Path, program: &str) -> Command {
    let path = bin.join(program);
    if running_as_root() {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(path);
        command
    } else {
        Command::new(path)
    }
}

impl PostgresServer {
    /// Create a cluster, start it on a free port and wait until it answers.
    pub fn start() -> PostgresServer {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("a temporary directory");
        if running_as_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown runs");
            assert!(
                status.success(),
                "cannot give the cluster's directory to postgres"
            );
        }
        let data = dir.path().join("data");
        let out = command(&bin, "initdb")
            .args([
                "--username=strata",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .arg("-D")
            .arg(&data)
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = PostgresServer {
            child: None,
            port,
            bin,
            dir,
        };
        server.run();
        server
    }

    /// Start the server process on the cluster and wait until it answers.
    fn run(&mut self) {
        let data = self.dir.path().join("data");
        let child = command(&self.bin, "postgres")
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            // Tests need no durability against power loss: faster commits.
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ready() {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|child| !matches!(child.try_wait(), Ok(None)));
            assert!(!exited, "postgres on port {} exited", self.port);
            assert!(
                Instant::now() < deadline,
                "postgres on port {} did not answer within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Create a database and return its URL.
    pub fn database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        format!("postgres://strata@127.0.0.1:{}/{name}", self.port)
    }

    /// Run SQL in `database` and return what `psql` printed (unaligned,
    /// tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let url = format!("postgres://strata@127.0.0.1:{}/{database}", self.port);
        psql(&self.bin, &url, sql)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stop it at once (an immediate shutdown, as a crash would leave it)
    /// and wait until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: an immediate shutdown that takes the server's own
            // processes with it.
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port and data after [`PostgresServer::stop`].
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}
