//! The benchmark driver. Each scenario starts what it measures, drives it
//! with `wrk` on loopback against a baseline measured in the same run, and
//! rewrites its section of `BENCHMARKS.md`:
//!
//! - `foundation`: the host on the 4-stage support-desk pipeline against a
//!   bare hyper echo server;
//! - `reload`: the same host in steady state against itself reloading every
//!   100 ms, the time a reload takes to serve, and restart times with and
//!   without the compile cache;
//! - `layers`: a cache hit against bare hyper, and a Banking77-drawn trace
//!   through the layered pipeline against sending everything to the model;
//! - `polyglot`: a stage's cost per request in Rust, Python and JavaScript,
//!   fresh and reused, and four Rust stages with reuse against bare hyper;
//! - `async`: the same requests real-time and asynchronous (provider calls
//!   with batching, time to finish), and real-time latency beside a backlog;
//! - `http-stage`: a `wasi:http` handler as a stage against a
//!   `strata:pipeline` stage doing the same work.
//!
//! Run it through `scripts/bench`, which builds what it needs first.

mod background;
mod cluster;
mod foundation;
mod harness;
mod http_stage;
mod init;
mod layers;
mod polyglot;
mod reload;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, ValueEnum};

use crate::harness::Load;

/// Benchmark the host against baselines measured in the same run.
#[derive(Debug, Parser)]
struct Args {
    /// Which scenarios to run.
    #[arg(long, value_enum, default_values_t = [Scenario::Foundation, Scenario::Reload, Scenario::Layers, Scenario::Polyglot, Scenario::Async, Scenario::HttpStage])]
    scenario: Vec<Scenario>,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Open connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// The Banking77 training split the `layers` trace is drawn from.
    #[arg(long, default_value = "../shared/data/banking77/train.csv")]
    trace_source: PathBuf,
    /// Requests in the `layers` trace.
    #[arg(long, default_value_t = 5000)]
    trace_length: usize,
    /// Zipf exponent of question popularity in the trace.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Seed of the trace.
    #[arg(long, default_value_t = 77)]
    seed: u64,
    /// Requests sent each way in the `async` scenario.
    #[arg(long, default_value_t = 2000)]
    async_requests: usize,
    /// The stand-in provider's latency per call in the `async` scenario.
    #[arg(long, default_value_t = 200)]
    provider_latency_ms: u64,
    /// The file whose sections are rewritten.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
}

/// A benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 4 fresh-instance stages against bare hyper.
    Foundation,
    /// Reloading under load, reload latency, restart with the compile cache.
    Reload,
    /// A cache hit against bare hyper; the layers' economics on a trace.
    Layers,
    /// Stage cost by language and instance mode; four stages reused.
    Polyglot,
    /// Real-time against asynchronous with batching; latency beside a backlog.
    Async,
    /// A wasi:http stage against a strata:pipeline stage doing the same work.
    HttpStage,
    /// The demo's rules stages pre-initialised by `init`, against the same
    /// stages built to keep nothing from it.
    Init,
    /// One host alone against one, two and three hosts sharing Redis; how
    /// long a reload takes to reach the others.
    Cluster,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench/ is inside the workspace")?
        .to_owned();
    let load = Load {
        duration: args.duration,
        connections: args.connections,
        threads: args.threads,
    };
    let out = root.join(&args.out);
    for scenario in &args.scenario {
        let (name, report) = match scenario {
            Scenario::Foundation => ("foundation", foundation::run(&root, &load)?),
            Scenario::Reload => ("reload", reload::run(&root, &load)?),
            Scenario::Layers => {
                let trace = layers::Trace {
                    source: root.join(&args.trace_source),
                    length: args.trace_length,
                    zipf: args.zipf,
                    seed: args.seed,
                };
                ("layers", layers::run(&root, &load, &trace)?)
            }
            Scenario::Polyglot => ("polyglot", polyglot::run(&root, &load)?),
            Scenario::HttpStage => ("http-stage", http_stage::run(&root, &load)?),
            Scenario::Init => ("init", init::run(&root, &load)?),
            Scenario::Cluster => ("cluster", cluster::run(&root, &load)?),
            Scenario::Async => {
                let settings = background::Settings {
                    trace: layers::Trace {
                        source: root.join(&args.trace_source),
                        length: args.async_requests,
                        zipf: args.zipf,
                        seed: args.seed,
                    },
                    provider_latency: std::time::Duration::from_millis(args.provider_latency_ms),
                };
                ("async", background::run(&root, &load, &settings)?)
            }
        };
        println!("{report}");
        harness::write_section(&out, name, &report)?;
        println!("written to {}", args.out.display());
    }
    Ok(())
}
