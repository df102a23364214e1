//! 4 fresh-instance stages against a bare hyper echo server: throughput and
//! server CPU per request under load, latency on one connection, the same
//! stages reusing instances, and the host's peak memory.

use std::path::Path;
use std::process::Command;

use crate::harness::{self, BODY, Figures, Host, Load, TABLE_HEADER};

/// Measure the baseline, then the host; never both at once.
pub fn run(root: &Path, load: &Load) -> anyhow::Result<String> {
    let release = root.join("target").join("release");
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

    let (fresh, fresh_one, rss) = serve(
        &release,
        "foundation",
        &harness::demo_manifest(root)?,
        |url, pid| {
            let loaded = harness::wrk_on(load, url, pid)?;
            let single = harness::wrk_on(&one, url, pid)?;
            Ok((loaded, single, harness::peak_rss_mib(pid)?))
        },
    )?;
    let reused = serve(
        &release,
        "foundation-reuse",
        &with_reuse(&harness::demo_manifest(root)?),
        |url, pid| harness::wrk_on(load, url, pid),
    )?;

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu_ratio = |f: &Figures| match (f.cpu_us, baseline.cpu_us) {
        (Some(host), Some(base)) if base > 0.0 => format!("{:.1}×", host / base),
        _ => "–".to_owned(),
    };
    Ok(format!(
        "Measured at commit `{commit}` on {cores} cores, one target at a time, with `{loaded}` \
         (and `-c1` for the one-connection rows) on loopback, POSTing `{BODY}`. Server CPU is \
         the process's user and system time (all threads, from `/proc`) over the requests \
         served.\n\n\
         {TABLE_HEADER}\n{}\n{}\n{}\n{}\n{}\n\n\
         | host / baseline | fresh instances | reused instances |\n\
         | --- | ---: | ---: |\n\
         | throughput | **{:.3}** | {:.3} |\n\
         | server CPU per request | **{}** | {} |\n\n\
         Host peak resident memory (`VmHWM`) after the loaded and one-connection runs: \
         {rss:.0} MiB.\n",
        baseline.row("bare hyper echo (baseline)"),
        fresh.row("strata, 4 fresh-instance stages"),
        reused.row("strata, the same 4 stages reusing instances"),
        baseline_one.row("bare hyper echo, one connection"),
        fresh_one.row("strata, 4 fresh-instance stages, one connection"),
        fresh.requests_per_second / baseline.requests_per_second,
        reused.requests_per_second / baseline.requests_per_second,
        cpu_ratio(&fresh),
        cpu_ratio(&reused),
        commit = harness::commit(),
        loaded = load.describe(),
    ))
}

/// Serve `manifest` from a scratch directory, check it answers the
/// benchmark request through all four stages, and `measure` it.
fn serve<T>(
    release: &Path,
    name: &str,
    manifest: &str,
    measure: impl FnOnce(&str, u32) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let data = harness::scratch(name)?;
    let path = data.join("strata.toml");
    std::fs::write(&path, manifest)?;
    let host = Host::start(&release.join("strata"), &path, &data)?;
    let url = format!("http://{}/v1/pipelines/support", host.addr);
    let result = harness::check_answer(&url).and_then(|()| measure(&url, host.pid()));
    host.stop();
    let _ = std::fs::remove_dir_all(&data);
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
