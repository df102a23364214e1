//! `strata:pipeline/config`: a stage reads its own `config` table from the
//! manifest, and nothing else.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use crate::runtime::StageState;
use crate::runtime::bindings::v0_2::strata::pipeline::config::Host;
use crate::runtime::bindings::{v0_1, v0_2};

/// A stage's config table, prepared once when the stage loads and shared by
/// every invocation of it.
pub(crate) struct ConfigCtx {
    /// Top-level values: strings as they are, anything else as JSON.
    values: HashMap<String, String>,
    /// The whole table as JSON.
    json: String,
}

impl ConfigCtx {
    pub(crate) fn new(table: &serde_json::Map<String, serde_json::Value>) -> Arc<ConfigCtx> {
        let values = table
            .iter()
            .map(|(key, value)| {
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (key.clone(), text)
            })
            .collect();
        Arc::new(ConfigCtx {
            values,
            json: serde_json::Value::Object(table.clone()).to_string(),
        })
    }
}

impl ConfigCtx {
    /// The whole table as JSON.
    pub(crate) fn json(&self) -> &str {
        &self.json
    }
}

/// Link `config` of every contract version, served from
/// [`StageState::config`].
pub(crate) fn add_to_linker(linker: &mut Linker<StageState>) -> wasmtime::Result<()> {
    v0_2::strata::pipeline::config::add_to_linker::<_, HasSelf<Arc<ConfigCtx>>>(linker, |s| {
        &mut s.config
    })?;
    v0_1::strata::pipeline::config::add_to_linker::<_, HasSelf<Arc<ConfigCtx>>>(linker, |s| {
        &mut s.config
    })
}

impl Host for Arc<ConfigCtx> {
    fn get(&mut self, key: String) -> Option<String> {
        self.values.get(&key).cloned()
    }

    fn get_json(&mut self) -> String {
        self.json.clone()
    }
}
