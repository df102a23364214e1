//! The manifest: parse a TOML file into typed settings and validate it.
//!
//! Parsing and validation happen here and nowhere else, and this module never
//! touches wasmtime: it reads the TOML, checks names, ranges and
//! cross-references, reads every plugin file and checks its `sha256` pin.
//! Compiling and linking the plugins (and the checks that need a compiled
//! component, such as imports against grants) happen in [`crate::runtime`].
//!
//! Parsing is done in two steps so that every error can name the pipeline and
//! the stage it is about: the file is first read as a generic TOML table, then
//! each level (top, pipeline, stage) is deserialized on its own with
//! `deny_unknown_fields`, and its errors are wrapped with that level's names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Default wall-clock limit of one stage invocation.
pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;
/// Default linear-memory cap of one stage instance.
pub const DEFAULT_MEMORY_MIB: u32 = 64;
/// Default cap on the bytes a stage may return in one outcome.
pub const DEFAULT_OUTPUT_KIB: u32 = 64;
/// The largest memory cap a stage may ask for; the instance pool reserves
/// address space for this much per slot.
pub const MAX_MEMORY_MIB: u32 = 1_024;
/// The longest timeout a stage may ask for.
pub const MAX_TIMEOUT_MS: u64 = 300_000;
/// Default cap on a request body.
pub const DEFAULT_MAX_BODY_KIB: u32 = 64;
/// Default number of stage instances that may run at once.
pub const DEFAULT_INSTANCES: u32 = 256;

/// A validated manifest. Every plugin it names has been read and its digest
/// computed; the bytes here are exactly the bytes that will be compiled.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest file, as given.
    pub path: PathBuf,
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// Where durable state lives (resolved against the manifest's directory).
    pub data_dir: PathBuf,
    /// HTTP server settings.
    pub server: ServerSettings,
    /// Settings of the WebAssembly engine, fixed for the life of the process.
    pub runtime: RuntimeSettings,
    /// The admin API.
    pub admin: AdminSettings,
    /// Live reloading.
    pub reload: ReloadSettings,
    /// Model providers and tiers.
    pub models: ModelsSpec,
    /// Asynchronous requests (`[async]`).
    pub background: AsyncSettings,
    /// Completion callbacks (`[callbacks]`).
    pub callbacks: CallbackSettings,
    /// How long durable records are kept (`[retention]`).
    pub retention: RetentionSettings,
    /// The pipelines, by name.
    pub pipelines: BTreeMap<String, PipelineSpec>,
    /// Hex SHA-256 of the manifest text.
    pub sha256: String,
}

/// The admin API (`[admin]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Where the admin API listens; `--admin-listen` overrides. Without an
    /// admin token (`STRATA_ADMIN_TOKEN`) it must be a loopback address.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

/// Live reloading (`[reload]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadSettings {
    /// Reload when the manifest or a plugin it names changes on disk.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// How long files must stay unchanged before a watched change is loaded,
    /// so that a file still being written is not read half-way.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        Self {
            watch: true,
            debounce_ms: default_debounce_ms(),
        }
    }
}

/// HTTP server settings (`[server]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// The largest request body accepted, in KiB.
    #[serde(default = "default_max_body_kib")]
    pub max_body_kib: u32,
    /// How long a client may take to send its request headers; a slower one
    /// is disconnected.
    #[serde(default = "default_client_timeout_ms")]
    pub header_timeout_ms: u64,
    /// How long a client may take to send its request body; a slower one
    /// gets a 408.
    #[serde(default = "default_client_timeout_ms")]
    pub body_timeout_ms: u64,
    /// How many requests the API and the admin API each handle at once;
    /// more are refused at once with 503 `overloaded` rather than queued.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_body_kib: DEFAULT_MAX_BODY_KIB,
            header_timeout_ms: default_client_timeout_ms(),
            body_timeout_ms: default_client_timeout_ms(),
            max_in_flight: default_max_in_flight(),
        }
    }
}

/// Engine settings (`[runtime]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// How many stage instances may exist at once. Requests beyond this wait
    /// for a slot, up to `slot_wait_ms`.
    #[serde(default = "default_instances")]
    pub instances: u32,
    /// How long a real-time request waits for a free instance slot before
    /// it is refused with 503 `overloaded` (asynchronous requests wait as
    /// long as it takes).
    #[serde(default = "default_slot_wait_ms")]
    pub slot_wait_ms: u64,
    /// Whether the engine meters fuel. Needed for any stage `fuel` limit;
    /// costs some throughput on compute-heavy stages.
    #[serde(default = "default_true")]
    pub fuel_metering: bool,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            instances: DEFAULT_INSTANCES,
            slot_wait_ms: default_slot_wait_ms(),
            fuel_metering: true,
        }
    }
}

fn default_slot_wait_ms() -> u64 {
    1000
}

/// One pipeline: stages run in order, cheapest layer first.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// The pipeline's name, as used in `POST /v1/pipelines/{name}`.
    pub name: String,
    /// Answers with a lower confidence are escalated with the answer as draft.
    pub min_confidence: f64,
    /// What happens when every stage passed the request on.
    pub fallthrough: Fallthrough,
    /// The service-level objective its error budget is measured against.
    pub slo: SloSpec,
    /// Its answer bank.
    pub answer_bank: AnswerBankSpec,
    /// Traffic recording, when turned on.
    pub record: Option<RecordSpec>,
    /// Golden cases of the whole pipeline (run by `strata test`).
    pub cases: Option<PathBuf>,
    /// The stages, in the order requests go through them.
    pub stages: Vec<StageSpec>,
}

/// Traffic recording (`[pipelines.NAME.record]`): requests as they leave
/// stage `after` (so redaction has run), with how the pipeline decided them,
/// for `strata replay`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSpec {
    /// The stage after which requests are recorded.
    pub after: String,
    /// The size of one log file, in MiB, before it is rotated.
    #[serde(default = "default_record_mib")]
    pub max_mib: u64,
    /// How many rotated files are kept besides the current one.
    #[serde(default = "default_record_files")]
    pub keep: u32,
}

/// A pipeline's answer bank (`[pipelines.NAME.answer_bank]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerBankSpec {
    /// How many unapproved answers are kept in memory; the least used go
    /// first. Approved answers are kept regardless.
    #[serde(default = "default_bank_capacity")]
    pub capacity: u64,
    /// How long an unapproved answer is kept, in seconds, unless the stage
    /// that stores it says otherwise.
    #[serde(default = "default_bank_ttl_s")]
    pub ttl_s: u64,
    /// The layers whose final answers are stored under the key a stage named
    /// with `remember-as` (human answers are always stored, as approved).
    #[serde(default)]
    pub remember: Vec<String>,
    /// The error budget of answers the bank gives by similarity (`lookup`):
    /// thresholds are calibrated on the approved examples so that at most
    /// this share of trusted matches is expected to be wrong.
    #[serde(default = "default_max_error")]
    pub max_error: f64,
    /// The embeddings model (`[models.embeddings.NAME]`) whose vectors join
    /// the lexical features; without one the bank is lexical only.
    #[serde(default)]
    pub embeddings: Option<String>,
}

fn default_max_error() -> f64 {
    0.05
}

impl Default for AnswerBankSpec {
    fn default() -> Self {
        Self {
            capacity: default_bank_capacity(),
            ttl_s: default_bank_ttl_s(),
            remember: Vec::new(),
            max_error: default_max_error(),
            embeddings: None,
        }
    }
}

/// Asynchronous requests (`[async]`): accepted at once, run in the
/// background from a durable, bounded queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncSettings {
    /// Accepted requests waiting or running at most; beyond, 429.
    pub queue: u32,
    /// Requests run at once in the background. A worker waiting for a model
    /// holds its stage's instance, so workers are at most half of
    /// `[runtime] instances`: real-time requests always find one free.
    /// Batches fill only up to the number of workers.
    pub workers: u32,
    /// Starts after which a request that never completes (the host stops
    /// while it runs, each time) is dead rather than run again.
    pub max_runs: u32,
}

impl Default for AsyncSettings {
    fn default() -> Self {
        Self::resolve(RawAsync::default(), DEFAULT_INSTANCES)
            .expect("the default settings are valid")
    }
}

impl AsyncSettings {
    /// The settings as written, checked against the instance pool; an
    /// unset `workers` is 16, or half the pool if that is smaller. An error
    /// names the key at fault and why.
    fn resolve(raw: RawAsync, instances: u32) -> Result<AsyncSettings, (&'static str, String)> {
        let most = (instances / 2).max(1);
        let workers = raw.workers.unwrap_or(most.min(16));
        if !(1..=1_000_000).contains(&raw.queue) {
            return Err((
                "async.queue",
                format!("{} is outside 1..=1000000", raw.queue),
            ));
        }
        if workers == 0 || workers > most {
            return Err((
                "async.workers",
                format!(
                    "{workers} is outside 1..={most}: at most half of [runtime] instances \
                     ({instances}) may run in the background, so that real-time requests always \
                     find a free instance"
                ),
            ));
        }
        if !(1..=100).contains(&raw.max_runs) {
            return Err((
                "async.max_runs",
                format!("{} is outside 1..=100", raw.max_runs),
            ));
        }
        Ok(AsyncSettings {
            queue: raw.queue,
            workers,
            max_runs: raw.max_runs,
        })
    }
}

/// `[async]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAsync {
    #[serde(default = "default_async_queue")]
    queue: u32,
    #[serde(default)]
    workers: Option<u32>,
    #[serde(default = "default_async_max_runs")]
    max_runs: u32,
}

fn default_async_max_runs() -> u32 {
    3
}

impl Default for RawAsync {
    fn default() -> Self {
        RawAsync {
            queue: default_async_queue(),
            workers: None,
            max_runs: default_async_max_runs(),
        }
    }
}

/// Completion callbacks (`[callbacks]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackSettings {
    /// Receivers a callback may go to: `"host"`, `"host:port"`, or
    /// `{ host = "...", secret_env = "..." }` to sign that receiver's
    /// deliveries with its own key. Anything else is refused when the request
    /// is submitted.
    #[serde(default)]
    pub allow: Vec<CallbackReceiver>,
    /// The environment variable holding the HMAC key deliveries are signed
    /// with (unless their receiver names its own).
    #[serde(default = "default_callback_secret_env")]
    pub secret_env: String,
    /// Delivery attempts before giving up.
    #[serde(default = "default_callback_attempts")]
    pub max_attempts: u32,
    /// The first wait between attempts; it doubles each time.
    #[serde(default = "default_callback_backoff_ms")]
    pub backoff_ms: u64,
    /// How many deliveries may be under way at once.
    #[serde(default = "default_callback_concurrency")]
    pub concurrency: u32,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            secret_env: default_callback_secret_env(),
            max_attempts: default_callback_attempts(),
            backoff_ms: default_callback_backoff_ms(),
            concurrency: default_callback_concurrency(),
        }
    }
}

/// One entry of `[callbacks] allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackReceiver {
    /// `host` or `host:port` (an IPv6 address in brackets: `[::1]:9000`).
    pub host: String,
    /// The environment variable holding this receiver's signing key, if it
    /// has its own.
    pub secret_env: Option<String>,
}

impl CallbackReceiver {
    /// A receiver signed with the shared key.
    pub fn new(host: impl Into<String>) -> CallbackReceiver {
        CallbackReceiver {
            host: host.into(),
            secret_env: None,
        }
    }
}

/// A plain string (the form that came first) or a table.
impl<'de> Deserialize<'de> for CallbackReceiver {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            host: String,
            #[serde(default)]
            secret_env: Option<String>,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CallbackReceiver;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a host (\"hooks.example.com\", \"127.0.0.1:9000\") or a table \
                     { host = \"...\", secret_env = \"...\" }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, host: &str) -> Result<Self::Value, E> {
                Ok(CallbackReceiver::new(host))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let table = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(CallbackReceiver {
                    host: table.host,
                    secret_env: table.secret_env,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Written as it was given: a string, or a table when it has its own key.
impl serde::Serialize for CallbackReceiver {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        match &self.secret_env {
            None => serializer.serialize_str(&self.host),
            Some(secret_env) => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("host", &self.host)?;
                map.serialize_entry("secret_env", secret_env)?;
                map.end()
            }
        }
    }
}

/// How long durable records are kept (`[retention]`), in days; 0 keeps
/// them forever. Open tickets and their requests, unfinished asynchronous
/// requests, pending callbacks, approved answers and the feedback dataset
/// are never removed by age.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Finished request records, with their resolved tickets, finished
    /// jobs and settled callbacks.
    #[serde(default = "default_requests_days")]
    pub requests_days: u32,
    /// Callback delivery attempts.
    #[serde(default = "default_requests_days")]
    pub deliveries_days: u32,
    /// Shadow comparisons.
    #[serde(default = "default_shadow_days")]
    pub shadow_runs_days: u32,
    /// The audit log of reloads, rollbacks and promotions.
    #[serde(default = "default_audit_days")]
    pub audit_days: u32,
}

fn default_requests_days() -> u32 {
    30
}

fn default_shadow_days() -> u32 {
    7
}

fn default_audit_days() -> u32 {
    365
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            requests_days: default_requests_days(),
            deliveries_days: default_requests_days(),
            shadow_runs_days: default_shadow_days(),
            audit_days: default_audit_days(),
        }
    }
}

/// Model providers and tiers (`[models]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsSpec {
    /// Providers, by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSpec>,
    /// Tiers, by name: what a stage asks for.
    #[serde(default)]
    pub tiers: BTreeMap<String, TierSpec>,
    /// Embeddings models, by name: what an answer bank names.
    #[serde(default)]
    pub embeddings: BTreeMap<String, EmbeddingsSpec>,
}

/// An embeddings model (`[models.embeddings.NAME]`), served by a provider's
/// OpenAI-compatible `POST {base_url}/embeddings`. A lookup makes one
/// attempt within `timeout_ms` and falls back to the lexical model; fitting
/// retries and, failing, fits lexically and tries again later.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsSpec {
    /// The provider serving it.
    pub provider: String,
    /// The provider's model name; stored vectors are kept per model name,
    /// so naming another model embeds every example again.
    pub model: String,
    /// Per-attempt timeout.
    #[serde(default = "default_embeddings_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts after the first when embedding examples (not lookups).
    #[serde(default = "default_tier_retries")]
    pub retries: u32,
    /// The first back-off between those attempts; it doubles.
    #[serde(default = "default_tier_backoff_ms")]
    pub backoff_ms: u64,
    /// Examples per request when embedding many.
    #[serde(default = "default_embeddings_batch")]
    pub batch: u32,
}

fn default_embeddings_timeout_ms() -> u64 {
    1_000
}
fn default_embeddings_batch() -> u32 {
    64
}

/// A model provider. Only the OpenAI-compatible protocol is spoken
/// (OpenAI, vLLM, Ollama, llama.cpp's server, ...): chat completions, and
/// completions for batches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// The API root, e.g. `https://api.openai.com/v1`; requests go to
    /// `{base_url}/chat/completions` (batches to `{base_url}/completions`).
    pub base_url: String,
    /// The environment variable holding the API key, if the provider needs
    /// one. The key is read by the host and never reaches a stage.
    #[serde(default)]
    pub api_key_env: Option<String>,
}

/// A model tier.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    /// The provider serving it.
    pub provider: String,
    /// The provider's model name.
    pub model: String,
    /// Per-attempt timeout.
    #[serde(default = "default_tier_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts after the first, on errors, timeouts and 429s.
    #[serde(default = "default_tier_retries")]
    pub retries: u32,
    /// The first back-off; it doubles per attempt (a 429's `Retry-After`
    /// wins when given).
    #[serde(default = "default_tier_backoff_ms")]
    pub backoff_ms: u64,
    /// The tier to try when this one gives up.
    #[serde(default)]
    pub fallback: Option<String>,
    /// Price of a million prompt tokens, in US dollars.
    #[serde(default)]
    pub input_usd_per_mtok: f64,
    /// Price of a million answer tokens, in US dollars.
    #[serde(default)]
    pub output_usd_per_mtok: f64,
    /// Batch the calls of asynchronous requests to this tier.
    #[serde(default)]
    pub batch: Option<BatchSpec>,
}

/// Batching of a tier's calls from asynchronous requests: up to `max_size`
/// prompts, gathered for at most `max_wait_ms`, go to the provider in one
/// `POST {base_url}/completions` with a list of prompts. Real-time requests
/// are never batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Prompts per provider call.
    pub max_size: u32,
    /// How long the first prompt of a batch waits for company.
    #[serde(default = "default_batch_wait_ms")]
    pub max_wait_ms: u64,
}

/// A pipeline's service-level objective (`[pipelines.NAME.slo]`).
///
/// A request is good if no stage failed on it and it finished within
/// `latency_ms`. The error budget is `1 - target`; a burn rate of 1 spends
/// it exactly over the objective's period.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloSpec {
    /// The share of good requests to aim for, e.g. 0.99.
    #[serde(default = "default_slo_target")]
    pub target: f64,
    /// Requests slower than this count against the objective.
    #[serde(default = "default_slo_latency_ms")]
    pub latency_ms: u64,
    /// Multiwindow burn-rate alerts; the default is the SRE workbook's
    /// 1h/5m at 14.4 and 6h/30m at 6.
    #[serde(default = "default_burn_windows")]
    pub windows: Vec<BurnWindow>,
}

impl Default for SloSpec {
    fn default() -> Self {
        Self {
            target: default_slo_target(),
            latency_ms: default_slo_latency_ms(),
            windows: default_burn_windows(),
        }
    }
}

/// One multiwindow burn-rate alert: it fires when the burn rate over both
/// the long and the short window is at least `burn`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurnWindow {
    /// The long window, in seconds.
    pub long_s: u64,
    /// The short window, in seconds.
    pub short_s: u64,
    /// The burn-rate threshold.
    pub burn: f64,
}

/// One stage of a pipeline.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// The stage's name, unique within its pipeline.
    pub name: String,
    /// The layer it belongs to, for attribution in responses and metrics.
    pub layer: Layer,
    /// The plugin component, read and hashed.
    pub plugin: PluginFile,
    /// Host interfaces this stage may import.
    pub grants: BTreeSet<Grant>,
    /// Resource limits of one invocation.
    pub limits: Limits,
    /// Whether the manifest sets `limits` (rather than leaving the defaults).
    pub limits_set: bool,
    /// What happens when the stage fails (trap, timeout, limit).
    pub on_error: OnError,
    /// The stage's own settings, readable through the `config` interface.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// A new version being rolled out, if any.
    pub candidate: Option<CandidateSpec>,
    /// Golden cases every version of this stage must pass before it serves
    /// (resolved against the manifest's directory).
    pub cases: Option<PathBuf>,
    /// A fixed clock and seeded randomness, so the stage's decisions can be
    /// replayed: `Some(seed)` when the stage is deterministic.
    pub deterministic: Option<u64>,
    /// What granted WASI families may reach.
    pub wasi: WasiSpec,
    /// Instance reuse, when the stage opts in.
    pub reuse: Option<ReuseSpec>,
}

/// What a stage's granted WASI families may reach (`[...stages.wasi]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WasiSpec {
    /// Read-only directories: (host directory, path the guest sees).
    pub dirs: Vec<(PathBuf, String)>,
    /// Addresses the stage may connect to or send to.
    pub allow: Vec<SocketAddr>,
}

/// Instance reuse (`reuse = { max_uses = N, max_idle = M }`): an instance
/// serves up to `max_uses` requests, one at a time, and is discarded after a
/// failure of any kind. Anything the guest keeps in memory (globals, caches,
/// a counter) carries over from one request to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReuseSpec {
    /// Requests one instance serves before it is discarded.
    pub max_uses: u32,
    /// Idle instances kept ready; each holds a slot of the instance pool.
    #[serde(default = "default_max_idle")]
    pub max_idle: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWasi {
    #[serde(default)]
    dirs: Vec<RawDir>,
    #[serde(default)]
    allow: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDir {
    host: PathBuf,
    guest: String,
}

/// A candidate version of a stage (`[pipelines.P.stages.candidate]`): it
/// runs with the live stage's layer, limits and `on_error`, and by default
/// its grants and config.
#[derive(Debug, Clone)]
pub struct CandidateSpec {
    /// The candidate component.
    pub plugin: PluginFile,
    /// Its grants.
    pub grants: BTreeSet<Grant>,
    /// Its config table.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// How it is rolled out.
    pub mode: RolloutMode,
    /// Canary: the share of requests it serves. Shadow: the share of
    /// requests it is run on. Percent, 0 to 100.
    pub percent: f64,
    /// Canary: roll back automatically when its failures burn the
    /// pipeline's error budget at least this fast over both windows of an
    /// alert.
    pub max_burn_rate: f64,
}

/// How a candidate is rolled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutMode {
    /// It answers a share of requests, chosen by a hash of the request id.
    Canary,
    /// It runs on a copy of requests; its outcome is recorded and compared
    /// with the live stage's, never returned.
    Shadow,
}

impl RolloutMode {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutMode::Canary => "canary",
            RolloutMode::Shadow => "shadow",
        }
    }
}

/// A plugin file as read from disk.
#[derive(Clone)]
pub struct PluginFile {
    /// The path, resolved against the manifest's directory.
    pub path: PathBuf,
    /// The file's bytes; the runtime compiles exactly these.
    pub bytes: Arc<[u8]>,
    /// Hex SHA-256 of `bytes`.
    pub sha256: String,
    /// Whether the manifest pins this digest.
    pub pinned: bool,
}

impl fmt::Debug for PluginFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginFile")
            .field("path", &self.path)
            .field("len", &self.bytes.len())
            .field("sha256", &self.sha256)
            .field("pinned", &self.pinned)
            .finish()
    }
}

impl PluginFile {
    /// The digest in the form responses and logs use: `sha256:<hex>`.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.sha256)
    }
}

/// Per-invocation limits of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock limit, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Linear-memory cap, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Optional fuel budget (roughly, WebAssembly instructions).
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Cap on the bytes of one outcome (texts and attributes), in KiB.
    #[serde(default = "default_output_kib")]
    pub output_kib: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout_ms: DEFAULT_TIMEOUT_MS,
            memory_mib: DEFAULT_MEMORY_MIB,
            fuel: None,
            output_kib: DEFAULT_OUTPUT_KIB,
        }
    }
}

/// A host capability a stage may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grant {
    /// `strata:pipeline/log`: write to the host log.
    Log,
    /// `strata:pipeline/config`: read the stage's own config table.
    Config,
    /// `strata:pipeline/cache`: the pipeline's answer bank.
    Cache,
    /// `strata:pipeline/model`: completions from the manifest's model tiers.
    Model,
    /// `wasi:filesystem`: linked, but with no directory unless the stage's
    /// `wasi.dirs` names one (read-only).
    WasiFilesystem,
    /// `wasi:sockets`: linked, but every address refused unless the stage's
    /// `wasi.allow` lists it.
    WasiSockets,
}

impl Grant {
    /// Every grant, in the order they are documented.
    pub const ALL: [Grant; 6] = [
        Grant::Log,
        Grant::Config,
        Grant::Cache,
        Grant::Model,
        Grant::WasiFilesystem,
        Grant::WasiSockets,
    ];

    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Log => "log",
            Grant::Config => "config",
            Grant::Cache => "cache",
            Grant::Model => "model",
            Grant::WasiFilesystem => "wasi:filesystem",
            Grant::WasiSockets => "wasi:sockets",
        }
    }

    fn parse(name: &str) -> Option<Grant> {
        Grant::ALL.into_iter().find(|g| g.as_str() == name)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a stage failure does to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Continue with the next stage, the request unchanged.
    Skip,
    /// Stop and hand the request to a human.
    Escalate,
    /// Stop and return a typed error to the client.
    Fail,
}

impl OnError {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Skip => "skip",
            OnError::Escalate => "escalate",
            OnError::Fail => "fail",
        }
    }
}

/// What a pipeline does when no stage answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallthrough {
    /// Open a ticket for a human reviewer.
    Escalate,
    /// Refuse the request (the client gets a 422).
    Reject,
}

impl Fallthrough {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallthrough::Escalate => "escalate",
            Fallthrough::Reject => "reject",
        }
    }
}

/// The layer a stage belongs to: one of the four standard layers or an
/// operator-chosen name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Layer(String);

impl Layer {
    /// The layers of the standard pipeline, cheapest first.
    pub const STANDARD: [&'static str; 4] = ["rules", "cache", "generation", "human"];

    /// The layer's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where in the manifest an error is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// The pipeline, if the error is inside one.
    pub pipeline: Option<String>,
    /// The stage, if the error is inside one.
    pub stage: Option<String>,
    /// The key at fault, if one is.
    pub key: Option<String>,
}

/// A manifest that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}{kind}", file.display(), LocationPrefix(location))]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// Where in it.
    pub location: Box<Location>,
    /// What is wrong.
    pub kind: Box<ManifestErrorKind>,
}

struct LocationPrefix<'a>(&'a Location);

impl fmt::Display for LocationPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Location {
            pipeline,
            stage,
            key,
        } = self.0;
        let mut parts = Vec::new();
        if let Some(p) = pipeline {
            parts.push(format!("pipeline \"{p}\""));
        }
        if let Some(s) = stage {
            parts.push(format!("stage \"{s}\""));
        }
        if let Some(k) = key {
            parts.push(format!("key \"{k}\""));
        }
        if parts.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", parts.join(", "))
        }
    }
}

/// The ways a manifest can be wrong.
#[derive(Debug, thiserror::Error)]
pub enum ManifestErrorKind {
    /// The file could not be read.
    #[error("cannot read the manifest: {0}")]
    Unreadable(#[source] std::io::Error),
    /// The file is not valid TOML (this includes a key given twice).
    #[error("invalid TOML: {0}")]
    Syntax(String),
    /// A key has the wrong type, or is unknown, or a required key is missing.
    #[error("{0}")]
    Schema(String),
    /// A value is outside what the key accepts.
    #[error("{0}")]
    Invalid(String),
    /// Two pipelines or two stages of a pipeline share a name.
    #[error("duplicate name \"{0}\"")]
    Duplicate(String),
    /// A plugin file does not exist or cannot be read.
    #[error("cannot read plugin {}: {source}", path.display())]
    MissingPlugin {
        /// The resolved path.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A plugin's bytes do not match the manifest's pin.
    #[error("digest mismatch for {}: the manifest pins sha256 {expected}, the file has {actual}", path.display())]
    DigestMismatch {
        /// The resolved path.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// A plugin is not a component the engine accepts.
    #[error("{} is not a valid component: {reason}", path.display())]
    InvalidComponent {
        /// The resolved path.
        path: PathBuf,
        /// The engine's reason.
        reason: String,
    },
    /// A plugin does not export the stage interface.
    #[error("{} does not export {expected}{}", path.display(), describe_exports(found))]
    MissingExport {
        /// The resolved path.
        path: PathBuf,
        /// The interface a stage must export.
        expected: &'static str,
        /// What it exports instead.
        found: Vec<String>,
    },
    /// A plugin imports interfaces its stage is not granted.
    #[error("{} imports what the stage is not granted: {}", path.display(), describe_ungranted(imports))]
    UngrantedImports {
        /// The resolved path.
        path: PathBuf,
        /// Every import that is not granted, in the component's order.
        imports: Vec<UngrantedImport>,
    },
    /// The component cannot be linked or pre-instantiated.
    #[error("{} cannot be linked: {reason}", path.display())]
    Link {
        /// The resolved path.
        path: PathBuf,
        /// The engine's reason.
        reason: String,
    },
}

fn describe_exports(found: &[String]) -> String {
    if found.is_empty() {
        " (it exports nothing)".to_owned()
    } else {
        format!(" (it exports {})", found.join(", "))
    }
}

fn describe_ungranted(imports: &[UngrantedImport]) -> String {
    imports
        .iter()
        .map(|i| match i.grant {
            Some(grant) => format!("{} (needs grant \"{grant}\")", i.name),
            None => format!("{} (not available to stages)", i.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One import a stage is not granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UngrantedImport {
    /// The import's full name, e.g. `wasi:filesystem/types@0.2.6`.
    pub name: String,
    /// The grant that would allow it, if any grant does.
    pub grant: Option<Grant>,
}

impl Manifest {
    /// Read, parse and validate the manifest at `path`, reading every plugin
    /// it names.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.to_owned(),
            location: Box::default(),
            kind: Box::new(ManifestErrorKind::Unreadable(e)),
        })?;
        Self::parse(path, &text)
    }

    /// Parse and validate manifest `text` as if read from `path`. Relative
    /// paths in it are resolved against `path`'s directory.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        Parser {
            file: path,
            base: path.parent().unwrap_or(Path::new(".")),
        }
        .manifest(text)
    }

    /// The files a change to which should reload this manifest: the manifest
    /// itself and every plugin it names, candidates included.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        // Canonical, like plugin paths, so they match what a file watch
        // reports.
        let manifest = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let mut files = vec![manifest];
        for (_, stage) in self.stages() {
            files.push(stage.plugin.path.clone());
            if let Some(candidate) = &stage.candidate {
                files.push(candidate.plugin.path.clone());
            }
        }
        files.sort();
        files.dedup();
        files
    }

    /// Every stage of every pipeline, with its pipeline's name.
    pub fn stages(&self) -> impl Iterator<Item = (&str, &StageSpec)> {
        self.pipelines
            .values()
            .flat_map(|p| p.stages.iter().map(move |s| (p.name.as_str(), s)))
    }
}

// The raw shapes, as written in TOML. Tables below the level being parsed
// are kept as `toml::Table` so that their errors can be given context.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    server: ServerSettings,
    #[serde(default)]
    runtime: RuntimeSettings,
    #[serde(default)]
    admin: AdminSettings,
    #[serde(default)]
    reload: ReloadSettings,
    #[serde(default)]
    models: ModelsSpec,
    #[serde(default, rename = "async")]
    background: RawAsync,
    #[serde(default)]
    callbacks: CallbackSettings,
    #[serde(default)]
    retention: RetentionSettings,
    #[serde(default)]
    pipelines: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(default)]
    min_confidence: Option<f64>,
    #[serde(default)]
    fallthrough: Option<Fallthrough>,
    #[serde(default)]
    slo: Option<SloSpec>,
    #[serde(default)]
    answer_bank: Option<AnswerBankSpec>,
    #[serde(default)]
    record: Option<RecordSpec>,
    #[serde(default)]
    cases: Option<PathBuf>,
    #[serde(default)]
    stages: Vec<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: String,
    plugin: PathBuf,
    layer: String,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    grants: Vec<String>,
    #[serde(default)]
    limits: Option<Limits>,
    #[serde(default)]
    on_error: Option<OnError>,
    #[serde(default)]
    config: Option<toml::Table>,
    #[serde(default)]
    candidate: Option<RawCandidate>,
    #[serde(default)]
    cases: Option<PathBuf>,
    #[serde(default)]
    deterministic: Option<bool>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    wasi: Option<RawWasi>,
    #[serde(default)]
    reuse: Option<ReuseSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCandidate {
    plugin: PathBuf,
    mode: RolloutMode,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    grants: Option<Vec<String>>,
    #[serde(default)]
    config: Option<toml::Table>,
    #[serde(default)]
    percent: Option<f64>,
    #[serde(default)]
    max_burn_rate: Option<f64>,
}

/// The default listen address when the manifest gives none.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The default admin listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// The default burn rate at which a canary is rolled back.
pub const DEFAULT_MAX_BURN_RATE: f64 = 14.4;
/// The longest burn-rate window, in seconds (a week).
pub const MAX_WINDOW_S: u64 = 7 * 24 * 3_600;

struct Parser<'a> {
    file: &'a Path,
    base: &'a Path,
}

impl Parser<'_> {
    fn error(&self, location: Location, kind: ManifestErrorKind) -> ManifestError {
        ManifestError {
            file: self.file.to_owned(),
            location: Box::new(location),
            kind: Box::new(kind),
        }
    }

    fn manifest(&self, text: &str) -> Result<Manifest, ManifestError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
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
        })?;
        let raw: RawManifest = toml::Value::Table(table)
            .try_into()
            .map_err(|e| self.schema_error(Location::default(), e))?;

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
            let pipeline = self.pipeline(name.clone(), value, &raw.runtime)?;
            pipelines.insert(name, pipeline);
        }
        self.check_idle_instances(&pipelines, raw.runtime.instances)?;
        let background = AsyncSettings::resolve(raw.background, raw.runtime.instances)
            .map_err(|(key, why)| self.error(key_location(key), ManifestErrorKind::Invalid(why)))?;
        if let Some(entry) = raw.callbacks.allow.iter().find(|entry| {
            let host = &entry.host;
            host.is_empty()
                || host.contains(['/', '?', '#', '@'])
                || host.contains(char::is_whitespace)
                || crate::callbacks::split_host_port(host).is_none()
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
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
        })
    }

    fn check_settings(
        &self,
        server: &ServerSettings,
        runtime: &RuntimeSettings,
    ) -> Result<(), ManifestError> {
        if !(1..=16 * 1024).contains(&server.max_body_kib) {
            return Err(self.error(
                key_location("server.max_body_kib"),
                ManifestErrorKind::Invalid(format!("{} is outside 1..=16384", server.max_body_kib)),
            ));
        }
        if !(1..=1_000_000).contains(&server.max_in_flight) {
            return Err(self.error(
                key_location("server.max_in_flight"),
                ManifestErrorKind::Invalid(format!(
                    "{} is outside 1..=1000000",
                    server.max_in_flight
                )),
            ));
        }
        for (key, value) in [
            ("server.header_timeout_ms", server.header_timeout_ms),
            ("server.body_timeout_ms", server.body_timeout_ms),
        ] {
            if !(1..=600_000).contains(&value) {
                return Err(self.error(
                    key_location(key),
                    ManifestErrorKind::Invalid(format!("{value} is outside 1..=600000")),
                ));
            }
        }
        if !(1..=10_000).contains(&runtime.instances) {
            return Err(self.error(
                key_location("runtime.instances"),
                ManifestErrorKind::Invalid(format!("{} is outside 1..=10000", runtime.instances)),
            ));
        }
        if !(1..=600_000).contains(&runtime.slot_wait_ms) {
            return Err(self.error(
                key_location("runtime.slot_wait_ms"),
                ManifestErrorKind::Invalid(format!(
                    "{} is outside 1..=600000",
                    runtime.slot_wait_ms
                )),
            ));
        }
        Ok(())
    }

    /// Idle reused instances each hold a slot of the instance pool; all of
    /// them together may hold at most half of it, so that they never leave
    /// the pool unable to serve.
    fn check_idle_instances(
        &self,
        pipelines: &BTreeMap<String, PipelineSpec>,
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

    fn pipeline(
        &self,
        name: String,
        value: toml::Value,
        runtime: &RuntimeSettings,
    ) -> Result<PipelineSpec, ManifestError> {
        let here = Location {
            pipeline: Some(name.clone()),
            ..Location::default()
        };
        check_name(&name)
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
        let raw: RawPipeline = toml::Value::Table(table)
            .try_into()
            .map_err(|e| self.schema_error(here.clone(), e))?;

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
                        stage: Some(stage.name.clone()),
                        key: Some("name".to_owned()),
                        ..here
                    },
                    ManifestErrorKind::Duplicate(stage.name),
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
        let cases = match raw.cases {
            None => None,
            Some(path) => {
                let resolved = self.base.join(&path);
                if !resolved.is_file() {
                    return Err(self.error(
                        Location {
                            key: Some("cases".to_owned()),
                            ..here
                        },
                        ManifestErrorKind::Invalid(format!(
                            "no cases file at {}",
                            resolved.display()
                        )),
                    ));
                }
                Some(std::fs::canonicalize(&resolved).unwrap_or(resolved))
            }
        };
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

    fn stage(
        &self,
        pipeline: &str,
        index: usize,
        table: toml::Table,
        runtime: &RuntimeSettings,
    ) -> Result<StageSpec, ManifestError> {
        // Until the name is known, the stage is named by its position.
        let stage_label = table
            .get("name")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("#{}", index + 1));
        let here = Location {
            pipeline: Some(pipeline.to_owned()),
            stage: Some(stage_label),
            key: None,
        };
        let at = |key: &str| Location {
            key: Some(key.to_owned()),
            ..here.clone()
        };
        let raw: RawStage = toml::Value::Table(table)
            .try_into()
            .map_err(|e| self.schema_error(here.clone(), e))?;

        check_name(&raw.name).map_err(|m| self.error(at("name"), ManifestErrorKind::Invalid(m)))?;
        check_name(&raw.layer)
            .map_err(|m| self.error(at("layer"), ManifestErrorKind::Invalid(m)))?;

        let grants = self.grants(&raw.grants, &at("grants"))?;

        let limits_set = raw.limits.is_some();
        let limits = raw.limits.unwrap_or_default();
        self.check_limits(&limits, runtime, &at)?;

        let config = self.json_table(raw.config, &at("config"))?;

        let plugin = self.plugin(&raw.plugin, raw.sha256.as_deref(), &at, "")?;
        let candidate = match raw.candidate {
            None => None,
            Some(candidate) => Some(self.candidate(candidate, &grants, &config, &at)?),
        };
        let deterministic = match (raw.deterministic, raw.seed) {
            (Some(true), seed) => Some(seed.unwrap_or(0)),
            (_, Some(_)) => {
                return Err(self.error(
                    at("seed"),
                    ManifestErrorKind::Invalid(
                        "a seed only applies to a stage with deterministic = true".to_owned(),
                    ),
                ));
            }
            _ => None,
        };
        let cases = match raw.cases {
            None => None,
            Some(path) => {
                let resolved = self.base.join(&path);
                if !resolved.is_file() {
                    return Err(self.error(
                        at("cases"),
                        ManifestErrorKind::Invalid(format!(
                            "no cases file at {}",
                            resolved.display()
                        )),
                    ));
                }
                Some(std::fs::canonicalize(&resolved).unwrap_or(resolved))
            }
        };
        let wasi = self.wasi(raw.wasi, &grants, &at)?;
        if let Some(reuse) = &raw.reuse {
            if reuse.max_uses < 1 || reuse.max_idle > 1_000 {
                return Err(self.error(
                    at("reuse"),
                    ManifestErrorKind::Invalid(
                        "max_uses must be at least 1 and max_idle at most 1000".to_owned(),
                    ),
                ));
            }
            if deterministic.is_some() {
                return Err(self.error(
                    at("reuse"),
                    ManifestErrorKind::Invalid(
                        "a deterministic stage cannot reuse instances: state kept between \
                         requests would make its decisions depend on earlier ones"
                            .to_owned(),
                    ),
                ));
            }
        }
        Ok(StageSpec {
            name: raw.name,
            layer: Layer(raw.layer),
            plugin,
            grants,
            limits,
            limits_set,
            on_error: raw.on_error.unwrap_or(OnError::Escalate),
            config,
            candidate,
            cases,
            deterministic,
            wasi,
            reuse: raw.reuse,
        })
    }

    fn wasi(
        &self,
        raw: Option<RawWasi>,
        grants: &BTreeSet<Grant>,
        at: &dyn Fn(&str) -> Location,
    ) -> Result<WasiSpec, ManifestError> {
        let Some(raw) = raw else {
            return Ok(WasiSpec::default());
        };
        let invalid = |key: &str, msg: String| self.error(at(key), ManifestErrorKind::Invalid(msg));
        if !raw.dirs.is_empty() && !grants.contains(&Grant::WasiFilesystem) {
            return Err(invalid(
                "wasi.dirs",
                "directories need the \"wasi:filesystem\" grant".to_owned(),
            ));
        }
        if !raw.allow.is_empty() && !grants.contains(&Grant::WasiSockets) {
            return Err(invalid(
                "wasi.allow",
                "addresses need the \"wasi:sockets\" grant".to_owned(),
            ));
        }
        let mut dirs = Vec::new();
        for dir in raw.dirs {
            let host = self.base.join(&dir.host);
            if !host.is_dir() {
                return Err(invalid(
                    "wasi.dirs",
                    format!("{} is not a directory", host.display()),
                ));
            }
            if !dir.guest.starts_with('/') {
                return Err(invalid(
                    "wasi.dirs",
                    format!("the guest path \"{}\" must be absolute", dir.guest),
                ));
            }
            dirs.push((std::fs::canonicalize(&host).unwrap_or(host), dir.guest));
        }
        let mut allow = Vec::new();
        for address in raw.allow {
            allow.push(address.parse().map_err(|_| {
                invalid(
                    "wasi.allow",
                    format!("\"{address}\" is not an IP address and port such as 10.0.0.5:443"),
                )
            })?);
        }
        Ok(WasiSpec { dirs, allow })
    }

    fn candidate(
        &self,
        raw: RawCandidate,
        live_grants: &BTreeSet<Grant>,
        live_config: &serde_json::Map<String, serde_json::Value>,
        at: &dyn Fn(&str) -> Location,
    ) -> Result<CandidateSpec, ManifestError> {
        let grants = match &raw.grants {
            Some(names) => self.grants(names, &at("candidate.grants"))?,
            None => live_grants.clone(),
        };
        let config = match raw.config {
            Some(table) => self.json_table(Some(table), &at("candidate.config"))?,
            None => live_config.clone(),
        };
        let default_percent = match raw.mode {
            RolloutMode::Canary => 10.0,
            RolloutMode::Shadow => 100.0,
        };
        let percent = raw.percent.unwrap_or(default_percent);
        if !(0.0..=100.0).contains(&percent) {
            return Err(self.error(
                at("candidate.percent"),
                ManifestErrorKind::Invalid(format!("{percent} is outside 0..=100")),
            ));
        }
        let max_burn_rate = raw.max_burn_rate.unwrap_or(DEFAULT_MAX_BURN_RATE);
        if !(max_burn_rate > 0.0 && max_burn_rate.is_finite()) {
            return Err(self.error(
                at("candidate.max_burn_rate"),
                ManifestErrorKind::Invalid(format!("{max_burn_rate} must be a positive number")),
            ));
        }
        let plugin = self.plugin(&raw.plugin, raw.sha256.as_deref(), at, "candidate.")?;
        Ok(CandidateSpec {
            plugin,
            grants,
            config,
            mode: raw.mode,
            percent,
            max_burn_rate,
        })
    }

    fn grants(&self, names: &[String], at: &Location) -> Result<BTreeSet<Grant>, ManifestError> {
        let mut grants = BTreeSet::new();
        for name in names {
            let grant = Grant::parse(name).ok_or_else(|| {
                self.error(
                    at.clone(),
                    ManifestErrorKind::Invalid(format!(
                        "unknown grant \"{name}\"; known grants: {}",
                        Grant::ALL.map(Grant::as_str).join(", ")
                    )),
                )
            })?;
            if !grants.insert(grant) {
                return Err(self.error(at.clone(), ManifestErrorKind::Duplicate(name.clone())));
            }
        }
        Ok(grants)
    }

    fn json_table(
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

    fn check_models(&self, models: &ModelsSpec) -> Result<(), ManifestError> {
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
    fn check_embeddings(
        &self,
        models: &ModelsSpec,
        pipelines: &BTreeMap<String, PipelineSpec>,
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
                        pipeline: Some(name.clone()),
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

    fn check_slo(&self, slo: &SloSpec, here: &Location) -> Result<(), ManifestError> {
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

    fn check_limits(
        &self,
        limits: &Limits,
        runtime: &RuntimeSettings,
        at: &dyn Fn(&str) -> Location,
    ) -> Result<(), ManifestError> {
        let invalid = |key: &str, msg: String| self.error(at(key), ManifestErrorKind::Invalid(msg));
        if !(1..=MAX_TIMEOUT_MS).contains(&limits.timeout_ms) {
            return Err(invalid(
                "limits.timeout_ms",
                format!("{} is outside 1..={MAX_TIMEOUT_MS}", limits.timeout_ms),
            ));
        }
        if !(1..=MAX_MEMORY_MIB).contains(&limits.memory_mib) {
            return Err(invalid(
                "limits.memory_mib",
                format!("{} is outside 1..={MAX_MEMORY_MIB}", limits.memory_mib),
            ));
        }
        if !(1..=16 * 1024).contains(&limits.output_kib) {
            return Err(invalid(
                "limits.output_kib",
                format!("{} is outside 1..=16384", limits.output_kib),
            ));
        }
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

    /// Read a plugin and check its pin; `prefix` qualifies the keys named in
    /// errors (`candidate.` for a candidate's).
    fn plugin(
        &self,
        path: &Path,
        pin: Option<&str>,
        at: &dyn Fn(&str) -> Location,
        prefix: &str,
    ) -> Result<PluginFile, ManifestError> {
        let at = |key: &str| at(&format!("{prefix}{key}"));
        let pin = match pin {
            None => None,
            Some(pin) => {
                let normalised = pin.trim_start_matches("sha256:").to_ascii_lowercase();
                if normalised.len() != 64 || !normalised.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(self.error(
                        at("sha256"),
                        ManifestErrorKind::Invalid(format!(
                            "\"{pin}\" is not a SHA-256 digest (64 hexadecimal digits)"
                        )),
                    ));
                }
                Some(normalised)
            }
        };
        let resolved = self.base.join(path);
        let bytes = std::fs::read(&resolved).map_err(|source| {
            self.error(
                at("plugin"),
                ManifestErrorKind::MissingPlugin {
                    path: resolved.clone(),
                    source,
                },
            )
        })?;
        // Show the plugin's real location in messages and reports.
        let resolved = std::fs::canonicalize(&resolved).unwrap_or(resolved);
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if let Some(expected) = &pin
            && *expected != sha256
        {
            return Err(self.error(
                at("sha256"),
                ManifestErrorKind::DigestMismatch {
                    path: resolved,
                    expected: expected.clone(),
                    actual: sha256,
                },
            ));
        }
        Ok(PluginFile {
            path: resolved,
            bytes: bytes.into(),
            sha256,
            pinned: pin.is_some(),
        })
    }

    fn schema_error(&self, location: Location, error: toml::de::Error) -> ManifestError {
        self.error(
            location,
            ManifestErrorKind::Schema(one_line(error.message().to_owned())),
        )
    }
}

fn key_location(key: &str) -> Location {
    Location {
        key: Some(key.to_owned()),
        ..Location::default()
    }
}

/// Names of pipelines, stages and layers appear in URLs, logs and metric
/// labels, so they are kept to a safe alphabet.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" is not a valid name: use 1 to 64 lower-case letters, digits, '-' or '_', \
             starting with a letter or digit"
        ))
    }
}

fn one_line(message: String) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_memory_mib() -> u32 {
    DEFAULT_MEMORY_MIB
}
fn default_output_kib() -> u32 {
    DEFAULT_OUTPUT_KIB
}
fn default_max_body_kib() -> u32 {
    DEFAULT_MAX_BODY_KIB
}
fn default_client_timeout_ms() -> u64 {
    10_000
}
fn default_max_in_flight() -> u32 {
    4096
}
fn default_instances() -> u32 {
    DEFAULT_INSTANCES
}
fn default_true() -> bool {
    true
}
fn default_admin_listen() -> SocketAddr {
    DEFAULT_ADMIN_LISTEN
        .parse()
        .expect("the default admin address parses")
}
fn default_debounce_ms() -> u64 {
    500
}
fn default_async_queue() -> u32 {
    1_000
}
fn default_callback_secret_env() -> String {
    "STRATA_CALLBACK_SECRET".to_owned()
}
fn default_callback_attempts() -> u32 {
    5
}
fn default_callback_backoff_ms() -> u64 {
    500
}
fn default_callback_concurrency() -> u32 {
    8
}
fn default_batch_wait_ms() -> u64 {
    50
}
fn default_max_idle() -> u32 {
    4
}
fn default_record_mib() -> u64 {
    64
}
fn default_record_files() -> u32 {
    4
}
fn default_bank_capacity() -> u64 {
    10_000
}
fn default_bank_ttl_s() -> u64 {
    86_400
}
fn default_tier_timeout_ms() -> u64 {
    30_000
}
fn default_tier_retries() -> u32 {
    2
}
fn default_tier_backoff_ms() -> u64 {
    200
}
fn default_slo_target() -> f64 {
    0.99
}
fn default_slo_latency_ms() -> u64 {
    1_000
}
fn default_burn_windows() -> Vec<BurnWindow> {
    vec![
        BurnWindow {
            long_s: 3_600,
            short_s: 300,
            burn: 14.4,
        },
        BurnWindow {
            long_s: 21_600,
            short_s: 1_800,
            burn: 6.0,
        },
    ]
}
