//! Which imports a stage may have: the deny-by-default capability check.
//!
//! Every import of a component is classified here. Types-only interfaces and
//! the WASI interfaces that Rust's standard library pulls in (I/O streams,
//! CLI environment and stdio, clocks, randomness) are always satisfied, by a
//! locked-down WASI context, and so are `wasi:http/types` (an HTTP stage's
//! requests and responses). Host interfaces need their grant, and so do the
//! WASI filesystem, sockets and outgoing HTTP, which are linked confined (no
//! directory, no address, no host, unless the stage's `wasi` table names
//! some). Anything else (unknown packages) is refused. The check runs on
//! the component's declared imports before linking, so a refusal names every
//! offending import rather than only the first one the linker trips over.

use crate::manifest::Grant;

/// How an import is satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportRule {
    /// Types only: nothing to grant.
    Types,
    /// WASI that std-built guests import; served by a locked-down context.
    Baseline,
    /// A host interface that needs this grant.
    Grant(Grant),
    /// Not available to stages.
    Denied,
}

impl ImportRule {
    /// Classify an import by its full name, e.g. `wasi:cli/stdout@0.2.6`.
    pub fn of(import: &str) -> ImportRule {
        // The version is dropped: a grant covers an interface in every
        // contract version the host links (`strata:pipeline/cache@0.1.0`
        // and `@0.2.0` alike).
        let interface = import.split_once('@').map_or(import, |(name, _)| name);
        match interface {
            "strata:pipeline/types" => ImportRule::Types,
            "strata:pipeline/log" => ImportRule::Grant(Grant::Log),
            "strata:pipeline/config" => ImportRule::Grant(Grant::Config),
            "strata:pipeline/cache" => ImportRule::Grant(Grant::Cache),
            "strata:pipeline/model" => ImportRule::Grant(Grant::Model),
            _ if interface.starts_with("wasi:filesystem/") => {
                ImportRule::Grant(Grant::WasiFilesystem)
            }
            _ if interface.starts_with("wasi:sockets/") => ImportRule::Grant(Grant::WasiSockets),
            // The types every HTTP handler imports: requests and responses,
            // nothing that reaches out.
            "wasi:http/types" => ImportRule::Baseline,
            "wasi:http/outgoing-handler" => ImportRule::Grant(Grant::WasiHttp),
            _ if BASELINE_PACKAGES.iter().any(|p| interface.starts_with(p)) => ImportRule::Baseline,
            _ => ImportRule::Denied,
        }
    }

    /// A short description for `strata check` and audits.
    pub fn describe(self) -> String {
        match self {
            ImportRule::Types => "types only".to_owned(),
            ImportRule::Baseline => "locked-down WASI".to_owned(),
            ImportRule::Grant(grant) => format!("grant \"{grant}\""),
            ImportRule::Denied => "not available to stages".to_owned(),
        }
    }
}

/// WASI packages every stage gets, confined: streams go nowhere but the log,
/// there is no environment, no arguments, no preopened directory, and the
/// clocks and randomness reveal nothing about the host.
const BASELINE_PACKAGES: [&str; 4] = ["wasi:io/", "wasi:cli/", "wasi:clocks/", "wasi:random/"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_imports() {
        let cases = [
            ("strata:pipeline/types@0.1.0", ImportRule::Types),
            ("strata:pipeline/log@0.1.0", ImportRule::Grant(Grant::Log)),
            (
                "strata:pipeline/config@0.1.0",
                ImportRule::Grant(Grant::Config),
            ),
            // Every contract version is classified alike: one grant covers
            // an interface in all of them.
            ("strata:pipeline/types@0.2.0", ImportRule::Types),
            (
                "strata:pipeline/cache@0.1.0",
                ImportRule::Grant(Grant::Cache),
            ),
            (
                "strata:pipeline/cache@0.2.0",
                ImportRule::Grant(Grant::Cache),
            ),
            (
                "strata:pipeline/model@0.1.0",
                ImportRule::Grant(Grant::Model),
            ),
            (
                "strata:pipeline/model@0.2.0",
                ImportRule::Grant(Grant::Model),
            ),
            ("strata:pipeline/log@0.2.0", ImportRule::Grant(Grant::Log)),
            (
                "strata:pipeline/config@0.2.0",
                ImportRule::Grant(Grant::Config),
            ),
            ("wasi:cli/stdout@0.2.6", ImportRule::Baseline),
            ("wasi:io/streams@0.2.0", ImportRule::Baseline),
            ("wasi:random/insecure-seed@0.2.6", ImportRule::Baseline),
            (
                "wasi:filesystem/preopens@0.2.6",
                ImportRule::Grant(Grant::WasiFilesystem),
            ),
            (
                "wasi:sockets/tcp@0.2.6",
                ImportRule::Grant(Grant::WasiSockets),
            ),
            ("wasi:http/types@0.2.4", ImportRule::Baseline),
            (
                "wasi:http/outgoing-handler@0.2.6",
                ImportRule::Grant(Grant::WasiHttp),
            ),
            ("wasi:http/incoming-handler@0.2.0", ImportRule::Denied),
            ("example:other/thing", ImportRule::Denied),
        ];
        for (import, expected) in cases {
            assert_eq!(ImportRule::of(import), expected, "{import}");
        }
    }
}
