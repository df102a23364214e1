//! The Rust SDK is a crate of its own, publishable: it carries its copy of
//! the contract, which must be the repository's, and its version is the
//! contract's.

use strata_tests::workspace_root;

#[test]
fn the_sdk_ships_the_current_contract_under_its_version() {
    let root = workspace_root();
    let contract = std::fs::read_to_string(root.join("wit/pipeline.wit")).unwrap();
    let shipped = std::fs::read_to_string(root.join("plugins/sdk/wit/pipeline.wit")).unwrap();
    assert!(
        contract == shipped,
        "plugins/sdk/wit/pipeline.wit differs from wit/pipeline.wit: copy it over"
    );
    let version = contract
        .lines()
        .find_map(|line| line.trim().strip_prefix("package strata:pipeline@"))
        .and_then(|rest| rest.strip_suffix(';'))
        .expect("the WIT names its package and version");
    let manifest: toml::Table = std::fs::read_to_string(root.join("plugins/sdk/Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        manifest["package"]["version"].as_str(),
        Some(version),
        "the SDK's version must be the contract's"
    );
}
