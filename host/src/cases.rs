//! Golden cases: what a stage (or a whole pipeline) must decide for given
//! inputs, checked against the exact compiled artifacts that will serve.
//!
//! A cases file is TOML:
//!
//! ```toml
//! pipeline = "support"   # the target; may be left out when the manifest
//! stage = "faq"          # names the file (a stage's or pipeline's `cases`)
//!
//! [[case]]
//! name = "pin change"
//! input = "how do i change my pin?"
//! attributes = { tier = "gold" }        # optional
//! expect = "respond"                    # stage: next, respond, escalate, reject, fail
//!                                       # pipeline: answered, escalated, rejected, failed
//! output = "You can change your PIN..." # optional: exact text
//! output_matches = "change your PIN"    # optional: a regular expression
//! code = "empty-input"                  # optional: a rejection's code
//! ```
//!
//! The text compared is what the outcome carries: the rewritten input of a
//! `next`, the answer of a `respond`, the reason of an `escalate`, the
//! message of a `reject`. Pipeline cases may also name the deciding `stage`
//! and `layer`. Stage cases listed in the manifest are a gate: a reload (or
//! a start) whose stage or candidate fails one is refused.
//!
//! Cases run with a fresh, empty answer bank and with model calls turned off
//! (a stage asking for a model gets "unavailable"), so they test the
//! stage's own logic, and cost nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bank::Banks;
use crate::pipeline::{Generation, Pipeline, RunContext, Unobserved, Verdict};
use crate::request::{Outcome, Request};
use crate::runtime::{Access, BankAccess, LoadedStage, LogTag, Runtime};

/// A parsed, checked cases file.
#[derive(Debug, Clone)]
pub struct CaseFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The pipeline it targets.
    pub pipeline: String,
    /// The stage it targets, for stage cases.
    pub stage: Option<String>,
    /// The cases.
    pub cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    pipeline: Option<String>,
    #[serde(default)]
    stage: Option<String>,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

/// One golden case.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Its name, shown when it fails.
    pub name: String,
    /// The request input.
    pub input: String,
    /// The request attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The expected kind of outcome.
    pub expect: String,
    /// The exact expected text.
    #[serde(default)]
    pub output: Option<String>,
    /// A regular expression the text must match.
    #[serde(default)]
    pub output_matches: Option<String>,
    /// A rejection's expected code.
    #[serde(default)]
    pub code: Option<String>,
    /// Pipeline cases: the stage expected to decide.
    #[serde(default)]
    pub stage: Option<String>,
    /// Pipeline cases: the layer expected to decide.
    #[serde(default)]
    pub layer: Option<String>,
}

const STAGE_KINDS: [&str; 5] = ["next", "respond", "escalate", "reject", "fail"];
const PIPELINE_KINDS: [&str; 4] = ["answered", "escalated", "rejected", "failed"];

impl CaseFile {
    /// Read and check `path`. `target` is what the manifest says the file
    /// is for (pipeline, stage); a file given on the command line names its
    /// own. When both say, they must agree.
    pub fn load(path: &Path, target: Option<(&str, Option<&str>)>) -> Result<CaseFile, String> {
        let at = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{at}: cannot read: {e}"))?;
        let raw: RawFile = toml::from_str(&text).map_err(|e| format!("{at}: {}", e.message()))?;
        let (pipeline, stage) = match (target, raw.pipeline) {
            (Some((pipeline, stage)), named) => {
                if named.as_deref().is_some_and(|n| n != pipeline)
                    || raw.stage.as_deref().is_some_and(|s| Some(s) != stage)
                {
                    return Err(format!(
                        "{at}: names another target than the manifest entry that lists it"
                    ));
                }
                (pipeline.to_owned(), stage.map(str::to_owned))
            }
            (None, Some(pipeline)) => (pipeline, raw.stage),
            (None, None) => {
                return Err(format!(
                    "{at}: say which pipeline (and stage) the cases are for: \
                     pipeline = \"...\", stage = \"...\""
                ));
            }
        };
        if raw.cases.is_empty() {
            return Err(format!("{at}: no [[case]] entries"));
        }
        let kinds: &[&str] = if stage.is_some() {
            &STAGE_KINDS
        } else {
            &PIPELINE_KINDS
        };
        for case in &raw.cases {
            if !kinds.contains(&case.expect.as_str()) {
                return Err(format!(
                    "{at}: case \"{}\": expect = \"{}\" is not one of {}",
                    case.name,
                    case.expect,
                    kinds.join(", ")
                ));
            }
            if let Some(pattern) = &case.output_matches {
                regex::Regex::new(pattern).map_err(|e| {
                    format!(
                        "{at}: case \"{}\": output_matches is not a regular expression: {e}",
                        case.name
                    )
                })?;
            }
            if stage.is_some() && (case.stage.is_some() || case.layer.is_some()) {
                return Err(format!(
                    "{at}: case \"{}\": `stage` and `layer` only apply to pipeline cases",
                    case.name
                ));
            }
        }
        Ok(CaseFile {
            path: path.to_owned(),
            pipeline,
            stage,
            cases: raw.cases,
        })
    }

    /// `pipeline`, or `pipeline/stage`.
    pub fn target(&self) -> String {
        match &self.stage {
            Some(stage) => format!("{}/{stage}", self.pipeline),
            None => self.pipeline.clone(),
        }
    }
}

/// A case that did not hold.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The case.
    pub case: String,
    /// Its input.
    pub input: String,
    /// What it expected.
    pub expected: String,
    /// What happened.
    pub actual: String,
}

impl Failure {
    /// The failure as the CLI prints it: expected and actual, with a caret
    /// under the first character that differs.
    pub fn render(&self) -> String {
        let mut out = format!(
            "  FAIL \"{}\"\n    input:    {:?}\n    expected: {}\n    actual:   {}\n",
            self.case, self.input, self.expected, self.actual
        );
        if let Some(at) = first_difference(&self.expected, &self.actual) {
            let _ = writeln!(out, "              {}^ first difference", " ".repeat(at));
        }
        out
    }
}

fn first_difference(a: &str, b: &str) -> Option<usize> {
    let mut a_chars = a.chars();
    let mut b_chars = b.chars();
    let mut at = 0;
    loop {
        match (a_chars.next(), b_chars.next()) {
            (None, None) => return None,
            (x, y) if x == y => at += 1,
            _ => return Some(at),
        }
    }
}

/// What running one file found.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// `pipeline/stage`, with ` (candidate)` for a candidate version.
    pub target: String,
    /// Cases that held.
    pub passed: usize,
    /// Cases that did not.
    pub failures: Vec<Failure>,
}

impl FileReport {
    /// The report as the CLI prints it.
    pub fn render(&self) -> String {
        let total = self.passed + self.failures.len();
        let mut out = format!(
            "{} {}: {}/{total} passed ({})\n",
            if self.failures.is_empty() {
                "ok  "
            } else {
                "FAIL"
            },
            self.target,
            self.passed,
            self.path.display()
        );
        for failure in &self.failures {
            out.push_str(&failure.render());
        }
        out
    }
}

/// What cases may use: an empty bank of their own, no models.
fn isolated(pipeline: &str) -> Access {
    Access {
        bank: BankAccess {
            bank: Some(Banks::default().bank(pipeline, &Default::default())),
            read_only: false,
        },
        models: Default::default(),
    }
}

/// Run stage cases against one loaded version of the stage.
pub async fn run_stage(
    runtime: &Runtime,
    stage: &LoadedStage,
    file: &CaseFile,
    target: String,
) -> FileReport {
    let mut report = FileReport {
        path: file.path.clone(),
        target,
        passed: 0,
        failures: Vec::new(),
    };
    let access = isolated(&file.pipeline);
    for (index, case) in file.cases.iter().enumerate() {
        let request = Request {
            id: format!("case-{}", index + 1),
            pipeline: file.pipeline.clone(),
            input: case.input.clone(),
            attributes: case.attributes.clone(),
        };
        let tag = LogTag {
            request_id: request.id.as_str().into(),
            pipeline: file.pipeline.as_str().into(),
            stage: stage.spec.name.as_str().into(),
            generation: 0,
            digest: stage.digest.to_string().into(),
        };
        let outcome = runtime.invoke(stage, &request, &tag, &access).await.outcome;
        let (kind, text, code) = match &outcome {
            Ok(Outcome::Next { input, .. }) => ("next", input.clone(), None),
            Ok(Outcome::Respond { output, .. }) => ("respond", output.clone(), None),
            Ok(Outcome::Escalate { reason, .. }) => ("escalate", reason.clone(), None),
            Ok(Outcome::Reject { code, message }) => {
                ("reject", message.clone(), Some(code.clone()))
            }
            Err(failure) => ("fail", failure.to_string(), None),
        };
        judge(&mut report, case, kind, &text, code.as_deref(), None, None);
    }
    report
}

/// Run pipeline cases through the whole pipeline.
pub async fn run_pipeline(
    runtime: Arc<Runtime>,
    generation: &Generation,
    pipeline: &Pipeline,
    file: &CaseFile,
) -> FileReport {
    let mut report = FileReport {
        path: file.path.clone(),
        target: file.target(),
        passed: 0,
        failures: Vec::new(),
    };
    let context = RunContext::new(runtime, Arc::new(Unobserved), 0).without_models();
    for (index, case) in file.cases.iter().enumerate() {
        let request = Request {
            id: format!("case-{}", index + 1),
            pipeline: pipeline.name.to_string(),
            input: case.input.clone(),
            attributes: case.attributes.clone(),
        };
        let execution = pipeline.run(&context, generation.number, request).await;
        let verdict = &execution.verdict;
        let (text, by) = (verdict.text(), verdict.decided_by());
        let code = match verdict {
            Verdict::Rejected { code, .. } => Some(code.as_str()),
            _ => None,
        };
        judge(
            &mut report,
            case,
            execution.verdict.status().as_str(),
            &text,
            code,
            by.map(|b| b.stage.as_str()),
            by.map(|b| b.layer.as_str()),
        );
    }
    report
}

#[allow(clippy::too_many_arguments)]
fn judge(
    report: &mut FileReport,
    case: &Case,
    kind: &str,
    text: &str,
    code: Option<&str>,
    stage: Option<&str>,
    layer: Option<&str>,
) {
    let mut wrong = Vec::new();
    if kind != case.expect {
        wrong.push("kind");
    }
    if case.output.as_deref().is_some_and(|o| o != text) {
        wrong.push("output");
    }
    if let Some(pattern) = &case.output_matches
        && !regex::Regex::new(pattern).is_ok_and(|r| r.is_match(text))
    {
        wrong.push("output_matches");
    }
    if case.code.is_some() && case.code.as_deref() != code {
        wrong.push("code");
    }
    if case.stage.is_some() && case.stage.as_deref() != stage {
        wrong.push("stage");
    }
    if case.layer.is_some() && case.layer.as_deref() != layer {
        wrong.push("layer");
    }
    if wrong.is_empty() {
        report.passed += 1;
        return;
    }
    let describe = |kind: &str, text: Option<&str>, code: Option<&str>, stage: Option<&str>| {
        let mut out = kind.to_owned();
        if let Some(code) = code {
            let _ = write!(out, " [{code}]");
        }
        if let Some(stage) = stage {
            let _ = write!(out, " by {stage}");
        }
        if let Some(text) = text {
            let _ = write!(out, " {text:?}");
        }
        out
    };
    let expected_text = case
        .output
        .clone()
        .or_else(|| case.output_matches.as_ref().map(|p| format!("/{p}/")));
    report.failures.push(Failure {
        case: case.name.clone(),
        input: case.input.clone(),
        expected: describe(
            &case.expect,
            expected_text.as_deref(),
            case.code.as_deref(),
            case.stage.as_deref(),
        ),
        actual: describe(
            kind,
            Some(text),
            code.filter(|_| case.code.is_some()),
            stage.filter(|_| case.stage.is_some()),
        ),
    });
}

/// The reload gate: every stage that lists cases in the manifest must pass
/// them, in its live version and its candidate. Returns the failures as one
/// message, naming each failing case.
pub async fn gate(runtime: &Runtime, generation: &Generation) -> Result<usize, String> {
    let mut problems = Vec::new();
    let mut checked = 0;
    for pipeline in generation.pipelines.values() {
        for stage in &pipeline.stages {
            let Some(path) = &stage.live.spec.cases else {
                continue;
            };
            let file = match CaseFile::load(path, Some((&pipeline.name, Some(stage.name())))) {
                Ok(file) => file,
                Err(error) => {
                    problems.push(error);
                    continue;
                }
            };
            let mut versions = vec![(stage.live.clone(), "")];
            if let Some(candidate) = &stage.candidate {
                versions.push((candidate.stage.clone(), " (candidate)"));
            }
            for (version, label) in versions {
                let target = format!("{}{label}", file.target());
                let report = run_stage(runtime, &version, &file, target).await;
                checked += report.passed + report.failures.len();
                if !report.failures.is_empty() {
                    let names: Vec<String> = report
                        .failures
                        .iter()
                        .map(|f| {
                            format!("\"{}\" (expected {}, got {})", f.case, f.expected, f.actual)
                        })
                        .collect();
                    problems.push(format!(
                        "pipeline \"{}\" stage \"{}\"{label} fails {} of {} golden cases in {}: {}",
                        pipeline.name,
                        stage.name(),
                        report.failures.len(),
                        report.passed + report.failures.len(),
                        file.path.display(),
                        names.join("; ")
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(problems.join("\n"))
    }
}
