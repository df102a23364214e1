//! Reloading under load against steady state, reload latency, and restart
//! time with and without the compile cache.
//!
//! Each reload changes the `faq` stage's config (an answer's confidence), so
//! every one builds and publishes a real new generation: the manifest and
//! all four stages are read, checked, linked and pre-instantiated again (the
//! components themselves come from the in-memory compile cache, as they do
//! for any reload that does not change a plugin).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::harness::{self, BODY, Host, Load, TABLE_HEADER};

/// How often the reloading measurement reloads.
const RELOAD_EVERY: Duration = Duration::from_millis(100);

/// A copy of the demo manifest with absolute plugin paths.
fn manifest_copy(root: &Path, dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let text = harness::demo_manifest(root)?.replace("[reload]\n", "");
    // Only explicit reloads in this scenario.
    let text = format!("{text}\n[reload]\nwatch = false\n");
    let path = dir.join("strata.toml");
    std::fs::write(&path, &text)?;
    Ok((path, text))
}

/// Run the scenario; returns the BENCHMARKS.md section.
pub fn run(root: &Path, load: &Load) -> anyhow::Result<String> {
    let strata = root.join("target/release/strata");
    let dir = harness::scratch("reload")?;
    let (manifest, text) = manifest_copy(root, &dir)?;
    if !text.contains("confidence = 0.95") {
        bail!("the demo manifest no longer has `confidence = 0.95` for the faq stage to toggle");
    }

    // Restart times: a cold compile cache, then a warm one.
    let data = dir.join("data");
    let cold = Host::start(&strata, &manifest, &data)?;
    let cold_start = cold.started_in;
    cold.stop();
    let host = Host::start(&strata, &manifest, &data)?;
    let warm_start = host.started_in;

    let url = format!("http://{}/v1/pipelines/support", host.addr);
    harness::check_answer(&url)?;
    let steady = harness::wrk(load, &url)?;

    // The same load while a reload lands every 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let reloader = {
        let stop = stop.clone();
        let admin = host.admin.clone();
        let api = host.addr.clone();
        std::thread::spawn(move || reload_loop(&manifest, &text, &admin, &api, &stop))
    };
    let reloading = harness::wrk(load, &url);
    stop.store(true, Ordering::Relaxed);
    let reloads = reloader.join().expect("the reload thread panicked")?;
    let reloading = reloading?;
    host.stop();
    let _ = std::fs::remove_dir_all(&dir);

    let mut call: Vec<f64> = reloads.iter().map(|r| r.call_ms).collect();
    let mut serving: Vec<f64> = reloads.iter().map(|r| r.serving_ms).collect();
    Ok(format!(
        "Measured at commit `{}` with `{}` on loopback, POSTing `{BODY}` to the support-desk \
         pipeline, first in steady state, then while `POST /admin/reload` lands every {} ms \
         (each reload toggles a config value of the `faq` stage, so each publishes a new \
         generation).\n\n{TABLE_HEADER}\n{}\n{}\n\n\
         Throughput while reloading / steady: **{:.3}**. Reloads during the run: {} (each \
         applied; every request answered 200 unless the errors column says otherwise).\n\n\
         | reload | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: |\n\
         | `POST /admin/reload` until its response (new generation published) | {:.2} | {:.2} | {:.2} |\n\
         | reload request until a client request is served by the new generation | {:.2} | {:.2} | {:.2} |\n\n\
         Start-up until serving (4 stages, 3 distinct components): {:.0} ms with an empty \
         compile cache, {:.0} ms with the cache the first start left in the data directory.\n",
        harness::commit(),
        load.describe(),
        RELOAD_EVERY.as_millis(),
        steady.row("steady state"),
        reloading.row("reloading every 100 ms"),
        reloading.requests_per_second / steady.requests_per_second,
        reloads.len(),
        harness::quantile(&mut call, 0.5),
        harness::quantile(&mut call, 0.99),
        harness::quantile(&mut call, 1.0),
        harness::quantile(&mut serving, 0.5),
        harness::quantile(&mut serving, 0.99),
        harness::quantile(&mut serving, 1.0),
        cold_start.as_secs_f64() * 1000.0,
        warm_start.as_secs_f64() * 1000.0,
    ))
}

/// One reload's timings.
struct Timed {
    call_ms: f64,
    serving_ms: f64,
}

fn reload_loop(
    manifest: &Path,
    text: &str,
    admin: &str,
    api: &str,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<Timed>> {
    let variants = [
        text.to_owned(),
        text.replacen("confidence = 0.95", "confidence = 0.94", 1),
    ];
    let mut timed = Vec::new();
    let mut round = 1;
    while !stop.load(Ordering::Relaxed) {
        std::fs::write(manifest, &variants[round % 2])?;
        let started = Instant::now();
        let (status, body) = harness::http("POST", admin, "/admin/reload", "")?;
        let call_ms = started.elapsed().as_secs_f64() * 1000.0;
        if status != 200 {
            bail!("reload {round} failed ({status}): {body}");
        }
        let report: serde_json::Value = serde_json::from_str(&body)?;
        let generation = report["to_generation"]
            .as_u64()
            .context("no generation in the reload report")?;
        // The next request must already run on the new generation.
        let (_, answer) = harness::http("POST", api, "/v1/pipelines/support", BODY)?;
        let answer: serde_json::Value = serde_json::from_str(&answer)?;
        if answer["generation"].as_u64() != Some(generation) {
            bail!(
                "a request after reload {round} ran on {}",
                answer["generation"]
            );
        }
        timed.push(Timed {
            call_ms,
            serving_ms: started.elapsed().as_secs_f64() * 1000.0,
        });
        round += 1;
        std::thread::sleep(RELOAD_EVERY.saturating_sub(started.elapsed()));
    }
    Ok(timed)
}
