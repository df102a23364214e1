//! Pre-initialised stages against the same stages without `init`: the demo's
//! four fresh-instance stages, with its `rules` component as shipped (`init`
//! keeps the parsed config and compiled patterns) and built with the rules
//! plugin's `no-init` feature (`init` keeps nothing, so every request parses
//! and compiles), alternately, in one run.

use std::path::Path;

use crate::foundation;
use crate::harness::{self, Figures, Load, TABLE_HEADER};

/// Rounds of (without, with).
const ROUNDS: usize = 3;

pub fn run(root: &Path, load: &Load) -> anyhow::Result<String> {
    let release = root.join("target").join("release");
    let shipped = format!(
        "{}/target/guests/wasm32-wasip2/release/rules.wasm",
        root.display()
    );
    let no_init = root.join("target/guests-no-init/wasm32-wasip2/release/rules.wasm");
    anyhow::ensure!(
        no_init.exists(),
        "the rules component without init is not at {} (scripts/bench builds it)",
        no_init.display()
    );
    let with = harness::demo_manifest(root)?;
    anyhow::ensure!(
        with.contains(&shipped),
        "the demo manifest no longer names {shipped}"
    );
    let without = with.replace(&shipped, &no_init.display().to_string());

    let mut rows = Vec::new();
    let mut runs: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=ROUNDS {
        for (index, (label, manifest)) in [("without `init`", &without), ("with `init`", &with)]
            .into_iter()
            .enumerate()
        {
            let (figures, _) = foundation::serve(&release, "init", manifest, |url, host| {
                harness::wrk_on(load, url, host.pid())
            })?;
            rows.push(figures.row(&format!("round {round}, rules {label}")));
            runs[index].push(figures);
        }
    }
    let mean = |runs: &[Figures], of: fn(&Figures) -> f64| {
        runs.iter().map(of).sum::<f64>() / runs.len() as f64
    };
    let throughput = |f: &Figures| f.requests_per_second;
    let cpu = |f: &Figures| f.cpu_us.unwrap_or(f64::NAN);
    Ok(format!(
        "Measured at commit `{commit}` with `{loaded}` on loopback, POSTing `{body}`, the host \
         started from a filled compile cache, the two `rules` components alternately:\n\n\
         {TABLE_HEADER}\n{rows}\n\n\
         | mean of {ROUNDS} rounds | without `init` | with `init` | ratio |\n\
         | --- | ---: | ---: | ---: |\n\
         | requests/s | {:.0} | {:.0} | **{:.2}×** |\n\
         | server CPU µs/request | {:.0} | {:.0} | **{:.2}×** |",
        mean(&runs[0], throughput),
        mean(&runs[1], throughput),
        mean(&runs[1], throughput) / mean(&runs[0], throughput),
        mean(&runs[0], cpu),
        mean(&runs[1], cpu),
        mean(&runs[1], cpu) / mean(&runs[0], cpu),
        rows = rows.join("\n"),
        commit = harness::commit(),
        loaded = load.describe(),
        body = harness::BODY,
    ))
}
