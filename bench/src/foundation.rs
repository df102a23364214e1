//! 4 fresh-instance stages against a bare hyper echo server.

use std::path::Path;
use std::process::Command;

use crate::harness::{self, BODY, Host, Load, TABLE_HEADER};

/// Measure the baseline, then the host; never both at once.
pub fn run(root: &Path, load: &Load) -> anyhow::Result<String> {
    let release = root.join("target").join("release");
    let baseline = {
        let mut child =
            harness::spawn(Command::new(release.join("echo-baseline")).arg("127.0.0.1:0"))?;
        let addr = harness::wait_for_stdout(&mut child, "listening on ")?;
        let figures = harness::wrk(load, &format!("http://{addr}/echo"))?;
        let _ = child.kill();
        let _ = child.wait();
        figures
    };
    let data = harness::scratch("foundation")?;
    let host = Host::start(
        &release.join("strata"),
        &root.join("examples/support-desk/strata.toml"),
        &data,
    )?;
    let url = format!("http://{}/v1/pipelines/support", host.addr);
    harness::check_answer(&url)?;
    let figures = harness::wrk(load, &url)?;
    host.stop();
    let _ = std::fs::remove_dir_all(&data);

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    Ok(format!(
        "Measured at commit `{}` on {cores} cores, one target at a time, with `{}` on \
         loopback, POSTing `{BODY}`.\n\n{TABLE_HEADER}\n{}\n{}\n\n\
         Throughput ratio, host / baseline: **{:.3}**.\n",
        harness::commit(),
        load.describe(),
        baseline.row("bare hyper echo (baseline)"),
        figures.row("strata, 4 fresh-instance stages"),
        figures.requests_per_second / baseline.requests_per_second,
    ))
}
