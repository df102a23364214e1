//! What one stage run adds to the metrics: its duration and failure, the
//! model calls it made, and its answer-bank and cache lookups.

use super::Metrics;
use super::labels::{
    CallLabels, FeaturesLabels, LookupLabels, ReasonLabels, StageLabels, Text, TierLabels,
    TokenLabels,
};
use crate::manifest::Name;
use crate::pipeline::StageRun;

impl Metrics {
    /// Count one stage `run` of a finished request through `pipeline`
    /// (`name` is its label value).
    pub(super) fn stage_ran(&self, pipeline: &Name, name: &Text, run: &StageRun) {
        for call in &run.model_calls {
            let tier = |extra: &str| (pipeline.to_string(), call.tier.clone(), extra.to_owned());
            let (p, t, r) = tier(if call.ok { "ok" } else { "failed" });
            self.model_calls
                .get_or_create(&CallLabels {
                    pipeline: p,
                    tier: t,
                    result: r,
                })
                .inc_by(u64::from(call.attempts));
            for (direction, tokens) in
                [("input", call.input_tokens), ("output", call.output_tokens)]
            {
                let (p, t, d) = tier(direction);
                self.model_tokens
                    .get_or_create(&TokenLabels {
                        pipeline: p,
                        tier: t,
                        direction: d,
                    })
                    .inc_by(tokens);
            }
            self.model_cost
                .get_or_create(&TierLabels {
                    pipeline: pipeline.to_string(),
                    tier: call.tier.clone(),
                })
                .inc_by(call.cost_usd);
        }
        let [trusted, untrusted, none] = run.pattern_lookups;
        for (result, count) in [
            ("trusted", trusted),
            ("untrusted", untrusted),
            ("no_match", none),
        ] {
            if count > 0 {
                self.pattern_lookups
                    .get_or_create(&LookupLabels {
                        pipeline: pipeline.to_string(),
                        result: result.to_owned(),
                    })
                    .inc_by(u64::from(count));
            }
        }
        let features = &run.pattern_features;
        let fallback: u32 = features.fallback.iter().sum();
        for (label, count) in [
            ("embeddings", features.embeddings),
            ("lexical", features.lexical),
            ("lexical_fallback", fallback),
        ] {
            if count > 0 {
                self.pattern_features
                    .get_or_create(&FeaturesLabels {
                        pipeline: pipeline.to_string(),
                        features: label.to_owned(),
                    })
                    .inc_by(u64::from(count));
            }
        }
        for (reason, count) in crate::patterns::FALLBACK_REASONS
            .iter()
            .zip(features.fallback)
        {
            if count > 0 {
                self.embedding_failures
                    .get_or_create(&ReasonLabels {
                        pipeline: pipeline.to_string(),
                        reason: (*reason).to_owned(),
                    })
                    .inc_by(u64::from(count));
            }
        }
        for (result, count) in [("hit", run.cache_hits), ("miss", run.cache_misses)] {
            if count > 0 {
                self.cache_lookups
                    .get_or_create(&LookupLabels {
                        pipeline: pipeline.to_string(),
                        result: result.to_owned(),
                    })
                    .inc_by(u64::from(count));
            }
        }
        self.stage_duration
            .get_or_create(&StageLabels {
                pipeline: name.clone(),
                stage: Text::from(&run.stage),
                layer: Text::from(&run.layer),
            })
            .observe(run.elapsed.as_secs_f64());
        if let Some(kind) = run.failure {
            self.stage_failure(pipeline, &run.stage, kind);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::manifest::Digest;
    use crate::model::ModelCall;

    fn run() -> StageRun {
        StageRun {
            stage: Name::parse("answer").unwrap(),
            layer: Name::parse("generation").unwrap(),
            digest: Digest::of(b"stage"),
            version: "live",
            result: "failed",
            failure: Some("timeout"),
            elapsed: Duration::from_millis(3),
            model_calls: vec![ModelCall {
                tier: "small".into(),
                model: "m".into(),
                ok: false,
                attempts: 2,
                input_tokens: 11,
                output_tokens: 7,
                cost_usd: 0.25,
                ms: 1.0,
                error: Some("down".into()),
                batched: false,
            }],
            cache_hits: 1,
            cache_misses: 0,
            pattern: None,
            pattern_lookups: [0, 1, 2],
            pattern_features: crate::patterns::PatternFeatures {
                embeddings: 0,
                lexical: 1,
                fallback: [0, 2, 0, 0],
            },
        }
    }

    /// Every family one stage run touches gets its line, and a zero count
    /// makes none.
    #[test]
    fn a_stage_run_counts_its_calls_lookups_and_failure() {
        let metrics = Metrics::new();
        let pipeline = Name::parse("support").unwrap();
        metrics.stage_ran(&pipeline, &Text::from(&pipeline), &run());
        let text = metrics.encode();
        let has = |family: &str, labels: &str, value: &str| {
            text.lines().any(|line| {
                line.starts_with(family)
                    && labels.split(',').all(|l| line.contains(l))
                    && line.ends_with(&format!(" {value}"))
            })
        };
        assert!(
            has(
                "strata_model_calls_total",
                "tier=\"small\",result=\"failed\"",
                "2"
            ),
            "{text}"
        );
        assert!(
            has("strata_model_tokens_total", "direction=\"input\"", "11"),
            "{text}"
        );
        assert!(
            has("strata_model_tokens_total", "direction=\"output\"", "7"),
            "{text}"
        );
        assert!(
            has("strata_model_cost_usd_total", "tier=\"small\"", "0.25"),
            "{text}"
        );
        assert!(
            has("strata_cache_lookups_total", "result=\"hit\"", "1"),
            "{text}"
        );
        assert!(!text.contains("result=\"miss\""), "{text}");
        assert!(
            has("strata_pattern_lookups_total", "result=\"untrusted\"", "1"),
            "{text}"
        );
        assert!(
            has("strata_pattern_lookups_total", "result=\"no_match\"", "2"),
            "{text}"
        );
        assert!(!text.contains("result=\"trusted\""), "{text}");
        assert!(
            has(
                "strata_pattern_lookup_features_total",
                "features=\"lexical\"",
                "1"
            ),
            "{text}"
        );
        assert!(
            has(
                "strata_pattern_lookup_features_total",
                "features=\"lexical_fallback\"",
                "2"
            ),
            "{text}"
        );
        assert!(
            has(
                "strata_embeddings_failures_total",
                "reason=\"unavailable\"",
                "2"
            ),
            "{text}"
        );
        assert!(
            has("strata_stage_failures_total", "kind=\"timeout\"", "1"),
            "{text}"
        );
        assert!(
            has(
                "strata_stage_duration_seconds_count",
                "stage=\"answer\",layer=\"generation\"",
                "1"
            ),
            "{text}"
        );
    }
}
