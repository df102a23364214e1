//! The benchmark driver: runs the Strata host on the 4-stage support-desk
//! pipeline and the bare hyper echo baseline, one after the other on the
//! same machine, drives each with `wrk` on loopback, and writes throughput,
//! p50 and p99 of both, and their ratio, into `BENCHMARKS.md`.
//!
//! Run it through `scripts/bench`, which builds what it needs first.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use clap::Parser;

/// Benchmark the host against a bare hyper baseline.
#[derive(Debug, Parser)]
struct Args {
    /// Seconds of load per target.
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Open connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// The file whose foundation section is rewritten.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
}

/// One wrk run's figures.
#[derive(Debug)]
struct Figures {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
}

const BODY: &str = r#"{"input": "How do I change my PIN?"}"#;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench/ is inside the workspace")?
        .to_owned();
    let release = root.join("target").join("release");
    let data = tempfile_dir()?;

    // The baseline first, then the host, never both at once.
    let baseline = {
        let mut child = spawn(Command::new(release.join("echo-baseline")).arg("127.0.0.1:0"))?;
        let addr = wait_for_stdout(&mut child, "listening on ")?;
        let figures = wrk(&args, &format!("http://{addr}/echo"))?;
        stop(child);
        figures
    };
    let host = {
        let manifest = root.join("examples/support-desk/strata.toml");
        let mut child = spawn(
            Command::new(release.join("strata"))
                .args(["--log-format", "json", "serve"])
                .arg(&manifest)
                .args([
                    "--listen",
                    "127.0.0.1:0",
                    "--admin-listen",
                    "127.0.0.1:0",
                    "--data",
                ])
                .arg(&data)
                .env("STRATA_LOG", "info"),
        )?;
        let addr = wait_for_serving(&mut child)?;
        let url = format!("http://{addr}/v1/pipelines/support");
        check_answer(&url)?;
        let figures = wrk(&args, &url)?;
        stop(child);
        figures
    };
    let _ = std::fs::remove_dir_all(&data);

    let report = report(&args, &baseline, &host);
    println!("{report}");
    write_section(&root.join(&args.out), &report)?;
    println!("written to {}", args.out.display());
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("strata-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn spawn(command: &mut Command) -> anyhow::Result<Child> {
    // A backtrace captured on every error would be measured too.
    command
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {command:?}; did scripts/bench build it?"))
}

fn wait_for_stdout(child: &mut Child, prefix: &str) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(addr) = line.strip_prefix(prefix) {
            return Ok(addr.trim().to_owned());
        }
    }
    bail!("the baseline exited before it listened")
}

fn wait_for_serving(child: &mut Child) -> anyhow::Result<String> {
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line?;
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["message"] == "strata is serving" {
            let addr = event["addr"].as_str().unwrap_or_default().to_owned();
            // Keep draining stderr so the host never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return Ok(addr);
        }
    }
    bail!("the host exited before it served; run `strata check` on the manifest")
}

/// Make sure the measured request really goes through all four stages.
fn check_answer(url: &str) -> anyhow::Result<()> {
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

fn wrk(args: &Args, url: &str) -> anyhow::Result<Figures> {
    let script = std::env::temp_dir().join(format!("strata-bench-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"Content-Type\"] = \
             \"application/json\"\n"
        ),
    )?;
    let output = Command::new("wrk")
        .args([
            "--latency",
            "-t",
            &args.threads.to_string(),
            "-c",
            &args.connections.to_string(),
            "-d",
            &format!("{}s", args.duration),
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

fn parse_wrk(text: &str) -> anyhow::Result<Figures> {
    let mut figures = Figures {
        requests_per_second: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        requests: 0,
        errors: 0,
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

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn report(args: &Args, baseline: &Figures, host: &Figures) -> String {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let row = |name: &str, f: &Figures| {
        format!(
            "| {name} | {:.0} | {:.2} | {:.2} | {} | {} |",
            f.requests_per_second, f.p50_ms, f.p99_ms, f.requests, f.errors
        )
    };
    format!(
        "Measured at commit `{commit}` on {cores} cores, one target at a time, with \
         `wrk -t{} -c{} -d{}s --latency` on loopback, POSTing `{BODY}`.\n\n\
         | target | requests/s | p50 ms | p99 ms | requests | errors |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n\
         {}\n{}\n\n\
         Throughput ratio, host / baseline: **{:.3}**.\n",
        args.threads,
        args.connections,
        args.duration,
        row("bare hyper echo (baseline)", baseline),
        row("strata, 4 fresh-instance stages", host),
        host.requests_per_second / baseline.requests_per_second,
    )
}

const START: &str = "<!-- bench:foundation:start -->";
const END: &str = "<!-- bench:foundation:end -->";

/// Replace the text between the foundation markers, keeping the rest.
fn write_section(path: &Path, report: &str) -> anyhow::Result<()> {
    let current =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (Some(start), Some(end)) = (current.find(START), current.find(END)) else {
        bail!("{} has no {START} ... {END} section", path.display());
    };
    let updated = format!("{}{START}\n{report}{}", &current[..start], &current[end..]);
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
}
