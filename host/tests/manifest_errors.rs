//! Snapshot tests of invalid manifests: every `invalid/NAME.toml` must be
//! refused with exactly the message in `invalid/NAME.err` (the error's
//! `Display`, which names the file, pipeline, stage and key at fault).
//!
//! Runs with `cargo test -p strata` alone: no component is compiled, since
//! every case is refused while reading the manifest. After changing a
//! message on purpose, rewrite the expected files with
//! `UPDATE_SNAPSHOTS=1 cargo test -p strata --test manifest_errors` and
//! review the diff.

use std::path::{Path, PathBuf};

use strata::Manifest;

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    cases
}

/// The message with the directory of the cases taken out, so snapshots do
/// not depend on where the repository is.
fn message_of(case: &Path) -> String {
    let error = match Manifest::load(case) {
        Ok(_) => panic!("{} was accepted; it must be refused", case.display()),
        Err(error) => error.to_string(),
    };
    let dir = case.parent().unwrap().display().to_string();
    error.replace(&dir, "invalid")
}

#[test]
fn every_invalid_manifest_is_refused_with_its_message() {
    let cases = cases();
    assert!(cases.len() >= 10, "only {} cases found", cases.len());
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let message = message_of(case);
        let expected_path = case.with_extension("err");
        if update {
            std::fs::write(&expected_path, format!("{message}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with UPDATE_SNAPSHOTS=1 to write it",
                expected_path.display()
            )
        });
        if expected.trim_end() != message {
            failures.push(format!(
                "{}\n  expected: {}\n  got:      {message}",
                case.display(),
                expected.trim_end()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_expected_message_has_its_case() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "err") {
            assert!(
                path.with_extension("toml").exists(),
                "{} has no case",
                path.display()
            );
        }
    }
}
