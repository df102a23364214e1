//! Hosts serving as one over Redis (`[shared] redis`) and PostgreSQL
//! (`[store] url`): the demo served by one host alone, by one host of a
//! cluster, and by one, two and three hosts of one cluster with the load
//! split between them (each host its own wrk), with their state in SQLite
//! each or in one PostgreSQL server, in one run; then how long a reload on
//! one host takes to be served by the other two, and what an escalation
//! (a durable ticket per request) costs on PostgreSQL against SQLite. Every
//! host, Redis and PostgreSQL run on this machine's two cores, so more
//! hosts share the same CPU: the rows show the price of sharing, not
//! scale-out. `scripts/bench` starts the PostgreSQL server
//! (`STRATA_TEST_POSTGRES_URL`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::harness::{self, Figures, Host, Load, TABLE_HEADER};

/// Reloads timed for the propagation figure.
const RELOADS: usize = 5;

/// Rounds of the configurations, one after the other, so the machine's
/// drift shows.
const ROUNDS: usize = 2;

/// An input the demo escalates (its triage sends a lost phone to a person).
const ESCALATED: &str = "I lost my phone with the banking app on it";

pub fn run(root: &Path, load: &Load) -> anyhow::Result<String> {
    let strata = root.join("target/release/strata");
    let scratch = harness::scratch("cluster")?;
    let redis = Redis::start(&scratch)?;
    let server = std::env::var("STRATA_TEST_POSTGRES_URL").context(
        "the cluster scenario needs a PostgreSQL server: run it through scripts/bench, which \
         starts one",
    )?;
    let demo = harness::demo_manifest(root)?;
    let alone = scratch.join("alone.toml");
    std::fs::write(&alone, &demo)?;
    let shared = scratch.join("shared.toml");
    // Hosts do not watch the file: only the cluster carries a reload.
    let shared_text = format!(
        "{demo}\n[shared]\nredis = \"{}\"\ncluster = \"bench\"\n\n[reload]\nwatch = false\n",
        redis.url
    );
    std::fs::write(&shared, &shared_text)?;
    let on_postgres = scratch.join("postgres.toml");
    let postgres_text = format!(
        "{shared_text}\n[store]\nurl = \"{}\"\n",
        database(&server, "bench_cluster")?
    );
    std::fs::write(&on_postgres, &postgres_text)?;

    let mut rows = Vec::new();
    let mut summary = Vec::new();
    let mut propagated = String::new();
    let configurations = [
        ("1 host, alone", &alone, 1),
        ("1 host of a cluster", &shared, 1),
        ("2 hosts of a cluster", &shared, 2),
        ("3 hosts of a cluster", &shared, 3),
        ("1 host, PostgreSQL and Redis", &on_postgres, 1),
        ("2 hosts, PostgreSQL and Redis", &on_postgres, 2),
        ("3 hosts, PostgreSQL and Redis", &on_postgres, 3),
    ];
    for round in 1..=ROUNDS {
        for (label, manifest, hosts) in configurations {
            let label = format!("round {round}, {label}");
            let label = label.as_str();
            let started: Vec<Host> = (0..hosts)
                .map(|n| {
                    let data = scratch.join(format!("data-{}-{n}", label.replace([' ', ','], "-")));
                    Host::start(&strata, manifest, &data)
                })
                .collect::<anyhow::Result<_>>()?;
            for host in &started {
                harness::check_answer(&format!("http://{}/v1/pipelines/support", host.addr))?;
            }
            let share = Load {
                connections: (load.connections / hosts as u32).max(1),
                ..load.clone()
            };
            let redis_before = harness::cpu_seconds(redis.pid())?;
            let figures: Vec<Figures> = std::thread::scope(|scope| {
                let runs: Vec<_> = started
                    .iter()
                    .map(|host| {
                        let share = &share;
                        let url = format!("http://{}/v1/pipelines/support", host.addr);
                        let pid = host.pid();
                        scope.spawn(move || harness::wrk_on(share, &url, pid))
                    })
                    .collect();
                runs.into_iter()
                    .map(|run| run.join().expect("a wrk thread panicked"))
                    .collect::<anyhow::Result<_>>()
            })?;
            let redis_spent = harness::cpu_seconds(redis.pid())? - redis_before;
            for (n, host) in figures.iter().enumerate() {
                rows.push(host.row(&format!("{label}: host {}", n + 1)));
            }
            let requests: u64 = figures.iter().map(|f| f.requests).sum();
            let total: f64 = figures.iter().map(|f| f.requests_per_second).sum();
            let cpu: f64 = figures
                .iter()
                .map(|f| f.cpu_us.unwrap_or(f64::NAN) * f.requests as f64)
                .sum::<f64>()
                / requests.max(1) as f64;
            let errors: u64 = figures.iter().map(|f| f.errors).sum();
            summary.push(format!(
                "| {label} | {total:.0} | {cpu:.0} | {:.1} | {errors} |",
                redis_spent * 1e6 / requests.max(1) as f64
            ));
            if hosts == 3 && round == ROUNDS && manifest == &shared {
                propagated = propagation(&started, &shared, &shared_text)?;
            }
            started.into_iter().for_each(Host::stop);
        }
    }
    let escalations = escalation_price(&strata, &scratch, &demo, &server, load)?;
    drop(redis);
    let _ = std::fs::remove_dir_all(&scratch);
    let propagation = propagated;
    Ok(format!(
        "Measured at commit `{commit}` with `{loaded}` split evenly between the hosts (one wrk \
         per host, at once), POSTing `{body}` to the demo; Redis 7 from Debian on loopback:\n\n\
         | hosts | requests/s, all hosts | host CPU µs/request | Redis CPU µs/request | errors |\n\
         | --- | ---: | ---: | ---: | ---: |\n{summary}\n\n\
         With PostgreSQL the hosts' request records go to one PostgreSQL 15 server (Debian's, \
         on loopback, `fsync` on) instead of each host's SQLite file; its CPU is not counted \
         in the host column but shares the same two cores.\n\n\
         Each host separately:\n\n{TABLE_HEADER}\n{rows}\n\n{propagation}\n\n{escalations}",
        summary = summary.join("\n"),
        rows = rows.join("\n"),
        commit = harness::commit(),
        loaded = load.describe(),
        body = harness::BODY,
    ))
}

/// Reload the first host `RELOADS` times (the manifest changed each time)
/// and time until the other two serve the new generation.
fn propagation(hosts: &[Host], manifest: &Path, text: &str) -> anyhow::Result<String> {
    let mut times = Vec::new();
    for round in 1..=RELOADS {
        // A comment changes the manifest's digest, so the reload applies.
        std::fs::write(manifest, format!("{text}# round {round}\n"))?;
        let generation = round as u64 + 1;
        let started = Instant::now();
        let (status, body) = harness::http("POST", &hosts[0].admin, "/admin/reload", "{}")?;
        anyhow::ensure!(status == 200, "the reload failed: {body}");
        for host in &hosts[1..] {
            let deadline = started + Duration::from_secs(30);
            loop {
                let (_, body) = harness::http("GET", &host.admin, "/admin/pipelines", "")?;
                let state: serde_json::Value = serde_json::from_str(&body)?;
                if state["generation"] == generation {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "host {} did not serve generation {generation} within 30 s",
                    host.addr
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(format!(
        "A reload asked of one of the three hosts (`POST /admin/reload`, the manifest edited \
         each time) until the other two serve the new generation, {RELOADS} times: median \
         **{:.0} ms**, slowest {:.0} ms (the bar is 2 s). This includes the asking host's own \
         reload (reading, compiling from the cache, golden cases) and the others' in turn.",
        harness::quantile(&mut times.clone(), 0.5),
        times.last().copied().unwrap_or(f64::NAN),
    ))
}

/// What an escalation costs on each store: one host, every request
/// escalated (a ticket committed before the client hears 202), state in
/// SQLite and then in PostgreSQL, alternately.
fn escalation_price(
    strata: &Path,
    scratch: &Path,
    demo: &str,
    server: &str,
    load: &Load,
) -> anyhow::Result<String> {
    let sqlite = scratch.join("escalate-sqlite.toml");
    std::fs::write(&sqlite, demo)?;
    let postgres = scratch.join("escalate-postgres.toml");
    std::fs::write(
        &postgres,
        format!(
            "{demo}\n[store]\nurl = \"{}\"\n",
            database(server, "bench_escalations")?
        ),
    )?;
    let mut rows = Vec::new();
    for round in 1..=ROUNDS {
        for (label, manifest) in [("SQLite", &sqlite), ("PostgreSQL", &postgres)] {
            let data = scratch.join(format!("escalate-{label}-{round}"));
            let host = Host::start(strata, manifest, &data)?;
            let url = format!("http://{}/v1/pipelines/support", host.addr);
            let (status, body) = harness::http(
                "POST",
                &host.addr,
                "/v1/pipelines/support",
                &serde_json::json!({ "input": ESCALATED }).to_string(),
            )?;
            anyhow::ensure!(status == 202, "the demo did not escalate: {status} {body}");
            let figures = harness::wrk_body_on(load, &url, ESCALATED, host.pid())?;
            rows.push(figures.row(&format!("round {round}, escalations on {label}")));
            host.stop();
        }
    }
    Ok(format!(
        "The price of an escalation: one host, every request escalated (`{ESCALATED}`: a \
         ticket committed, with a full sync, before the client hears 202), its state in SQLite \
         and then in PostgreSQL, alternately:\n\n{TABLE_HEADER}\n{rows}",
        rows = rows.join("\n"),
    ))
}

/// Create database `name` on the PostgreSQL server at `server` (a URL
/// without a database) afresh, and return its URL.
fn database(server: &str, name: &str) -> anyhow::Result<String> {
    let server = server.trim_end_matches('/');
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        let out = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg(format!("{server}/postgres"))
            .args(["-c", &sql])
            .output()
            .context("cannot run psql (scripts/bench installs PostgreSQL)")?;
        anyhow::ensure!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(format!("{server}/{name}"))
}

/// A `redis-server` on a free loopback port, killed when dropped.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    fn start(scratch: &Path) -> anyhow::Result<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = scratch.join("redis");
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .context("cannot run redis-server (scripts/bench installs it)")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Redis {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
