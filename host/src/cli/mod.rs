//! The `strata` command line: `serve`, `check`, `audit`, `test`, `replay`,
//! `run`, `bank` and `eval`.
//!
//! The binary's `main` calls [`main`]; everything else lives in the library
//! so that the commands are the same code the tests drive.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use std::sync::Arc;

mod bank;

use crate::audit::{AuditReport, Policy};
use crate::cases::{CaseFile, FileReport};
use crate::manifest::Manifest;
use crate::pipeline::{Generation, RunContext, Unobserved};
use crate::replay::Replayer;
use crate::request::Request;
use crate::runtime::Runtime;
use crate::runtime::capabilities::ImportRule;
use crate::server::{HostOptions, start};

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
        Command::Serve { .. } => "info",
        _ => "error",
    };
    init_tracing(cli.log_format, default);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
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
        } => {
            let (_manifest, runtime, generation) = load(&manifest, true).await?;
            let Some(pipeline) = generation.pipelines.get(&pipeline) else {
                let known: Vec<&str> = generation.pipelines.keys().map(String::as_str).collect();
                anyhow::bail!(
                    "no pipeline named \"{pipeline}\"; the manifest defines: {}",
                    known.join(", ")
                );
            };
            let request = Request {
                id: uuid::Uuid::now_v7().to_string(),
                pipeline: pipeline.name.clone(),
                input,
                attributes: attributes.into_iter().collect(),
            };
            let context = RunContext::new(Arc::new(runtime), Arc::new(Unobserved), 0);
            let execution = pipeline.run(&context, generation.number, request).await;
            let view = crate::http::views::execution_view(&execution);
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

fn write_check_report(
    manifest: &Manifest,
    generation: &Generation,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let stages: usize = generation.pipelines.values().map(|p| p.stages.len()).sum();
    writeln!(
        out,
        "{}: ok ({} pipeline{}, {stages} stage{})",
        manifest.path.display(),
        generation.pipelines.len(),
        plural(generation.pipelines.len()),
        plural(stages),
    )?;
    for pipeline in generation.pipelines.values() {
        writeln!(
            out,
            "\npipeline {} (min_confidence {:.2}, fallthrough {})",
            pipeline.name,
            pipeline.min_confidence,
            pipeline.fallthrough.as_str()
        )?;
        for (index, stage) in pipeline.stages.iter().enumerate() {
            let spec = &stage.live.spec;
            let limits = &spec.limits;
            writeln!(out, "  {}. {} (layer {})", index + 1, spec.name, spec.layer)?;
            writeln!(
                out,
                "     plugin    {} ({} bytes)",
                spec.plugin.path.display(),
                spec.plugin.bytes.len()
            )?;
            writeln!(
                out,
                "     digest    {}{}",
                stage.live.digest,
                if spec.plugin.pinned {
                    " (pinned)"
                } else {
                    " (not pinned)"
                }
            )?;
            writeln!(out, "     contract  {}", stage.live.contract)?;
            let grants: Vec<&str> = spec.grants.iter().map(|g| g.as_str()).collect();
            writeln!(
                out,
                "     grants    {}",
                if grants.is_empty() {
                    "none".to_owned()
                } else {
                    grants.join(", ")
                }
            )?;
            writeln!(
                out,
                "     limits    timeout {} ms, memory {} MiB, fuel {}, output {} KiB",
                limits.timeout_ms,
                limits.memory_mib,
                limits
                    .fuel
                    .map_or("unlimited".to_owned(), |f| f.to_string()),
                limits.output_kib
            )?;
            writeln!(out, "     on_error  {}", spec.on_error.as_str())?;
            for (host, guest) in &spec.wasi.dirs {
                writeln!(
                    out,
                    "     directory {} as {guest} (read-only)",
                    host.display()
                )?;
            }
            for address in &spec.wasi.allow {
                writeln!(out, "     may reach {address}")?;
            }
            if let Some(reuse) = spec.reuse {
                writeln!(
                    out,
                    "     reuse     an instance serves up to {} requests ({} kept idle)",
                    reuse.max_uses, reuse.max_idle
                )?;
            }
            if spec.deterministic.is_some() {
                writeln!(
                    out,
                    "     clock     fixed; randomness seeded (deterministic)"
                )?;
            }
            // Granted interfaces one per line; the locked-down WASI baseline
            // that every std-built guest imports on one.
            let (baseline, granted): (Vec<_>, Vec<_>) = stage
                .live
                .imports
                .iter()
                .partition(|i| i.rule == ImportRule::Baseline);
            let mut lines: Vec<String> = granted
                .iter()
                .map(|i| format!("{} ({})", i.name, i.rule.describe()))
                .collect();
            if !baseline.is_empty() {
                let names: Vec<&str> = baseline
                    .iter()
                    .map(|i| {
                        let name = i.name.strip_prefix("wasi:").unwrap_or(&i.name);
                        name.split_once('@').map_or(name, |(n, _)| n)
                    })
                    .collect();
                lines.push(format!("wasi, locked down: {}", names.join(", ")));
            }
            if lines.is_empty() {
                lines.push("none".to_owned());
            }
            for (i, line) in lines.iter().enumerate() {
                let label = if i == 0 { "imports   " } else { "          " };
                writeln!(out, "     {label}{line}")?;
            }
            if let Some(candidate) = &stage.candidate {
                let grants: Vec<&str> = candidate
                    .stage
                    .spec
                    .grants
                    .iter()
                    .map(|g| g.as_str())
                    .collect();
                writeln!(
                    out,
                    "     candidate {} ({} {}%, grants {}, rolled back at burn rate {})",
                    candidate.stage.digest,
                    candidate.mode.as_str(),
                    candidate.percent,
                    if grants.is_empty() {
                        "none".to_owned()
                    } else {
                        grants.join(", ")
                    },
                    candidate.max_burn_rate
                )?;
            }
        }
    }
    Ok(())
}

/// Run the given cases files, or every one the manifest lists (stage cases
/// against each stage's live version and candidate).
async fn run_cases(
    manifest: &Manifest,
    runtime: Arc<Runtime>,
    generation: &Generation,
    files: &[PathBuf],
) -> anyhow::Result<Vec<FileReport>> {
    let mut loaded = Vec::new();
    if files.is_empty() {
        for (name, pipeline) in &manifest.pipelines {
            if let Some(path) = &pipeline.cases {
                loaded.push(CaseFile::load(path, Some((name, None))).map_err(anyhow::Error::msg)?);
            }
            for stage in &pipeline.stages {
                if let Some(path) = &stage.cases {
                    loaded.push(
                        CaseFile::load(path, Some((name, Some(&stage.name))))
                            .map_err(anyhow::Error::msg)?,
                    );
                }
            }
        }
        if loaded.is_empty() {
            anyhow::bail!(
                "{} lists no cases files; name them (`cases = \"...\"` on a pipeline or stage) or \
                 pass them on the command line",
                manifest.path.display()
            );
        }
    } else {
        for path in files {
            loaded.push(CaseFile::load(path, None).map_err(anyhow::Error::msg)?);
        }
    }
    let mut reports = Vec::new();
    for file in &loaded {
        let pipeline = generation.pipelines.get(&file.pipeline).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: the manifest has no pipeline \"{}\"",
                file.path.display(),
                file.pipeline
            )
        })?;
        match &file.stage {
            None => reports.push(
                crate::cases::run_pipeline(runtime.clone(), generation, pipeline, file).await,
            ),
            Some(name) => {
                let stage = pipeline
                    .stages
                    .iter()
                    .find(|s| s.name() == name)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{}: pipeline \"{}\" has no stage \"{name}\"",
                            file.path.display(),
                            file.pipeline
                        )
                    })?;
                reports.push(
                    crate::cases::run_stage(&runtime, &stage.live, file, file.target()).await,
                );
                if let Some(candidate) = &stage.candidate {
                    let target = format!("{} (candidate)", file.target());
                    reports.push(
                        crate::cases::run_stage(&runtime, &candidate.stage, file, target).await,
                    );
                }
            }
        }
    }
    Ok(reports)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
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
