//! What `strata check` and `strata test` print: the check report (every
//! stage, its grants and imports, what changed) and the golden cases run.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::cases::{CaseFile, FileReport};
use crate::manifest::Manifest;
use crate::pipeline::Generation;
use crate::runtime::Runtime;
use crate::runtime::capabilities::ImportRule;

pub(super) fn write_check_report(
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
            if let Some(snapshot) = &stage.live.snapshot {
                writeln!(
                    out,
                    "     init      kept: fresh instances start from {} ({} bytes, made in {} ms)",
                    snapshot.digest, snapshot.bytes, snapshot.millis
                )?;
            }
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
pub(super) async fn run_cases(
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
        let pipeline = generation
            .pipelines
            .get(file.pipeline.as_str())
            .ok_or_else(|| {
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

pub(super) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
