//! Reading one stage: its plugin (bytes read once, pin checked), grants,
//! WASI access, limits and candidate.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use super::{
    CandidateSpec, DEFAULT_MAX_BURN_RATE, Digest, Grant, Layer, Location, ManifestError,
    ManifestErrorKind, Name, OnError, Parser, PluginFile, RawCandidate, RawStage, RawWasi,
    RolloutMode, RuntimeSettings, StageSpec, WasiSpec,
};

impl Parser<'_> {
    pub(super) fn stage(
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
        let raw: RawStage = self.typed(here.clone(), table)?;

        let name = Name::parse(&raw.name)
            .map_err(|m| self.error(at("name"), ManifestErrorKind::Invalid(m)))?;
        let layer = Name::parse(&raw.layer)
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
        let cases = self.cases_file(raw.cases, at("cases"))?;
        let build = raw.build.map(|b| self.build(b, &at)).transpose()?;
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
            name,
            layer: Layer(layer),
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
            kind: raw.kind,
            build,
        })
    }

    pub(super) fn wasi(
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
        if !raw.http.is_empty() && !grants.contains(&Grant::WasiHttp) {
            return Err(invalid(
                "wasi.http",
                "hosts need the \"wasi:http\" grant".to_owned(),
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
        let http = raw
            .http
            .iter()
            .map(|host| HttpHost::parse(host).map_err(|m| invalid("wasi.http", m)))
            .collect::<Result<_, _>>()?;
        Ok(WasiSpec { dirs, allow, http })
    }

    pub(super) fn candidate(
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

    pub(super) fn grants(
        &self,
        names: &[String],
        at: &Location,
    ) -> Result<BTreeSet<Grant>, ManifestError> {
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

    /// Read a plugin and check its pin; `prefix` qualifies the keys named in
    /// errors (`candidate.` for a candidate's).
    pub(super) fn plugin(
        &self,
        path: &Path,
        pin: Option<&str>,
        at: &dyn Fn(&str) -> Location,
        prefix: &str,
    ) -> Result<PluginFile, ManifestError> {
        let at = |key: &str| at(&format!("{prefix}{key}"));
        let pin = pin
            .map(Digest::parse)
            .transpose()
            .map_err(|why| self.error(at("sha256"), ManifestErrorKind::Invalid(why)))?;
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
        let digest = Digest::of(&bytes);
        if let Some(expected) = &pin
            && *expected != digest
        {
            return Err(self.error(
                at("sha256"),
                ManifestErrorKind::DigestMismatch {
                    path: resolved,
                    expected: expected.clone(),
                    actual: digest,
                },
            ));
        }
        Ok(PluginFile {
            path: resolved,
            bytes: bytes.into(),
            digest,
            pinned: pin.is_some(),
        })
    }
}

/// A host a stage may send HTTP requests to: `host` (the scheme's default
/// port only) or `host:port`. Names are compared without regard to case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpHost {
    /// The host name or IP address, lower-cased.
    pub host: String,
    /// The port, or `None` for the scheme's default (80 or 443).
    pub port: Option<u16>,
}

impl HttpHost {
    /// Read `host` or `host:port` (an IPv6 address in brackets).
    pub fn parse(text: &str) -> Result<HttpHost, String> {
        let authority: http::uri::Authority = text.parse().map_err(|_| {
            format!("\"{text}\" is not a host or host:port such as api.example.com:443")
        })?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return Err(format!(
                "\"{text}\" is not a host or host:port such as api.example.com:443"
            ));
        }
        Ok(HttpHost {
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16(),
        })
    }

    /// Whether a request to `host` on `port` (`default_port` being the
    /// scheme's) is allowed by this entry.
    pub fn allows(&self, host: &str, port: u16, default_port: u16) -> bool {
        self.host.eq_ignore_ascii_case(host) && self.port.unwrap_or(default_port) == port
    }
}

impl fmt::Display for HttpHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}
