//! `strata:pipeline/config`: a stage reads its own `config` table from the
//! manifest, and nothing else.

use crate::runtime::StageState;
use crate::runtime::bindings::v0_2::strata::pipeline::config::Host;

impl Host for StageState {
    fn get(&mut self, key: String) -> Option<String> {
        self.context.config.values.get(&key).cloned()
    }

    fn get_json(&mut self) -> String {
        self.context.config.json.clone()
    }
}
