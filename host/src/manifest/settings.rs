//! Host-wide settings: `[server]`, `[runtime]`, `[admin]`, `[reload]`,
//! `[async]`, `[callbacks]`, `[retention]`, `[telemetry]`, `[shared]`, `[store]`.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};

use serde::Deserialize;

use super::{DEFAULT_ADMIN_LISTEN, DEFAULT_INSTANCES, DEFAULT_MAX_BODY_KIB, RawAsync};

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
    /// How long a real-time request's client is answered within. A run
    /// still going then gets 504 `still_running` with its id; it goes on,
    /// and its answer is kept for `GET /v1/requests/{id}`.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
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
            request_timeout_ms: default_request_timeout_ms(),
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
    /// How long a host's claim on a running request holds without being
    /// renewed (it renews a third of the way): hosts sharing a store take
    /// over the requests of a host that died this long after it did.
    pub lease_ms: u64,
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
    pub(super) fn resolve(
        raw: RawAsync,
        instances: u32,
    ) -> Result<AsyncSettings, (&'static str, String)> {
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
        if !(1_000..=3_600_000).contains(&raw.lease_ms) {
            return Err((
                "async.lease_ms",
                format!("{} is outside 1000..=3600000", raw.lease_ms),
            ));
        }
        Ok(AsyncSettings {
            queue: raw.queue,
            workers,
            max_runs: raw.max_runs,
            lease_ms: raw.lease_ms,
        })
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

pub(super) fn default_slot_wait_ms() -> u64 {
    1000
}

pub(super) fn default_requests_days() -> u32 {
    30
}

pub(super) fn default_shadow_days() -> u32 {
    7
}

pub(super) fn default_audit_days() -> u32 {
    365
}

pub(super) fn default_max_body_kib() -> u32 {
    DEFAULT_MAX_BODY_KIB
}

pub(super) fn default_client_timeout_ms() -> u64 {
    10_000
}

pub(super) fn default_request_timeout_ms() -> u64 {
    60_000
}

pub(super) fn default_max_in_flight() -> u32 {
    4096
}

pub(super) fn default_instances() -> u32 {
    DEFAULT_INSTANCES
}

pub(super) fn default_true() -> bool {
    true
}

pub(super) fn default_admin_listen() -> SocketAddr {
    DEFAULT_ADMIN_LISTEN
        .parse()
        .expect("the default admin address parses")
}

pub(super) fn default_debounce_ms() -> u64 {
    500
}

pub(super) fn default_callback_secret_env() -> String {
    "STRATA_CALLBACK_SECRET".to_owned()
}

pub(super) fn default_callback_attempts() -> u32 {
    5
}

pub(super) fn default_callback_backoff_ms() -> u64 {
    500
}

pub(super) fn default_callback_concurrency() -> u32 {
    8
}

/// Split an allow entry into its host and port: `hooks.example.com`,
/// `127.0.0.1:9000`, `[::1]:9000`, `::1`. `None` when the port is not a
/// number or an IPv6 address is not in brackets but has a port.
pub fn split_host_port(entry: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (address, after) = rest.split_once(']')?;
        let address: Ipv6Addr = address.parse().ok()?;
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':')?.parse().ok()?),
        };
        return Some((address.to_string(), port));
    }
    if let Ok(address) = entry.parse::<Ipv6Addr>() {
        return Some((address.to_string(), None));
    }
    match entry.rsplit_once(':') {
        Some((host, port)) => Some((host.to_ascii_lowercase(), Some(port.parse().ok()?))),
        None => Some((entry.to_ascii_lowercase(), None)),
    }
}

/// OpenTelemetry export (`[telemetry]`): with `otlp` set, a trace per
/// request, a span per stage, sent to that OTLP/HTTP endpoint. Read at
/// start; a change needs a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`
    /// (traces go to `/v1/traces` under it).
    #[serde(default)]
    pub otlp: Option<String>,
    /// `http/protobuf` (the default) or `http/json`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// The `service.name` of the resource.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Longest wait before a batch of spans is sent, in milliseconds.
    #[serde(default = "default_export_delay_ms")]
    pub export_delay_ms: u64,
}

/// How spans are encoded for the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// JSON over HTTP.
    #[serde(rename = "http/json")]
    HttpJson,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp: None,
            protocol: OtlpProtocol::default(),
            service_name: default_service_name(),
            export_delay_ms: default_export_delay_ms(),
        }
    }
}

fn default_service_name() -> String {
    "strata".to_owned()
}

fn default_export_delay_ms() -> u64 {
    1000
}

/// Where durable state is kept (`[store]`): the SQLite file in the data
/// directory unless `url` names a PostgreSQL server, which hosts sharing
/// their tickets, jobs and answer bank point at alike. Read at start; a
/// change needs a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `postgres://[user[:password]@]host[:port]/database`.
    #[serde(default)]
    pub url: Option<String>,
}

/// Hosts that serve as one (`[shared]`): with `redis` set, an operation
/// (reload, rollback, promotion) applied on one host is applied by every
/// host of the same `cluster`, each from its own copy of the files, and
/// each host's state is shown by `GET /admin/cluster`. Read at start; a
/// change needs a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SharedSettings {
    /// The Redis server, `redis://[user:password@]host[:port][/db]`.
    #[serde(default)]
    pub redis: Option<String>,
    /// Hosts with the same cluster name act as one; several clusters may
    /// share one Redis server. Defaults to `strata`.
    #[serde(default)]
    pub cluster: Option<String>,
    /// This host's name in the cluster; defaults to the machine's host name
    /// and the API's port (`web-1:8080`).
    #[serde(default)]
    pub host: Option<String>,
}

impl SharedSettings {
    /// The cluster name, `strata` unless set.
    pub fn cluster_name(&self) -> &str {
        self.cluster.as_deref().unwrap_or("strata")
    }
}
