//! `strata audit`: what every stage of a manifest may do, for a security
//! reviewer, without reading the stages' source.
//!
//! Unlike `strata check`, an audit does not stop at the first problem: every
//! stage (and candidate) is compiled and described, and problems become
//! flags. The operator chooses which flags fail the audit (`--deny`).

use std::path::PathBuf;

use serde::Serialize;

use crate::manifest::{Manifest, PluginFile, StageSpec};
use crate::runtime::Runtime;
use crate::runtime::capabilities::ImportRule;

/// A policy an audit can enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Every import must be granted (a stage that fails this cannot load).
    Ungranted,
    /// Every plugin must be pinned by `sha256`.
    Unpinned,
    /// Every stage must set its `limits` rather than take the defaults.
    NoLimits,
    /// All of the above.
    All,
}

impl Policy {
    fn covers(self, flag: Policy) -> bool {
        self == Policy::All || self == flag
    }
}

/// One import of an audited component.
#[derive(Debug, Clone, Serialize)]
pub struct ImportAudit {
    /// Full name.
    pub name: String,
    /// How the host satisfies it, or why it cannot.
    pub satisfied_by: String,
    /// Whether this stage may have it.
    pub allowed: bool,
}

/// One audited stage version.
#[derive(Debug, Clone, Serialize)]
pub struct StageAudit {
    /// The pipeline.
    pub pipeline: String,
    /// The stage.
    pub stage: String,
    /// `live` or `candidate`.
    pub version: &'static str,
    /// The layer.
    pub layer: String,
    /// The plugin file.
    pub path: PathBuf,
    /// Hex SHA-256 of the plugin.
    pub sha256: String,
    /// Its size in bytes.
    pub size: usize,
    /// Whether the manifest pins the digest.
    pub pinned: bool,
    /// Exports, when the component compiled.
    pub exports: Vec<String>,
    /// The contract version whose stage it exports, e.g.
    /// `strata:pipeline@0.1.0`; imports of every version are checked
    /// against the same grants.
    pub contract: Option<String>,
    /// Every import, WASI included.
    pub imports: Vec<ImportAudit>,
    /// Grants.
    pub grants: Vec<String>,
    /// Limits in force.
    pub limits: serde_json::Value,
    /// Whether the manifest set the limits.
    pub limits_set: bool,
    /// The failure policy.
    pub on_error: String,
    /// For a candidate: how it is rolled out.
    pub rollout: Option<serde_json::Value>,
    /// What granted WASI families may reach: read-only directories
    /// (host -> guest) and addresses.
    pub wasi: serde_json::Value,
    /// Instance reuse, when on: state carries over between requests.
    pub reuse: Option<serde_json::Value>,
    /// Whether the stage sees a fixed clock and seeded randomness.
    pub deterministic: bool,
    /// What the audit found.
    pub flags: Vec<String>,
    /// Policies this stage breaks.
    pub breaks: Vec<Policy>,
    /// Set when the plugin is not a usable stage component at all.
    pub broken: Option<String>,
}

/// The audit of a whole manifest.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// The manifest.
    pub manifest: PathBuf,
    /// Its digest.
    pub sha256: String,
    /// Where the host itself sends data, outside any stage: model
    /// providers and callback hosts.
    pub egress: serde_json::Value,
    /// Every stage version.
    pub stages: Vec<StageAudit>,
}

impl AuditReport {
    /// Audit every stage and candidate of `manifest`.
    pub fn build(manifest: &Manifest, runtime: &Runtime) -> AuditReport {
        let mut stages = Vec::new();
        for (pipeline, spec) in manifest.stages() {
            stages.push(audit_version(
                runtime,
                pipeline,
                spec,
                &spec.plugin,
                &spec.grants,
                None,
            ));
            if let Some(candidate) = &spec.candidate {
                let rollout = serde_json::json!({
                    "mode": candidate.mode.as_str(),
                    "percent": candidate.percent,
                    "max_burn_rate": candidate.max_burn_rate,
                });
                stages.push(audit_version(
                    runtime,
                    pipeline,
                    spec,
                    &candidate.plugin,
                    &candidate.grants,
                    Some(rollout),
                ));
            }
        }
        let providers: serde_json::Map<String, serde_json::Value> = manifest
            .models
            .providers
            .iter()
            .map(|(name, p)| (name.clone(), serde_json::json!(p.base_url)))
            .collect();
        AuditReport {
            manifest: manifest.path.clone(),
            sha256: manifest.sha256.clone(),
            egress: serde_json::json!({
                "model_providers": providers,
                "callbacks": {
                    "allow": manifest.callbacks.allow,
                    "secret_env": manifest.callbacks.secret_env,
                },
                "shared": manifest.shared.redis.as_deref().map(|url| serde_json::json!({
                    "redis": crate::cluster::redacted(url),
                    "cluster": manifest.shared.cluster_name(),
                })),
            }),
            stages,
        }
    }

    /// Whether the audit passes under `deny`: no broken component, and no
    /// stage breaking a denied policy.
    pub fn passes(&self, deny: &[Policy]) -> bool {
        self.stages.iter().all(|s| {
            s.broken.is_none() && !s.breaks.iter().any(|b| deny.iter().any(|d| d.covers(*b)))
        })
    }

    /// The human-readable report.
    pub fn render(&self, deny: &[Policy]) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "audit of {} (sha256 {})",
            self.manifest.display(),
            self.sha256
        );
        let _ = writeln!(out, "\nhost egress (outside any stage)");
        let providers = self.egress["model_providers"]
            .as_object()
            .map(|p| {
                p.iter()
                    .map(|(name, url)| format!("{name} {}", url.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let _ = writeln!(out, "  models    {}", list(&providers));
        let hosts: Vec<String> = self.egress["callbacks"]["allow"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| match h.as_str() {
                Some(host) => Some(host.to_owned()),
                // A receiver with its own key.
                None => Some(format!(
                    "{} (key in {})",
                    h["host"].as_str()?,
                    h["secret_env"].as_str()?
                )),
            })
            .collect();
        let _ = writeln!(
            out,
            "  callbacks {}{}",
            list(&hosts),
            if hosts.is_empty() {
                String::new()
            } else {
                format!(
                    " (signed with the key in {})",
                    self.egress["callbacks"]["secret_env"]
                        .as_str()
                        .unwrap_or_default()
                )
            }
        );
        let shared = &self.egress["shared"];
        let _ = match shared["redis"].as_str() {
            None => writeln!(out, "  shared    none"),
            Some(redis) => writeln!(
                out,
                "  shared    {redis} (cluster \"{}\"): this host applies the other hosts' reloads \
                 and rollbacks and shares answers, error budgets and team limits with them",
                shared["cluster"].as_str().unwrap_or_default()
            ),
        };
        for s in &self.stages {
            let _ = writeln!(
                out,
                "\n{}/{}{} (layer {})",
                s.pipeline,
                s.stage,
                if s.version == "candidate" {
                    " candidate"
                } else {
                    ""
                },
                s.layer
            );
            let _ = writeln!(out, "  path      {} ({} bytes)", s.path.display(), s.size);
            let _ = writeln!(
                out,
                "  sha256    {}{}",
                s.sha256,
                if s.pinned {
                    " (pinned)"
                } else {
                    " (NOT pinned)"
                }
            );
            let _ = writeln!(out, "  exports   {}", list(&s.exports));
            if s.exports.iter().any(|e| e == crate::runtime::INIT_EXPORT) {
                let _ = writeln!(
                    out,
                    "  init      runs once at load, under the same grants and limits; fresh \
                     instances start from what it keeps (`strata check` shows whether it keeps)"
                );
            }
            if let Some(contract) = &s.contract {
                let _ = writeln!(out, "  contract  {contract}");
            }
            let _ = writeln!(out, "  grants    {}", list(&s.grants));
            let _ = writeln!(
                out,
                "  limits    {}{}",
                s.limits,
                if s.limits_set {
                    ""
                } else {
                    " (defaults: no limits set)"
                }
            );
            let _ = writeln!(out, "  on_error  {}", s.on_error);
            if let Some(rollout) = &s.rollout {
                let _ = writeln!(out, "  rollout   {rollout}");
            }
            if s.wasi["dirs"].as_array().is_some_and(|d| !d.is_empty())
                || s.wasi["allow"].as_array().is_some_and(|a| !a.is_empty())
                || s.wasi["http"].as_array().is_some_and(|h| !h.is_empty())
            {
                let _ = writeln!(out, "  wasi      {}", s.wasi);
            }
            if let Some(reuse) = &s.reuse {
                let _ = writeln!(
                    out,
                    "  reuse     {reuse} (state in the instance carries over between requests)"
                );
            }
            if s.deterministic {
                let _ = writeln!(out, "  clock     fixed; randomness seeded (deterministic)");
            }
            for (i, import) in s.imports.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "  {}{}{} ({})",
                    if i == 0 { "imports   " } else { "          " },
                    if import.allowed { "" } else { "! " },
                    import.name,
                    import.satisfied_by
                );
            }
            if let Some(broken) = &s.broken {
                let _ = writeln!(out, "  BROKEN    {broken}");
            }
            for flag in &s.flags {
                let _ = writeln!(out, "  flag      {flag}");
            }
        }
        let flagged = self.stages.iter().filter(|s| !s.flags.is_empty()).count();
        let _ = writeln!(
            out,
            "\n{} stage version{} audited, {flagged} flagged; {}",
            self.stages.len(),
            if self.stages.len() == 1 { "" } else { "s" },
            if self.passes(deny) {
                "passes".to_owned()
            } else {
                format!(
                    "FAILS (denied: {})",
                    if deny.is_empty() {
                        "broken components".to_owned()
                    } else {
                        deny.iter()
                            .map(|d| format!("{d:?}").to_lowercase())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )
            }
        );
        out
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

fn audit_version(
    runtime: &Runtime,
    pipeline: &str,
    spec: &StageSpec,
    plugin: &PluginFile,
    grants: &std::collections::BTreeSet<crate::manifest::Grant>,
    rollout: Option<serde_json::Value>,
) -> StageAudit {
    let limits = spec.limits;
    let mut audit = StageAudit {
        pipeline: pipeline.to_owned(),
        stage: spec.name.to_string(),
        version: if rollout.is_some() {
            "candidate"
        } else {
            "live"
        },
        layer: spec.layer.to_string(),
        path: plugin.path.clone(),
        sha256: plugin.digest.hex().to_owned(),
        size: plugin.bytes.len(),
        pinned: plugin.pinned,
        exports: Vec::new(),
        contract: None,
        imports: Vec::new(),
        grants: grants.iter().map(|g| g.as_str().to_owned()).collect(),
        limits: serde_json::json!({
            "timeout_ms": limits.timeout_ms,
            "memory_mib": limits.memory_mib,
            "fuel": limits.fuel,
            "output_kib": limits.output_kib,
        }),
        limits_set: spec.limits_set,
        on_error: spec.on_error.as_str().to_owned(),
        rollout,
        wasi: serde_json::json!({
            "dirs": spec.wasi.dirs.iter()
                .map(|(host, guest)| serde_json::json!({"host": host, "guest": guest, "access": "read-only"}))
                .collect::<Vec<_>>(),
            "allow": spec.wasi.allow.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "http": spec.wasi.http.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        }),
        reuse: spec
            .reuse
            .map(|r| serde_json::json!({"max_uses": r.max_uses, "max_idle": r.max_idle})),
        deterministic: spec.deterministic.is_some(),
        flags: Vec::new(),
        breaks: Vec::new(),
        broken: None,
    };
    match runtime.inspect(plugin) {
        Err(reason) => audit.broken = Some(format!("not a valid component: {reason}")),
        Ok(facts) => {
            if !facts.is_stage() {
                audit.broken = Some(format!(
                    "does not export {}",
                    crate::runtime::bindings::STAGE_EXPORT_EXPECTED
                ));
            }
            audit.contract = facts.contract().map(|c| c.to_string());
            if let (Some(declared), Some(contract)) = (spec.kind, facts.contract())
                && declared != contract.kind()
            {
                audit.broken = Some(format!(
                    "declares kind = \"{declared}\" but exports {contract}"
                ));
            }
            audit.exports = facts.exports.clone();
            let mut ungranted = Vec::new();
            for import in facts.imports {
                let (allowed, satisfied_by) = match import.rule {
                    ImportRule::Grant(grant) if !grants.contains(&grant) => {
                        (false, format!("needs grant \"{grant}\", not granted"))
                    }
                    ImportRule::Denied => (false, import.rule.describe()),
                    rule => (true, rule.describe()),
                };
                if !allowed {
                    ungranted.push(import.name.clone());
                }
                audit.imports.push(ImportAudit {
                    name: import.name,
                    satisfied_by,
                    allowed,
                });
            }
            if !ungranted.is_empty() {
                audit.flags.push(format!(
                    "ungranted: imports {} (the host refuses to load it)",
                    ungranted.join(", ")
                ));
                audit.breaks.push(Policy::Ungranted);
            }
        }
    }
    if !plugin.pinned {
        audit
            .flags
            .push("unpinned: no sha256 pin; any file at this path would load".to_owned());
        audit.breaks.push(Policy::Unpinned);
    }
    if !spec.limits_set {
        audit
            .flags
            .push("no-limits: runs with the default limits".to_owned());
        audit.breaks.push(Policy::NoLimits);
    }
    audit
}
