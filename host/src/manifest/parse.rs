//! Reading a manifest: TOML into raw shapes, then into the validated
//! model, one pipeline at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::split_host_port;
use super::{
    AsyncSettings, DEFAULT_LISTEN, Fallthrough, Location, Manifest, ManifestError,
    ManifestErrorKind, Name, PipelineSpec, RawManifest, RawPipeline, RuntimeSettings, key_location,
    one_line,
};

pub(super) struct Parser<'a> {
    pub(super) file: &'a Path,
    pub(super) base: &'a Path,
}

impl Parser<'_> {
    pub(super) fn error(&self, location: Location, kind: ManifestErrorKind) -> ManifestError {
        ManifestError {
            file: self.file.to_owned(),
            location: Box::new(location),
            kind: Box::new(kind),
        }
    }

    /// `text` as a TOML table; a syntax error names its line and column.
    pub(super) fn table(&self, text: &str) -> Result<toml::Table, ManifestError> {
        toml::from_str(text).map_err(|e| {
            let position = match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("line {line}, column {column}: ")
                }
                None => String::new(),
            };
            self.error(
                Location::default(),
                ManifestErrorKind::Syntax(format!(
                    "{position}{}",
                    one_line(e.message().to_owned())
                )),
            )
        })
    }

    pub(super) fn manifest(&self, text: &str) -> Result<Manifest, ManifestError> {
        let table = self.table(text)?;
        let raw: RawManifest = self.typed(Location::default(), table)?;

        let listen = match raw.listen.as_deref() {
            None => DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses"),
            Some(text) => text.parse().map_err(|_| {
                self.error(
                    key_location("listen"),
                    ManifestErrorKind::Invalid(format!(
                        "\"{text}\" is not a socket address such as 127.0.0.1:8080"
                    )),
                )
            })?,
        };
        let data_dir = self
            .base
            .join(raw.data_dir.unwrap_or_else(|| "data".into()));
        self.check_settings(&raw.server, &raw.runtime)?;

        if raw.pipelines.is_empty() {
            return Err(self.error(
                key_location("pipelines"),
                ManifestErrorKind::Invalid("the manifest defines no pipeline".to_owned()),
            ));
        }
        let mut pipelines = BTreeMap::new();
        for (name, value) in raw.pipelines {
            let pipeline = self.pipeline(name, value, &raw.runtime)?;
            pipelines.insert(pipeline.name.clone(), pipeline);
        }
        self.check_idle_instances(&pipelines, raw.runtime.instances)?;
        let teams = self.teams(raw.teams, &pipelines)?;
        if let Some(url) = &raw.telemetry.otlp {
            let valid = url.parse::<http::Uri>().ok().is_some_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
            });
            if !valid {
                return Err(self.error(
                    key_location("telemetry.otlp"),
                    ManifestErrorKind::Invalid(format!(
                        "\"{url}\" is not an http:// or https:// URL such as http://127.0.0.1:4318"
                    )),
                ));
            }
        }
        if !(1..=60_000).contains(&raw.telemetry.export_delay_ms) {
            return Err(self.error(
                key_location("telemetry.export_delay_ms"),
                ManifestErrorKind::Invalid(format!(
                    "{} is outside 1..=60000",
                    raw.telemetry.export_delay_ms
                )),
            ));
        }
        self.check_shared(&raw.shared)?;
        self.check_store(&raw.store)?;
        let background = AsyncSettings::resolve(raw.background, raw.runtime.instances)
            .map_err(|(key, why)| self.error(key_location(key), ManifestErrorKind::Invalid(why)))?;
        if let Some(entry) = raw.callbacks.allow.iter().find(|entry| {
            let host = &entry.host;
            host.is_empty()
                || host.contains(['/', '?', '#', '@'])
                || host.contains(char::is_whitespace)
                || split_host_port(host).is_none()
        }) {
            return Err(self.error(
                key_location("callbacks.allow"),
                ManifestErrorKind::Invalid(format!(
                    "\"{}\" is not a host or host:port (write \"hooks.example.com\" or \
                     \"127.0.0.1:9000\", without a scheme or path)",
                    entry.host
                )),
            ));
        }
        if let Some(entry) = raw
            .callbacks
            .allow
            .iter()
            .find(|entry| entry.secret_env.as_deref().is_some_and(str::is_empty))
        {
            return Err(self.error(
                key_location("callbacks.allow"),
                ManifestErrorKind::Invalid(format!(
                    "the secret_env of \"{}\" is empty; name the environment variable holding \
                     its key",
                    entry.host
                )),
            ));
        }
        if !(1..=256).contains(&raw.callbacks.concurrency) {
            return Err(self.error(
                key_location("callbacks.concurrency"),
                ManifestErrorKind::Invalid(format!(
                    "{} is outside 1..=256",
                    raw.callbacks.concurrency
                )),
            ));
        }
        if !(1..=3_600_000).contains(&raw.callbacks.backoff_ms) {
            return Err(self.error(
                key_location("callbacks.backoff_ms"),
                ManifestErrorKind::Invalid(format!(
                    "{} is outside 1..=3600000",
                    raw.callbacks.backoff_ms
                )),
            ));
        }
        if !(1..=100).contains(&raw.callbacks.max_attempts) {
            return Err(self.error(
                key_location("callbacks.max_attempts"),
                ManifestErrorKind::Invalid(format!(
                    "{} is outside 1..=100",
                    raw.callbacks.max_attempts
                )),
            ));
        }
        for (key, days) in [
            ("retention.requests_days", raw.retention.requests_days),
            ("retention.deliveries_days", raw.retention.deliveries_days),
            ("retention.shadow_runs_days", raw.retention.shadow_runs_days),
            ("retention.audit_days", raw.retention.audit_days),
        ] {
            if days > 36_500 {
                return Err(self.error(
                    key_location(key),
                    ManifestErrorKind::Invalid(format!(
                        "{days} is outside 0..=36500 (0 keeps records forever)"
                    )),
                ));
            }
        }
        if raw.reload.debounce_ms > 60_000 {
            return Err(self.error(
                key_location("reload.debounce_ms"),
                ManifestErrorKind::Invalid(format!(
                    "{} is outside 0..=60000",
                    raw.reload.debounce_ms
                )),
            ));
        }
        self.check_models(&raw.models)?;
        self.check_embeddings(&raw.models, &pipelines)?;
        Ok(Manifest {
            path: self.file.to_owned(),
            listen,
            data_dir,
            server: raw.server,
            runtime: raw.runtime,
            admin: raw.admin,
            reload: raw.reload,
            models: raw.models,
            background,
            callbacks: raw.callbacks,
            retention: raw.retention,
            pipelines,
            telemetry: raw.telemetry,
            shared: raw.shared,
            store: raw.store,
            teams,
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
        })
    }

    pub(super) fn pipeline(
        &self,
        name: String,
        value: toml::Value,
        runtime: &RuntimeSettings,
    ) -> Result<PipelineSpec, ManifestError> {
        let here = Location {
            pipeline: Some(name.clone()),
            ..Location::default()
        };
        let name = Name::parse(&name)
            .map_err(|msg| self.error(here.clone(), ManifestErrorKind::Invalid(msg)))?;
        let toml::Value::Table(table) = value else {
            return Err(self.error(
                here,
                ManifestErrorKind::Schema(format!(
                    "expected a table [pipelines.{name}], found a {}",
                    value.type_str()
                )),
            ));
        };
        let raw: RawPipeline = self.typed(here.clone(), table)?;

        let min_confidence = raw.min_confidence.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_confidence) {
            return Err(self.error(
                Location {
                    key: Some("min_confidence".to_owned()),
                    ..here
                },
                ManifestErrorKind::Invalid(format!("{min_confidence} is outside 0..=1")),
            ));
        }
        if raw.stages.is_empty() {
            return Err(self.error(
                Location {
                    key: Some("stages".to_owned()),
                    ..here
                },
                ManifestErrorKind::Invalid("the pipeline has no stages".to_owned()),
            ));
        }

        let mut seen = BTreeSet::new();
        let mut stages = Vec::with_capacity(raw.stages.len());
        for (index, table) in raw.stages.into_iter().enumerate() {
            let stage = self.stage(&name, index, table, runtime)?;
            if !seen.insert(stage.name.clone()) {
                return Err(self.error(
                    Location {
                        stage: Some(stage.name.to_string()),
                        key: Some("name".to_owned()),
                        ..here
                    },
                    ManifestErrorKind::Duplicate(stage.name.into()),
                ));
            }
            stages.push(stage);
        }
        let slo = raw.slo.unwrap_or_default();
        self.check_slo(&slo, &here)?;
        let answer_bank = raw.answer_bank.unwrap_or_default();
        if answer_bank.capacity == 0 || answer_bank.ttl_s == 0 {
            return Err(self.error(
                Location {
                    key: Some("answer_bank".to_owned()),
                    ..here
                },
                ManifestErrorKind::Invalid("capacity and ttl_s must be greater than 0".to_owned()),
            ));
        }
        if !(0.001..=0.5).contains(&answer_bank.max_error) {
            return Err(self.error(
                Location {
                    key: Some("answer_bank.max_error".to_owned()),
                    ..here.clone()
                },
                ManifestErrorKind::Invalid(format!(
                    "{} is outside 0.001..=0.5 (0.05: at most 5 % of trusted answers wrong)",
                    answer_bank.max_error
                )),
            ));
        }
        if let Some(record) = &raw.record {
            let at = |key: &str| Location {
                key: Some(format!("record.{key}")),
                ..here.clone()
            };
            if !stages.iter().any(|s| s.name == record.after) {
                return Err(self.error(
                    at("after"),
                    ManifestErrorKind::Invalid(format!(
                        "the pipeline has no stage \"{}\"",
                        record.after
                    )),
                ));
            }
            if !(1..=4096).contains(&record.max_mib) || record.keep > 100 {
                return Err(self.error(
                    at("max_mib"),
                    ManifestErrorKind::Invalid(
                        "max_mib must be in 1..=4096 and keep at most 100".to_owned(),
                    ),
                ));
            }
        }
        let cases = self.cases_file(
            raw.cases,
            Location {
                key: Some("cases".to_owned()),
                ..here
            },
        )?;
        Ok(PipelineSpec {
            name,
            min_confidence,
            fallthrough: raw.fallthrough.unwrap_or(Fallthrough::Escalate),
            slo,
            answer_bank,
            record: raw.record,
            cases,
            stages,
        })
    }

    pub(super) fn json_table(
        &self,
        table: Option<toml::Table>,
        at: &Location,
    ) -> Result<serde_json::Map<String, serde_json::Value>, ManifestError> {
        match table.map(serde_json::to_value) {
            None => Ok(serde_json::Map::new()),
            Some(Ok(serde_json::Value::Object(map))) => Ok(map),
            Some(Ok(_)) => unreachable!("a TOML table converts to a JSON object"),
            Some(Err(e)) => Err(self.error(
                at.clone(),
                ManifestErrorKind::Invalid(format!("cannot be represented as JSON: {e}")),
            )),
        }
    }

    /// A golden-cases file named at `location`, resolved against the
    /// manifest's directory; it must exist.
    pub(super) fn cases_file(
        &self,
        path: Option<PathBuf>,
        location: Location,
    ) -> Result<Option<PathBuf>, ManifestError> {
        let Some(path) = path else {
            return Ok(None);
        };
        let resolved = self.base.join(&path);
        if !resolved.is_file() {
            return Err(self.error(
                location,
                ManifestErrorKind::Invalid(format!("no cases file at {}", resolved.display())),
            ));
        }
        Ok(Some(std::fs::canonicalize(&resolved).unwrap_or(resolved)))
    }

    /// `table` as a `T`. A value of the wrong type or shape is an error
    /// located at its full key path below `location` (`limits.timeout_ms`,
    /// `intents[2].name`), not only at the table.
    pub(super) fn typed<T: serde::de::DeserializeOwned>(
        &self,
        location: Location,
        table: toml::Table,
    ) -> Result<T, ManifestError> {
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|error| {
            let path = error.path().to_string();
            let key = match (location.key.as_deref(), path.as_str()) {
                (_, "" | ".") => location.key.clone(),
                (Some(parent), path) => Some(format!("{parent}.{path}")),
                (None, path) => Some(path.to_owned()),
            };
            let message = plain_type_error(&one_line(error.inner().message().to_owned()));
            self.error(
                Location { key, ..location },
                ManifestErrorKind::Schema(message),
            )
        })
    }
}

/// serde's "invalid type: string \"fast\", expected u64" as a person would
/// say it: "expected an integer, found \"fast\"". Other messages are kept.
pub(super) fn plain_type_error(message: &str) -> String {
    let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    else {
        return message.to_owned();
    };
    let expected = match expected {
        "u8" | "u16" | "u32" | "u64" | "i8" | "i16" | "i32" | "i64" | "usize" => "an integer",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        "a string" | "a borrowed string" => "a string",
        other => other,
    };
    let found = match found.split_once(' ') {
        Some(("string", text)) => text.to_owned(),
        Some(("integer", number) | ("floating", number)) => {
            number.trim_start_matches("point ").to_owned()
        }
        _ => match found {
            "sequence" => "an array".to_owned(),
            "map" => "a table".to_owned(),
            other => other.to_owned(),
        },
    };
    format!("expected {expected}, found {found}")
}
