//! `strata eval`: labelled questions through a pipeline, without a server,
//! and what each layer did with them — how many it answered and how many of
//! those answers were right, escalations, model calls and cost — with the
//! answer bank's risk–coverage table. This is what a rule writer runs
//! before shipping a change.
//!
//! An answer is right when the label it belongs to equals the question's
//! label. An answer belongs to a label when it is the answer of an
//! approved pattern with that label, or of a rules intent with that `name`
//! (the `intents` of a stage's config).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::bank::Banks;
use crate::import::Labelled;
use crate::pipeline::{Generation, RunContext, Unobserved, Verdict};
use crate::request::Request;
use crate::runtime::Runtime;

/// What one layer did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LayerReport {
    /// Questions it answered.
    pub answered: usize,
    /// Of those, answers whose label matched.
    pub right: usize,
    /// Answers whose label is unknown (counted as wrong).
    pub unlabelled: usize,
    /// Share of all questions it answered.
    pub share: f64,
    /// Share of its answers that were right.
    pub accuracy: f64,
}

/// One row of the answer bank's risk–coverage table.
#[derive(Debug, Clone, Serialize)]
pub struct CoverageRow {
    /// Share of the questions the bank would answer at this threshold.
    pub coverage: f64,
    /// Share of those answers that would be right.
    pub accuracy: f64,
    /// The lowest score answered.
    pub threshold: f64,
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The pipeline.
    pub pipeline: String,
    /// Questions run.
    pub questions: usize,
    /// By layer (the layer of the stage that answered).
    pub layers: BTreeMap<String, LayerReport>,
    /// All answering layers together.
    pub total: LayerReport,
    /// Questions escalated to a person.
    pub escalated: usize,
    /// Questions rejected.
    pub rejected: usize,
    /// Questions whose run failed.
    pub failed: usize,
    /// Model calls made.
    pub model_calls: usize,
    /// What they cost, in US dollars.
    pub cost_usd: f64,
    /// The answer bank alone, on every question: coverage against accuracy
    /// as its threshold varies, from 50 % to 95 % coverage.
    pub bank_risk_coverage: Vec<CoverageRow>,
    /// The bank's calibrated operating point on these questions: share it
    /// trusts, and the accuracy of what it trusts.
    pub bank_trusted: LayerReport,
    /// How the bank's lookups above were served, by the `features` label
    /// of the lookup metric: `embeddings`, `lexical` (no embeddings model,
    /// or none fitted yet), `lexical_fallback` (embedding the question
    /// failed). With an embeddings model, anything but `embeddings` means
    /// the figures are partly or wholly the lexical model's.
    pub bank_lookups: BTreeMap<String, usize>,
}

/// The label each known answer belongs to.
pub fn answer_labels(
    generation: &Generation,
    pipeline: &str,
    banks: &Banks,
) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    if let Some(pipeline) = generation.pipelines.get(pipeline) {
        for stage in &pipeline.stages {
            let intents = stage
                .live
                .spec
                .config
                .get("intents")
                .and_then(|v| v.as_array());
            for intent in intents.into_iter().flatten() {
                if let (Some(name), Some(answer)) = (
                    intent.get("name").and_then(|v| v.as_str()),
                    intent.get("answer").and_then(|v| v.as_str()),
                ) {
                    labels.insert(answer.to_owned(), name.to_owned());
                }
            }
        }
        let bank = banks.bank(pipeline.name.as_str(), &pipeline.answer_bank);
        for (answer, label) in bank.patterns().answer_labels() {
            labels.insert(answer, label);
        }
    }
    labels
}

/// Run every row through `pipeline` of `generation` and report.
pub async fn evaluate(
    generation: &Generation,
    runtime: Arc<Runtime>,
    banks: Arc<Banks>,
    pipeline: &str,
    rows: &[Labelled],
    models: bool,
) -> anyhow::Result<EvalReport> {
    let Some(spec) = generation.pipelines.get(pipeline) else {
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
    let labels = answer_labels(generation, pipeline, &banks);
    let mut context = RunContext::new(runtime, Arc::new(Unobserved), 0);
    context.banks = banks.clone();
    if !models {
        context = context.without_models();
    }
    let bank = banks.bank(pipeline, &spec.answer_bank);
    let mut report = EvalReport {
        pipeline: pipeline.to_owned(),
        questions: rows.len(),
        layers: BTreeMap::new(),
        total: LayerReport::default(),
        escalated: 0,
        rejected: 0,
        failed: 0,
        model_calls: 0,
        cost_usd: 0.0,
        bank_risk_coverage: Vec::new(),
        bank_trusted: LayerReport::default(),
        bank_lookups: BTreeMap::new(),
    };
    let mut scored = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let request = Request {
            id: format!("eval-{}", index + 1),
            pipeline: pipeline.to_owned(),
            input: row.question.clone(),
            attributes: BTreeMap::new(),
        };
        let execution = spec.run(&context, generation.number, request).await;
        report.model_calls += execution
            .trace
            .iter()
            .map(|run| run.model_calls.len())
            .sum::<usize>();
        report.cost_usd += execution.cost_usd();
        match &execution.verdict {
            Verdict::Answered { output, by, .. } => {
                let layer = report.layers.entry(by.layer.to_string()).or_default();
                count(layer, labels.get(output), row.label.as_ref());
                count(&mut report.total, labels.get(output), row.label.as_ref());
            }
            Verdict::Escalated { .. } => report.escalated += 1,
            Verdict::Rejected { .. } => report.rejected += 1,
            Verdict::Failed { .. } => report.failed += 1,
        }
        // The bank alone, on the question as the bank stage would see it.
        let (found, served) = bank
            .lookup(&execution.request.input, std::time::Duration::MAX)
            .await;
        *report
            .bank_lookups
            .entry(served.features().to_owned())
            .or_default() += 1;
        if let Some(found) = found {
            let right = found.label.is_some() && found.label == row.label;
            scored.push((found.score, right));
            if found.trusted {
                count(
                    &mut report.bank_trusted,
                    found.label.as_ref(),
                    row.label.as_ref(),
                );
            }
        }
    }
    let n = rows.len().max(1) as f64;
    for layer in report.layers.values_mut() {
        finish(layer, n);
    }
    finish(&mut report.total, n);
    finish(&mut report.bank_trusted, n);
    report.bank_risk_coverage = risk_coverage(scored, rows.len());
    Ok(report)
}

fn count(layer: &mut LayerReport, answer: Option<&String>, truth: Option<&String>) {
    layer.answered += 1;
    match answer {
        Some(label) if Some(label) == truth => layer.right += 1,
        Some(_) => {}
        None => layer.unlabelled += 1,
    }
}

fn finish(layer: &mut LayerReport, questions: f64) {
    layer.share = layer.answered as f64 / questions;
    layer.accuracy = if layer.answered == 0 {
        0.0
    } else {
        layer.right as f64 / layer.answered as f64
    };
}

/// Coverage of all `questions` against accuracy, best scores first.
fn risk_coverage(mut scored: Vec<(f64, bool)>, questions: usize) -> Vec<CoverageRow> {
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut rows = Vec::new();
    for step in 10..=19 {
        let coverage = f64::from(step) * 0.05;
        let take = (coverage * questions as f64).round() as usize;
        if take == 0 || take > scored.len() {
            continue;
        }
        let right = scored[..take].iter().filter(|(_, r)| *r).count();
        rows.push(CoverageRow {
            coverage,
            accuracy: right as f64 / take as f64,
            threshold: scored[take - 1].0,
        });
    }
    rows
}

/// The report as text.
pub fn text(report: &EvalReport) -> String {
    let mut out = String::new();
    let pct = |x: f64| format!("{:5.1} %", x * 100.0);
    out.push_str(&format!(
        "pipeline {}: {} questions\n\n{:<12} {:>8} {:>9} {:>9}\n",
        report.pipeline, report.questions, "layer", "answered", "share", "accuracy"
    ));
    for (name, layer) in &report.layers {
        out.push_str(&format!(
            "{:<12} {:>8} {:>9} {:>9}\n",
            name,
            layer.answered,
            pct(layer.share),
            pct(layer.accuracy)
        ));
    }
    out.push_str(&format!(
        "{:<12} {:>8} {:>9} {:>9}\n\nescalated {}, rejected {}, failed {}; model calls {}, cost ${:.4}\n",
        "all",
        report.total.answered,
        pct(report.total.share),
        pct(report.total.accuracy),
        report.escalated,
        report.rejected,
        report.failed,
        report.model_calls,
        report.cost_usd
    ));
    let served: Vec<String> = report
        .bank_lookups
        .iter()
        .map(|(features, n)| format!("{n} {features}"))
        .collect();
    out.push_str(&format!(
        "\nanswer bank alone: trusts {} of the questions, {} of those right\n\
         its lookups were served by: {}\n\
         risk-coverage (answer bank alone):\n{:>9} {:>9} {:>10}\n",
        pct(report.bank_trusted.share),
        pct(report.bank_trusted.accuracy),
        served.join(", "),
        "coverage",
        "accuracy",
        "threshold"
    ));
    for row in &report.bank_risk_coverage {
        out.push_str(&format!(
            "{:>9} {:>9} {:>10.3}\n",
            pct(row.coverage),
            pct(row.accuracy),
            row.threshold
        ));
    }
    out
}
