//! `strata replay`: recorded traffic against the pipelines of a manifest.
//!
//! Each recorded request is run again from where it was recorded (after the
//! stage named by `record.after`) through the pipeline's deterministic part:
//! every stage up to the first one granted `cache` or `model`. Those layers
//! answer from state and from models, which a replay must neither consult
//! nor pay for, so a request that reaches them counts as "passed on". The
//! recorded outcome is put in the same terms (an outcome decided by a later
//! stage is "passed on" too), so the comparison is like for like.
//!
//! With `--against OTHER`, the recorded inputs run through both manifests
//! and the two are compared; without it, the manifest is compared with what
//! was recorded.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::manifest::Grant;
use crate::pipeline::{Generation, Pipeline, RunContext, Unobserved, Verdict};
use crate::record::Line;
use crate::request::Request;
use crate::runtime::Runtime;

/// How many examples of each kind of change a report keeps.
const EXAMPLES_PER_CHANGE: usize = 5;

/// A decision, in the terms replay compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// answered, escalated, rejected, failed, or passed-on.
    pub kind: String,
    /// The deciding stage.
    pub stage: Option<String>,
    /// The answer, reason or message.
    pub text: String,
}

impl Decision {
    fn passed_on() -> Decision {
        Decision {
            kind: "passed-on".to_owned(),
            stage: None,
            text: String::new(),
        }
    }

    fn of(verdict: Option<Verdict>) -> Decision {
        let Some(verdict) = verdict else {
            return Decision::passed_on();
        };
        Decision {
            kind: verdict.status().as_str().to_owned(),
            stage: verdict.decided_by().map(|b| b.stage.to_string()),
            text: verdict.text(),
        }
    }
}

/// One changed request.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    /// The recorded request's id.
    pub request_id: String,
    /// Its recorded input.
    pub input: String,
    /// The decision before (recorded, or the manifest's).
    pub before: Decision,
    /// The decision after (the manifest's, or `--against`'s).
    pub after: Decision,
}

/// What a replay found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    /// Requests replayed.
    pub replayed: usize,
    /// Recorded lines that could not be replayed (unknown pipeline or stage).
    pub skipped: usize,
    /// Requests whose decision changed.
    pub changed: usize,
    /// Changes by kind, e.g. `answered -> escalated`.
    pub by_change: BTreeMap<String, usize>,
    /// Examples, a few of each kind of change.
    pub examples: Vec<Example>,
    /// Why lines were skipped (first few).
    pub skipped_because: Vec<String>,
}

impl ReplayReport {
    /// The report as the CLI prints it.
    pub fn render(&self) -> String {
        let mut out = format!(
            "replayed {} recorded request{}: {} changed{}\n",
            self.replayed,
            if self.replayed == 1 { "" } else { "s" },
            self.changed,
            if self.skipped > 0 {
                format!(", {} skipped", self.skipped)
            } else {
                String::new()
            }
        );
        for (change, count) in &self.by_change {
            out.push_str(&format!("  {count:>6}  {change}\n"));
        }
        for example in &self.examples {
            out.push_str(&format!(
                "\n  {} {:?}\n    before: {} {}{:?}\n    after:  {} {}{:?}\n",
                example.request_id,
                example.input,
                example.before.kind,
                example
                    .before
                    .stage
                    .as_ref()
                    .map(|s| format!("by {s} "))
                    .unwrap_or_default(),
                example.before.text,
                example.after.kind,
                example
                    .after
                    .stage
                    .as_ref()
                    .map(|s| format!("by {s} "))
                    .unwrap_or_default(),
                example.after.text,
            ));
        }
        for reason in &self.skipped_because {
            out.push_str(&format!("  skipped: {reason}\n"));
        }
        out
    }
}

/// A manifest's loaded pipelines, ready to replay.
pub struct Replayer {
    context: RunContext,
    generation: Generation,
}

impl Replayer {
    /// Replay through `generation` (models off, a fresh bank).
    pub fn new(runtime: Arc<Runtime>, generation: Generation) -> Replayer {
        Replayer {
            context: RunContext::new(runtime, Arc::new(Unobserved), 0).without_models(),
            generation,
        }
    }

    /// The range of stages a line replays through in `pipeline`: after its
    /// recording point, up to the first stage granted the cache or a model.
    fn range(pipeline: &Pipeline, after: &str) -> Option<std::ops::Range<usize>> {
        let start = pipeline.stages.iter().position(|s| s.name() == after)? + 1;
        let end = pipeline.stages[start..]
            .iter()
            .position(|s| {
                let grants = &s.live.spec.grants;
                grants.contains(&Grant::Cache) || grants.contains(&Grant::Model)
            })
            .map_or(pipeline.stages.len(), |i| start + i);
        Some(start..end)
    }

    async fn decide(&self, line: &Line) -> Result<Decision, String> {
        let pipeline = self
            .generation
            .pipelines
            .get(line.pipeline.as_str())
            .ok_or_else(|| format!("no pipeline \"{}\"", line.pipeline))?;
        let range = Self::range(pipeline, &line.after).ok_or_else(|| {
            format!(
                "pipeline \"{}\" has no stage \"{}\" to replay after",
                line.pipeline, line.after
            )
        })?;
        // The recorded id: canary routing hashes it, so the replay meets the
        // versions the recorded request met.
        let request = Request {
            id: line.request_id.clone(),
            pipeline: line.pipeline.clone(),
            input: line.input.clone(),
            attributes: line.attributes.clone(),
        };
        Ok(Decision::of(
            pipeline
                .run_range(&self.context, self.generation.number, request, range)
                .await,
        ))
    }

    /// A recorded decision in replay's terms, judged by this manifest's
    /// stage order.
    fn recorded(&self, line: &Line) -> Decision {
        let in_range = self
            .generation
            .pipelines
            .get(line.pipeline.as_str())
            .and_then(|p| Some((p, Self::range(p, &line.after)?)))
            .is_some_and(|(pipeline, range)| match &line.stage {
                Some(stage) => pipeline
                    .stages
                    .iter()
                    .position(|s| s.name() == stage)
                    .is_some_and(|i| range.contains(&i)),
                // The fallthrough: only comparable when the range reaches
                // the end of the pipeline.
                None => range.end >= pipeline.stages.len(),
            });
        if in_range {
            Decision {
                kind: line.status.clone(),
                stage: line.stage.clone(),
                text: line.text.clone(),
            }
        } else {
            Decision::passed_on()
        }
    }
}

/// Read a recorded log (JSON lines); unreadable lines are reported.
pub fn read_log(path: &Path) -> anyhow::Result<Vec<Result<Line, String>>> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the traffic log {}", path.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| serde_json::from_str::<Line>(l).map_err(|e| format!("line {}: {e}", n + 1)))
        .collect())
}

/// Replay `lines` through `current`, comparing with the recording, or with
/// `other` when given.
pub async fn replay(
    lines: Vec<Result<Line, String>>,
    current: &Replayer,
    other: Option<&Replayer>,
) -> ReplayReport {
    let mut report = ReplayReport::default();
    let skip = |report: &mut ReplayReport, why: String| {
        report.skipped += 1;
        if report.skipped_because.len() < 5 {
            report.skipped_because.push(why);
        }
    };
    for line in lines {
        let line = match line {
            Ok(line) => line,
            Err(why) => {
                skip(&mut report, why);
                continue;
            }
        };
        let (before, after) = match other {
            None => match current.decide(&line).await {
                Ok(after) => (current.recorded(&line), after),
                Err(why) => {
                    skip(&mut report, why);
                    continue;
                }
            },
            Some(other) => match (current.decide(&line).await, other.decide(&line).await) {
                (Ok(before), Ok(after)) => (before, after),
                (Err(why), _) | (_, Err(why)) => {
                    skip(&mut report, why);
                    continue;
                }
            },
        };
        report.replayed += 1;
        if before == after {
            continue;
        }
        report.changed += 1;
        let change = format!("{} -> {}", describe(&before), describe(&after));
        let seen = report.by_change.entry(change).or_default();
        *seen += 1;
        if *seen <= EXAMPLES_PER_CHANGE {
            report.examples.push(Example {
                request_id: line.request_id,
                input: line.input,
                before,
                after,
            });
        }
    }
    report
}

fn describe(decision: &Decision) -> String {
    match &decision.stage {
        Some(stage) => format!("{} by {stage}", decision.kind),
        None => decision.kind.clone(),
    }
}
