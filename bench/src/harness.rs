//! What every scenario needs: processes, `wrk`, and BENCHMARKS.md sections.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The request body every scenario sends.
pub const BODY: &str = r#"{"input": "How do I change my PIN?"}"#;

/// Load settings shared by the scenarios.
#[derive(Debug, Clone)]
pub struct Load {
    /// Seconds per measurement.
    pub duration: u32,
    /// Open connections.
    pub connections: u32,
    /// wrk threads.
    pub threads: u32,
}

impl Load {
    /// The wrk command line, for the report.
    pub fn describe(&self) -> String {
        format!(
            "wrk -t{} -c{} -d{}s --latency",
            self.threads, self.connections, self.duration
        )
    }
}

/// One wrk run's figures.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Throughput.
    pub requests_per_second: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Requests completed.
    pub requests: u64,
    /// Non-2xx responses and socket errors.
    pub errors: u64,
    /// The server's CPU time (user and system, all threads) per request,
    /// in microseconds, when the server's process was known.
    pub cpu_us: Option<f64>,
}

impl Figures {
    /// A Markdown table row.
    pub fn row(&self, name: &str) -> String {
        let cpu = self
            .cpu_us
            .map_or_else(|| "–".to_owned(), |us| format!("{us:.0}"));
        format!(
            "| {name} | {:.0} | {:.2} | {:.2} | {cpu} | {} | {} |",
            self.requests_per_second, self.p50_ms, self.p99_ms, self.requests, self.errors
        )
    }
}

/// The header of a figures table.
pub const TABLE_HEADER: &str = "| target | requests/s | p50 ms | p99 ms | server CPU µs/request | requests | errors |\n\
     | --- | ---: | ---: | ---: | ---: | ---: | ---: |";

/// The demo manifest's text with every relative path (plugins, cases) made
/// absolute, so that a copy works from any directory.
pub fn demo_manifest(root: &Path) -> anyhow::Result<String> {
    let demo = root.join("examples/support-desk");
    let text = std::fs::read_to_string(demo.join("strata.toml"))
        .context("cannot read the demo manifest")?;
    Ok(text
        .replace("\"../../", &format!("\"{}/", root.display()))
        .replace(
            "cases = \"cases/",
            &format!("cases = \"{}/", demo.join("cases").display()),
        ))
}

/// A fresh scratch directory.
pub fn scratch(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("strata-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Start a process with stdout and stderr piped and no backtraces.
pub fn spawn(command: &mut Command) -> anyhow::Result<Child> {
    // A backtrace captured on every error would be measured too.
    command
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {command:?}; did scripts/bench build it?"))
}

/// Wait for the line starting with `prefix` on stdout; returns the rest.
pub fn wait_for_stdout(child: &mut Child, prefix: &str) -> anyhow::Result<String> {
    wait_for_line(child.stdout.take().context("no stdout")?, prefix)
}

/// Wait for the line starting with `prefix` on stderr; returns the rest.
pub fn wait_for_stderr(child: &mut Child, prefix: &str) -> anyhow::Result<String> {
    wait_for_line(child.stderr.take().context("no stderr")?, prefix)
}

/// Read `output` until a line starts with `prefix`; returns the rest of it.
/// The rest of the output is drained so the process never blocks on it.
fn wait_for_line(output: impl Read + Send + 'static, prefix: &str) -> anyhow::Result<String> {
    let mut lines = BufReader::new(output).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(rest) = line.strip_prefix(prefix) {
            std::thread::spawn(move || for _ in lines {});
            return Ok(rest.trim().to_owned());
        }
    }
    bail!("the process exited before printing {prefix:?}")
}

/// A running `strata serve`.
pub struct Host {
    child: Child,
    /// The API address.
    pub addr: String,
    /// The admin API address.
    pub admin: String,
    /// From spawn to "strata is serving".
    pub started_in: Duration,
}

impl Host {
    /// The process id, for its CPU time and memory.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Host {
    /// Serve `manifest` with state in `data`, on free ports.
    pub fn start(strata: &Path, manifest: &Path, data: &Path) -> anyhow::Result<Host> {
        let started = Instant::now();
        let mut child = spawn(
            Command::new(strata)
                .args(["--log-format", "json", "serve"])
                .arg(manifest)
                .args([
                    "--listen",
                    "127.0.0.1:0",
                    "--admin-listen",
                    "127.0.0.1:0",
                    "--data",
                ])
                .arg(data)
                .env("STRATA_LOG", "info"),
        )?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            let line = line?;
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["message"] == "strata is serving" {
                let started_in = started.elapsed();
                let text = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
                // Keep draining stderr so the host never blocks on a full pipe.
                std::thread::spawn(move || for _ in lines {});
                return Ok(Host {
                    addr: text("addr"),
                    admin: text("admin_addr"),
                    started_in,
                    child,
                });
            }
        }
        bail!("the host exited before it served; run `strata check` on the manifest")
    }

    /// Stop the process.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Make sure the measured request really goes through all four stages.
pub fn check_answer(url: &str) -> anyhow::Result<()> {
    let output = Command::new("curl")
        .args(["-s", "-X", "POST", "-d", BODY, url])
        .output()
        .context("cannot run curl")?;
    let body: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "the host answered {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let stages = body["stages"].as_array().map_or(0, Vec::len);
    if body["status"] != "answered" || stages != 4 {
        bail!("the benchmark request should be answered after 4 stages, got {body}");
    }
    Ok(())
}

/// One plain HTTP/1.1 call: status and body.
pub fn http(method: &str, addr: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("cannot reach {addr}"))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Drive `url` with wrk, POSTing [`BODY`], and read its figures.
pub fn wrk(load: &Load, url: &str) -> anyhow::Result<Figures> {
    wrk_json(load, url, BODY)
}

/// [`wrk`], with the CPU time process `pid` spent per request.
pub fn wrk_on(load: &Load, url: &str, pid: u32) -> anyhow::Result<Figures> {
    with_cpu(pid, || wrk_json(load, url, BODY))
}

/// [`wrk_body`], with the CPU time process `pid` spent per request.
pub fn wrk_body_on(load: &Load, url: &str, input: &str, pid: u32) -> anyhow::Result<Figures> {
    with_cpu(pid, || wrk_body(load, url, input))
}

/// Run `measure` and charge the CPU time `pid` spent meanwhile to its
/// requests.
fn with_cpu(
    pid: u32,
    measure: impl FnOnce() -> anyhow::Result<Figures>,
) -> anyhow::Result<Figures> {
    let before = cpu_seconds(pid)?;
    let mut figures = measure()?;
    let spent = cpu_seconds(pid)? - before;
    if figures.requests > 0 {
        figures.cpu_us = Some(spent * 1e6 / figures.requests as f64);
    }
    Ok(figures)
}

/// User plus system CPU time of process `pid` so far, all its threads, in
/// seconds (from `/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read the CPU time of process {pid}"))?;
    Ok(stat_ticks(&stat)?.1 as f64 / clock_ticks_per_second())
}

/// The command name and the user plus system clock ticks of a
/// `/proc/.../stat` line.
fn stat_ticks(stat: &str) -> anyhow::Result<(&str, u64)> {
    // The command name may hold spaces; the fields after it do not.
    let (head, rest) = stat
        .rsplit_once(')')
        .context("an unreadable /proc stat line")?;
    let name = head.split_once('(').map_or(head, |(_, name)| name);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok((name, ticks))
}

/// User plus system CPU time of each thread of process `pid` so far, in
/// seconds, summed by thread name (from `/proc/PID/task/*/stat`; threads
/// that ended are not counted).
pub fn thread_cpu_seconds(pid: u32) -> anyhow::Result<BTreeMap<String, f64>> {
    let tasks = format!("/proc/{pid}/task");
    let ticks_per_second = clock_ticks_per_second();
    let mut by_name = BTreeMap::new();
    for task in std::fs::read_dir(&tasks).with_context(|| format!("cannot list {tasks}"))? {
        // A thread may end between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(task?.path().join("stat")) else {
            continue;
        };
        let (name, ticks) = stat_ticks(&stat)?;
        *by_name.entry(name.to_owned()).or_insert(0.0) += ticks as f64 / ticks_per_second;
    }
    Ok(by_name)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), 100 if unknown.
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The most resident memory process `pid` has held (`VmHWM`), in MiB.
pub fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read the memory of process {pid}"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .context("no VmHWM line")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// Drive `url` with wrk, POSTing `{"input": input}`.
pub fn wrk_body(load: &Load, url: &str, input: &str) -> anyhow::Result<Figures> {
    wrk_json(
        load,
        url,
        &serde_json::json!({ "input": input }).to_string(),
    )
}

fn wrk_json(load: &Load, url: &str, body: &str) -> anyhow::Result<Figures> {
    // One script per run: the cluster scenario runs several wrk at once.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let script =
        std::env::temp_dir().join(format!("strata-bench-{}-{run}.lua", std::process::id()));
    let lua_body = body.replace('\\', "\\\\").replace('\'', "\\'");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{lua_body}'\nwrk.headers[\"Content-Type\"] = \
             \"application/json\"\n"
        ),
    )?;
    let output = Command::new("wrk")
        .args([
            "--latency",
            "-t",
            &load.threads.to_string(),
            "-c",
            &load.connections.to_string(),
            "-d",
            &format!("{}s", load.duration),
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .context("cannot run wrk; install it (scripts/bench does)")?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    parse_wrk(&text).with_context(|| format!("cannot read wrk's output:\n{text}"))
}

/// Read wrk's `--latency` report.
pub fn parse_wrk(text: &str) -> anyhow::Result<Figures> {
    let mut figures = Figures {
        requests_per_second: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        requests: 0,
        errors: 0,
        cpu_us: None,
    };
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n] => figures.requests_per_second = n.parse()?,
            ["50%", t] => figures.p50_ms = millis(t)?,
            ["99%", t] => figures.p99_ms = millis(t)?,
            [n, "requests", "in", ..] => figures.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => figures.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                figures.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if figures.requests_per_second == 0.0 {
        bail!("no Requests/sec line");
    }
    Ok(figures)
}

fn millis(text: &str) -> anyhow::Result<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("unknown time unit in {text}");
    };
    Ok(number.parse::<f64>()? * factor)
}

/// The short commit hash, for reports.
pub fn commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The processor's model as Linux names it (`/proc/cpuinfo`), for reports:
/// figures from different processors are not comparable. "unknown" where
/// it cannot be read.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .filter(|model| !model.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The `q` quantile (0..=1) of `values`, in their unit.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let index = ((values.len() - 1) as f64 * q).round() as usize;
    values[index]
}

/// Replace the text between `<!-- bench:NAME:start -->` and
/// `<!-- bench:NAME:end -->`, keeping the rest of the file.
pub fn write_section(path: &Path, name: &str, report: &str) -> anyhow::Result<()> {
    let start = format!("<!-- bench:{name}:start -->");
    let end = format!("<!-- bench:{name}:end -->");
    let current =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (Some(from), Some(to)) = (current.find(&start), current.find(&end)) else {
        bail!("{} has no {start} ... {end} section", path.display());
    };
    let updated = format!("{}{start}\n{report}{}", &current[..from], &current[to..]);
    std::fs::write(path, updated).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 10s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n\
            Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
            Latency   315.12us  100.00us   5.00ms   90.00%\n\
            Latency Distribution\n     50%  290.00us\n     75%  350.00us\n     90%  400.00us\n\
            99%    1.20ms\n  1000450 requests in 10.00s, 100.00MB read\n\
            Non-2xx or 3xx responses: 3\nRequests/sec: 100045.00\nTransfer/sec:     10.00MB\n";
        let f = parse_wrk(text).unwrap();
        assert_eq!(f.requests_per_second, 100045.0);
        assert!((f.p50_ms - 0.29).abs() < 1e-9);
        assert!((f.p99_ms - 1.2).abs() < 1e-9);
        assert_eq!((f.requests, f.errors), (1000450, 3));
    }

    #[test]
    fn the_demo_manifest_copy_names_absolute_paths_only() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let text = demo_manifest(root).unwrap();
        let table: toml::Table = text.parse().unwrap();
        let stages = table["pipelines"]["support"]["stages"].as_array().unwrap();
        for stage in stages {
            for key in ["plugin", "cases"] {
                if let Some(path) = stage.get(key).and_then(|v| v.as_str()) {
                    assert!(Path::new(path).is_absolute(), "{key} = {path}");
                }
            }
            if let Some(cases) = stage.get("cases").and_then(|v| v.as_str()) {
                assert!(Path::new(cases).exists(), "{cases}");
            }
        }
    }

    #[test]
    fn quantiles() {
        let mut values = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut values, 0.5), 3.0);
        assert_eq!(quantile(&mut values, 1.0), 5.0);
        assert_eq!(quantile(&mut [], 0.5), 0.0);
    }
}
