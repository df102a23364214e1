//! Test component `not-a-stage`: a valid component that does not export the
//! `strata:pipeline/stage` interface, and so must be refused at load time.

wit_bindgen::generate!({
    path: "wit",
    world: "other",
});

struct NotAStage;

impl Guest for NotAStage {
    fn run() -> String {
        "not a stage".to_owned()
    }
}

export!(NotAStage);
