//! The pipelines' observer: what each request, canary and shadow run
//! tells the error budgets, the metrics, the traffic recording and the
//! store.

use std::time::Duration;

use super::Operations;
use crate::manifest::RolloutMode;
use crate::pipeline::{Candidate, Execution, Observer, Pipeline, ShadowComparison};
use crate::record::Line;
use crate::slo::{MIN_EVENTS_FOR_ROLLBACK, SeriesKey};
use crate::store::ShadowRecord;

impl Observer for Operations {
    fn candidate_served(&self, pipeline: &Pipeline, candidate: &Candidate, failed: bool) {
        if candidate.mode != RolloutMode::Canary {
            return;
        }
        let key = SeriesKey::Candidate {
            pipeline: pipeline.name.to_string(),
            stage: candidate.stage.spec.name.to_string(),
            digest: candidate.stage.digest.to_string(),
        };
        self.metrics
            .canary_served(&pipeline.name, &candidate.stage.spec.name, failed);
        let series = self.budgets.series(key.clone(), &pipeline.slo);
        let firing = {
            let mut series = series.lock().unwrap_or_else(|e| e.into_inner());
            series.record(failed);
            if !failed {
                return;
            }
            series
                .alerts(Some(candidate.max_burn_rate))
                .into_iter()
                .find(|a| a.firing && a.short.total >= MIN_EVENTS_FOR_ROLLBACK)
        };
        let Some(alert) = firing else {
            return;
        };
        let first = self
            .burning
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        if first {
            let _ = self.alarms.send(BurnAlarm {
                key,
                pipeline: pipeline.name.to_string(),
                stage: candidate.stage.spec.name.to_string(),
                digest: candidate.stage.digest.to_string(),
                burn_rate: alert.short.burn_rate.min(alert.long.burn_rate),
                threshold: alert.threshold,
                windows: (alert.long_s, alert.short_s),
            });
        }
    }

    fn shadow_compared(&self, comparison: ShadowComparison) {
        self.metrics
            .shadow_compared(&comparison.pipeline, &comparison.stage, comparison.same());
        self.store.record_shadow(ShadowRecord {
            same: comparison.same(),
            request_id: comparison.request_id,
            pipeline: comparison.pipeline,
            stage: comparison.stage,
            live_digest: comparison.live_digest,
            candidate_digest: comparison.candidate_digest,
            live: comparison.live,
            candidate: comparison.candidate,
        });
    }

    fn request_finished(
        &self,
        pipeline: &Pipeline,
        execution: &Execution,
        elapsed: Duration,
        background: bool,
    ) {
        self.metrics
            .request_finished(&pipeline.name, execution, elapsed.as_secs_f64(), background);
        if let Some(spec) = &pipeline.record
            && let Some(line) = Line::of(execution, spec)
        {
            self.recorders.record(spec, &line);
        }
        // The latency objective is about clients waiting: an asynchronous
        // run (which may wait for a batch on purpose) counts only failures.
        let slow = !background && elapsed > Duration::from_millis(pipeline.slo.latency_ms);
        let bad = execution.had_failure() || slow;
        self.budgets
            .series(SeriesKey::Pipeline(pipeline.name.clone()), &pipeline.slo)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(bad);
    }
}

/// A canary whose failures burn the error budget too fast.
#[derive(Debug, Clone)]
pub(crate) struct BurnAlarm {
    pub(crate) key: SeriesKey,
    pub(crate) pipeline: String,
    pub(crate) stage: String,
    pub(crate) digest: String,
    pub(crate) burn_rate: f64,
    pub(crate) threshold: f64,
    pub(crate) windows: (u64, u64),
}
