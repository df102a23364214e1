//! What changed between two manifests or generations, and whether the
//! watched files changed: the facts a reload decides and reports on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::{Fingerprint, StageChange};
use crate::manifest::{Digest, Manifest};
use crate::pipeline::Generation;
use crate::runtime::capabilities::ImportRule;
use crate::store::ChangeKind;

/// Whether two manifests would build the same generation: same text and
/// same plugin bytes everywhere.
pub(crate) fn same_content(a: &Manifest, b: &Manifest) -> bool {
    let digests = |m: &Manifest| -> Vec<(Digest, Option<Digest>)> {
        m.stages()
            .map(|(_, s)| {
                (
                    s.plugin.digest.clone(),
                    s.candidate.as_ref().map(|c| c.plugin.digest.clone()),
                )
            })
            .collect()
    };
    a.sha256 == b.sha256 && digests(a) == digests(b)
}

/// Settings a reload cannot change, named so the operator knows.
pub(crate) fn restart_only_changes(old: &Manifest, new: &Manifest) -> Option<String> {
    let mut keys = Vec::new();
    if old.listen != new.listen {
        keys.push("listen");
    }
    if old.data_dir != new.data_dir {
        keys.push("data_dir");
    }
    if old.admin != new.admin {
        keys.push("[admin]");
    }
    if old.reload != new.reload {
        keys.push("[reload]");
    }
    if old.server.max_body_kib != new.server.max_body_kib {
        keys.push("[server]");
    }
    if old.background != new.background {
        keys.push("[async]");
    }
    if old.callbacks != new.callbacks {
        keys.push("[callbacks]");
    }
    if old.shared != new.shared {
        keys.push("[shared]");
    }
    (!keys.is_empty()).then(|| {
        format!(
            "{} changed; these take effect when the host restarts",
            keys.join(", ")
        )
    })
}

/// Per stage, what differs between `old` (none at start-up) and `new`.
pub(crate) fn diff(old: Option<&Generation>, new: &Generation) -> Vec<StageChange> {
    type Key = (String, String);
    let index = |generation: &Generation| -> BTreeMap<Key, StageFacts> {
        generation
            .pipelines
            .values()
            .flat_map(|p| {
                p.stages
                    .iter()
                    .map(move |s| ((p.name.to_string(), s.name().to_owned()), StageFacts::of(s)))
            })
            .collect()
    };
    let before = old.map(index).unwrap_or_default();
    let after = index(new);
    let keys: BTreeSet<&Key> = before.keys().chain(after.keys()).collect();
    let mut changes = Vec::new();
    for key in keys {
        let (old, new) = (before.get(key), after.get(key));
        if let (Some(old), Some(new)) = (old, new)
            && old == new
        {
            continue;
        }
        let empty = StageFacts::default();
        let (o, n) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
        changes.push(StageChange {
            pipeline: key.0.clone(),
            stage: key.1.clone(),
            change: match (old, new) {
                (None, _) => ChangeKind::Added,
                (_, None) => ChangeKind::Removed,
                _ => ChangeKind::Changed,
            },
            old_digest: old.map(|f| f.digest.clone()),
            new_digest: new.map(|f| f.digest.clone()),
            old_candidate: o.candidate.clone(),
            new_candidate: n.candidate.clone(),
            grants_added: n.grants.difference(&o.grants).cloned().collect(),
            grants_removed: o.grants.difference(&n.grants).cloned().collect(),
            imports_added: n.imports.difference(&o.imports).cloned().collect(),
            imports_removed: o.imports.difference(&n.imports).cloned().collect(),
            settings_changed: old.is_some() && new.is_some() && o.settings != n.settings,
        });
    }
    changes
}

/// What the audit log compares about a stage.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct StageFacts {
    pub(crate) digest: String,
    pub(crate) candidate: Option<String>,
    pub(crate) grants: BTreeSet<String>,
    pub(crate) imports: BTreeSet<String>,
    pub(crate) settings: String,
}

impl StageFacts {
    fn of(stage: &crate::pipeline::Stage) -> StageFacts {
        let live = &stage.live;
        let spec = &live.spec;
        let mut grants: BTreeSet<String> =
            spec.grants.iter().map(|g| g.as_str().to_owned()).collect();
        let mut imports: BTreeSet<String> = live
            .imports
            .iter()
            .filter(|i| i.rule != ImportRule::Baseline)
            .map(|i| i.name.clone())
            .collect();
        // A candidate's capabilities count: it runs on real requests too.
        if let Some(candidate) = &stage.candidate {
            grants.extend(
                candidate
                    .stage
                    .spec
                    .grants
                    .iter()
                    .map(|g| format!("{} (candidate)", g.as_str())),
            );
            imports.extend(
                candidate
                    .stage
                    .imports
                    .iter()
                    .filter(|i| i.rule != ImportRule::Baseline)
                    .map(|i| format!("{} (candidate)", i.name)),
            );
        }
        StageFacts {
            digest: live.digest.to_string(),
            candidate: stage.candidate.as_ref().map(|c| c.stage.digest.to_string()),
            grants,
            imports,
            settings: format!(
                "{:?}|{:?}|{}|{}|{:?}",
                spec.limits,
                spec.on_error,
                spec.layer,
                serde_json::Value::Object(spec.config.clone()),
                stage
                    .candidate
                    .as_ref()
                    .map(|c| (c.mode, c.percent, c.max_burn_rate))
            ),
        }
    }
}

pub(crate) fn fingerprint(files: &[PathBuf]) -> Fingerprint {
    files
        .iter()
        .map(|path| {
            let seen = std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)));
            (path.clone(), seen)
        })
        .collect()
}
