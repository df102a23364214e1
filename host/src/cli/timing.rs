//! `strata run --repeat N`: the request run N times, one after another,
//! and what each run and each stage took by the host's clock. No server,
//! store or network is involved, so this is what the pipeline itself costs
//! a request: instantiating, calling and (outside a server, where a
//! finished instance is reset at once) resetting each stage's instance.

use std::time::Duration;

use serde_json::{Value, json};

use crate::pipeline::Execution;
use crate::store::quantile;

/// Wall-clock times gathered over repeated runs.
#[derive(Default)]
pub(super) struct Timing {
    /// Each whole run, in microseconds.
    runs: Vec<f64>,
    /// Each stage's invocations, in microseconds, stages in the order
    /// they first ran.
    stages: Vec<(String, Vec<f64>)>,
}

impl Timing {
    /// Count one run that took `elapsed` and ended as `execution`.
    pub(super) fn add(&mut self, elapsed: Duration, execution: &Execution) {
        self.runs.push(micros(elapsed));
        for run in &execution.trace {
            let name = run.stage.as_str();
            let times = match self.stages.iter().position(|(stage, _)| stage == name) {
                Some(at) => &mut self.stages[at].1,
                None => {
                    self.stages.push((name.to_owned(), Vec::new()));
                    &mut self.stages.last_mut().expect("just pushed").1
                }
            };
            times.push(micros(run.elapsed));
        }
    }

    /// The `timing` object: runs, then per stage how many invocations and
    /// their mean, median, 99th percentile and maximum in microseconds.
    pub(super) fn into_value(self) -> Value {
        let stages: Vec<Value> = self
            .stages
            .into_iter()
            .map(|(stage, times)| {
                let mut summary = summary(times);
                summary["stage"] = json!(stage);
                summary
            })
            .collect();
        let mut timing = summary(self.runs);
        timing["stages"] = json!(stages);
        timing
    }
}

fn micros(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e6
}

/// Count, mean, p50, p99 and max of `times` (microseconds, rounded to
/// tenths).
fn summary(mut times: Vec<f64>) -> Value {
    times.sort_by(f64::total_cmp);
    let tenths = |value: f64| (value * 10.0).round() / 10.0;
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    json!({
        "count": times.len(),
        "mean_us": tenths(mean),
        "p50_us": quantile(&times, 0.5).map(tenths),
        "p99_us": quantile(&times, 0.99).map(tenths),
        "max_us": times.last().copied().map(tenths),
    })
}

#[cfg(test)]
mod tests {
    use super::summary;

    #[test]
    fn summarises_by_nearest_rank() {
        let times: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let value = summary(times);
        assert_eq!(value["count"], 100);
        assert_eq!(value["mean_us"], 50.5);
        assert_eq!(value["p50_us"], 50.0);
        assert_eq!(value["p99_us"], 99.0);
        assert_eq!(value["max_us"], 100.0);
    }
}
