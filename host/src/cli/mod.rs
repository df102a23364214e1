//! The `strata` command line: `serve`, `check`, `audit`, `test`, `replay`,
//! `run`, `bank`, `eval`, and the rule writer's `new`, `build` and `watch`.
//!
//! The binary's `main` calls [`main`]; everything else lives in the library
//! so that the commands are the same code the tests drive.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::audit::{AuditReport, Policy};
use crate::manifest::Manifest;
use crate::pipeline::{Generation, RunContext, Unobserved};
use crate::replay::Replayer;
use crate::request::Request;
use crate::runtime::Runtime;
use crate::server::{HostOptions, start};

mod bank;
mod check;
mod develop;
mod timing;

use self::check::{plural, run_cases, write_check_report};

/// Strata: a gateway that runs requests through pipelines of sandboxed
/// WebAssembly stages.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the manifest's pipelines over HTTP.
    Serve {
        /// The manifest file.
        manifest: PathBuf,
        /// Listen on this address instead of the manifest's `listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Serve the admin API on this address instead of the manifest's
        /// `[admin] listen`.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Keep durable state in this directory instead of the manifest's
        /// `data_dir`.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Load everything the manifest names and print each stage's digest,
    /// imports, grants and limits. Exits non-zero with the reason if anything
    /// would stop `serve`.
    Check {
        /// The manifest file.
        manifest: PathBuf,
    },
    /// Describe what every stage (and candidate) may do: path, digest, size,
    /// exports, every import, grants, limits, failure policy and rollout.
    /// Problems are flagged, not fatal; `--deny` makes chosen flags fail the
    /// audit (exit status 1). A component that is not a stage always fails.
    Audit {
        /// The manifest file.
        manifest: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Fail the audit on these flags; may be repeated.
        #[arg(long, value_enum)]
        deny: Vec<Policy>,
    },
    /// Run golden cases against the exact compiled artifacts: the files
    /// given, or every cases file the manifest lists. Exits 1 if any fails.
    Test {
        /// The manifest file.
        manifest: PathBuf,
        /// Cases files; each names its `pipeline` (and `stage`).
        cases: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replay recorded traffic (a pipeline's `record` log) through the
    /// manifest's deterministic stages and report what changed: against the
    /// recording, or against another manifest.
    Replay {
        /// The manifest file.
        manifest: PathBuf,
        /// The traffic log (`DATA_DIR/traffic/PIPELINE.jsonl`).
        log: PathBuf,
        /// Compare the manifest with this one instead of the recording.
        #[arg(long)]
        against: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The answer bank: import approved answers with examples, or show what
    /// it knows.
    Bank {
        /// What to do.
        #[command(subcommand)]
        command: bank::BankCommand,
    },
    /// Run labelled questions (CSV: question or text, and label or
    /// category) through a pipeline without a server: per layer, share
    /// answered and accuracy; escalations; model calls and cost; the answer
    /// bank's risk-coverage table. Models are off unless --models.
    Eval {
        /// The manifest file.
        manifest: PathBuf,
        /// The pipeline.
        pipeline: String,
        /// The labelled questions.
        dataset: PathBuf,
        /// Which rows.
        #[command(flatten)]
        rows: bank::Dataset,
        /// Let stages call the manifest's model tiers.
        #[arg(long)]
        models: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Read the answer bank from this directory instead of the
        /// manifest's `data_dir`.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Start a stage project from a template (Rust, Python or JavaScript).
    New {
        /// What to create.
        #[command(subcommand)]
        command: develop::NewCommand,
    },
    /// Build every stage whose `build` table says how (or the ones named),
    /// put each component at its `plugin` path, and print its size, digest
    /// and imports. Toolchains for Python and JavaScript are installed on
    /// first use.
    Build {
        /// The manifest file.
        #[arg(default_value = "strata.toml")]
        manifest: PathBuf,
        /// Build only this stage; may be repeated.
        #[arg(long = "stage", value_name = "NAME")]
        stages: Vec<String>,
        /// Where toolchains are cached.
        #[command(flatten)]
        tools: develop::ToolchainArgs,
    },
    /// Install the pinned toolchains `strata build` uses (all, or the
    /// languages named) into the toolchain cache, so that later builds need
    /// no network.
    Toolchains {
        /// The languages; all when none is named.
        #[arg(value_enum)]
        langs: Vec<crate::develop::Lang>,
        /// Where toolchains are cached.
        #[command(flatten)]
        tools: develop::ToolchainArgs,
    },
    /// Build the manifest's stages, serve it (or reload a running host with
    /// --admin), and on every saved change to a stage's source rebuild it,
    /// run its golden cases and reload. A failed build or case keeps the
    /// previous version serving.
    Watch(develop::WatchArgs),
    /// Run one request through a pipeline, without a server or a store, and
    /// print the result as JSON.
    Run {
        /// The manifest file.
        manifest: PathBuf,
        /// The pipeline to run.
        pipeline: String,
        /// The request input.
        #[arg(long)]
        input: String,
        /// A request attribute, `KEY=VALUE`; may be repeated.
        #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_attribute)]
        attributes: Vec<(String, String)>,
        /// Run the request this many times (1 included), one after another,
        /// and add `timing` to the output: the whole run's and each stage's
        /// wall-clock time (count, mean, p50, p99, max, in microseconds).
        /// Each run is a new request through the pipeline as the manifest
        /// configures it (fresh instances unless a stage reuses them), so
        /// this is what the stages cost before a server and a store add
        /// theirs. The output shows the last run; model calls are made
        /// every time. At most 1,000,000.
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        repeat: Option<u32>,
    },
}

fn parse_attribute(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("\"{text}\" is not KEY=VALUE"))
}

/// Parse the process arguments, run the command, and report errors on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server logs what it does; the one-shot commands print their report
    // and log only errors (a golden case that traps on purpose is not news).
    let default = match cli.command {
        Command::Serve { .. } | Command::Watch(_) => "info",
        _ => "error",
    };
    init_tracing(cli.log_format, default);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // A worker drops the instances it finished with when it would
        // otherwise idle, not while a request waits (`runtime::retire`).
        .on_thread_park(crate::runtime::on_worker_park)
        .on_thread_stop(crate::runtime::on_worker_stop)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(execute(cli.command, &mut stdout)) {
        Ok(code) => code,
        Err(error) => {
            let _ = stdout.flush();
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Run one command, writing its report to `out`.
pub async fn execute(command: Command, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve {
            manifest,
            listen,
            admin_listen,
            data,
        } => {
            let host = start(HostOptions {
                listen,
                admin_listen,
                data_dir: data,
                ..HostOptions::new(manifest)
            })
            .await?;
            host.run_until(shutdown_signal()).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            manifest,
            json,
            deny,
        } => {
            let report = tokio::task::spawn_blocking(move || {
                let manifest = Manifest::load(&manifest)?;
                let runtime = Runtime::new(&manifest.runtime, None)?;
                anyhow::Ok(AuditReport::build(&manifest, &runtime))
            })
            .await
            .context("audit task failed")??;
            if json {
                let mut value = serde_json::to_value(&report)?;
                value["passes"] = serde_json::json!(report.passes(&deny));
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                write!(out, "{}", report.render(&deny))?;
            }
            Ok(if report.passes(&deny) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Test {
            manifest,
            cases,
            json,
        } => {
            let (manifest, runtime, generation) = load(&manifest, false).await?;
            let reports = run_cases(&manifest, Arc::new(runtime), &generation, &cases).await?;
            let failed = reports.iter().any(|r| !r.failures.is_empty());
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&reports)?)?;
            } else {
                for report in &reports {
                    write!(out, "{}", report.render())?;
                }
                let cases: usize = reports.iter().map(|r| r.passed + r.failures.len()).sum();
                let failures: usize = reports.iter().map(|r| r.failures.len()).sum();
                writeln!(
                    out,
                    "\n{cases} case{} in {} file{}: {}",
                    plural(cases),
                    reports.len(),
                    plural(reports.len()),
                    if failed {
                        format!("{failures} FAILED")
                    } else {
                        "all passed".to_owned()
                    }
                )?;
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Replay {
            manifest,
            log,
            against,
            json,
        } => {
            let (_, runtime, generation) = load(&manifest, false).await?;
            let current = Replayer::new(Arc::new(runtime), generation);
            let other = match against {
                Some(path) => {
                    let (_, runtime, generation) = load(&path, false).await?;
                    Some(Replayer::new(Arc::new(runtime), generation))
                }
                None => None,
            };
            let lines = crate::replay::read_log(&log)?;
            let report = crate::replay::replay(lines, &current, other.as_ref()).await;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                write!(out, "{}", report.render())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { manifest } => {
            let (manifest, _runtime, generation) = load(&manifest, false).await?;
            write_check_report(&manifest, &generation, out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bank { command } => bank::execute(command, out).await,
        Command::New { command } => develop::new(command, out),
        Command::Build {
            manifest,
            stages,
            tools,
        } => develop::build_all(manifest, stages, tools, out).await,
        Command::Toolchains { langs, tools } => develop::install_toolchains(langs, tools, out),
        Command::Watch(args) => develop::watch_manifest(args, shutdown_signal(), out).await,
        Command::Eval {
            manifest,
            pipeline,
            dataset,
            rows,
            models,
            json,
            data,
        } => {
            let args = bank::EvalArgs {
                manifest,
                pipeline,
                file: dataset,
                dataset: rows,
                models,
                json,
                data,
            };
            bank::eval(args, out).await
        }
        Command::Run {
            manifest,
            pipeline,
            input,
            attributes,
            repeat,
        } => {
            let (_manifest, runtime, generation) = load(&manifest, true).await?;
            let Some(pipeline) = generation.pipelines.get(pipeline.as_str()) else {
                let known: Vec<&str> = generation
                    .pipelines
                    .keys()
                    .map(|name| name.as_str())
                    .collect();
                anyhow::bail!(
                    "no pipeline named \"{pipeline}\"; the manifest defines: {}",
                    known.join(", ")
                );
            };
            let attributes: std::collections::BTreeMap<String, String> =
                attributes.into_iter().collect();
            let context = RunContext::new(Arc::new(runtime), Arc::new(Unobserved), 0);
            let mut timing = timing::Timing::default();
            let mut last = None;
            for _ in 0..repeat.unwrap_or(1) {
                let request = Request {
                    id: uuid::Uuid::now_v7().to_string(),
                    pipeline: pipeline.name.to_string(),
                    input: input.clone(),
                    attributes: attributes.clone(),
                };
                let started = std::time::Instant::now();
                let execution = pipeline.run(&context, generation.number, request).await;
                timing.add(started.elapsed(), &execution);
                last = Some(execution);
            }
            let execution = last.expect("at least one run");
            let mut view = crate::views::execution_view(&execution);
            if repeat.is_some() {
                view["timing"] = timing.into_value();
            }
            writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Load everything a manifest names. `cache` uses the manifest's data
/// directory for compiled components (`run` does; `check` leaves the data
/// directory alone).
async fn load(path: &Path, cache: bool) -> anyhow::Result<(Arc<Manifest>, Runtime, Generation)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let manifest = Arc::new(Manifest::load(&path)?);
        let cache_dir = cache.then(|| manifest.data_dir.join("compile-cache"));
        let runtime = Runtime::new(&manifest.runtime, cache_dir.as_deref())?;
        let generation = Generation::load(manifest.clone(), &runtime, 1)?;
        Ok((manifest, runtime, generation))
    })
    .await
    .context("loading task failed")?
}

/// Resolve on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// Set up logging on stderr. `STRATA_LOG` takes a tracing filter; without
/// it, `default` applies.
pub fn init_tracing(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
