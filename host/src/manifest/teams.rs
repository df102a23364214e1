//! Reading `[teams.NAME]`: who may call which pipelines, how often, and
//! for how much.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{Location, ManifestError, ManifestErrorKind, Name, Parser, PipelineSpec};

/// `[teams.NAME]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTeam {
    token_env: String,
    #[serde(default)]
    pipelines: Option<Vec<String>>,
    #[serde(default)]
    requests_per_minute: Option<u32>,
    #[serde(default)]
    usd_per_day: Option<f64>,
    #[serde(default)]
    usd_per_month: Option<f64>,
    #[serde(default)]
    over_budget: Option<OverBudget>,
}

impl Parser<'_> {
    pub(super) fn teams(
        &self,
        raw: toml::Table,
        pipelines: &BTreeMap<Name, PipelineSpec>,
    ) -> Result<BTreeMap<String, TeamSpec>, ManifestError> {
        let mut teams = BTreeMap::new();
        let mut tokens: BTreeMap<[u8; 32], String> = BTreeMap::new();
        for (name, value) in raw {
            let at = |key: &str| Location {
                key: Some(format!("teams.{name}.{key}")),
                ..Location::default()
            };
            let invalid = |key: &str, message: String| {
                self.error(at(key), ManifestErrorKind::Invalid(message))
            };
            let team_at = Location {
                key: Some(format!("teams.{name}")),
                ..Location::default()
            };
            Name::parse(&name)
                .map_err(|m| self.error(team_at.clone(), ManifestErrorKind::Invalid(m)))?;
            let table = match value {
                toml::Value::Table(table) => table,
                other => {
                    return Err(self.error(
                        team_at,
                        ManifestErrorKind::Invalid(format!(
                            "a team is a table, not a {}",
                            other.type_str()
                        )),
                    ));
                }
            };
            let raw: RawTeam = self.typed(team_at, table)?;
            let token = std::env::var(&raw.token_env)
                .ok()
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| {
                    invalid(
                        "token_env",
                        format!(
                            "the environment variable {} holds no token for team \"{name}\"",
                            raw.token_env
                        ),
                    )
                })?;
            let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
            if let Some(other) = tokens.insert(digest, name.clone()) {
                return Err(invalid(
                    "token_env",
                    format!("team \"{name}\" has the same token as team \"{other}\""),
                ));
            }
            let allowed = match raw.pipelines {
                None => None,
                Some(names) => {
                    let mut set = BTreeSet::new();
                    for pipeline in names {
                        if !pipelines.keys().any(|p| p.as_str() == pipeline) {
                            return Err(invalid(
                                "pipelines",
                                format!("there is no pipeline named \"{pipeline}\""),
                            ));
                        }
                        set.insert(pipeline);
                    }
                    Some(set)
                }
            };
            if raw.requests_per_minute == Some(0) {
                return Err(invalid(
                    "requests_per_minute",
                    "must be at least 1 (leave it out for no limit)".to_owned(),
                ));
            }
            for (key, value) in [
                ("usd_per_day", raw.usd_per_day),
                ("usd_per_month", raw.usd_per_month),
            ] {
                if let Some(usd) = value
                    && !(usd > 0.0 && usd.is_finite())
                {
                    return Err(invalid(
                        key,
                        format!("{usd} must be a positive amount (leave it out for no budget)"),
                    ));
                }
            }
            teams.insert(
                name.clone(),
                TeamSpec {
                    name,
                    token_env: raw.token_env,
                    token: digest,
                    pipelines: allowed,
                    requests_per_minute: raw.requests_per_minute,
                    usd_per_day: raw.usd_per_day,
                    usd_per_month: raw.usd_per_month,
                    over_budget: raw.over_budget.unwrap_or(OverBudget::Refuse),
                },
            );
        }
        Ok(teams)
    }
}

/// A team of clients (`[teams.NAME]`): its token, the pipelines it may
/// call, its rate limit and its budgets.
#[derive(Clone, PartialEq)]
pub struct TeamSpec {
    /// The team's name.
    pub name: String,
    /// The environment variable its token was read from.
    pub token_env: String,
    /// SHA-256 of the token (the token itself is not kept).
    pub token: [u8; 32],
    /// The pipelines it may call; `None`: all of them.
    pub pipelines: Option<BTreeSet<String>>,
    /// Requests per minute, per host; `None`: no limit.
    pub requests_per_minute: Option<u32>,
    /// Model spend per UTC day.
    pub usd_per_day: Option<f64>,
    /// Model spend per UTC calendar month.
    pub usd_per_month: Option<f64>,
    /// What a team over a budget gets.
    pub over_budget: OverBudget,
}

impl fmt::Debug for TeamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeamSpec")
            .field("name", &self.name)
            .field("token_env", &self.token_env)
            .field("pipelines", &self.pipelines)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("usd_per_day", &self.usd_per_day)
            .field("usd_per_month", &self.usd_per_month)
            .field("over_budget", &self.over_budget)
            .finish_non_exhaustive()
    }
}

/// What a team over one of its budgets gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverBudget {
    /// 429 `budget_exhausted`.
    Refuse,
    /// Served by the cheap layers only: stages run with model calls off,
    /// so rules, the answer bank and people answer, never a model.
    CheapLayers,
}

impl OverBudget {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            OverBudget::Refuse => "refuse",
            OverBudget::CheapLayers => "cheap_layers",
        }
    }
}
