//! Host bindings for every supported version of the `strata:pipeline` WIT
//! package, generated in one place, and the conversions between them and the
//! host's own types.
//!
//! Each version gets its own `bindgen!` over its own package text: `v0_2`
//! over `wit/` (the current contract), `v0_1` over the frozen `wit/0.1.0/`.
//! Both are linked into the one linker; a component picks its version by the
//! `stage` it exports ([`Contract::of_exports`]) and is pre-instantiated with
//! that version's bindings.
//!
//! The `types` interface is the same in both versions, so `v0_1` reuses the
//! `v0_2` Rust types through `with:` and the request and outcome conversions
//! below serve both. The host interfaces (`log`, `config`, `cache`, `model`)
//! cannot be shared that way: a `with:`-remapped interface is linked under
//! the name of the version it was generated for, so `v0_1` has its own
//! traits and records, and `crate::runtime::imports::v0_1` serves them by delegating
//! to the current implementation. Each interface is linked, both versions at
//! once, by its own file under `crate::runtime::imports`.

use wasmtime::component::InstancePre;
use wasmtime::{AsContextMut, Result};

use crate::manifest::StageKind;
use crate::request::{Outcome, Request};
use crate::runtime::StageFailure;

/// `strata:pipeline@0.2.0`, the current contract (`wit/pipeline.wit`).
pub(crate) mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        // `lookup` may ask an embeddings endpoint for the question's vector.
        imports: {
            "strata:pipeline/model": async,
            "strata:pipeline/cache.lookup": async,
        },
        exports: { default: async },
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// `strata:pipeline@0.1.0`, frozen (`wit/0.1.0/pipeline.wit`).
pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "plugin",
        imports: { "strata:pipeline/model": async },
        exports: { default: async },
        ownership: Borrowing { duplicate_if_necessary: true },
        // Identical in both versions; sharing the Rust types lets one set of
        // conversions serve both. `types` holds no functions, so linking it
        // defines nothing either way, and the linker accepts a component's
        // types-only `types@0.1.0` import without definitions (the
        // `wit_versions` tests load such a component).
        with: { "strata:pipeline/types": super::v0_2::strata::pipeline::types },
    });
}

pub(crate) use self::v0_2::strata::pipeline::types as wit;

/// A contract a stage can be built against: a version of
/// `strata:pipeline`, or `wasi:http`'s incoming handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `strata:pipeline@0.1.0`.
    V0_1,
    /// `strata:pipeline@0.2.0`.
    V0_2,
    /// `wasi:http/incoming-handler@0.2.x`: an HTTP handler, called as
    /// `crate::runtime::http_stage` describes.
    WasiHttp,
}

/// The stage export of each supported version, newest first.
const STAGE_EXPORTS: [(&str, Contract); 2] = [
    ("strata:pipeline/stage@0.2.0", Contract::V0_2),
    ("strata:pipeline/stage@0.1.0", Contract::V0_1),
];

/// The export of an HTTP stage, any 0.2 patch version.
const HTTP_HANDLER_EXPORT: &str = "wasi:http/incoming-handler@0.2.";

/// What a stage must export, for error messages.
pub(crate) const STAGE_EXPORT_EXPECTED: &str =
    "strata:pipeline/stage@0.2.0 or @0.1.0, or wasi:http/incoming-handler@0.2.x";

impl Contract {
    /// The version whose `stage` a component exports (the newest, should it
    /// export more than one; a `strata:pipeline` stage before an HTTP
    /// handler), or `None` when it is not a stage.
    pub fn of_exports<'a>(exports: impl IntoIterator<Item = &'a str>) -> Option<Contract> {
        let exports: Vec<&str> = exports.into_iter().collect();
        STAGE_EXPORTS
            .iter()
            .find(|(name, _)| exports.contains(name))
            .map(|&(_, contract)| contract)
            .or_else(|| {
                exports
                    .iter()
                    .any(|name| name.starts_with(HTTP_HANDLER_EXPORT))
                    .then_some(Contract::WasiHttp)
            })
    }

    /// The version number, e.g. `0.2.0` (`0.2` for any HTTP handler).
    pub fn version(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.0",
            Contract::WasiHttp => "0.2",
        }
    }

    /// The kind of stage the contract makes.
    pub fn kind(self) -> StageKind {
        match self {
            Contract::V0_1 | Contract::V0_2 => StageKind::Pipeline,
            Contract::WasiHttp => StageKind::Http,
        }
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Contract::WasiHttp => write!(f, "wasi:http/incoming-handler@{}", self.version()),
            _ => write!(f, "strata:pipeline@{}", self.version()),
        }
    }
}

/// A stage component pre-instantiated with its version's bindings.
pub(crate) enum StagePre<T: 'static> {
    /// Built against 0.1.0.
    V0_1(v0_1::PluginPre<T>),
    /// Built against 0.2.0.
    V0_2(v0_2::PluginPre<T>),
    /// An HTTP handler.
    Http(wasmtime_wasi_http::p2::bindings::ProxyPre<T>),
}

impl<T: Send + 'static> StagePre<T> {
    /// Check `pre` against `contract`'s world and keep its export indices.
    pub(crate) fn new(contract: Contract, pre: InstancePre<T>) -> Result<StagePre<T>> {
        Ok(match contract {
            Contract::V0_1 => StagePre::V0_1(v0_1::PluginPre::new(pre)?),
            Contract::V0_2 => StagePre::V0_2(v0_2::PluginPre::new(pre)?),
            Contract::WasiHttp => {
                StagePre::Http(wasmtime_wasi_http::p2::bindings::ProxyPre::new(pre)?)
            }
        })
    }

    /// A fresh instance, ready to handle requests.
    pub(crate) async fn instantiate_async(
        &self,
        store: impl AsContextMut<Data = T>,
    ) -> Result<StageInstance> {
        Ok(match self {
            StagePre::V0_1(pre) => StageInstance::V0_1(pre.instantiate_async(store).await?),
            StagePre::V0_2(pre) => StageInstance::V0_2(pre.instantiate_async(store).await?),
            StagePre::Http(pre) => StageInstance::Http(pre.instantiate_async(store).await?),
        })
    }
}

/// An instantiated stage of either version.
pub(crate) enum StageInstance {
    /// Built against 0.1.0.
    V0_1(v0_1::Plugin),
    /// Built against 0.2.0.
    V0_2(v0_2::Plugin),
    /// An HTTP handler.
    Http(wasmtime_wasi_http::p2::bindings::Proxy),
}

impl StageInstance {
    /// Call the stage's handler on `request`. The outer error is the call
    /// failing (a trap, a limit); the inner one an HTTP stage's response
    /// that is no outcome (a 5xx, a body that is not the contract's JSON).
    pub(crate) async fn handle(
        &self,
        store: &mut wasmtime::Store<crate::runtime::StageState>,
        request: &Request,
        stage: &str,
        output_limit: usize,
    ) -> Result<Result<Outcome, StageFailure>> {
        let attributes = attribute_params(request);
        let param = request_param(request, &attributes);
        let outcome = match self {
            StageInstance::V0_1(plugin) => {
                plugin
                    .strata_pipeline_stage()
                    .call_handle(store, param)
                    .await?
            }
            StageInstance::V0_2(plugin) => {
                plugin
                    .strata_pipeline_stage()
                    .call_handle(store, param)
                    .await?
            }
            StageInstance::Http(proxy) => {
                return super::http_stage::handle(proxy, store, request, stage, output_limit).await;
            }
        };
        Ok(Ok(outcome.into()))
    }
}

/// `attributes` as the contract's parameter type, borrowing their text.
fn attribute_params(request: &Request) -> Vec<wit::AttributeParam<'_>> {
    request
        .attributes
        .iter()
        .map(|(key, value)| wit::AttributeParam { key, value })
        .collect()
}

/// `request` as the contract's parameter type, borrowing its text (the call
/// copies it into the guest's memory once, from here).
fn request_param<'a>(
    request: &'a Request,
    attributes: &'a [wit::AttributeParam<'a>],
) -> wit::RequestParam<'a> {
    wit::RequestParam {
        id: &request.id,
        pipeline: &request.pipeline,
        input: &request.input,
        attributes,
    }
}

impl From<wit::Outcome> for Outcome {
    fn from(outcome: wit::Outcome) -> Self {
        match outcome {
            // The id and pipeline a stage returns are ignored on purpose: a
            // stage may rewrite the input and attributes, nothing else.
            wit::Outcome::Next(request) => Outcome::Next {
                input: request.input,
                attributes: request
                    .attributes
                    .into_iter()
                    .map(|a| (a.key, a.value))
                    .collect(),
            },
            wit::Outcome::Respond(answer) => Outcome::Respond {
                output: answer.output,
                confidence: answer.confidence,
            },
            wit::Outcome::Escalate(escalation) => Outcome::Escalate {
                reason: escalation.reason,
                draft: escalation.draft,
            },
            wit::Outcome::Reject(rejection) => Outcome::Reject {
                code: rejection.code,
                message: rejection.message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Contract;

    #[test]
    fn a_component_is_read_as_the_version_of_the_stage_it_exports() {
        let cases: [(&[&str], Option<Contract>); 5] = [
            (&["strata:pipeline/stage@0.1.0"], Some(Contract::V0_1)),
            (&["strata:pipeline/stage@0.2.0"], Some(Contract::V0_2)),
            // Should one component export both, the newest is used.
            (
                &["strata:pipeline/stage@0.1.0", "strata:pipeline/stage@0.2.0"],
                Some(Contract::V0_2),
            ),
            (&["strata:pipeline/stage@0.3.0"], None),
            (&["run"], None),
        ];
        for (exports, expected) in cases {
            assert_eq!(
                Contract::of_exports(exports.iter().copied()),
                expected,
                "{exports:?}"
            );
        }
        assert_eq!(Contract::V0_1.to_string(), "strata:pipeline@0.1.0");
    }
}
