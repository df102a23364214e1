//! What a `wasi:http` stage costs against a `strata:pipeline` stage doing
//! the same work: each a one-stage pipeline answering "hello" with a fixed
//! text at confidence 0.75 (`http-stage`, a wasi:http handler reading the
//! JSON body and writing a JSON response; `scripted`, a pipeline stage
//! reading its config and returning an answer), fresh and reused.
//!
//! 1. Requests one at a time; the stage's own time from each response's
//!    trace (instantiation included when fresh).
//! 2. Each pipeline under `wrk`, with the server's CPU per request, beside
//!    the bare hyper baseline in the same run.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::harness::{self, Figures, Host, Load, TABLE_HEADER};

const SAMPLES: usize = 300;
const WARM_UP: usize = 20;
const INPUT: &str = "hello";

/// (pipeline prefix, what it runs) in the order of the report.
const KINDS: [(&str, &str); 2] = [
    ("http", "`wasi:http` handler (`http-stage`)"),
    ("pipeline", "`strata:pipeline` stage (`scripted`)"),
];
const MODES: [&str; 2] = ["fresh", "reuse"];

/// Run the scenario; returns the BENCHMARKS.md section.
pub fn run(root: &Path, load: &Load) -> anyhow::Result<String> {
    let release = root.join("target/release");
    let dir = harness::scratch("http-stage")?;
    let manifest = dir.join("strata.toml");
    std::fs::write(&manifest, manifest_text(root)?)?;
    let host = Host::start(&release.join("strata"), &manifest, &dir.join("data"))?;

    let mut sampled = String::new();
    for (kind, what) in KINDS {
        let mut cells = Vec::new();
        for mode in MODES {
            let mut micros = sample(&host.addr, &format!("{kind}-{mode}"))?;
            cells.push((
                harness::quantile(&mut micros, 0.5),
                harness::quantile(&mut micros, 0.99),
            ));
        }
        sampled.push_str(&format!(
            "| {what} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            cells[0].0, cells[0].1, cells[1].0, cells[1].1,
        ));
    }

    let baseline = {
        let mut child =
            harness::spawn(Command::new(release.join("echo-baseline")).arg("127.0.0.1:0"))?;
        let addr = harness::wait_for_stdout(&mut child, "listening on ")?;
        let pid = child.id();
        let figures = harness::wrk_on(load, &format!("http://{addr}/echo"), pid)?;
        let _ = child.kill();
        let _ = child.wait();
        figures
    };
    let mut loaded: Vec<(String, Figures)> = Vec::new();
    for (kind, what) in KINDS {
        for mode in MODES {
            let url = format!("http://{}/v1/pipelines/{kind}-{mode}", host.addr);
            let figures = harness::wrk_body_on(load, &url, INPUT, host.pid())?;
            loaded.push((format!("{what}, {mode}"), figures));
        }
    }
    host.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report(load, &sampled, &baseline, &loaded))
}

/// One request at a time; the stage's microseconds from each trace.
fn sample(api: &str, pipeline: &str) -> anyhow::Result<Vec<f64>> {
    let body = serde_json::json!({ "input": INPUT }).to_string();
    let mut micros = Vec::with_capacity(SAMPLES);
    for i in 0..WARM_UP + SAMPLES {
        let (status, text) =
            harness::http("POST", api, &format!("/v1/pipelines/{pipeline}"), &body)?;
        let answer: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{pipeline}: {status} {text}"))?;
        if answer["output"] != "hello from s" {
            bail!("{pipeline}: not the expected answer: {answer}");
        }
        if i >= WARM_UP {
            micros.push(
                answer["stages"][0]["micros"]
                    .as_f64()
                    .context("no micros in the trace")?,
            );
        }
    }
    Ok(micros)
}

fn manifest_text(root: &Path) -> anyhow::Result<String> {
    let rust = root.join("target/guests/wasm32-wasip2/release");
    let (http, scripted) = (rust.join("http_stage.wasm"), rust.join("scripted.wasm"));
    for file in [&http, &scripted] {
        if !file.exists() {
            bail!("{} is missing; scripts/bench builds it", file.display());
        }
    }
    let mut text = String::from("[runtime]\ninstances = 64\n[reload]\nwatch = false\n");
    for mode in MODES {
        let reuse = if mode == "reuse" {
            "reuse = { max_uses = 100000, max_idle = 4 }"
        } else {
            ""
        };
        // The stage is named `s` in both, so both answer "hello from s".
        text.push_str(&format!(
            "\n[pipelines.http-{mode}]\nfallthrough = \"reject\"\n\
             [[pipelines.http-{mode}.stages]]\nname = \"s\"\nlayer = \"rules\"\n\
             plugin = \"{}\"\nlimits = {{ timeout_ms = 5000 }}\n{reuse}\n\
             \n[pipelines.pipeline-{mode}]\nfallthrough = \"reject\"\n\
             [[pipelines.pipeline-{mode}.stages]]\nname = \"s\"\nlayer = \"rules\"\n\
             plugin = \"{}\"\ngrants = [\"config\", \"log\"]\n\
             config = {{ outcome = \"respond\", answer = \"hello from s\", confidence = 0.75 }}\n\
             limits = {{ timeout_ms = 5000 }}\n{reuse}\n",
            http.display(),
            scripted.display(),
        ));
    }
    Ok(text)
}

fn report(load: &Load, sampled: &str, baseline: &Figures, loaded: &[(String, Figures)]) -> String {
    let rows: Vec<String> = loaded.iter().map(|(name, f)| f.row(name)).collect();
    let ratio = |i: usize, j: usize| {
        let cpu = |f: &Figures| f.cpu_us.unwrap_or(f64::NAN);
        cpu(&loaded[i].1) / cpu(&loaded[j].1)
    };
    format!(
        "Measured at commit `{}`.\n\n\
         **One stage answering \"hello\", per request** ({SAMPLES} requests one at a time \
         after {WARM_UP} to warm up; the stage's own time from the response trace, \
         instantiation included when fresh):\n\n\
         | stage | fresh p50 µs | fresh p99 µs | reuse p50 µs | reuse p99 µs |\n\
         | --- | ---: | ---: | ---: | ---: |\n{sampled}\n\
         **The same pipelines under load**, `{}` on loopback, in the same run:\n\n\
         {TABLE_HEADER}\n{}\n{}\n\n\
         Server CPU per request, HTTP stage against pipeline stage: fresh **{:.2}×**, \
         reused **{:.2}×**.\n",
        harness::commit(),
        load.describe(),
        baseline.row("bare hyper echo (baseline)"),
        rows.join("\n"),
        ratio(0, 2),
        ratio(1, 3),
    )
}
