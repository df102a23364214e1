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

mod build;
mod checks;
mod error;
mod names;
mod parse;
mod raw;
mod settings;
mod spec;
mod stage;
mod teams;

pub use self::build::{BuildSpec, BuildTarget, Recipe, World};
pub use self::error::*;
pub use self::names::{Digest, Layer, Name};
pub use self::settings::*;
pub use self::spec::*;
pub use self::stage::HttpHost;
pub use self::teams::{OverBudget, TeamSpec};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use self::parse::Parser;
use self::raw::{RawAsync, RawCandidate, RawManifest, RawPipeline, RawStage, RawWasi};

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
    pub pipelines: BTreeMap<Name, PipelineSpec>,
    /// OpenTelemetry export (`[telemetry]`).
    pub telemetry: TelemetrySettings,
    /// Hosts serving as one (`[shared]`).
    pub shared: SharedSettings,
    /// Where durable state is kept (`[store]`).
    pub store: StoreSettings,
    /// Teams of clients, by name (`[teams.NAME]`).
    pub teams: BTreeMap<String, TeamSpec>,
    /// Hex SHA-256 of the manifest text.
    pub sha256: String,
}

impl Manifest {
    /// Read, parse and validate the manifest at `path`, reading every plugin
    /// it names.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        Self::parse(path, &read(path)?)
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

    /// Every stage of the manifest at `path` with its `plugin`, `build` and
    /// `cases`, read without loading any plugin (for `strata build`, when
    /// components may not exist yet). Candidates are not included.
    pub fn build_plan(path: &Path) -> Result<Vec<BuildTarget>, ManifestError> {
        Parser {
            file: path,
            base: path.parent().unwrap_or(Path::new(".")),
        }
        .build_plan(&read(path)?)
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

/// The manifest's text.
fn read(path: &Path) -> Result<String, ManifestError> {
    std::fs::read_to_string(path).map_err(|e| ManifestError {
        file: path.to_owned(),
        location: Box::default(),
        kind: Box::new(ManifestErrorKind::Unreadable(e)),
    })
}

/// The default listen address when the manifest gives none.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The default admin listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// The default burn rate at which a canary is rolled back.
pub const DEFAULT_MAX_BURN_RATE: f64 = 14.4;

/// The longest burn-rate window, in seconds (a week).
pub const MAX_WINDOW_S: u64 = 7 * 24 * 3_600;

pub(super) fn key_location(key: &str) -> Location {
    Location {
        key: Some(key.to_owned()),
        ..Location::default()
    }
}

/// Names of pipelines, stages and layers appear in URLs, logs and metric
/// labels, so they are kept to a safe alphabet.
pub(super) fn one_line(message: String) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
