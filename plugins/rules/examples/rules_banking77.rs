//! Measures the rules stages of a manifest on Banking77: per rule, how often
//! it fires, how often the question it fired on carries the intent the rule
//! is named for (precision), and for escalating rules how many questions of
//! that intent it catches (recall); on the train rows and the held-out rows
//! of the repository's fixed split.
//!
//! ```text
//! cargo run -p rules --example rules_banking77 -- PATH/TO/train.csv examples/support-desk/strata.toml
//! cargo run -p rules --example rules_banking77 -- PATH/TO/train.csv examples/support-desk/strata.toml --train-errors
//! cargo run --release -p rules --example rules_banking77 -- PATH/TO/train.csv examples/support-desk/strata.toml --time
//! ```
//!
//! Every question goes through what the pipeline does before the rules: the
//! normalise and redact plugins' own functions. Then the manifest's stages
//! that run the rules plugin (its `plugin` path ends in `rules.wasm`) are
//! tried in pipeline order with their shipped `config` tables, and the first
//! intent to match anywhere decides, as in the pipeline: an answer or an
//! escalation ends the request.
//!
//! Scoring: a rule is right when the question's Banking77 label equals the
//! rule's `name`. A rule meant to cover several intents would be scored
//! against its name only; the demo has none, each rule is one intent.
//! `--train-errors` lists the train questions each rule got wrong or, for
//! escalations, missed: tune on those, never on held-out rows. `--time`
//! adds how long the rules stages take to decide a question, natively (the
//! matching only, not a stage's instance or its call), over every row.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rules::{Compiled, RulesConfig};
use strata_patterns::split::{DEFAULT_SEED, holdout};

/// One rules stage of the manifest, ready to match.
struct RulesStage {
    name: String,
    rules: Compiled,
}

/// Counts for one rule on one part of the split.
#[derive(Default, Clone)]
struct Tally {
    fired: usize,
    right: usize,
    /// Questions labelled with the rule's intent (the recall denominator).
    labelled: usize,
    wrong: Vec<(String, String)>,
    missed: Vec<String>,
}

/// One rule's row in the report, in pipeline order.
struct RuleReport {
    stage: String,
    name: String,
    escalates: bool,
    /// Index 0: train rows; index 1: held-out rows.
    tallies: [Tally; 2],
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let train_errors = args.iter().any(|a| a == "--train-errors");
    let time = args.iter().any(|a| a == "--time");
    let paths: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [csv_path, manifest_path] = paths[..] else {
        bail!("usage: banking77 PATH/TO/train.csv PATH/TO/strata.toml [--train-errors] [--time]");
    };

    let (texts, labels) = read_banking77(Path::new(csv_path))?;
    let split = holdout(&labels, DEFAULT_SEED, 0.2);
    let stages = read_rules_stages(Path::new(manifest_path))?;
    if stages.is_empty() {
        bail!("{manifest_path} has no stage running the rules plugin");
    }

    // One report per rule, in pipeline order, so rules that never fire are
    // in the table too.
    let mut reports: Vec<RuleReport> = Vec::new();
    let mut index: BTreeMap<(usize, String), usize> = BTreeMap::new();
    for (s, stage) in stages.iter().enumerate() {
        for (name, escalates) in stage.rules.intents() {
            index.insert((s, name.to_owned()), reports.len());
            reports.push(RuleReport {
                stage: stage.name.clone(),
                name: name.to_owned(),
                escalates,
                tallies: Default::default(),
            });
        }
    }

    for (part, rows) in [&split.train, &split.held_out].into_iter().enumerate() {
        for &row in rows {
            let text = pipeline_input(&texts[row]);
            let Some((s, name)) = decide(&stages, &text)? else {
                continue;
            };
            let tally = &mut reports[index[&(s, name.clone())]].tallies[part];
            tally.fired += 1;
            if labels[row] == name {
                tally.right += 1;
            } else {
                tally.wrong.push((labels[row].clone(), text));
            }
        }
    }

    // Recall denominators, and the questions each escalation missed.
    for report in &mut reports {
        for (part, rows) in [&split.train, &split.held_out].into_iter().enumerate() {
            let tally = &mut report.tallies[part];
            tally.labelled = rows.iter().filter(|&&r| labels[r] == report.name).count();
        }
    }
    for report in reports.iter_mut().filter(|r| r.escalates) {
        for &row in &split.train {
            if labels[row] != report.name {
                continue;
            }
            let text = pipeline_input(&texts[row]);
            let caught = decide(&stages, &text)?.is_some_and(|(_, name)| name == report.name);
            if !caught {
                report.tallies[0].missed.push(text);
            }
        }
    }

    println!(
        "Banking77 {csv_path}: {} rows, {} train, {} held out (seed {DEFAULT_SEED}, 20 %)",
        texts.len(),
        split.train.len(),
        split.held_out.len()
    );
    println!("rules from {manifest_path}\n");
    for (part, title) in [(0, "train"), (1, "held-out")] {
        println!("## {title}");
        println!(
            "{:<8} {:<36} {:<9} {:>5} {:>5} {:>9} {:>9} {:>8}",
            "stage", "rule", "action", "fired", "right", "precision", "wilson95", "recall"
        );
        let mut answered = Tally::default();
        let mut escalated = 0;
        for report in &reports {
            let t = &report.tallies[part];
            let recall = if report.escalates {
                ratio(t.right, t.labelled)
            } else {
                String::from("")
            };
            println!(
                "{:<8} {:<36} {:<9} {:>5} {:>5} {:>9} {:>9} {:>8}",
                report.stage,
                report.name,
                if report.escalates {
                    "escalate"
                } else {
                    "answer"
                },
                t.fired,
                t.right,
                ratio(t.right, t.fired),
                wilson_lower(t.right, t.fired),
                recall
            );
            if report.escalates {
                escalated += t.fired;
            } else {
                answered.fired += t.fired;
                answered.right += t.right;
            }
        }
        // The escalating intents overlap in Banking77's labels (a stolen
        // wallet and then a withdrawal is labelled an unrecognised
        // withdrawal), and any of them reaching a person is the point, so
        // escalations are also scored as a family: right when the label is
        // any escalating intent, caught when any escalating rule fired.
        let family: Vec<&str> = reports
            .iter()
            .filter(|r| r.escalates)
            .map(|r| r.name.as_str())
            .collect();
        // Escalated questions with a family label are both the precision's
        // and the recall's numerator.
        let rows = if part == 0 {
            &split.train
        } else {
            &split.held_out
        };
        let mut family_rows = 0;
        let mut family_caught = 0;
        for &row in rows
            .iter()
            .filter(|&&r| family.contains(&labels[r].as_str()))
        {
            family_rows += 1;
            let text = pipeline_input(&texts[row]);
            if decide(&stages, &text)?.is_some_and(|(s, name)| reports[index[&(s, name)]].escalates)
            {
                family_caught += 1;
            }
        }
        println!(
            "all answers: {} fired, {} right, precision {}",
            answered.fired,
            answered.right,
            ratio(answered.right, answered.fired)
        );
        println!(
            "all escalations: {} fired, {family_caught} labelled with an escalating intent \
             (precision {}), recall of those intents {}\n",
            escalated,
            ratio(family_caught, escalated),
            ratio(family_caught, family_rows)
        );
    }

    if time {
        print_timing(&stages, &texts)?;
    }
    if train_errors {
        for report in &reports {
            let t = &report.tallies[0];
            for (label, text) in &t.wrong {
                println!("WRONG {}/{} <- [{label}] {text}", report.stage, report.name);
            }
            for text in &t.missed {
                println!("MISSED {}/{} {text}", report.stage, report.name);
            }
        }
    }
    Ok(())
}

/// How long deciding a question takes, the mean over every row (each
/// question through normalise and redact first, outside the clock), and
/// the slowest row's mean; the best of five passes, so a busy machine
/// inflates it less.
fn print_timing(stages: &[RulesStage], texts: &[String]) -> Result<()> {
    const PASSES: usize = 5;
    const REPEAT: u32 = 20;
    let inputs: Vec<String> = texts.iter().map(|t| pipeline_input(t)).collect();
    let mut best = f64::INFINITY;
    let mut slowest = (0.0_f64, 0);
    for _ in 0..PASSES {
        let started = std::time::Instant::now();
        for input in &inputs {
            std::hint::black_box(decide(stages, std::hint::black_box(input))?);
        }
        best = best.min(started.elapsed().as_secs_f64() / inputs.len() as f64);
    }
    for (row, input) in inputs.iter().enumerate() {
        let started = std::time::Instant::now();
        for _ in 0..REPEAT {
            std::hint::black_box(decide(stages, std::hint::black_box(input))?);
        }
        let mean = started.elapsed().as_secs_f64() / f64::from(REPEAT);
        if mean > slowest.0 {
            slowest = (mean, row);
        }
    }
    println!(
        "deciding a question: {:.2} µs mean over {} rows (best of {PASSES} passes); \
         slowest {:.2} µs: {}",
        best * 1e6,
        inputs.len(),
        slowest.0 * 1e6,
        inputs[slowest.1]
    );
    Ok(())
}

/// What the normalise and then the redact stage hand to the rules stages.
fn pipeline_input(question: &str) -> String {
    redact::redact(&normalise::normalise(question)).0
}

/// The first rules stage with a matching intent, and that intent's name: an
/// answer or an escalation ends the request, so later stages never see it.
fn decide(stages: &[RulesStage], text: &str) -> Result<Option<(usize, String)>> {
    for (s, stage) in stages.iter().enumerate() {
        let matched = stage
            .rules
            .first_match(text)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("stage {:?}", stage.name))?;
        if let Some(matched) = matched {
            return Ok(Some((s, matched.name().to_owned())));
        }
    }
    Ok(None)
}

/// Reads `text,category` rows.
fn read_banking77(path: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut texts = Vec::new();
    let mut labels = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("cannot read {}", path.display()))?;
        let (Some(text), Some(label)) = (record.get(0), record.get(1)) else {
            bail!("{}: a row without text and category", path.display());
        };
        texts.push(text.to_owned());
        labels.push(label.to_owned());
    }
    Ok((texts, labels))
}

/// The manifest's stages that run the rules plugin, in pipeline order, with
/// their config tables parsed exactly as the plugin parses them.
fn read_rules_stages(path: &Path) -> Result<Vec<RulesStage>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let manifest: toml::Table =
        toml::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    let mut stages = Vec::new();
    let pipelines = manifest.get("pipelines").and_then(toml::Value::as_table);
    for (pipeline, body) in pipelines.into_iter().flatten() {
        let list = body.get("stages").and_then(toml::Value::as_array);
        for stage in list.into_iter().flatten() {
            let plugin = stage.get("plugin").and_then(toml::Value::as_str);
            if !plugin.is_some_and(|p| p.ends_with("rules.wasm")) {
                continue;
            }
            let name = stage
                .get("name")
                .and_then(toml::Value::as_str)
                .unwrap_or("?")
                .to_owned();
            let config: RulesConfig = stage
                .get("config")
                .cloned()
                .unwrap_or_else(|| toml::Value::Table(Default::default()))
                .try_into()
                .with_context(|| format!("pipeline {pipeline:?}, stage {name:?}: bad config"))?;
            let rules = Compiled::new(config)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("pipeline {pipeline:?}, stage {name:?}"))?;
            stages.push(RulesStage { name, rules });
        }
    }
    Ok(stages)
}

fn ratio(part: usize, whole: usize) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1} %", 100.0 * part as f64 / whole as f64)
    }
}

/// The lower end of the 95 % Wilson interval: with a few dozen firings, a
/// precision of 100 % is compatible with a true rate well below it.
fn wilson_lower(right: usize, fired: usize) -> String {
    if fired == 0 {
        return "-".into();
    }
    let n = fired as f64;
    let p = right as f64 / n;
    let z = 1.96_f64;
    let centre = p + z * z / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    format!("{:.1} %", 100.0 * (centre - spread) / (1.0 + z * z / n))
}
