//! Every way a manifest is refused, with the exact message an operator sees.
//! Each message names the file, and where it applies the pipeline, the stage
//! and the key at fault.

use std::path::Path;

use strata::manifest::{Manifest, ManifestError, ManifestErrorKind};
use strata::pipeline::Generation;
use strata::runtime::Runtime;
use strata_tests::{SMALL_RUNTIME, components, toml_str};

/// Load `manifest` fully (parse, validate, compile, link) and return the
/// error, with the temporary directory and the guests' directory replaced by
/// `$DIR` and `$GUESTS` so that messages can be compared exactly.
fn refusal(manifest: &str) -> (ManifestError, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    std::fs::write(&path, manifest).unwrap();
    let error = match load(&path) {
        Ok(()) => panic!("the manifest was accepted:\n{manifest}"),
        Err(error) => error,
    };
    let guests = Path::new(components::SCRIPTED).parent().unwrap();
    let message = error
        .to_string()
        .replace(&dir.path().display().to_string(), "$DIR")
        .replace(&guests.display().to_string(), "$GUESTS");
    (error, message)
}

fn load(path: &Path) -> Result<(), ManifestError> {
    let manifest = std::sync::Arc::new(Manifest::load(path)?);
    let runtime = Runtime::new(&manifest.runtime, None).expect("the engine starts");
    Generation::load(manifest, &runtime, 1).map(|_| ())
}

/// A one-stage manifest whose stage has `extra` lines.
fn one_stage(plugin: &str, extra: &str) -> String {
    format!(
        "{SMALL_RUNTIME}
[pipelines.support]
[[pipelines.support.stages]]
name = \"only\"
layer = \"rules\"
plugin = {}
{extra}
",
        toml_str(plugin)
    )
}

#[test]
fn a_store_url_that_is_not_postgres_is_refused_by_name() {
    for url in [
        "mysql://strata@127.0.0.1/strata",
        "postgres://strata@127.0.0.1:notaport/x",
    ] {
        let (error, message) = refusal(&format!(
            "[store]\nurl = \"{url}\"\n{}",
            one_stage(components::SCRIPTED, "")
        ));
        assert!(
            matches!(*error.kind, ManifestErrorKind::Invalid(_)),
            "{message}"
        );
        assert!(message.contains("store.url"), "{message}");
        assert!(message.contains("is not a PostgreSQL URL"), "{message}");
        assert!(
            !message.contains(url),
            "the URL may hold a password: {message}"
        );
    }
}

#[test]
fn unknown_top_level_key() {
    let (error, message) = refusal(&format!(
        "lisen = \"127.0.0.1:1\"\n{}",
        one_stage(components::SCRIPTED, "")
    ));
    assert!(matches!(*error.kind, ManifestErrorKind::Schema(_)));
    assert_eq!(
        message,
        "$DIR/strata.toml: key \"lisen\": unknown field `lisen`, expected one of `listen`, `data_dir`, `server`, \
         `runtime`, `admin`, `reload`, `models`, `async`, `callbacks`, `retention`, `telemetry`, `shared`, `store`, \
         `pipelines`, `teams`"
    );
}

#[test]
fn unknown_stage_key() {
    let (_, message) = refusal(&one_stage(components::SCRIPTED, "timeout_ms = 5"));
    assert_eq!(
        message,
        "$DIR/strata.toml: pipeline \"support\", stage \"only\", key \"timeout_ms\": unknown field \
         `timeout_ms`, \
         expected one of `name`, `plugin`, `layer`, `sha256`, `grants`, `limits`, `on_error`, \
         `config`, `candidate`, `cases`, `deterministic`, `seed`, `wasi`, `reuse`, `kind`, `build`"
    );
}

#[test]
fn unknown_limits_key() {
    let (_, message) = refusal(&one_stage(components::SCRIPTED, "limits = { timeout = 5 }"));
    assert_eq!(
        message,
        "$DIR/strata.toml: pipeline \"support\", stage \"only\", key \"limits.timeout\": unknown \
         field `timeout`, \
         expected one of `timeout_ms`, `memory_mib`, `fuel`, `output_kib`"
    );
}

#[test]
fn unknown_pipeline_key() {
    let manifest = one_stage(components::SCRIPTED, "").replace(
        "[pipelines.support]\n",
        "[pipelines.support]\nmin_confidenc = 0.5\n",
    );
    let (_, message) = refusal(&manifest);
    assert_eq!(
        message,
        "$DIR/strata.toml: pipeline \"support\", key \"min_confidenc\": unknown field \
         `min_confidenc`, expected one of \
         `min_confidence`, `fallthrough`, `slo`, `answer_bank`, `record`, `cases`, `stages`"
    );
}

#[test]
fn missing_plugin_file() {
    let (error, message) = refusal(&one_stage("no/such/plugin.wasm", ""));
    assert!(matches!(
        *error.kind,
        ManifestErrorKind::MissingPlugin { .. }
    ));
    assert_eq!(
        message,
        "$DIR/strata.toml: pipeline \"support\", stage \"only\", key \"plugin\": cannot read \
         plugin $DIR/no/such/plugin.wasm: No such file or directory (os error 2)"
    );
}

#[test]
fn duplicate_stage_names() {
    let manifest = format!(
        "{}
[[pipelines.support.stages]]
name = \"only\"
layer = \"rules\"
plugin = {}
",
        one_stage(components::SCRIPTED, ""),
        toml_str(components::SCRIPTED)
    );
    let (error, message) = refusal(&manifest);
    assert!(matches!(*error.kind, ManifestErrorKind::Duplicate(_)));
    assert_eq!(
        message,
        "$DIR/strata.toml: pipeline \"support\", stage \"only\", key \"name\": duplicate name \
         \"only\""
    );
}

#[test]
fn duplicate_pipeline_names() {
    let manifest = format!(
        "{}\n[pipelines.support]\nmin_confidence = 0.5\n",
        one_stage(components::SCRIPTED, "")
    );
    let (error, message) = refusal(&manifest);
    assert!(matches!(*error.kind, ManifestErrorKind::Syntax(_)));
    assert_eq!(
        message,
        "$DIR/strata.toml: invalid TOML: line 11, column 12: duplicate key"
    );
}

#[test]
fn digest_mismatch() {
    let wrong = "0".repeat(64);
    let (error, message) = refusal(&one_stage(
        components::SCRIPTED,
        &format!("sha256 = \"{wrong}\""),
    ));
    let ManifestErrorKind::DigestMismatch { actual, .. } = &*error.kind else {
        panic!("unexpected {error}");
    };
    assert_eq!(
        message,
        format!(
            "$DIR/strata.toml: pipeline \"support\", stage \"only\", key \"sha256\": digest \
             mismatch for $GUESTS/scripted.wasm: the manifest pins sha256:{wrong}, the file has \
             {actual}"
        )
    );
}

#[test]
fn digest_pin_that_matches_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    std::fs::write(&path, one_stage(components::NORMALISE, "")).unwrap();
    let digest = Manifest::load(&path).unwrap().pipelines["support"].stages[0]
        .plugin
        .digest
        .hex()
        .to_owned();
    // Both spellings of a pin are accepted.
    for pin in [digest.clone(), format!("sha256:{}", digest.to_uppercase())] {
        std::fs::write(
            &path,
            one_stage(components::NORMALISE, &format!("sha256 = \"{pin}\"")),
        )
        .unwrap();
        load(&path).unwrap_or_else(|e| panic!("pin {pin} refused: {e}"));
    }
}

#[test]
fn component_without_the_stage_export() {
    let (error, message) = refusal(&one_stage(components::NOT_A_STAGE, ""));
    assert!(matches!(
        *error.kind,
        ManifestErrorKind::MissingExport { .. }
    ));
    assert_eq!(
        message,
        "$DIR/strata.toml: pipeline \"support\", stage \"only\", key \"plugin\": \
         $GUESTS/not_a_stage.wasm does not export strata:pipeline/stage@0.2.0 or @0.1.0, or wasi:http/incoming-handler@0.2.x (it exports run)"
    );
}

#[test]
fn file_that_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm this is not wasm").unwrap();
    let (error, _) = refusal(&one_stage(junk.to_str().unwrap(), ""));
    assert!(
        matches!(*error.kind, ManifestErrorKind::InvalidComponent { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("is not a valid component"),
        "{error}"
    );
}

#[test]
fn every_ungranted_import_is_listed() {
    // reads-file uses the filesystem and the log, neither granted: all three
    // imports are named at once.
    let (error, message) = refusal(&one_stage(components::READS_FILE, ""));
    let ManifestErrorKind::UngrantedImports { imports, .. } = &*error.kind else {
        panic!("unexpected {error}");
    };
    assert_eq!(imports.len(), 3, "{message}");
    assert_eq!(
        message,
        "$DIR/strata.toml: pipeline \"support\", stage \"only\", key \"plugin\": \
         $GUESTS/reads_file.wasm imports what the stage is not granted: \
         strata:pipeline/log@0.2.0 (needs grant \"log\"), \
         wasi:filesystem/types@0.2.6 (needs grant \"wasi:filesystem\"), \
         wasi:filesystem/preopens@0.2.6 (needs grant \"wasi:filesystem\")"
    );
}

#[test]
fn granting_one_interface_does_not_grant_another() {
    let (_, message) = refusal(&one_stage(components::SCRIPTED, "grants = [\"log\"]"));
    assert!(
        message.ends_with(
            "imports what the stage is not granted: strata:pipeline/config@0.2.0 (needs grant \
             \"config\")"
        ),
        "{message}"
    );
}

#[test]
fn invalid_values() {
    let plugin = toml_str(components::SCRIPTED);
    let stage = |extra: &str| {
        format!(
            "[pipelines.support]\n[[pipelines.support.stages]]\nname = \"only\"\nlayer = \
             \"rules\"\nplugin = {plugin}\n{extra}\n"
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (
            "listen = \"localhost\"\n".to_owned() + &stage(""),
            "key \"listen\": \"localhost\" is not a socket address such as 127.0.0.1:8080",
        ),
        (
            "".to_owned(),
            "key \"pipelines\": the manifest defines no pipeline",
        ),
        (
            stage("").replace(
                "[pipelines.support]",
                "[pipelines.support]\nmin_confidence = 1.5",
            ),
            "pipeline \"support\", key \"min_confidence\": 1.5 is outside 0..=1",
        ),
        (
            "[pipelines.support]\nfallthrough = \"ignore\"\n".to_owned(),
            "pipeline \"support\", key \"fallthrough\": unknown variant `ignore`, expected `escalate` or `reject`",
        ),
        (
            "[pipelines.support]\nmin_confidence = 0.5\n".to_owned(),
            "pipeline \"support\", key \"stages\": the pipeline has no stages",
        ),
        (
            stage("")
                .replace("[pipelines.support]", "[pipelines.Support]")
                .replace("pipelines.support.", "pipelines.Support."),
            "pipeline \"Support\": \"Support\" is not a valid name: use 1 to 64 lower-case letters, \
             digits, '-' or '_', starting with a letter or digit",
        ),
        (
            stage("grants = [\"network\"]"),
            "pipeline \"support\", stage \"only\", key \"grants\": unknown grant \"network\"; \
             known grants: log, config, cache, model, wasi:filesystem, wasi:sockets, wasi:http",
        ),
        (
            stage("grants = [\"log\", \"log\"]"),
            "pipeline \"support\", stage \"only\", key \"grants\": duplicate name \"log\"",
        ),
        (
            stage("limits = { timeout_ms = 0 }"),
            "pipeline \"support\", stage \"only\", key \"limits.timeout_ms\": 0 is outside \
             1..=300000",
        ),
        (
            stage("limits = { memory_mib = 4096 }"),
            "pipeline \"support\", stage \"only\", key \"limits.memory_mib\": 4096 is outside \
             1..=1024",
        ),
        (
            "[runtime]\nfuel_metering = false\n".to_owned() + &stage("limits = { fuel = 1000 }"),
            "pipeline \"support\", stage \"only\", key \"limits.fuel\": a fuel limit needs fuel \
             metering, which [runtime] fuel_metering = false turns off",
        ),
        (
            stage("on_error = \"retry\""),
            "pipeline \"support\", stage \"only\", key \"on_error\": unknown variant `retry`, expected one of \
             `skip`, `escalate`, `fail`",
        ),
        (
            stage("sha256 = \"abc\""),
            "pipeline \"support\", stage \"only\", key \"sha256\": \"abc\" is not a SHA-256 \
             digest (64 hexadecimal digits)",
        ),
        (
            stage("").replace("layer = \"rules\"\n", ""),
            "pipeline \"support\", stage \"only\": missing field `layer`",
        ),
        (
            stage("limits = { timeout_ms = \"fast\" }"),
            "pipeline \"support\", stage \"only\", key \"limits.timeout_ms\": expected an \
             integer, found \"fast\"",
        ),
        (
            "[server]\nmax_body_kib = 0\n".to_owned() + &stage(""),
            "key \"server.max_body_kib\": 0 is outside 1..=16384",
        ),
        (
            "[async]\nworkers = 0\n".to_owned() + &stage(""),
            "key \"async.workers\": 0 is outside 1..=128: at most half of [runtime] instances \
             (256) may run in the background, so that real-time requests always find a free \
             instance",
        ),
        (
            "[runtime]\ninstances = 16\n[async]\nworkers = 9\n".to_owned() + &stage(""),
            "key \"async.workers\": 9 is outside 1..=8: at most half of [runtime] instances \
             (16) may run in the background, so that real-time requests always find a free \
             instance",
        ),
        (
            "[async]\nqueue = 0\n".to_owned() + &stage(""),
            "key \"async.queue\": 0 is outside 1..=1000000",
        ),
        (
            "[async]\nqueue = 10\nthreads = 2\n".to_owned() + &stage(""),
            "key \"async.threads\": unknown field `threads`, expected one of `queue`, `workers`, `max_runs`, \
             `lease_ms`",
        ),
        (
            "[async]\nlease_ms = 10\n".to_owned() + &stage(""),
            "key \"async.lease_ms\": 10 is outside 1000..=3600000",
        ),
        (
            "[callbacks]\nallow = [\"https://hooks.example.com/x\"]\n".to_owned() + &stage(""),
            "key \"callbacks.allow\": \"https://hooks.example.com/x\" is not a host or \
             host:port (write \"hooks.example.com\" or \"127.0.0.1:9000\", without a scheme or \
             path)",
        ),
        (
            "[callbacks]\nallow = [\"hooks.example.com:https\"]\n".to_owned() + &stage(""),
            "key \"callbacks.allow\": \"hooks.example.com:https\" is not a host or \
             host:port (write \"hooks.example.com\" or \"127.0.0.1:9000\", without a scheme or \
             path)",
        ),
        (
            "[callbacks]\nallow = [{ host = \"hooks.example.com\", secret_env = \"\" }]\n"
                .to_owned()
                + &stage(""),
            "key \"callbacks.allow\": the secret_env of \"hooks.example.com\" is empty; name \
             the environment variable holding its key",
        ),
        (
            "[callbacks]\nallow = [{ host = \"hooks.example.com\", secret = \"x\" }]\n".to_owned()
                + &stage(""),
            "key \"callbacks.allow[0].secret\": unknown field `secret`, expected `host` or `secret_env`",
        ),
        (
            "[callbacks]\nconcurrency = 0\n".to_owned() + &stage(""),
            "key \"callbacks.concurrency\": 0 is outside 1..=256",
        ),
        (
            "[callbacks]\nmax_attempts = 0\n".to_owned() + &stage(""),
            "key \"callbacks.max_attempts\": 0 is outside 1..=100",
        ),
        (
            "[callbacks]\nbackoff_ms = 0\n".to_owned() + &stage(""),
            "key \"callbacks.backoff_ms\": 0 is outside 1..=3600000",
        ),
        (
            "[models.providers.p]\nbase_url = \"http://127.0.0.1:1/v1\"\n\
             [models.tiers.t]\nprovider = \"p\"\nmodel = \"m\"\n\
             batch = { max_size = 0 }\n"
                .to_owned()
                + &stage(""),
            "key \"models.tiers.t.batch\": max_size must be in 1..=256 and max_wait_ms at most \
             60000",
        ),
        (
            "this is = not toml".to_owned(),
            "invalid TOML: line 1, column 6: key with no value, expected `=`",
        ),
    ];
    let mut failures = Vec::new();
    for (manifest, expected) in &cases {
        let (_, message) = refusal(manifest);
        let message = message.trim_start_matches("$DIR/strata.toml: ");
        if message != *expected {
            failures.push(format!("expected: {expected}\n     got: {message}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

mod generated {
    use std::path::Path;

    use proptest::prelude::*;
    use strata::manifest::Manifest;

    fn valid() -> String {
        format!(
            "[runtime]\ninstances = 4\n\n[pipelines.p]\nmin_confidence = 0.5\n\n\
             [[pipelines.p.stages]]\nname = \"a\"\nlayer = \"rules\"\nplugin = {}\n\
             limits = {{ timeout_ms = 10 }}\nconfig = {{ k = [1, 2] }}\n",
            strata_tests::toml_str(strata_tests::components::NORMALISE)
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        /// Arbitrary text is refused with a message naming the file, never a
        /// panic.
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            if let Err(error) = Manifest::parse(Path::new("gen.toml"), &text) {
                prop_assert!(error.to_string().starts_with("gen.toml: "), "{error}");
            }
        }

        /// A valid manifest with one byte changed, removed or inserted is
        /// either still valid or refused with a message; never a panic.
        #[test]
        fn mutated_manifests_never_panic(at in 0usize..1000, byte in any::<u8>(), op in 0u8..3) {
            let mut bytes = valid().into_bytes();
            let at = at % bytes.len();
            match op {
                0 => bytes[at] = byte,
                1 => { bytes.remove(at); }
                _ => bytes.insert(at, byte),
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Err(error) = Manifest::parse(Path::new("gen.toml"), &text) {
                prop_assert!(error.to_string().starts_with("gen.toml: "), "{error}");
            }
        }
    }
}
