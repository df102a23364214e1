//! 4 fresh-instance stages against a bare hyper echo server: throughput and
//! server CPU per request under load, latency on one connection, the same
//! stages reusing instances, the same stages alone (`strata run --repeat`,
//! no server or store), and the host's peak memory.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::harness::{self, BODY, Figures, Host, Load, TABLE_HEADER};

/// Measure the baseline, then the host; never both at once.
pub fn run(root: &Path, load: &Load) -> anyhow::Result<String> {
    let release = root.join("target").join("release");
    let demo = harness::demo_manifest(root)?;
    let demo_reuse = with_reuse(&demo);
    let one = Load {
        connections: 1,
        ..load.clone()
    };
    let (baseline, baseline_one) = {
        let mut child =
            harness::spawn(Command::new(release.join("echo-baseline")).arg("127.0.0.1:0"))?;
        let addr = harness::wait_for_stdout(&mut child, "listening on ")?;
        let url = format!("http://{addr}/echo");
        let loaded = harness::wrk_on(load, &url, child.id());
        let single = harness::wrk_on(&one, &url, child.id());
        let _ = child.kill();
        let _ = child.wait();
        (loaded?, single?)
    };

    let ((fresh, threads, fresh_one, rss, phases), cold_rss) =
        serve(&release, "foundation", &demo, |url, host| {
            let pid = host.pid();
            let threads_before = harness::thread_cpu_seconds(pid)?;
            let loaded = harness::wrk_on(load, url, pid)?;
            let threads = by_thread(&threads_before, &harness::thread_cpu_seconds(pid)?, &loaded);
            let single = harness::wrk_on(&one, url, pid)?;
            let rss = harness::peak_rss_mib(pid)?;
            Ok((
                loaded,
                threads,
                single,
                rss,
                phases(host, url, PHASE_SAMPLES)?,
            ))
        })?;
    let (reused, _) = serve(&release, "foundation-reuse", &demo_reuse, |url, host| {
        harness::wrk_on(load, url, host.pid())
    })?;
    let wasmtime = wasmtime_serve(root, load);
    let stages_alone = alone_rows(&release, [&demo, &demo_reuse], [&fresh, &reused])
        .unwrap_or_else(|why| format!("| not measured: {why:#} | | | |"));

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = harness::cpu_model();
    let cpu_ratio = |f: &Figures| match (f.cpu_us, baseline.cpu_us) {
        (Some(host), Some(base)) if base > 0.0 => format!("{:.1}×", host / base),
        _ => "–".to_owned(),
    };
    Ok(format!(
        "Measured at commit `{commit}` on {cores} cores ({cpu}), one target at a time, with `{loaded}` \
         (and `-c1` for the one-connection rows) on loopback, POSTing `{BODY}`. Server CPU is \
         the process's user and system time (all threads, from `/proc`) over the requests \
         served.\n\n\
         {TABLE_HEADER}\n{}\n{}\n{}\n{}\n{}\n\n\
         | host / baseline | fresh instances | reused instances |\n\
         | --- | ---: | ---: |\n\
         | throughput | **{:.3}** | {:.3} |\n\
         | server CPU per request | **{}** | {} |\n\n\
         {wasmtime}\n\n\
         The same stages alone, with no server, store or network: `strata run --repeat \
         {ALONE_RUNS}` on the same question, one run after another on one thread, the mean \
         wall-clock time of a run and of each stage (outside a server a fresh instance is reset \
         as soon as its stage ends, so a fresh stage's time includes its reset), against the \
         server CPU a request of the loaded runs above:\n\n\
         | stages | alone, µs/request (each stage) | served, CPU µs/request | served less alone |\n\
         | --- | ---: | ---: | ---: |\n\
         {stages_alone}\n\n\
         Host peak resident memory (`VmHWM`) after the loaded and one-connection runs: \
         {rss:.0} MiB, the host started with its compile cache filled (as every start after \
         the first is); a first start, which compiles every stage, holds {cold_rss:.0} MiB \
         before any load (memory the allocator keeps after compiling).\n\n\
         Where the CPU goes under load, fresh instances: each thread's CPU time over the \
         loaded run, by thread name, per request served:\n\n\
         | thread | CPU µs/request |\n| --- | ---: |\n{threads}\n\
         Where one request's time goes, fresh instances, the mean of {PHASE_SAMPLES} requests \
         sent one at a time, each on a new connection, after the runs above: the host's phases \
         from its `strata_request_phase_seconds` (the difference of the admin API's `/metrics` \
         before and after), each stage as the host timed it (the response's `stages`), and \
         what is outside the host's clock: the client's wall time less the host's phases:\n\n\
         | phase | µs |\n| --- | ---: |\n{phases}",
        baseline.row("bare hyper echo (baseline)"),
        fresh.row("strata, 4 fresh-instance stages"),
        reused.row("strata, the same 4 stages reusing instances"),
        baseline_one.row("bare hyper echo, one connection"),
        fresh_one.row("strata, 4 fresh-instance stages, one connection"),
        fresh.requests_per_second / baseline.requests_per_second,
        reused.requests_per_second / baseline.requests_per_second,
        cpu_ratio(&fresh),
        cpu_ratio(&reused),
        wasmtime = match wasmtime {
            Ok((serve_fresh, serve_reused)) => format!(
                "`wasmtime serve` 48.0.8 with one wasi:http component \
                 (`tests/components/http-echo`, answering with the request body), same load:\n\n\
                 {TABLE_HEADER}\n{}\n{}\n\n\
                 | strata / `wasmtime serve` | fresh instances | reused instances |\n\
                 | --- | ---: | ---: |\n\
                 | throughput (4 stages against 1 component) | **{:.2}** | {:.2} |",
                serve_fresh.row("wasmtime serve, fresh instance per request"),
                serve_reused.row("wasmtime serve --max-instance-reuse-count 10000"),
                fresh.requests_per_second / serve_fresh.requests_per_second,
                reused.requests_per_second / serve_reused.requests_per_second,
            ),
            Err(why) => format!("`wasmtime serve` was not measured: {why:#}."),
        },
        commit = harness::commit(),
        loaded = load.describe(),
    ))
}

/// `wasmtime serve` (installed by `scripts/bench` into `target/tools`) with
/// the wasi:http echo component: fresh instances, then reused ones. `-S cli`
/// gives the component the `wasi:cli` imports a std-built guest has (the
/// host gives its stages locked-down ones).
fn wasmtime_serve(root: &Path, load: &Load) -> anyhow::Result<(Figures, Figures)> {
    let wasmtime = root.join("target/tools/wasmtime/bin/wasmtime");
    let echo = root.join("target/guests/wasm32-wasip2/release/http_echo.wasm");
    for (path, what) in [
        (&wasmtime, "the wasmtime CLI"),
        (&echo, "the http-echo component"),
    ] {
        if !path.exists() {
            anyhow::bail!(
                "{what} is not at {} (scripts/bench builds it)",
                path.display()
            );
        }
    }
    let run = |extra: &[&str]| -> anyhow::Result<Figures> {
        let mut child = harness::spawn(
            Command::new(&wasmtime)
                .args(["serve", "-S", "cli", "--addr", "127.0.0.1:0"])
                .args(extra)
                .arg(&echo),
        )?;
        let result = harness::wait_for_stderr(&mut child, "Serving HTTP on ").and_then(|url| {
            let url = url.trim_end_matches('/');
            harness::wrk_on(load, &format!("{url}/"), child.id())
        });
        let _ = child.kill();
        let _ = child.wait();
        result
    };
    Ok((run(&[])?, run(&["--max-instance-reuse-count", "10000"])?))
}

/// Requests sent one at a time for the per-phase breakdown.
const PHASE_SAMPLES: usize = 300;

/// Runs of the benchmark request through the stages alone.
const ALONE_RUNS: u32 = 20_000;

/// What `strata run --repeat` reported: the mean run and each stage's mean,
/// in microseconds.
struct Alone {
    mean_us: f64,
    stages: Vec<(String, f64)>,
}

impl Alone {
    /// A Markdown table row beside `served`, the same stages under load.
    fn row(&self, name: &str, served: &Figures) -> String {
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|(stage, micros)| format!("`{stage}` {micros:.0}"))
            .collect();
        let (cpu, less) = match served.cpu_us {
            Some(cpu) => (format!("{cpu:.0}"), format!("{:.0}", cpu - self.mean_us)),
            None => ("–".to_owned(), "–".to_owned()),
        };
        format!(
            "| {name} | {:.0} ({}) | {cpu} | {less} |",
            self.mean_us,
            stages.join(", ")
        )
    }
}

/// The table rows of the stages alone, fresh and reusing instances (the
/// demo's `manifests`), beside the same stages `served` under load.
fn alone_rows(
    release: &Path,
    manifests: [&str; 2],
    served: [&Figures; 2],
) -> anyhow::Result<String> {
    let fresh = alone(release, manifests[0], "foundation-alone")?;
    let reused = alone(release, manifests[1], "foundation-alone-reuse")?;
    Ok(format!(
        "{}\n{}",
        fresh.row("4 fresh-instance stages", served[0]),
        reused.row("the same 4 stages reusing instances", served[1]),
    ))
}

/// Run the benchmark request [`ALONE_RUNS`] times through `manifest`'s
/// pipeline with `strata run --repeat` (its timing covers the runs, not
/// the loading and compiling before them), and check it was answered by
/// the fourth stage.
fn alone(release: &Path, manifest: &str, name: &str) -> anyhow::Result<Alone> {
    let dir = harness::scratch(name)?;
    let path = dir.join("strata.toml");
    std::fs::write(&path, manifest)?;
    let body: serde_json::Value = serde_json::from_str(BODY)?;
    let input = body["input"].as_str().unwrap_or_default();
    let result = (|| -> anyhow::Result<serde_json::Value> {
        let output = Command::new(release.join("strata"))
            .env_remove("RUST_BACKTRACE")
            .arg("run")
            .arg(&path)
            .args([
                "support",
                "--input",
                input,
                "--repeat",
                &ALONE_RUNS.to_string(),
            ])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "strata run failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let result = result?;
    anyhow::ensure!(
        result["stage"] == "faq",
        "strata run did not answer at the fourth stage: {result}"
    );
    let timing = &result["timing"];
    let mean = |value: &serde_json::Value| {
        value["mean_us"]
            .as_f64()
            .ok_or_else(|| anyhow::anyhow!("strata run gave no timing: {timing}"))
    };
    let mut stages = Vec::new();
    for stage in timing["stages"].as_array().into_iter().flatten() {
        let name = stage["stage"].as_str().unwrap_or("?").to_owned();
        stages.push((name, mean(stage)?));
    }
    Ok(Alone {
        mean_us: mean(timing)?,
        stages,
    })
}

/// What each thread of the host is, by the start of the name it has in
/// `/proc` (where names are cut at 15 bytes).
const THREADS: &[(&str, &str)] = &[
    (
        "tokio-rt-worker",
        "tokio's workers: hyper, the handlers, the stages (and its blocking pool)",
    ),
    ("strata-store", "the SQLite writer: every request's record"),
    (
        "strata-record-",
        "the traffic recorder of a recording pipeline",
    ),
    ("notify-rs", "the watcher of the manifest's directory"),
    ("strata-epoch", "wasmtime's epoch ticker"),
    (
        "strata-checkpoi",
        "copying SQLite's log into the database, at nice 10",
    ),
    ("strata", "the main thread"),
];

/// Each thread's CPU time between `before` and `after`, per request of
/// `run`, as Markdown table rows, the busiest first.
fn by_thread(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    run: &Figures,
) -> String {
    let mut spent: Vec<(&str, f64)> = after
        .iter()
        .map(|(name, seconds)| {
            let earlier = before.get(name).copied().unwrap_or(0.0);
            (
                name.as_str(),
                (seconds - earlier) * 1e6 / run.requests.max(1) as f64,
            )
        })
        .filter(|(_, micros)| *micros >= 0.5)
        .collect();
    spent.sort_by(|a, b| b.1.total_cmp(&a.1));
    spent
        .iter()
        .map(|(name, micros)| {
            let what = THREADS
                .iter()
                .find(|(known, _)| name.starts_with(known))
                .map_or(String::new(), |(_, what)| format!(" ({what})"));
            format!("| `{name}`{what} | {micros:.0} |\n")
        })
        .collect()
}

/// The host's request phases, in the order they follow one another.
const HOST_PHASES: [(&str, &str); 5] = [
    (
        "receive",
        "`receive`: routing, authentication, the body read and parsed, admission",
    ),
    ("handoff", "`handoff`: from the handler to the run and back"),
    ("run", ""),
    (
        "keep",
        "`keep`: the request's record queued for the writer, its view built",
    ),
    ("respond", "`respond`: the response built and serialised"),
];

/// The sum of seconds and the count of each of the host's request phases,
/// from its metrics.
fn phase_totals(host: &Host) -> anyhow::Result<BTreeMap<String, (f64, f64)>> {
    let (status, metrics) = harness::http("GET", &host.admin, "/metrics", "")?;
    anyhow::ensure!(status == 200, "GET /metrics answered {status}");
    let mut totals: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("strata_request_phase_seconds_") else {
            continue;
        };
        let Some((kind, rest)) = rest.split_once("{phase=\"") else {
            continue;
        };
        let Some((phase, value)) = rest.split_once("\"}") else {
            continue;
        };
        let value: f64 = value.trim().parse()?;
        let entry = totals.entry(phase.to_owned()).or_default();
        match kind {
            "sum" => entry.0 = value,
            "count" => entry.1 = value,
            _ => {}
        }
    }
    Ok(totals)
}

/// Over `samples` requests sent one at a time: the mean of each of the
/// host's phases, each stage within the run, and what the client waited
/// outside the host's clock, as Markdown table rows.
fn phases(host: &Host, url: &str, samples: usize) -> anyhow::Result<String> {
    let rest = url.trim_start_matches("http://");
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stages: Vec<(String, f64)> = Vec::new();
    let mut wall = 0.0;
    let before = phase_totals(host)?;
    for _ in 0..samples {
        let started = std::time::Instant::now();
        let (_, body) = harness::http("POST", addr, path, BODY)?;
        wall += started.elapsed().as_secs_f64() * 1e6;
        let body: serde_json::Value = serde_json::from_str(&body)?;
        for (index, stage) in body["stages"].as_array().into_iter().flatten().enumerate() {
            let micros = stage["micros"].as_f64().unwrap_or(0.0);
            match stages.get_mut(index) {
                Some((_, total)) => *total += micros,
                None => stages.push((stage["stage"].as_str().unwrap_or("?").to_owned(), micros)),
            }
        }
    }
    let after = phase_totals(host)?;
    let n = samples as f64;
    let mean = |phase: &str| -> anyhow::Result<f64> {
        let (sum, count) = after.get(phase).copied().unwrap_or_default();
        let (sum_before, count_before) = before.get(phase).copied().unwrap_or_default();
        anyhow::ensure!(
            count - count_before == n,
            "the host counted {} `{phase}` phases for {samples} requests",
            count - count_before
        );
        Ok((sum - sum_before) * 1e6 / n)
    };
    let in_stages: f64 = stages.iter().map(|(_, total)| total / n).sum();
    let mut in_host = 0.0;
    let mut rows = String::new();
    for (phase, what) in HOST_PHASES {
        let micros = mean(phase)?;
        in_host += micros;
        if phase != "run" {
            rows.push_str(&format!("| {what} | {micros:.0} |\n"));
            continue;
        }
        for (name, total) in &stages {
            rows.push_str(&format!("| `run`: stage `{name}` | {:.0} |\n", total / n));
        }
        rows.push_str(&format!(
            "| `run`: the pipeline around its stages | {:.0} |\n",
            micros - in_stages
        ));
    }
    rows.push_str(&format!(
        "| outside the host's clock: connect, the head read and parsed, the response \
         written, the client | {:.0} |\n",
        wall / n - in_host
    ));
    rows.push_str(&format!(
        "| **whole request, client wall time** | **{:.0}** |\n",
        wall / n
    ));
    Ok(rows)
}

/// Serve `manifest` from a scratch directory, check it answers the
/// benchmark request through all four stages, and `measure` it. The host's
/// data directory is a subdirectory, as `data_dir`'s default is, so its
/// commits do not wake the watcher of the manifest's directory. The host is
/// started twice: first to fill its compile cache (its peak memory then,
/// in MiB, is the second value), then, as a host restarted in production
/// would be, from the cache, and measured.
pub(crate) fn serve<T>(
    release: &Path,
    name: &str,
    manifest: &str,
    measure: impl FnOnce(&str, &Host) -> anyhow::Result<T>,
) -> anyhow::Result<(T, f64)> {
    let dir = harness::scratch(name)?;
    let path = dir.join("strata.toml");
    let data = dir.join("data");
    std::fs::write(&path, manifest)?;
    let result = (|| {
        let cold = Host::start(&release.join("strata"), &path, &data)?;
        let cold_rss = harness::peak_rss_mib(cold.pid());
        cold.stop();
        let host = Host::start(&release.join("strata"), &path, &data)?;
        let url = format!("http://{}/v1/pipelines/support", host.addr);
        let result = harness::check_answer(&url).and_then(|()| measure(&url, &host));
        host.stop();
        Ok((result?, cold_rss?))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The demo manifest with every stage reusing its instances (up to 10,000
/// requests each, 16 idle per stage, so that the 32 connections mostly find
/// one; the instance pool grows to hold them). A deterministic stage may
/// not reuse instances, so the stages here are not declared deterministic.
fn with_reuse(manifest: &str) -> String {
    manifest
        .replace("deterministic = true\n", "")
        .replace(
            "[runtime]\ninstances = 64\n",
            "[runtime]\ninstances = 256\n",
        )
        .replace(
            "[[pipelines.support.stages]]\n",
            "[[pipelines.support.stages]]\nreuse = { max_uses = 10000, max_idle = 16 }\n",
        )
}
