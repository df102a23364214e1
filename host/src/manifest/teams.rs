//! Reading `[teams.NAME]`: who may call which pipelines, how often, and
//! for how much.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{
    Location, ManifestError, ManifestErrorKind, Name, OverBudget, Parser, PipelineSpec, TeamSpec,
};

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
