//! What a stage costs per request, by language and by instance mode, and
//! the 4-stage Rust pipeline with instance reuse against bare hyper.
//!
//! 1. One pipeline per (language, mode), each a single stage: Rust
//!    (`normalise`), Python (`tone`), JavaScript (`smalltalk`), with a fresh
//!    instance per request or a reused one. Requests are sent one at a time
//!    and the stage's own time is read from each response's trace (it
//!    includes instantiation when the instance is fresh).
//! 2. The demo's four rules stages with `reuse` on, under `wrk`, against
//!    the same four with fresh instances and the bare hyper baseline, in
//!    the same run.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::harness::{self, Figures, Host, Load, TABLE_HEADER};

const SAMPLES: usize = 300;
const WARM_UP: usize = 20;

/// Run the scenario; returns the BENCHMARKS.md section.
pub fn run(root: &Path, load: &Load) -> anyhow::Result<String> {
    let release = root.join("target/release");
    let dir = harness::scratch("polyglot")?;
    let manifest = dir.join("strata.toml");
    std::fs::write(&manifest, manifest_text(root)?)?;
    // Start-up with an empty compile cache, then with the one it left.
    let cold = Host::start(&release.join("strata"), &manifest, &dir.join("data"))?;
    let cold_start = cold.started_in;
    cold.stop();
    let host = Host::start(&release.join("strata"), &manifest, &dir.join("data"))?;
    let warm_start = host.started_in;

    let mut rows = String::new();
    for (language, stage) in [
        ("Rust", "normalise"),
        ("Python", "tone"),
        ("JavaScript", "smalltalk"),
    ] {
        let mut cells = Vec::new();
        for mode in ["fresh", "reuse"] {
            let pipeline = format!("{stage}-{mode}");
            let mut micros = sample(&host.addr, &pipeline)?;
            cells.push((
                harness::quantile(&mut micros, 0.5),
                harness::quantile(&mut micros, 0.99),
            ));
        }
        rows.push_str(&format!(
            "| {language} (`{stage}`) | {:.0} | {:.0} | {:.0} | {:.0} | {:.1}x |\n",
            cells[0].0,
            cells[0].1,
            cells[1].0,
            cells[1].1,
            cells[0].0 / cells[1].0.max(1.0),
        ));
    }

    let baseline = {
        let mut child =
            harness::spawn(Command::new(release.join("echo-baseline")).arg("127.0.0.1:0"))?;
        let addr = harness::wait_for_stdout(&mut child, "listening on ")?;
        let figures = harness::wrk(load, &format!("http://{addr}/echo"))?;
        let _ = child.kill();
        let _ = child.wait();
        figures
    };
    let fresh = harness::wrk(
        load,
        &format!("http://{}/v1/pipelines/rules-fresh", host.addr),
    )?;
    let reuse = harness::wrk(
        load,
        &format!("http://{}/v1/pipelines/rules-reuse", host.addr),
    )?;
    host.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let starts = format!(
        "Start-up until serving, 8 pipelines over 5 distinct components (a Python one of \
         18 MB, a JavaScript one of 12 MB among them): {:.1} s with an empty compile cache, \
         {:.0} ms with the cache the first start left in the data directory.\n",
        cold_start.as_secs_f64(),
        warm_start.as_secs_f64() * 1000.0
    );
    Ok(report(load, &rows, &baseline, &fresh, &reuse) + "\n" + &starts)
}

/// One request at a time; the stage's microseconds from each trace.
fn sample(api: &str, pipeline: &str) -> anyhow::Result<Vec<f64>> {
    let body = serde_json::json!({"input": "thanks a lot"}).to_string();
    let mut micros = Vec::with_capacity(SAMPLES);
    for i in 0..WARM_UP + SAMPLES {
        let (status, text) =
            harness::http("POST", api, &format!("/v1/pipelines/{pipeline}"), &body)?;
        let answer: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{pipeline}: {status} {text}"))?;
        let stage = &answer["stages"][0];
        if stage["result"] == "failed" {
            bail!("{pipeline}: the stage failed: {answer}");
        }
        if i >= WARM_UP {
            micros.push(stage["micros"].as_f64().context("no micros in the trace")?);
        }
    }
    Ok(micros)
}

fn manifest_text(root: &Path) -> anyhow::Result<String> {
    let guests = root.join("target/guests");
    let rust = guests.join("wasm32-wasip2/release");
    let polyglot = guests.join("polyglot");
    for file in [
        rust.join("normalise.wasm"),
        polyglot.join("tone.wasm"),
        polyglot.join("smalltalk.wasm"),
    ] {
        if !file.exists() {
            bail!("{} is missing; scripts/bench builds it", file.display());
        }
    }
    let mut text = String::from("[runtime]\ninstances = 64\n[reload]\nwatch = false\n");
    let single = [
        ("normalise", rust.join("normalise.wasm"), "[]", 16),
        (
            "tone",
            polyglot.join("tone.wasm"),
            "[\"config\", \"wasi:filesystem\", \"wasi:sockets\"]",
            128,
        ),
        ("smalltalk", polyglot.join("smalltalk.wasm"), "[]", 64),
    ];
    for (stage, plugin, grants, memory) in single {
        for (mode, reuse) in [
            ("fresh", ""),
            ("reuse", "reuse = { max_uses = 100000, max_idle = 4 }"),
        ] {
            text.push_str(&format!(
                "\n[pipelines.{stage}-{mode}]\nfallthrough = \"reject\"\n\
                 [[pipelines.{stage}-{mode}.stages]]\nname = \"{stage}\"\nlayer = \"rules\"\n\
                 plugin = \"{}\"\ngrants = {grants}\n\
                 limits = {{ timeout_ms = 5000, memory_mib = {memory} }}\n{reuse}\n",
                plugin.display()
            ));
        }
    }
    // The demo's four rules stages (their config included), fresh and
    // reused. Reuse excludes determinism, so that line goes.
    let demo = std::fs::read_to_string(root.join("examples/support-desk/strata.toml"))?;
    let rules: String = demo
        .split("\n[[pipelines.support.stages]]")
        .skip(1)
        .take(4)
        .map(|stage| format!("\n[[pipelines.support.stages]]{stage}"))
        .collect();
    let rules = rules
        .replace("../../target/guests", &guests.display().to_string())
        .lines()
        .filter(|l| !l.starts_with("deterministic") && !l.starts_with("cases"))
        .collect::<Vec<_>>()
        .join("\n");
    if !rules.contains("name = \"faq\"") {
        bail!("the demo manifest's first four stages are no longer the rules stages");
    }
    for mode in ["fresh", "reuse"] {
        let mut stages = rules.replace("pipelines.support.", &format!("pipelines.rules-{mode}."));
        if mode == "reuse" {
            stages = stages.replace(
                "\non_error",
                "\nreuse = { max_uses = 100000, max_idle = 16 }\non_error",
            );
        }
        text.push_str(&format!("\n[pipelines.rules-{mode}]\n{stages}\n"));
    }
    Ok(text)
}

fn report(load: &Load, rows: &str, baseline: &Figures, fresh: &Figures, reuse: &Figures) -> String {
    format!(
        "Measured at commit `{}`.\n\n\
         **One stage, per request** ({SAMPLES} requests one at a time after {WARM_UP} to warm \
         up; the stage's own time from the response trace, instantiation included when fresh):\n\n\
         | stage | fresh p50 µs | fresh p99 µs | reuse p50 µs | reuse p99 µs | fresh / reuse |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n{rows}\n\
         **Four Rust stages** (the demo's rules stages), `{}` on loopback, in the same run:\n\n\
         {TABLE_HEADER}\n{}\n{}\n{}\n\n\
         Throughput ratio against the baseline: fresh **{:.3}**, reuse **{:.3}**.\n",
        harness::commit(),
        load.describe(),
        baseline.row("bare hyper echo (baseline)"),
        fresh.row("strata, 4 stages, fresh instances"),
        reuse.row("strata, 4 stages, reused instances"),
        fresh.requests_per_second / baseline.requests_per_second,
        reuse.requests_per_second / baseline.requests_per_second,
    )
}
