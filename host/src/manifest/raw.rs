//! The manifest as written: serde shapes read before validation.

use std::path::PathBuf;

use serde::Deserialize;

use super::{
    AdminSettings, AnswerBankSpec, CallbackSettings, Fallthrough, Limits, ModelsSpec, OnError,
    RecordSpec, ReloadSettings, RetentionSettings, ReuseSpec, RolloutMode, RuntimeSettings,
    ServerSettings, SharedSettings, SloSpec, StageKind, StoreSettings, TelemetrySettings,
};

/// `[async]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAsync {
    #[serde(default = "default_async_queue")]
    pub(super) queue: u32,
    #[serde(default)]
    pub(super) workers: Option<u32>,
    #[serde(default = "default_async_max_runs")]
    pub(super) max_runs: u32,
    #[serde(default = "default_async_lease_ms")]
    pub(super) lease_ms: u64,
}

impl Default for RawAsync {
    fn default() -> Self {
        RawAsync {
            queue: default_async_queue(),
            workers: None,
            max_runs: default_async_max_runs(),
            lease_ms: default_async_lease_ms(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWasi {
    #[serde(default)]
    pub(super) dirs: Vec<RawDir>,
    #[serde(default)]
    pub(super) allow: Vec<String>,
    #[serde(default)]
    pub(super) http: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDir {
    pub(super) host: PathBuf,
    pub(super) guest: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawManifest {
    pub(super) listen: Option<String>,
    pub(super) data_dir: Option<PathBuf>,
    #[serde(default)]
    pub(super) server: ServerSettings,
    #[serde(default)]
    pub(super) runtime: RuntimeSettings,
    #[serde(default)]
    pub(super) admin: AdminSettings,
    #[serde(default)]
    pub(super) reload: ReloadSettings,
    #[serde(default)]
    pub(super) models: ModelsSpec,
    #[serde(default, rename = "async")]
    pub(super) background: RawAsync,
    #[serde(default)]
    pub(super) callbacks: CallbackSettings,
    #[serde(default)]
    pub(super) retention: RetentionSettings,
    #[serde(default)]
    pub(super) telemetry: TelemetrySettings,
    #[serde(default)]
    pub(super) shared: SharedSettings,
    #[serde(default)]
    pub(super) store: StoreSettings,
    #[serde(default)]
    pub(super) pipelines: toml::Table,
    #[serde(default)]
    pub(super) teams: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    #[serde(default)]
    pub(super) min_confidence: Option<f64>,
    #[serde(default)]
    pub(super) fallthrough: Option<Fallthrough>,
    #[serde(default)]
    pub(super) slo: Option<SloSpec>,
    #[serde(default)]
    pub(super) answer_bank: Option<AnswerBankSpec>,
    #[serde(default)]
    pub(super) record: Option<RecordSpec>,
    #[serde(default)]
    pub(super) cases: Option<PathBuf>,
    #[serde(default)]
    pub(super) stages: Vec<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStage {
    pub(super) name: String,
    pub(super) plugin: PathBuf,
    pub(super) layer: String,
    #[serde(default)]
    pub(super) sha256: Option<String>,
    #[serde(default)]
    pub(super) grants: Vec<String>,
    #[serde(default)]
    pub(super) limits: Option<Limits>,
    #[serde(default)]
    pub(super) on_error: Option<OnError>,
    #[serde(default)]
    pub(super) config: Option<toml::Table>,
    #[serde(default)]
    pub(super) candidate: Option<RawCandidate>,
    #[serde(default)]
    pub(super) cases: Option<PathBuf>,
    #[serde(default)]
    pub(super) deterministic: Option<bool>,
    #[serde(default)]
    pub(super) seed: Option<u64>,
    #[serde(default)]
    pub(super) wasi: Option<RawWasi>,
    #[serde(default)]
    pub(super) reuse: Option<ReuseSpec>,
    #[serde(default)]
    pub(super) kind: Option<StageKind>,
    #[serde(default)]
    pub(super) build: Option<super::build::RawBuild>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCandidate {
    pub(super) plugin: PathBuf,
    pub(super) mode: RolloutMode,
    #[serde(default)]
    pub(super) sha256: Option<String>,
    #[serde(default)]
    pub(super) grants: Option<Vec<String>>,
    #[serde(default)]
    pub(super) config: Option<toml::Table>,
    #[serde(default)]
    pub(super) percent: Option<f64>,
    #[serde(default)]
    pub(super) max_burn_rate: Option<f64>,
}

pub(super) fn default_async_max_runs() -> u32 {
    3
}

pub(super) fn default_async_lease_ms() -> u64 {
    30_000
}

pub(super) fn default_async_queue() -> u32 {
    1_000
}
