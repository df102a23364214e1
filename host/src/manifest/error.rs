//! A refused manifest: what is wrong, and where (file, pipeline, stage,
//! key).

use std::fmt;
use std::path::PathBuf;

use super::Grant;

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

pub(super) struct LocationPrefix<'a>(&'a Location);

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
    #[error("digest mismatch for {}: the manifest pins {expected}, the file has {actual}", path.display())]
    DigestMismatch {
        /// The resolved path.
        path: PathBuf,
        /// The pinned digest.
        expected: super::Digest,
        /// The file's digest.
        actual: super::Digest,
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
    /// The component's `init` failed (a bad config, say), or its
    /// initialised state could not be kept.
    #[error("{} failed to initialise: {reason}", path.display())]
    Init {
        /// The resolved path.
        path: PathBuf,
        /// Why: the guest's own message when it panicked.
        reason: String,
    },
}

pub(super) fn describe_exports(found: &[String]) -> String {
    if found.is_empty() {
        " (it exports nothing)".to_owned()
    } else {
        format!(" (it exports {})", found.join(", "))
    }
}

pub(super) fn describe_ungranted(imports: &[UngrantedImport]) -> String {
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
