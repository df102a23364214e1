//! `strata new stage NAME`: a ready stage project in Rust, Python or
//! JavaScript, with a golden case and a manifest that builds, tests and
//! serves it. Everything it writes comes from this binary, so it works
//! anywhere, not only inside the Strata repository.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::toolchains::PIPELINE_WIT;
use crate::manifest::{Name, World};

/// The languages `strata new` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with the strata-sdk crate.
    Rust,
    /// Python with componentize-py.
    Python,
    /// JavaScript with componentize-js.
    Js,
}

/// The Rust SDK's sources, copied into a Rust project.
const SDK_LIB: &str = include_str!("../../../plugins/sdk/src/lib.rs");
const SDK_README: &str = include_str!("../../../plugins/sdk/README.md");

/// What the template answers "ping" with (and `cases.toml` expects).
const REPLY: &str = "pong";

/// Write a new stage project for `name` in `parent/name`. Returns the
/// project directory and the files written.
pub fn new_stage(
    parent: &Path,
    name: &str,
    lang: Lang,
    world: World,
) -> anyhow::Result<(PathBuf, Vec<PathBuf>)> {
    let name = Name::parse(name).map_err(|why| anyhow::anyhow!("stage name: {why}"))?;
    check_project_name(name.as_str(), lang)?;
    let dir = parent.join(name.as_str());
    if dir.exists() {
        bail!(
            "{} already exists; choose another name or remove it",
            dir.display()
        );
    }
    let files = files(name.as_str(), lang, world);
    // Written into a hidden sibling first and renamed, so a failure leaves
    // no half-made project behind.
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}-"))
        .tempdir_in(parent)
        .with_context(|| format!("cannot write in {}", parent.display()))?;
    for (path, text) in &files {
        let full = staging.path().join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&full, text).with_context(|| format!("cannot write {path}"))?;
    }
    std::fs::rename(staging.keep(), &dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok((dir, files.into_iter().map(|(p, _)| p.into()).collect()))
}

/// A name the project's language accepts as a crate, type or file name.
fn check_project_name(name: &str, lang: Lang) -> anyhow::Result<()> {
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        bail!("stage name \"{name}\": a project name must start with a lower-case letter");
    }
    if lang == Lang::Rust {
        // The crate, the type derived from it, and the SDK's names must not
        // collide (`stage` would make a `struct Stage` beside the SDK's
        // trait); keywords cannot name a crate.
        const TAKEN: &[&str] = &[
            "stage",
            "request",
            "outcome",
            "strata-sdk",
            "strata_sdk",
            "as",
            "async",
            "await",
            "break",
            "const",
            "continue",
            "crate",
            "dyn",
            "else",
            "enum",
            "extern",
            "false",
            "fn",
            "for",
            "if",
            "impl",
            "in",
            "let",
            "loop",
            "match",
            "mod",
            "move",
            "mut",
            "pub",
            "ref",
            "return",
            "self",
            "static",
            "struct",
            "super",
            "trait",
            "true",
            "type",
            "unsafe",
            "use",
            "where",
            "while",
            "test",
            "core",
            "std",
            "alloc",
        ];
        if TAKEN.contains(&name) {
            bail!(
                "stage name \"{name}\": a Rust stage cannot be called that (a keyword, a \
                 standard crate, or a name the SDK uses); choose another"
            );
        }
    }
    Ok(())
}

/// The project's files: path relative to the project, and text.
fn files(name: &str, lang: Lang, world: World) -> Vec<(String, String)> {
    let type_name = camel_case(name);
    let about_lines: &[&str] = match world {
        World::Bare => &[],
        World::Configured => &["The reply comes from the stage's config (`reply`)."],
        World::Plugin => &[
            "The reply comes from the stage's config (`reply`); any other question",
            "the answer bank matches within its error budget is answered from it.",
        ],
    };
    // A paragraph of its own after the summary, in the language's comments.
    let about = |prefix: &str| -> String {
        if about_lines.is_empty() {
            return String::new();
        }
        let lines: String = about_lines
            .iter()
            .map(|line| format!("{prefix}{line}\n"))
            .collect();
        format!("{}\n{lines}", prefix.trim_end())
    };
    let mut files = vec![
        (
            "cases.toml".to_owned(),
            fill(
                include_str!("templates/cases.toml"),
                &[("name", name), ("answer", REPLY)],
            ),
        ),
        (
            ".gitignore".to_owned(),
            include_str!("templates/gitignore").to_owned(),
        ),
    ];
    let world_note = format!(
        "# What the `{}` world imports, and no more.",
        world.as_str()
    );
    let (build, grants_note, limits) = match lang {
        Lang::Rust => (
            "{ lang = \"rust\", path = \".\" }".to_owned(),
            "# What the stage calls, and no more.".to_owned(),
            "",
        ),
        Lang::Python => (
            format!(
                "{{ lang = \"python\", path = \".\", world = \"{}\" }}",
                world.as_str()
            ),
            format!(
                "{world_note} componentize-py also makes every component\n\
                 # import the WASI filesystem and sockets: with no directory and no\n\
                 # address granted behind them, the stage can open nothing and reach no one."
            ),
            // CPython's heap needs more than the default 64 MiB.
            "limits = { memory_mib = 128 }\n",
        ),
        Lang::Js => (
            format!(
                "{{ lang = \"js\", path = \".\", world = \"{}\" }}",
                world.as_str()
            ),
            world_note,
            "",
        ),
    };
    // A Rust stage imports what it calls: the template calls config and,
    // in the plugin flavour, the cache; componentize-py and -js import the
    // whole world.
    let mut grants: Vec<&str> = match (lang, world) {
        (Lang::Rust, World::Plugin) => vec!["config", "cache"],
        (_, world) => world.grants().to_vec(),
    };
    if lang == Lang::Python {
        grants.extend(["wasi:filesystem", "wasi:sockets"]);
    }
    let grants = grants
        .iter()
        .map(|g| format!("\"{g}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let config = if world != World::Bare {
        format!("config = {{ reply = \"{REPLY}\" }}\n")
    } else {
        String::new()
    };
    files.push((
        "strata.toml".to_owned(),
        fill(
            include_str!("templates/strata.toml"),
            &[
                ("name", name),
                ("grants_note", &grants_note),
                ("limits", limits),
                ("grants", &grants),
                ("build", &build),
                ("config", &config),
            ],
        ),
    ));
    let uses_config = world != World::Bare;
    let lookup = world == World::Plugin;
    match lang {
        Lang::Rust => {
            let reply = if uses_config {
                format!(
                    "strata_sdk::config::get(\"reply\").unwrap_or_else(|| \"{REPLY}\".to_owned())"
                )
            } else {
                format!("\"{REPLY}\".to_owned()")
            };
            let about = about("//! ");
            let lookup = if lookup {
                "        if let Some(hit) = strata_sdk::cache::lookup(&request.input)\n            \
                 && hit.trusted\n        {\n            \
                 return Outcome::respond(hit.answer, hit.score);\n        }\n"
            } else {
                ""
            };
            let vars = [
                ("name", name),
                ("type", type_name.as_str()),
                ("about", &about),
                ("reply", &reply),
                ("lookup", lookup),
            ];
            files.push((
                "Cargo.toml".into(),
                fill(include_str!("templates/rust/Cargo.toml"), &vars),
            ));
            files.push((
                "src/lib.rs".into(),
                fill(include_str!("templates/rust/lib.rs"), &vars),
            ));
            files.push(("strata-sdk/Cargo.toml".into(), sdk_manifest()));
            files.push(("strata-sdk/src/lib.rs".into(), SDK_LIB.to_owned()));
            files.push(("strata-sdk/README.md".into(), SDK_README.to_owned()));
            files.push((
                "strata-sdk/wit/pipeline.wit".into(),
                PIPELINE_WIT.to_owned(),
            ));
        }
        Lang::Python => {
            let reply = if uses_config {
                format!("strata.config(\"reply\", \"{REPLY}\")")
            } else {
                format!("\"{REPLY}\"")
            };
            let about = about("");
            let lookup = if lookup {
                "        hit = strata.lookup(request.input)\n        \
                 if hit is not None and hit.trusted:\n            \
                 return strata.answer(hit.answer, hit.score)\n"
            } else {
                ""
            };
            let vars = [
                ("name", name),
                ("world", world.as_str()),
                ("about", &about),
                ("reply", &reply),
                ("lookup", lookup),
            ];
            files.push((
                "app.py".into(),
                fill(include_str!("templates/python/app.py"), &vars),
            ));
            files.push((
                "strata.py".into(),
                include_str!("templates/python/strata.py").into(),
            ));
            files.push(("wit/pipeline.wit".into(), PIPELINE_WIT.to_owned()));
        }
        Lang::Js => {
            let reply = if uses_config {
                format!("config('reply', '{REPLY}')")
            } else {
                format!("'{REPLY}'")
            };
            let about = about("// ");
            let lookup_code = if lookup {
                "    const hit = lookup(request.input);\n    \
                 if (hit !== undefined && hit.trusted) {\n      \
                 return answer(hit.answer, hit.score);\n    }\n"
            } else {
                ""
            };
            let (host_line, host_file) = match world {
                World::Bare => (String::new(), None),
                World::Configured => (
                    "\nimport { config } from './host.js';".to_owned(),
                    Some(include_str!("templates/js/host.js").to_owned()),
                ),
                World::Plugin => (
                    "\nimport { config, lookup } from './host.js';".to_owned(),
                    Some(format!(
                        "{}{}",
                        include_str!("templates/js/host.js"),
                        include_str!("templates/js/host-plugin.js")
                    )),
                ),
            };
            let vars = [
                ("name", name),
                ("world", world.as_str()),
                ("about", &about),
                ("reply", &reply),
                ("lookup", lookup_code),
            ];
            let stage = fill(include_str!("templates/js/stage.js"), &vars).replacen(
                "from './strata.js';",
                &format!("from './strata.js';{host_line}"),
                1,
            );
            files.push(("stage.js".into(), stage));
            files.push((
                "strata.js".into(),
                include_str!("templates/js/strata.js").into(),
            ));
            if let Some(host) = host_file {
                files.push(("host.js".into(), host));
            }
            files.push(("wit/pipeline.wit".into(), PIPELINE_WIT.to_owned()));
        }
    }
    files
}

/// The vendored SDK's own manifest (the repository's inherits workspace
/// settings, which a copy cannot).
fn sdk_manifest() -> String {
    "[package]\n\
     name = \"strata-sdk\"\n\
     description = \"Write a Strata pipeline stage in Rust: one struct, one impl, one macro\"\n\
     version = \"0.2.0\"\n\
     edition = \"2024\"\n\
     license = \"Apache-2.0\"\n\
     readme = \"README.md\"\n\n\
     [dependencies]\n\
     serde = { version = \"1\", default-features = false }\n\
     serde_json = { version = \"1\", default-features = false, features = [\"alloc\"] }\n\
     wit-bindgen = { version = \"0.63\", default-features = false, features = [\"macros\", \"realloc\"] }\n\n\
     [target.'cfg(target_family = \"wasm\")'.dependencies]\n\
     dlmalloc = { version = \"0.2\", features = [\"global\"] }\n"
        .to_owned()
}

/// `template` with every `{{key}}` replaced.
fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_owned(), |text, (key, value)| {
        text.replace(&format!("{{{{{key}}}}}"), value)
    })
}

/// `my-stage_two` → `MyStageTwo`.
fn camel_case(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_sdk_depends_on_what_the_sdk_does() {
        let table = |text: &str| text.parse::<toml::Table>().expect("valid TOML");
        let repository = table(include_str!("../../../plugins/sdk/Cargo.toml"));
        let vendored = table(&sdk_manifest());
        for key in ["dependencies", "target"] {
            assert_eq!(vendored.get(key), repository.get(key), "[{key}]");
        }
    }

    #[test]
    fn camel_cases_names() {
        assert_eq!(camel_case("shout"), "Shout");
        assert_eq!(camel_case("my-stage_two"), "MyStageTwo");
        assert_eq!(camel_case("v2"), "V2");
    }

    #[test]
    fn names_a_language_cannot_take_are_refused() {
        assert!(check_project_name("shout", Lang::Rust).is_ok());
        assert!(check_project_name("my-stage_2", Lang::Rust).is_ok());
        assert!(check_project_name("2fast", Lang::Js).is_err());
        assert!(check_project_name("_x", Lang::Python).is_err());
        for taken in ["stage", "request", "self", "fn", "strata-sdk"] {
            assert!(check_project_name(taken, Lang::Rust).is_err(), "{taken}");
        }
        assert!(check_project_name("stage", Lang::Python).is_ok());
    }

    #[test]
    fn every_placeholder_is_filled() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            for world in [World::Bare, World::Configured, World::Plugin] {
                for (path, text) in files("my-stage", lang, world) {
                    assert!(
                        !text.contains("{{"),
                        "{lang:?}/{world:?}: {path} keeps a placeholder"
                    );
                }
            }
        }
    }

    #[test]
    fn the_manifest_grants_what_the_world_imports() {
        let manifest = |lang, world| {
            files("s", lang, world)
                .into_iter()
                .find(|(p, _)| p == "strata.toml")
                .map(|(_, t)| t)
                .unwrap()
        };
        assert!(
            manifest(Lang::Python, World::Bare)
                .contains("grants = [\"wasi:filesystem\", \"wasi:sockets\"]")
        );
        assert!(manifest(Lang::Js, World::Bare).contains("grants = []"));
        assert!(manifest(Lang::Js, World::Configured).contains("grants = [\"config\"]"));
        assert!(
            manifest(Lang::Python, World::Plugin).contains(
                "grants = [\"log\", \"config\", \"cache\", \"model\", \"wasi:filesystem\""
            )
        );
        assert!(manifest(Lang::Rust, World::Plugin).contains("grants = [\"config\", \"cache\"]"));
    }
}
