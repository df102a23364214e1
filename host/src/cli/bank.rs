//! `strata bank import`, `strata bank stats` and `strata eval`: the answer
//! bank's commands, working on a manifest's data directory without a
//! server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::bank::Banks;
use crate::import::{self, Part};
use crate::manifest::Manifest;
use crate::store::Store;

/// Where the rows come from and which of them to use.
#[derive(Debug, Args)]
pub struct Dataset {
    /// A `label,answer` CSV giving the answers of rows that carry only a
    /// label.
    #[arg(long)]
    pub answers: Option<PathBuf>,
    /// Use only this part of a seeded, stratified split of the rows (they
    /// need labels).
    #[arg(long, value_enum)]
    pub split: Option<Part>,
    /// The split's seed.
    #[arg(long, default_value_t = strata_patterns::split::DEFAULT_SEED)]
    pub seed: u64,
    /// The share of each label held out by the split.
    #[arg(long, default_value_t = 0.2)]
    pub held_out: f64,
}

/// The answer bank's subcommands.
#[derive(Debug, Subcommand)]
pub enum BankCommand {
    /// Import approved answers with example questions into a pipeline's
    /// answer bank: CSV (question,answer or question,label with --answers)
    /// or JSON lines (the feedback export imports back). All or nothing.
    Import {
        /// The manifest file.
        manifest: PathBuf,
        /// The pipeline whose bank gets them.
        pipeline: String,
        /// The file of questions.
        file: PathBuf,
        /// Which rows, and their answers.
        #[command(flatten)]
        dataset: Dataset,
        /// Keep state in this directory instead of the manifest's `data_dir`.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Per pipeline: patterns, examples, estimated coverage and precision,
    /// and thresholds.
    Stats {
        /// The manifest file.
        manifest: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Keep state in this directory instead of the manifest's `data_dir`.
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

fn read_manifest(path: &Path) -> anyhow::Result<Manifest> {
    Ok(Manifest::load(path)?)
}

fn known_pipeline(manifest: &Manifest, pipeline: &str) -> anyhow::Result<()> {
    if manifest.pipelines.contains_key(pipeline) {
        return Ok(());
    }
    let known: Vec<&str> = manifest
        .pipelines
        .keys()
        .map(|name| name.as_str())
        .collect();
    anyhow::bail!(
        "no pipeline named \"{pipeline}\"; the manifest defines: {}",
        known.join(", ")
    )
}

/// The rows of `file` as `dataset` selects them.
pub fn rows(file: &Path, dataset: &Dataset) -> anyhow::Result<Vec<import::Labelled>> {
    let rows = import::read(file, dataset.answers.as_deref())?;
    Ok(match dataset.split {
        Some(part) => import::split(file, rows, part, dataset.seed, dataset.held_out)?,
        None => rows,
    })
}

/// Every pipeline's patterns from `store`, fitted, in a set of banks with
/// the manifest's settings.
pub async fn banks_from_store(manifest: &Manifest, store: &Store) -> anyhow::Result<Banks> {
    let banks = Banks::default();
    let client = reqwest::Client::builder()
        .build()
        .context("cannot build the HTTP client for the embeddings provider")?;
    crate::bank::load_patterns(&banks, manifest, store, &client).await?;
    Ok(banks)
}

async fn open_store(manifest: &Manifest, data: Option<PathBuf>) -> anyhow::Result<Store> {
    let dir = data.unwrap_or_else(|| manifest.data_dir.clone());
    let settings = manifest.store.clone();
    tokio::task::spawn_blocking(move || Store::open_configured(&settings, &dir))
        .await
        .context("the task opening the store failed")?
}

/// Run a bank subcommand.
pub async fn execute(command: BankCommand, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    match command {
        BankCommand::Import {
            manifest,
            pipeline,
            file,
            dataset,
            data,
        } => {
            let manifest = read_manifest(&manifest)?;
            known_pipeline(&manifest, &pipeline)?;
            let rows = rows(&file, &dataset)?;
            let rows = import::importable(&file, &rows)?;
            let store = open_store(&manifest, data).await?;
            let report = store
                .import_patterns(pipeline.clone(), rows, "import".to_owned())
                .await;
            store.close().await;
            let report = report.context("cannot import")?;
            writeln!(
                out,
                "imported into {pipeline}: {} patterns created, {} answers replaced, {} examples \
                 added, {} already known; a running host serves them after its next reload",
                report.patterns_created,
                report.answers_replaced,
                report.examples_added,
                report.examples_known
            )?;
            Ok(ExitCode::SUCCESS)
        }
        BankCommand::Stats {
            manifest,
            json,
            data,
        } => {
            let manifest = read_manifest(&manifest)?;
            let store = open_store(&manifest, data).await?;
            let banks = banks_from_store(&manifest, &store).await;
            store.close().await;
            let banks = banks?;
            let mut all = serde_json::Map::new();
            for (name, pipeline) in &manifest.pipelines {
                let bank = banks.bank(name, &pipeline.answer_bank);
                let stats = bank.patterns().stats();
                let embeddings = bank.patterns().embeddings_status();
                if json {
                    let mut entry = serde_json::json!({
                        "max_error": pipeline.answer_bank.max_error,
                        "stats": stats,
                        "risk_coverage": bank.patterns().risk_coverage(),
                    });
                    // With embeddings, `stats` are the embedded model's;
                    // the lexical model's are what lookups fall back on.
                    if let Some(embeddings) = embeddings {
                        entry["embeddings"] = embeddings;
                        entry["lexical_stats"] =
                            serde_json::to_value(bank.patterns().lexical_stats())?;
                    }
                    all.insert(name.to_string(), entry);
                    continue;
                }
                if let Some(embeddings) = &embeddings {
                    writeln!(
                        out,
                        "{name}: embeddings \"{}\" ({}): {} examples embedded, {} waiting, \
                         embedded model {}",
                        embeddings["name"].as_str().unwrap_or_default(),
                        embeddings["model"].as_str().unwrap_or_default(),
                        embeddings["examples_embedded"],
                        embeddings["examples_pending"],
                        if embeddings["fitted"] == true {
                            "fitted (the figures below are its own)"
                        } else {
                            "not fitted yet (the figures below are the lexical model's)"
                        },
                    )?;
                }
                let threshold = |t: Option<f32>| t.map_or("none".to_owned(), |t| format!("{t:.3}"));
                writeln!(
                    out,
                    "{name}: {} patterns, {} examples (max_error {})\n  classifier: \
                     {} patterns, threshold {}, estimated coverage {:.1} %, precision {:.1} % \
                     ({} held-out predictions)\n  nearest neighbour: {} examples, threshold {}, \
                     estimated coverage {:.1} %, precision {:.1} %\n  stricter patterns: {}",
                    stats.patterns,
                    stats.examples,
                    pipeline.answer_bank.max_error,
                    stats.classifier_patterns,
                    threshold(stats.classifier.threshold),
                    stats.classifier.coverage * 100.0,
                    stats.classifier.precision * 100.0,
                    stats.classifier.samples,
                    stats.neighbour_examples,
                    threshold(stats.neighbour.threshold),
                    stats.neighbour.coverage * 100.0,
                    stats.neighbour.precision * 100.0,
                    stats.overrides.len()
                )?;
            }
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What `strata eval` was asked.
#[derive(Debug)]
pub struct EvalArgs {
    /// The manifest file.
    pub manifest: PathBuf,
    /// The pipeline.
    pub pipeline: String,
    /// The labelled questions.
    pub file: PathBuf,
    /// Which rows.
    pub dataset: Dataset,
    /// Whether stages may call models.
    pub models: bool,
    /// JSON instead of text.
    pub json: bool,
    /// The data directory, if not the manifest's.
    pub data: Option<PathBuf>,
}

/// `strata eval`.
pub async fn eval(args: EvalArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let EvalArgs {
        manifest,
        pipeline,
        file,
        dataset,
        models,
        json,
        data,
    } = args;
    let (manifest_path, pipeline, file, dataset) = (&manifest, &pipeline, &file, &dataset);
    let manifest = read_manifest(manifest_path)?;
    known_pipeline(&manifest, pipeline)?;
    let rows = rows(file, dataset)?;
    if rows.iter().any(|r| r.label.is_none()) {
        anyhow::bail!("{}: every row needs a label to be scored", file.display());
    }
    let store = open_store(&manifest, data).await?;
    let banks = banks_from_store(&manifest, &store).await;
    store.close().await;
    let banks = Arc::new(banks?);
    let (_manifest, runtime, generation) = super::load(manifest_path, true).await?;
    let report = crate::eval::evaluate(
        &generation,
        Arc::new(runtime),
        banks,
        pipeline,
        &rows,
        models,
    )
    .await?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", crate::eval::text(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}
