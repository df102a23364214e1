//! Loading a stage: compile (once per digest), check exports and imports
//! against the contract and the stage's grants, pre-initialise a stage that
//! exports `init` (see `init`), pre-instantiate; what a
//! loaded stage is, and the idle instances of one that reuses them.

use std::sync::{Arc, Mutex};

use wasmtime::Store;

use super::Contract;
use super::bindings::{STAGE_EXPORT_EXPECTED, StageInstance, StagePre};
use super::capabilities::ImportRule;
use super::engine::Runtime;
use super::imports::config::ConfigCtx;
use super::init::Snapshot;
use super::invoke::StageState;
use crate::manifest::{
    Digest, ManifestError, ManifestErrorKind, PluginFile, StageSpec, UngrantedImport,
};

impl Runtime {
    /// Compile, check and pre-instantiate one stage.
    ///
    /// Errors are [`ManifestError`]s located at the stage's `plugin` key, so
    /// an operator sees the same shape of message for a bad digest and for a
    /// component that imports what it was not granted.
    /// `key` names the manifest key errors point at (`plugin`, or
    /// `candidate.plugin` for a candidate version).
    pub fn load_stage(
        &self,
        manifest: &std::path::Path,
        pipeline: &str,
        spec: &StageSpec,
        key: &str,
    ) -> Result<LoadedStage, ManifestError> {
        let path = spec.plugin.path.clone();
        let fail = |kind| ManifestError {
            file: manifest.to_owned(),
            location: Box::new(crate::manifest::Location {
                pipeline: Some(pipeline.to_owned()),
                stage: Some(spec.name.to_string()),
                key: Some(key.to_owned()),
            }),
            kind: Box::new(kind),
        };

        let component = self.compile(&spec.plugin).map_err(|reason| {
            fail(ManifestErrorKind::InvalidComponent {
                path: path.clone(),
                reason,
            })
        })?;
        let ty = component.component_type();

        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let Some(contract) = Contract::of_exports(exports.iter().map(String::as_str)) else {
            return Err(fail(ManifestErrorKind::MissingExport {
                path,
                expected: STAGE_EXPORT_EXPECTED,
                found: exports,
            }));
        };
        if let Some(declared) = spec.kind
            && declared != contract.kind()
        {
            return Err(fail(ManifestErrorKind::Invalid(format!(
                "the stage declares kind = \"{declared}\", but {} exports {contract}",
                path.display()
            ))));
        }

        let mut imports = Vec::new();
        let mut ungranted = Vec::new();
        for (name, _) in ty.imports(&self.engine) {
            let rule = ImportRule::of(name);
            let allowed = match rule {
                ImportRule::Types | ImportRule::Baseline => true,
                ImportRule::Grant(grant) => spec.grants.contains(&grant),
                ImportRule::Denied => false,
            };
            if !allowed {
                ungranted.push(UngrantedImport {
                    name: name.to_owned(),
                    grant: match rule {
                        ImportRule::Grant(grant) => Some(grant),
                        _ => None,
                    },
                });
            }
            // Types-only interfaces carry no functions; listing them would
            // only add noise to `strata check`.
            if rule != ImportRule::Types {
                imports.push(ImportInfo {
                    name: name.to_owned(),
                    rule,
                });
            }
        }
        if !ungranted.is_empty() {
            return Err(fail(ManifestErrorKind::UngrantedImports {
                path,
                imports: ungranted,
            }));
        }

        let link = |component: &wasmtime::component::Component| {
            self.linker
                .instantiate_pre(component)
                .and_then(|pre| StagePre::new(contract, pre))
                .map_err(|e| {
                    fail(ManifestErrorKind::Link {
                        path: path.clone(),
                        reason: format!("{e:#}"),
                    })
                })
        };
        // Linked first, so a component that cannot link is named as such
        // rather than as an `init` that failed.
        let mut pre = link(&component)?;
        let config = ConfigCtx::new(&spec.config);
        let wasi = Arc::new(spec.wasi.clone());
        let initialised = self
            .initialise(spec, &config, &wasi, &component)
            .map_err(|reason| {
                fail(ManifestErrorKind::Init {
                    path: path.clone(),
                    reason,
                })
            })?;
        if let Some(snapshot) = &initialised {
            pre = link(&snapshot.component)?;
        }

        Ok(LoadedStage {
            snapshot: initialised,
            config,
            wasi,
            spec: spec.clone(),
            digest: spec.plugin.digest.clone(),
            contract,
            imports,
            exports,
            pre,
            reuse: spec.reuse.map(|spec| ReusePool {
                spec,
                idle: Mutex::new(Vec::new()),
                serving: std::sync::atomic::AtomicBool::new(true),
            }),
        })
    }

    /// Compile a plugin and list its exports and imports, without checking
    /// them against any grants (`strata audit` reports rather than refuses).
    pub fn inspect(&self, plugin: &PluginFile) -> Result<ComponentFacts, String> {
        let component = self.compile(plugin)?;
        let ty = component.component_type();
        Ok(ComponentFacts {
            exports: ty
                .exports(&self.engine)
                .map(|(name, _)| name.to_owned())
                .collect(),
            imports: ty
                .imports(&self.engine)
                .map(|(name, _)| ImportInfo {
                    name: name.to_owned(),
                    rule: ImportRule::of(name),
                })
                .collect(),
        })
    }
}

/// A stage ready to be invoked.
pub struct LoadedStage {
    /// The stage as the manifest describes it.
    pub spec: StageSpec,
    /// The component's SHA-256.
    pub digest: Digest,
    /// The contract version the component was built against.
    pub contract: Contract,
    /// The component's imports (types-only interfaces left out) and how each
    /// is satisfied.
    pub imports: Vec<ImportInfo>,
    /// The component's exports.
    pub exports: Vec<String>,
    /// What its `init` left, when it asked to be kept: every fresh
    /// instance starts from this instead of the component.
    pub snapshot: Option<Snapshot>,
    pub(super) pre: StagePre<StageState>,
    pub(super) config: Arc<ConfigCtx>,
    /// What its WASI may reach: directories, addresses, HTTP hosts.
    pub(super) wasi: Arc<crate::manifest::WasiSpec>,
    pub(super) reuse: Option<ReusePool>,
}

impl LoadedStage {
    /// Mark this version served or not. A version no longer served drops
    /// its idle instances at once, releasing their pool slots, and keeps
    /// none from then on; one served again (a rollback) keeps them again.
    pub fn set_serving(&self, serving: bool) {
        if let Some(pool) = &self.reuse {
            pool.serving
                .store(serving, std::sync::atomic::Ordering::Release);
            if !serving {
                let idle =
                    std::mem::take(&mut *pool.idle.lock().unwrap_or_else(|e| e.into_inner()));
                drop(idle);
            }
        }
    }

    /// Idle instances this version holds (and so pool slots).
    pub fn idle_instances(&self) -> usize {
        self.reuse.as_ref().map_or(0, |pool| {
            pool.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
        })
    }
}

/// An instance waiting for its next request, with its store and the pool
/// slot it holds.
pub(super) struct Idle {
    pub(super) store: Store<StageState>,
    pub(super) instance: StageInstance,
    pub(super) slot: tokio::sync::OwnedSemaphorePermit,
    pub(super) uses: u32,
}

/// The idle instances of a stage that reuses them.
pub(crate) struct ReusePool {
    pub(super) spec: crate::manifest::ReuseSpec,
    pub(super) idle: Mutex<Vec<Idle>>,
    /// False while the stage's generation is not the one served: instances
    /// are then not kept idle.
    pub(super) serving: std::sync::atomic::AtomicBool,
}

/// What a component exports and imports.
#[derive(Debug, Clone)]
pub struct ComponentFacts {
    /// Export names.
    pub exports: Vec<String>,
    /// Every import, types-only ones included, with how the host would
    /// satisfy it.
    pub imports: Vec<ImportInfo>,
}

impl ComponentFacts {
    /// Whether it exports the stage interface of a supported version.
    pub fn is_stage(&self) -> bool {
        self.contract().is_some()
    }

    /// The contract version whose stage it exports.
    pub fn contract(&self) -> Option<Contract> {
        Contract::of_exports(self.exports.iter().map(String::as_str))
    }
}

/// One import of a loaded component.
#[derive(Debug, Clone)]
pub struct ImportInfo {
    /// Full name, e.g. `wasi:cli/stdout@0.2.6`.
    pub name: String,
    /// How the host satisfies it.
    pub rule: ImportRule,
}
