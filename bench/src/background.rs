//! Asynchronous requests against real-time ones, in the same run.
//!
//! 1. The same Banking77-drawn requests through the `direct` pipeline (every
//!    request to the model), first real-time from as many concurrent
//!    clients as the host has asynchronous workers, then submitted
//!    asynchronously: provider calls, prompts per call, time to finish,
//!    completion rate and cost. The provider is the local stand-in with a
//!    fixed latency per call, batch or not.
//! 2. The latency of real-time requests (answered by the rules layer) alone
//!    and while a backlog of asynchronous requests drains: real-time
//!    traffic should not wait behind background work.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::harness::{self, Host, Load, TABLE_HEADER};
use crate::layers::{self, Trace};

/// What the scenario is given.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The requests, drawn like the `layers` trace.
    pub trace: Trace,
    /// The provider's latency per call.
    pub provider_latency: Duration,
}

/// Run the scenario; returns the BENCHMARKS.md section.
pub fn run(root: &Path, load: &Load, settings: &Settings) -> anyhow::Result<String> {
    let release = root.join("target/release");
    let dir = harness::scratch("async")?;
    let mut llm = harness::spawn(
        Command::new(release.join("local-llm"))
            .arg("127.0.0.1:0")
            .args([
                "--latency-ms",
                &settings.provider_latency.as_millis().to_string(),
            ]),
    )?;
    let llm_addr = harness::wait_for_stdout(&mut llm, "listening on ")?;
    let manifest = dir.join("strata.toml");
    layers::write_manifest(root, &manifest, &llm_addr)?;
    let text = std::fs::read_to_string(&manifest)?;
    let workers = async_workers(&text)?;

    let questions = layers::read_questions(&settings.trace.source)?;
    let trace = layers::draw(&questions, &settings.trace);

    let host = Host::start(&release.join("strata"), &manifest, &dir.join("data"))?;
    let realtime = realtime(&host, &llm_addr, &trace, workers)?;
    let background = background(&host, &llm_addr, &trace, workers)?;

    // 2. Real-time latency, alone and beside a draining backlog.
    let url = format!("http://{}/v1/pipelines/support", host.addr);
    harness::check_answer(&url)?;
    let alone = harness::wrk(load, &url)?;
    // Enough background work to outlast the measurement by half again.
    let per_second = workers as f64 / settings.provider_latency.as_secs_f64();
    let backlog = (per_second * f64::from(load.duration) * 1.5).ceil() as usize;
    let backlog_trace: Vec<String> = trace.iter().cycle().take(backlog).cloned().collect();
    submit_all(&host, &backlog_trace, workers)?;
    let beside = harness::wrk(load, &url)?;
    let left = pending(&host)?;
    if left == 0 {
        bail!("the backlog drained before the measurement ended; make it larger");
    }
    host.stop();
    let _ = llm.kill();
    let _ = llm.wait();
    let _ = std::fs::remove_dir_all(&dir);

    Ok(report(
        load,
        settings,
        workers,
        &realtime,
        &background,
        &alone,
        &beside,
        backlog,
        left,
    ))
}

/// `[async] workers` of the manifest.
fn async_workers(manifest: &str) -> anyhow::Result<usize> {
    let value: toml::Table = manifest.parse()?;
    value
        .get("async")
        .and_then(|a| a.get("workers"))
        .and_then(toml::Value::as_integer)
        .map(|n| n as usize)
        .context("the demo manifest sets no [async] workers")
}

/// What one way of sending the trace did.
#[derive(Debug, Default)]
struct Tally {
    requests: usize,
    answered: usize,
    cost_usd: f64,
    provider_calls: u64,
    batched_prompts: u64,
    elapsed: Duration,
}

/// The provider's counters: `(requests, batched prompts)`.
fn provider(llm: &str) -> anyhow::Result<(u64, u64)> {
    let (_, stats) = harness::http("GET", llm, "/stats", "")?;
    let stats: Value = serde_json::from_str(&stats)?;
    Ok((
        stats["requests"].as_u64().context("no request count")?,
        stats["batched_prompts"].as_u64().unwrap_or(0),
    ))
}

/// Run `work` on every item from `clients` threads at once.
fn fan_out<T: Sync, R: Send>(
    items: &[T],
    clients: usize,
    work: impl Fn(&T) -> anyhow::Result<R> + Sync,
) -> anyhow::Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(items.len()));
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return Ok(());
                        };
                        let result = work(item)?;
                        results
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(result);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(results.into_inner().unwrap_or_else(|e| e.into_inner()))
}

fn realtime(host: &Host, llm: &str, trace: &[String], clients: usize) -> anyhow::Result<Tally> {
    let (calls, prompts) = provider(llm)?;
    let started = Instant::now();
    let answers = fan_out(trace, clients, |question| {
        let body = json!({"input": question}).to_string();
        let (status, text) = harness::http("POST", &host.addr, "/v1/pipelines/direct", &body)?;
        serde_json::from_str::<Value>(&text).with_context(|| format!("{status}: {text}"))
    })?;
    let elapsed = started.elapsed();
    let (calls_after, prompts_after) = provider(llm)?;
    Ok(tally(
        &answers,
        calls_after - calls,
        prompts_after - prompts,
        elapsed,
    ))
}

fn background(host: &Host, llm: &str, trace: &[String], clients: usize) -> anyhow::Result<Tally> {
    let (calls, prompts) = provider(llm)?;
    let started = Instant::now();
    let ids = submit_all(host, trace, clients)?;
    while pending(host)? > 0 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    let (calls_after, prompts_after) = provider(llm)?;
    let answers = fan_out(&ids, clients, |id| {
        let (status, text) = harness::http("GET", &host.addr, &format!("/v1/requests/{id}"), "")?;
        serde_json::from_str::<Value>(&text).with_context(|| format!("{status}: {text}"))
    })?;
    Ok(tally(
        &answers,
        calls_after - calls,
        prompts_after - prompts,
        elapsed,
    ))
}

/// Submit every question asynchronously to `direct`; their request ids.
fn submit_all(host: &Host, trace: &[String], clients: usize) -> anyhow::Result<Vec<String>> {
    fan_out(trace, clients, |question| {
        let body = json!({"input": question, "async": true}).to_string();
        let (status, text) = harness::http("POST", &host.addr, "/v1/pipelines/direct", &body)?;
        if status != 202 {
            bail!("an asynchronous request was answered {status}: {text}");
        }
        let accepted: Value = serde_json::from_str(&text)?;
        accepted["request_id"]
            .as_str()
            .map(str::to_owned)
            .context("a 202 without a request id")
    })
}

/// Asynchronous requests not yet completed, from the host's metrics.
fn pending(host: &Host) -> anyhow::Result<u64> {
    let (_, metrics) = harness::http("GET", &host.admin, "/metrics", "")?;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("strata_async_pending "))
        .and_then(|n| n.trim().parse().ok())
        .context("the metrics have no strata_async_pending")
}

fn tally(answers: &[Value], provider_calls: u64, batched_prompts: u64, elapsed: Duration) -> Tally {
    Tally {
        requests: answers.len(),
        answered: answers.iter().filter(|a| a["status"] == "answered").count(),
        cost_usd: answers.iter().filter_map(|a| a["cost_usd"].as_f64()).sum(),
        provider_calls,
        batched_prompts,
        elapsed,
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    load: &Load,
    settings: &Settings,
    workers: usize,
    realtime: &Tally,
    background: &Tally,
    alone: &harness::Figures,
    beside: &harness::Figures,
    backlog: usize,
    left: u64,
) -> String {
    let row = |name: &str, t: &Tally| {
        let per_call = if t.batched_prompts > 0 {
            t.batched_prompts as f64 / t.provider_calls.max(1) as f64
        } else {
            t.requests as f64 / t.provider_calls.max(1) as f64
        };
        format!(
            "| {name} | {} | {} | {per_call:.1} | {:.2} | {:.0} | {:.1} % | {:.6} |",
            t.requests,
            t.provider_calls,
            t.elapsed.as_secs_f64(),
            t.requests as f64 / t.elapsed.as_secs_f64(),
            100.0 * t.answered as f64 / t.requests.max(1) as f64,
            t.cost_usd,
        )
    };
    format!(
        "Measured at commit `{commit}`.\n\n\
         **The same {n} requests** (drawn from Banking77 like the `layers` trace, seed {seed}) \
         through the `direct` pipeline (every request to the model), the provider being the \
         local stand-in with {latency} ms per call, batch or not: first real-time from {workers} \
         concurrent clients, then submitted with `\"async\": true` to {workers} workers \
         (`[async] workers` of the demo) and tiers with `batch = {{ max_size = 16, max_wait_ms = \
         50 }}`. Time is from the first request to the last completion.\n\n\
         | mode | requests | provider calls | prompts per call | seconds | requests/s | answered \
         | cost (USD) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n{}\n{}\n\n\
         Provider calls, asynchronous / real-time: **{:.3}**. With a provider whose latency does \
         not grow with the batch (as here), throughput is bounded by workers / latency either \
         way, and a batch's wait for company (up to `max_wait_ms`) adds to each call's time, so \
         the asynchronous run finishes no sooner; what batching saves is calls against the \
         provider's rate limits and its per-request overhead, and the asynchronous client had \
         its 202s at once. The cost differs a little because a batch sends each chat as one \
         text prompt, counted in tokens by the provider.\n\n\
         **Real-time requests beside background work**: the demo `support` pipeline, answered by \
         the rules layer, `{load}`, alone and while a backlog of {backlog} asynchronous requests \
         drained ({left} still pending when the measurement ended):\n\n\
         {TABLE_HEADER}\n{}\n{}\n",
        row("real-time", realtime),
        row("asynchronous, batched", background),
        background.provider_calls as f64 / realtime.provider_calls.max(1) as f64,
        alone.row("real-time alone"),
        beside.row("real-time beside the async backlog"),
        commit = harness::commit(),
        n = realtime.requests,
        seed = settings.trace.seed,
        latency = settings.provider_latency.as_millis(),
        load = load.describe(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_workers_of_the_demo_manifest() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let text = std::fs::read_to_string(root.join("examples/support-desk/strata.toml")).unwrap();
        assert!(async_workers(&text).unwrap() > 0);
        assert!(async_workers("listen = \"x\"").is_err());
    }

    #[test]
    fn fans_out_over_every_item_once() {
        let items: Vec<usize> = (0..100).collect();
        let mut seen = fan_out(&items, 7, |i| Ok(*i)).unwrap();
        seen.sort_unstable();
        assert_eq!(seen, items);
        assert!(fan_out(&items, 3, |_| -> anyhow::Result<()> { bail!("no") }).is_err());
    }
}
