//! What a pipeline is made of, validated: stages, their plugins, grants,
//! limits and candidates; answer banks, recording, error budgets; model
//! tiers and embeddings models.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::{
    DEFAULT_MEMORY_MIB, DEFAULT_OUTPUT_KIB, DEFAULT_TIMEOUT_MS, Digest, HttpHost, Layer, Name,
};

/// One pipeline: stages run in order, cheapest layer first.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// The pipeline's name, as used in `POST /v1/pipelines/{name}`.
    pub name: Name,
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
/// attempt within `timeout_ms` and falls back to the lexical model;
/// embedding examples gives each batch `batch_timeout_ms`, retries, and,
/// failing, keeps the batches done, fits lexically and tries again later.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsSpec {
    /// The provider serving it.
    pub provider: String,
    /// The provider's model name; stored vectors are kept per model name,
    /// so naming another model embeds every example again.
    pub model: String,
    /// Per-attempt timeout of a lookup (one question).
    #[serde(default = "default_embeddings_timeout_ms")]
    pub timeout_ms: u64,
    /// Per-attempt timeout of a batch of examples: a model on a CPU takes
    /// far longer for `batch` inputs than for one question.
    #[serde(default = "default_embeddings_batch_timeout_ms")]
    pub batch_timeout_ms: u64,
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

impl ProviderSpec {
    /// The API key of provider `name`, read from its environment variable
    /// (none if it needs none). Fails, naming the variable, when it is not
    /// set.
    pub fn api_key(&self, name: &str) -> Result<Option<String>, String> {
        let Some(variable) = &self.api_key_env else {
            return Ok(None);
        };
        std::env::var(variable).map(Some).map_err(|_| {
            format!(
                "provider \"{name}\" needs its API key in the environment variable \
                 {variable}, which is not set"
            )
        })
    }

    /// The URL of `endpoint` (such as `chat/completions`) under the API
    /// root.
    pub fn url(&self, endpoint: &str) -> String {
        format!("{}/{endpoint}", self.base_url.trim_end_matches('/'))
    }
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
    pub name: Name,
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
    /// The interface its components must export, when the manifest says.
    pub kind: Option<StageKind>,
    /// How `strata build` makes its component, when the manifest says.
    pub build: Option<super::BuildSpec>,
}

/// What a stage's granted WASI families may reach (`[...stages.wasi]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WasiSpec {
    /// Read-only directories: (host directory, path the guest sees).
    pub dirs: Vec<(PathBuf, String)>,
    /// Addresses the stage may connect to or send to.
    pub allow: Vec<SocketAddr>,
    /// Hosts the stage may send HTTP requests to (`wasi:http`).
    pub http: Vec<HttpHost>,
}

/// Which interface a stage's component exports (`kind = ...`): detected
/// from the component; declaring it makes a component of the other kind an
/// error at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// `strata:pipeline/stage`.
    Pipeline,
    /// `wasi:http/incoming-handler@0.2.x`: an HTTP handler; each request
    /// reaches it as `POST /` with a JSON body.
    Http,
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StageKind::Pipeline => "pipeline",
            StageKind::Http => "http",
        })
    }
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
    /// The SHA-256 of `bytes`.
    pub digest: Digest,
    /// Whether the manifest pins this digest.
    pub pinned: bool,
}

impl fmt::Debug for PluginFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginFile")
            .field("path", &self.path)
            .field("len", &self.bytes.len())
            .field("digest", &self.digest)
            .field("pinned", &self.pinned)
            .finish()
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
    /// `wasi:http/outgoing-handler`: outgoing HTTP requests, each refused
    /// unless the stage's `wasi.http` lists its host.
    WasiHttp,
}

impl Grant {
    /// Every grant, in the order they are documented.
    pub const ALL: [Grant; 7] = [
        Grant::Log,
        Grant::Config,
        Grant::Cache,
        Grant::Model,
        Grant::WasiFilesystem,
        Grant::WasiSockets,
        Grant::WasiHttp,
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
            Grant::WasiHttp => "wasi:http",
        }
    }

    pub(super) fn parse(name: &str) -> Option<Grant> {
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

pub(super) fn default_max_error() -> f64 {
    0.05
}

pub(super) fn default_embeddings_timeout_ms() -> u64 {
    1_000
}

pub(super) fn default_embeddings_batch_timeout_ms() -> u64 {
    30_000
}

pub(super) fn default_embeddings_batch() -> u32 {
    64
}

pub(super) fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

pub(super) fn default_memory_mib() -> u32 {
    DEFAULT_MEMORY_MIB
}

pub(super) fn default_output_kib() -> u32 {
    DEFAULT_OUTPUT_KIB
}

pub(super) fn default_batch_wait_ms() -> u64 {
    50
}

pub(super) fn default_max_idle() -> u32 {
    4
}

pub(super) fn default_record_mib() -> u64 {
    64
}

pub(super) fn default_record_files() -> u32 {
    4
}

pub(super) fn default_bank_capacity() -> u64 {
    10_000
}

pub(super) fn default_bank_ttl_s() -> u64 {
    86_400
}

pub(super) fn default_tier_timeout_ms() -> u64 {
    30_000
}

pub(super) fn default_tier_retries() -> u32 {
    2
}

pub(super) fn default_tier_backoff_ms() -> u64 {
    200
}

pub(super) fn default_slo_target() -> f64 {
    0.99
}

pub(super) fn default_slo_latency_ms() -> u64 {
    1_000
}

pub(super) fn default_burn_windows() -> Vec<BurnWindow> {
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
