//! The bounds of settings, limits, model tiers, embeddings models and
//! error budgets.

use std::collections::BTreeMap;

use super::{
    Limits, Location, MAX_MEMORY_MIB, MAX_TIMEOUT_MS, MAX_WINDOW_S, ManifestError,
    ManifestErrorKind, ModelsSpec, Name, Parser, PipelineSpec, RuntimeSettings, ServerSettings,
    SharedSettings, SloSpec, StoreSettings, key_location,
};

impl Parser<'_> {
    /// `value` at `location` if it lies in `range`; otherwise the error
    /// every bounded key gives, "VALUE is outside START..=END".
    pub(super) fn bounded<T: PartialOrd + std::fmt::Display>(
        &self,
        location: Location,
        value: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<(), ManifestError> {
        if range.contains(&value) {
            return Ok(());
        }
        let message = format!("{value} is outside {}..={}", range.start(), range.end());
        Err(self.error(location, ManifestErrorKind::Invalid(message)))
    }

    /// `[shared]`: a Redis URL the client accepts, and names that make
    /// clean keys.
    pub(super) fn check_store(&self, store: &StoreSettings) -> Result<(), ManifestError> {
        let Some(url) = &store.url else {
            return Ok(());
        };
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !postgres || url.parse::<postgres::Config>().is_err() {
            return Err(self.error(
                key_location("store.url"),
                ManifestErrorKind::Invalid(
                    "the value (not shown: it may hold a password) is not a PostgreSQL URL \
                     such as postgres://strata@127.0.0.1:5432/strata; leave [store] out to keep \
                     state in SQLite in the data directory"
                        .to_owned(),
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn check_shared(&self, shared: &SharedSettings) -> Result<(), ManifestError> {
        let invalid =
            |key: &str, why: String| self.error(key_location(key), ManifestErrorKind::Invalid(why));
        let Some(url) = &shared.redis else {
            if let Some(key) = [("cluster", &shared.cluster), ("host", &shared.host)]
                .iter()
                .find_map(|(key, value)| value.as_ref().map(|_| key))
            {
                return Err(invalid(
                    &format!("shared.{key}"),
                    "is set but shared.redis is not; hosts share nothing without it".to_owned(),
                ));
            }
            return Ok(());
        };
        let parsed = redis::IntoConnectionInfo::into_connection_info(url.as_str());
        if !url.starts_with("redis://") || parsed.is_err() {
            return Err(invalid(
                "shared.redis",
                format!("\"{url}\" is not a URL such as redis://127.0.0.1:6379/0"),
            ));
        }
        for (key, value) in [("cluster", &shared.cluster), ("host", &shared.host)] {
            let Some(value) = value else { continue };
            let clean = value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
            if value.is_empty() || value.len() > 64 || !clean {
                return Err(invalid(
                    &format!("shared.{key}"),
                    format!(
                        "\"{value}\" is not a name of 1 to 64 letters, digits, '.', '_', ':' \
                         or '-'"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn check_settings(
        &self,
        server: &ServerSettings,
        runtime: &RuntimeSettings,
    ) -> Result<(), ManifestError> {
        let key = key_location;
        self.bounded(
            key("server.max_body_kib"),
            server.max_body_kib,
            1..=16 * 1024,
        )?;
        self.bounded(
            key("server.max_in_flight"),
            server.max_in_flight,
            1..=1_000_000,
        )?;
        self.bounded(
            key("server.header_timeout_ms"),
            server.header_timeout_ms,
            1..=600_000,
        )?;
        self.bounded(
            key("server.body_timeout_ms"),
            server.body_timeout_ms,
            1..=600_000,
        )?;
        self.bounded(
            key("server.request_timeout_ms"),
            server.request_timeout_ms,
            1..=3_600_000,
        )?;
        self.bounded(key("runtime.instances"), runtime.instances, 1..=10_000)?;
        self.bounded(
            key("runtime.slot_wait_ms"),
            runtime.slot_wait_ms,
            1..=600_000,
        )
    }

    /// Idle reused instances each hold a slot of the instance pool; all of
    /// them together may hold at most half of it, so that they never leave
    /// the pool unable to serve.
    pub(super) fn check_idle_instances(
        &self,
        pipelines: &BTreeMap<Name, PipelineSpec>,
        instances: u32,
    ) -> Result<(), ManifestError> {
        let most = instances / 2;
        let mut total = 0u64;
        let mut holders = Vec::new();
        for pipeline in pipelines.values() {
            for stage in &pipeline.stages {
                if let Some(reuse) = &stage.reuse {
                    let versions = 1 + u64::from(stage.candidate.is_some());
                    total += u64::from(reuse.max_idle) * versions;
                    holders.push(format!(
                        "{}.{} ({}{})",
                        pipeline.name,
                        stage.name,
                        reuse.max_idle,
                        if versions > 1 {
                            " x2 with its candidate"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
        if total > u64::from(most) {
            return Err(self.error(
                key_location("runtime.instances"),
                ManifestErrorKind::Invalid(format!(
                    "stages that reuse instances may keep {total} idle, more than half of the \
                     {instances} instances ({most}); lower their reuse.max_idle or raise \
                     [runtime] instances: {}",
                    holders.join(", ")
                )),
            ));
        }
        Ok(())
    }

    pub(super) fn check_models(&self, models: &ModelsSpec) -> Result<(), ManifestError> {
        let invalid = |key: String, msg: String| {
            self.error(key_location(&key), ManifestErrorKind::Invalid(msg))
        };
        for (name, provider) in &models.providers {
            let url = provider.base_url.as_str();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    format!("models.providers.{name}.base_url"),
                    format!("\"{url}\" is not an http:// or https:// URL"),
                ));
            }
        }
        for (name, tier) in &models.tiers {
            let key = |k: &str| format!("models.tiers.{name}.{k}");
            if !models.providers.contains_key(&tier.provider) {
                let known: Vec<&str> = models.providers.keys().map(String::as_str).collect();
                return Err(invalid(
                    key("provider"),
                    format!(
                        "no provider named \"{}\"; the manifest defines: {}",
                        tier.provider,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            if let Some(fallback) = &tier.fallback
                && !models.tiers.contains_key(fallback)
            {
                return Err(invalid(
                    key("fallback"),
                    format!("no tier named \"{fallback}\""),
                ));
            }
            if !(1..=600_000).contains(&tier.timeout_ms) {
                return Err(invalid(
                    key("timeout_ms"),
                    format!("{} is outside 1..=600000", tier.timeout_ms),
                ));
            }
            if let Some(batch) = &tier.batch
                && (!(1..=256).contains(&batch.max_size) || batch.max_wait_ms > 60_000)
            {
                return Err(invalid(
                    key("batch"),
                    "max_size must be in 1..=256 and max_wait_ms at most 60000".to_owned(),
                ));
            }
            if tier.retries > 10 {
                return Err(invalid(
                    key("retries"),
                    format!("{} is more than 10", tier.retries),
                ));
            }
            for (k, price) in [
                ("input_usd_per_mtok", tier.input_usd_per_mtok),
                ("output_usd_per_mtok", tier.output_usd_per_mtok),
            ] {
                if !(price >= 0.0 && price.is_finite()) {
                    return Err(invalid(key(k), format!("{price} is not a price")));
                }
            }
        }
        Ok(())
    }

    /// Embeddings models name a provider and sane numbers; every answer
    /// bank that names one names one that exists.
    pub(super) fn check_embeddings(
        &self,
        models: &ModelsSpec,
        pipelines: &BTreeMap<Name, PipelineSpec>,
    ) -> Result<(), ManifestError> {
        let invalid = |key: String, msg: String| {
            self.error(key_location(&key), ManifestErrorKind::Invalid(msg))
        };
        for (name, spec) in &models.embeddings {
            let key = |k: &str| format!("models.embeddings.{name}.{k}");
            if !models.providers.contains_key(&spec.provider) {
                let known: Vec<&str> = models.providers.keys().map(String::as_str).collect();
                return Err(invalid(
                    key("provider"),
                    format!(
                        "no provider named \"{}\"; the manifest defines: {}",
                        spec.provider,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            let checks = [
                (
                    "model",
                    !spec.model.trim().is_empty(),
                    "must not be empty".to_owned(),
                ),
                (
                    "timeout_ms",
                    (1..=600_000).contains(&spec.timeout_ms),
                    format!("{} is outside 1..=600000", spec.timeout_ms),
                ),
                (
                    "batch_timeout_ms",
                    (1..=600_000).contains(&spec.batch_timeout_ms),
                    format!("{} is outside 1..=600000", spec.batch_timeout_ms),
                ),
                (
                    "retries",
                    spec.retries <= 10,
                    format!("{} is more than 10", spec.retries),
                ),
                (
                    "backoff_ms",
                    spec.backoff_ms <= 60_000,
                    format!("{} is more than 60000", spec.backoff_ms),
                ),
                (
                    "batch",
                    (1..=2048).contains(&spec.batch),
                    format!("{} is outside 1..=2048", spec.batch),
                ),
            ];
            if let Some((k, _, msg)) = checks.into_iter().find(|(_, ok, _)| !ok) {
                return Err(invalid(key(k), msg));
            }
        }
        for (name, pipeline) in pipelines {
            if let Some(wanted) = &pipeline.answer_bank.embeddings
                && !models.embeddings.contains_key(wanted)
            {
                let known: Vec<&str> = models.embeddings.keys().map(String::as_str).collect();
                return Err(self.error(
                    Location {
                        pipeline: Some(name.to_string()),
                        key: Some("answer_bank.embeddings".to_owned()),
                        ..Location::default()
                    },
                    ManifestErrorKind::Invalid(format!(
                        "no embeddings model named \"{wanted}\"; [models.embeddings] defines: {}",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    )),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn check_slo(&self, slo: &SloSpec, here: &Location) -> Result<(), ManifestError> {
        let at = |key: &str| Location {
            key: Some(format!("slo.{key}")),
            ..here.clone()
        };
        if !(slo.target > 0.0 && slo.target < 1.0) {
            return Err(self.error(
                at("target"),
                ManifestErrorKind::Invalid(format!(
                    "{} must be between 0 and 1, exclusive (e.g. 0.99)",
                    slo.target
                )),
            ));
        }
        if slo.latency_ms == 0 {
            return Err(self.error(
                at("latency_ms"),
                ManifestErrorKind::Invalid("must be greater than 0".to_owned()),
            ));
        }
        for window in &slo.windows {
            let valid = window.short_s >= 1
                && window.short_s <= window.long_s
                && window.long_s <= MAX_WINDOW_S
                && window.burn > 0.0;
            if !valid {
                return Err(self.error(
                    at("windows"),
                    ManifestErrorKind::Invalid(format!(
                        "{{ long_s = {}, short_s = {}, burn = {} }} needs 1 <= short_s <= long_s \
                         <= {MAX_WINDOW_S} and burn > 0",
                        window.long_s, window.short_s, window.burn
                    )),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn check_limits(
        &self,
        limits: &Limits,
        runtime: &RuntimeSettings,
        at: &dyn Fn(&str) -> Location,
    ) -> Result<(), ManifestError> {
        let invalid = |key: &str, msg: String| self.error(at(key), ManifestErrorKind::Invalid(msg));
        self.bounded(
            at("limits.timeout_ms"),
            limits.timeout_ms,
            1..=MAX_TIMEOUT_MS,
        )?;
        self.bounded(
            at("limits.memory_mib"),
            limits.memory_mib,
            1..=MAX_MEMORY_MIB,
        )?;
        self.bounded(at("limits.output_kib"), limits.output_kib, 1..=16 * 1024)?;
        match limits.fuel {
            Some(0) => Err(invalid("limits.fuel", "must be greater than 0".to_owned())),
            Some(_) if !runtime.fuel_metering => Err(invalid(
                "limits.fuel",
                "a fuel limit needs fuel metering, which [runtime] fuel_metering = false turns off"
                    .to_owned(),
            )),
            _ => Ok(()),
        }
    }
}
