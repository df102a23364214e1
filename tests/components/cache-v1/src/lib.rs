//! Test component `cache-v1`: a stage built with wit-bindgen directly against
//! the frozen `strata:pipeline@0.1.0` (`wit/0.1.0`), not the SDK, so it keeps
//! exporting `stage@0.1.0` and importing `cache@0.1.0` and `config@0.1.0`
//! whatever the current contract is. Tests load it beside 0.2.0 stages to
//! show an old component behaves as it always did.
//!
//! It answers from the answer bank under `v1:<input>` when something is
//! there (at 1.0 if a person approved it, else 0.8); otherwise it stores
//! `<prefix><input>` there (config `prefix`, default `remembered: `) and
//! passes the request on with the attribute `cache-v1 = stored`.

wit_bindgen::generate!({
    path: "../../../wit/0.1.0",
    world: "plugin",
});

use exports::strata::pipeline::stage::Guest;
use strata::pipeline::types::{Answer, Attribute, Outcome, Request};
use strata::pipeline::{cache, config};

struct CacheV1;

impl Guest for CacheV1 {
    fn handle(mut request: Request) -> Outcome {
        let key = format!("v1:{}", request.input);
        if let Some(entry) = cache::get(&key) {
            let confidence = if entry.approved { 1.0 } else { 0.8 };
            return Outcome::Respond(Answer {
                output: entry.answer,
                confidence,
            });
        }
        let prefix = config::get("prefix").unwrap_or_else(|| "remembered: ".to_owned());
        cache::put(&key, &format!("{prefix}{}", request.input), 0);
        request.attributes.push(Attribute {
            key: "cache-v1".to_owned(),
            value: "stored".to_owned(),
        });
        Outcome::Next(request)
    }
}

export!(CacheV1);
