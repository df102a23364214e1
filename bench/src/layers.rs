//! The layered pipeline's economics and its cheapest path.
//!
//! 1. A cache hit: the demo pipeline answering from its answer bank (five
//!    stages: four rules stages pass, the answer bank answers) against the
//!    bare hyper baseline, in the same run.
//! 2. A replay of a Banking77-drawn trace through the layered demo pipeline
//!    and, in the same run, through a pipeline that sends every request to
//!    the model: the share of requests each layer answered, the model calls
//!    avoided, and the cost per answered request. The answer bank is seeded
//!    (`strata bank import`) with the training part of the seeded split and
//!    the trace is drawn from the held-out part only, so every question is
//!    one the bank has never seen verbatim.
//!
//! The model provider is `tools/local-llm`, the local stand-in speaking the
//! OpenAI protocol; its token counts are estimates, so costs are in the
//! right proportion to each other, not in real dollars.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::harness::{self, Host, Load, TABLE_HEADER};

/// Trace settings.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The Banking77 training split (CSV: text, category).
    pub source: std::path::PathBuf,
    /// Requests in the trace.
    pub length: usize,
    /// Zipf exponent of question popularity.
    pub zipf: f64,
    /// Seed of the draw.
    pub seed: u64,
}

/// The question used for the cache-hit measurement.
const CACHED_QUESTION: &str = "Can I get a card in another colour?";

/// Run the scenario; returns the BENCHMARKS.md section.
pub fn run(root: &Path, load: &Load, trace: &Trace) -> anyhow::Result<String> {
    let release = root.join("target/release");
    let dir = harness::scratch("layers")?;

    let mut llm = harness::spawn(Command::new(release.join("local-llm")).arg("127.0.0.1:0"))?;
    let llm_addr = harness::wait_for_stdout(&mut llm, "listening on ")?;
    let manifest = dir.join("strata.toml");
    write_manifest(root, &manifest, &llm_addr)?;

    // 1. The cache-hit path against the baseline.
    let baseline = {
        let mut child =
            harness::spawn(Command::new(release.join("echo-baseline")).arg("127.0.0.1:0"))?;
        let addr = harness::wait_for_stdout(&mut child, "listening on ")?;
        let figures = harness::wrk_body_on(
            load,
            &format!("http://{addr}/echo"),
            CACHED_QUESTION,
            child.id(),
        )?;
        let _ = child.kill();
        let _ = child.wait();
        figures
    };
    let host = Host::start(&release.join("strata"), &manifest, &dir.join("data-hit"))?;
    let body = serde_json::json!({"input": CACHED_QUESTION}).to_string();
    let (_, first) = harness::http("POST", &host.addr, "/v1/pipelines/support", &body)?;
    let (_, second) = harness::http("POST", &host.addr, "/v1/pipelines/support", &body)?;
    let second: serde_json::Value = serde_json::from_str(&second)?;
    if second["layer"] != "cache" {
        bail!("the cache-hit request was not answered from the cache: {second} (first: {first})");
    }
    let hit = harness::wrk_body_on(
        load,
        &format!("http://{}/v1/pipelines/support", host.addr),
        CACHED_QUESTION,
        host.pid(),
    )?;
    host.stop();

    // 2. The trace, through both pipelines of a host whose bank holds the
    //    training part of the split; the trace is the held-out part.
    let (questions, labels) = read_labelled(&trace.source)?;
    let split = strata_patterns::split::holdout(&labels, strata_patterns::split::DEFAULT_SEED, 0.2);
    let held_out: Vec<String> = split
        .held_out
        .iter()
        .map(|&i| questions[i].clone())
        .collect();
    let seeded = Command::new(release.join("strata"))
        .args(["bank", "import"])
        .arg(&manifest)
        .arg("support")
        .arg(&trace.source)
        .arg("--answers")
        .arg(root.join("examples/support-desk/answers.csv"))
        .args(["--split", "train", "--data"])
        .arg(dir.join("data-trace"))
        .status()
        .context("cannot run strata bank import")?;
    if !seeded.success() {
        bail!("strata bank import failed: {seeded}");
    }
    let questions = held_out;
    let drawn = draw(&questions, trace);
    let distinct = drawn
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let host = Host::start(&release.join("strata"), &manifest, &dir.join("data-trace"))?;
    let layered = replay(&host.addr, &llm_addr, "support", &drawn)?;
    let direct = replay(&host.addr, &llm_addr, "direct", &drawn)?;
    host.stop();
    let _ = llm.kill();
    let _ = llm.wait();
    let _ = std::fs::remove_dir_all(&dir);

    Ok(report(
        load,
        trace,
        &baseline,
        &hit,
        &layered,
        &direct,
        distinct,
        questions.len(),
    ))
}

/// The demo manifest, with absolute plugin paths, the provider at
/// `llm_addr`, and a second pipeline that sends everything to the model.
pub(crate) fn write_manifest(root: &Path, path: &Path, llm_addr: &str) -> anyhow::Result<()> {
    let guests = root.join("target/guests/wasm32-wasip2/release");
    let text = harness::demo_manifest(root)?
        .replace("http://127.0.0.1:8000/v1", &format!("http://{llm_addr}/v1"));
    if !text.contains(&format!("http://{llm_addr}/v1")) {
        bail!("the demo manifest no longer points at http://127.0.0.1:8000/v1");
    }
    let direct = format!(
        "
[pipelines.direct]
[[pipelines.direct.stages]]
name = \"generate\"
layer = \"generation\"
plugin = \"{}/generate.wasm\"
grants = [\"config\", \"model\"]
on_error = \"escalate\"
limits = {{ timeout_ms = 45000, memory_mib = 32 }}
[pipelines.direct.stages.config]
small_tier = \"small\"
large_tier = \"large\"
large_over_words = 25
large_keywords = [\"dispute\", \"chargeback\", \"complaint\", \"refund\"]
max_tokens = 200
confidence = {{ small = 0.75, large = 0.85 }}
",
        guests.display()
    );
    std::fs::write(path, format!("{text}{direct}\n[reload]\nwatch = false\n"))?;
    Ok(())
}

/// Questions and their labels (text, category).
fn read_labelled(path: &Path) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut reader = csv::Reader::from_path(path).with_context(|| {
        format!(
            "cannot read the Banking77 training split at {}; pass --trace-source",
            path.display()
        )
    })?;
    let (mut questions, mut labels) = (Vec::new(), Vec::new());
    for record in reader.records() {
        let record = record.with_context(|| format!("{} is not valid CSV", path.display()))?;
        let question = record.get(0).context("a row without text")?.trim();
        let label = record.get(1).context("a row without a category")?.trim();
        if !question.is_empty() {
            questions.push(question.to_owned());
            labels.push(label.to_owned());
        }
    }
    Ok((questions, labels))
}

pub(crate) fn read_questions(path: &Path) -> anyhow::Result<Vec<String>> {
    let mut reader = csv::Reader::from_path(path).with_context(|| {
        format!(
            "cannot read the Banking77 training split at {}; pass --trace-source",
            path.display()
        )
    })?;
    let mut questions = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("{} is not valid CSV", path.display()))?;
        let question = record.get(0).context("a row without text")?.trim();
        if !question.is_empty() {
            questions.push(question.to_owned());
        }
    }
    if questions.is_empty() {
        bail!("{} holds no questions", path.display());
    }
    Ok(questions)
}

/// splitmix64: a small, well-known generator, so the trace is the same on
/// every machine for a seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draw a trace: questions ranked in a seeded random order, the one at rank
/// `k` drawn with probability proportional to `1 / k^zipf`, as the
/// popularity of real support questions falls off.
pub(crate) fn draw(questions: &[String], trace: &Trace) -> Vec<String> {
    let mut rng = SplitMix(trace.seed);
    let mut ranked: Vec<&String> = questions.iter().collect();
    for i in (1..ranked.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        ranked.swap(i, j);
    }
    let weights: Vec<f64> = (1..=ranked.len())
        .map(|k| 1.0 / (k as f64).powf(trace.zipf))
        .collect();
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut total = 0.0;
    for w in &weights {
        total += w;
        cumulative.push(total);
    }
    (0..trace.length)
        .map(|_| {
            let x = rng.unit() * total;
            let index = cumulative.partition_point(|c| *c < x).min(ranked.len() - 1);
            ranked[index].clone()
        })
        .collect()
}

/// What one pipeline did with the trace.
#[derive(Debug, Default)]
struct Tally {
    by_layer: BTreeMap<String, usize>,
    answered: usize,
    cost_usd: f64,
    model_calls: u64,
    requests: usize,
}

fn replay(api: &str, llm: &str, pipeline: &str, trace: &[String]) -> anyhow::Result<Tally> {
    let calls_before = provider_requests(llm)?;
    let mut tally = Tally::default();
    for question in trace {
        let body = serde_json::json!({"input": question}).to_string();
        let (status, text) =
            harness::http("POST", api, &format!("/v1/pipelines/{pipeline}"), &body)?;
        let answer: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{status} for {question:?}: {text}"))?;
        let layer = match answer["status"].as_str() {
            Some("answered") => answer["layer"].as_str().unwrap_or("?").to_owned(),
            Some("escalated") => "human (ticket)".to_owned(),
            Some("rejected") => "rejected".to_owned(),
            other => bail!("{pipeline}: unexpected status {other:?}: {answer}"),
        };
        if answer["status"] == "answered" {
            tally.answered += 1;
        }
        *tally.by_layer.entry(layer).or_default() += 1;
        tally.cost_usd += answer["cost_usd"].as_f64().unwrap_or(0.0);
        tally.requests += 1;
    }
    tally.model_calls = provider_requests(llm)? - calls_before;
    Ok(tally)
}

fn provider_requests(llm: &str) -> anyhow::Result<u64> {
    let (_, stats) = harness::http("GET", llm, "/stats", "")?;
    let stats: serde_json::Value = serde_json::from_str(&stats)?;
    stats["requests"]
        .as_u64()
        .context("the local provider's /stats has no request count")
}

#[allow(clippy::too_many_arguments)]
fn report(
    load: &Load,
    trace: &Trace,
    baseline: &harness::Figures,
    hit: &harness::Figures,
    layered: &Tally,
    direct: &Tally,
    distinct: usize,
    questions: usize,
) -> String {
    let share = |n: usize| 100.0 * n as f64 / layered.requests as f64;
    let mut layers = String::new();
    for (layer, count) in &layered.by_layer {
        layers.push_str(&format!("| {layer} | {count} | {:.1} % |\n", share(*count)));
    }
    let cheap = ["rules", "cache"]
        .iter()
        .map(|l| layered.by_layer.get(*l).copied().unwrap_or(0))
        .sum::<usize>();
    let per_answer = |t: &Tally| t.cost_usd / t.answered.max(1) as f64;
    format!(
        "Measured at commit `{commit}`.\n\n\
         **A cache hit** (`{cached}` answered by the `answer-bank` stage after four rules stages \
         passed it on), `{load}` on loopback, against the bare hyper baseline in the same run:\n\n\
         {TABLE_HEADER}\n{}\n{}\n\nThroughput ratio, cache hit / baseline: **{:.3}**.\n\n\
         **The layers' economics**: {len} requests drawn from the {questions} held-out \
         questions of Banking77's training split (stratified split, seed 77, 20 % held out; the \
         answer bank seeded with the other 80 % under the demo's 77 approved answers; Zipf \
         exponent {zipf} over a seeded random ranking, seed {seed}; {distinct} distinct questions \
         in the trace), replayed one at a time through \
         the layered `support` pipeline, then through a `direct` pipeline that sends every \
         request to the model (same tiers, same prices), in the same run. The provider is the \
         local stand-in; costs use its token estimates at the demo's tier prices.\n\n\
         | answered by | requests | share |\n| --- | ---: | ---: |\n{layers}\n\
         Layers 1-2 (rules and cache) answered **{:.1} %** of the trace.\n\n\
         | pipeline | model calls | cost (USD) | answered | cost per answered request (USD) |\n\
         | --- | ---: | ---: | ---: | ---: |\n\
         | layered (`support`) | {} | {:.6} | {} | {:.8} |\n\
         | every request to the model (`direct`) | {} | {:.6} | {} | {:.8} |\n\n\
         Model calls avoided: **{}** of {} ({:.1} %); cost per answered request: **{:.1} %** of \
         sending everything to the model.\n",
        baseline.row("bare hyper echo (baseline)"),
        hit.row("strata, answered from the answer bank"),
        hit.requests_per_second / baseline.requests_per_second,
        share(cheap),
        layered.model_calls,
        layered.cost_usd,
        layered.answered,
        per_answer(layered),
        direct.model_calls,
        direct.cost_usd,
        direct.answered,
        per_answer(direct),
        direct.model_calls.saturating_sub(layered.model_calls),
        direct.model_calls,
        100.0 * direct.model_calls.saturating_sub(layered.model_calls) as f64
            / direct.model_calls.max(1) as f64,
        100.0 * per_answer(layered) / per_answer(direct).max(f64::MIN_POSITIVE),
        commit = harness::commit(),
        cached = CACHED_QUESTION,
        load = load.describe(),
        len = trace.length,
        zipf = trace.zipf,
        seed = trace.seed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_reproducible_and_skewed() {
        let questions: Vec<String> = (0..1000).map(|i| format!("q{i}")).collect();
        let trace = Trace {
            source: Default::default(),
            length: 2000,
            zipf: 1.0,
            seed: 7,
        };
        let a = draw(&questions, &trace);
        assert_eq!(a, draw(&questions, &trace));
        let distinct = a.iter().collect::<std::collections::BTreeSet<_>>().len();
        assert!(
            distinct < 1000,
            "a Zipf draw repeats popular questions: {distinct}"
        );
    }
}
