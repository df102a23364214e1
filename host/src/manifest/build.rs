//! A stage's `build` table: how `strata build` and `strata watch` make its
//! component from source. The host itself never builds; it only checks the
//! table's shape so that a typo is caught by `strata check` too.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Location, ManifestError, ManifestErrorKind, Parser};

/// How to build one stage's component (`build = { ... }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The toolchain and its settings.
    pub recipe: Recipe,
    /// The project directory, resolved against the manifest's directory.
    pub dir: PathBuf,
}

/// The toolchain that builds a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipe {
    /// `cargo build --release --target wasm32-wasip2` in the project; the
    /// crate's `.wasm` is copied to the stage's `plugin`.
    Rust,
    /// componentize-py against `world`, with `module` as the entry module.
    Python {
        /// The WIT world the component targets.
        world: World,
        /// The module defining the `Stage` class (default `app`).
        module: String,
    },
    /// componentize-js against `world`, with `source` as the entry file.
    Js {
        /// The WIT world the component targets.
        world: World,
        /// The entry module exporting `stage` (default `stage.js`).
        source: String,
    },
    /// Any command, run with `sh -c` in the project directory; it must
    /// write the component to the path in `STRATA_OUT`.
    Command(String),
}

impl Recipe {
    /// The name used in reports: `rust`, `python`, `js` or `command`.
    pub fn label(&self) -> &'static str {
        match self {
            Recipe::Rust => "rust",
            Recipe::Python { .. } => "python",
            Recipe::Js { .. } => "js",
            Recipe::Command(_) => "command",
        }
    }
}

/// A world of `wit/pipeline.wit`. componentize-py and componentize-js import
/// every interface of their world, so the world decides the grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum World {
    /// Imports `log`, `config`, `cache` and `model`.
    Plugin,
    /// Imports `config`.
    Configured,
    /// Imports nothing.
    Bare,
}

impl World {
    /// The world's name in the WIT package.
    pub fn as_str(self) -> &'static str {
        match self {
            World::Plugin => "plugin",
            World::Configured => "configured",
            World::Bare => "bare",
        }
    }

    /// The grants a component of this world needs when its toolchain
    /// imports the whole world.
    pub fn grants(self) -> &'static [&'static str] {
        match self {
            World::Plugin => &["log", "config", "cache", "model"],
            World::Configured => &["config"],
            World::Bare => &[],
        }
    }
}

/// The languages `build.lang` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Lang {
    Rust,
    Python,
    Js,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBuild {
    #[serde(default)]
    lang: Option<Lang>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    world: Option<World>,
    #[serde(default)]
    module: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

/// One stage `strata build` can build, read without loading any plugin
/// (the component may not exist yet).
#[derive(Debug, Clone)]
pub struct BuildTarget {
    /// The pipeline naming the stage.
    pub pipeline: String,
    /// The stage's name.
    pub stage: String,
    /// Where the component goes: the stage's `plugin`, resolved.
    pub plugin: PathBuf,
    /// The digest the manifest pins the component to, if it does.
    pub pin: Option<super::Digest>,
    /// How to build it; `None` when the manifest does not say.
    pub build: Option<BuildSpec>,
    /// The stage's golden cases, resolved, if it lists them.
    pub cases: Option<PathBuf>,
}

/// The keys of a stage the build plan needs; the rest is checked at load.
#[derive(Deserialize)]
struct PlanStage {
    name: String,
    plugin: PathBuf,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    build: Option<RawBuild>,
    #[serde(default)]
    cases: Option<PathBuf>,
}

impl Parser<'_> {
    pub(super) fn build(
        &self,
        raw: RawBuild,
        at: &dyn Fn(&str) -> Location,
    ) -> Result<BuildSpec, ManifestError> {
        let invalid =
            |key: &str, why: &str| self.error(at(key), ManifestErrorKind::Invalid(why.to_owned()));
        let not_for = |key: &str, value: bool, lang: &str| match value {
            true => Err(invalid(key, &format!("does not apply to {lang}"))),
            false => Ok(()),
        };
        let recipe = match (raw.lang, raw.command) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "build",
                    "give either lang (rust, python, js) or command, not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "build",
                    "give lang (rust, python, js) or a command that writes the component to $STRATA_OUT",
                ));
            }
            (None, Some(command)) => {
                if command.trim().is_empty() {
                    return Err(invalid("build.command", "is empty"));
                }
                not_for("build.world", raw.world.is_some(), "a command")?;
                not_for("build.module", raw.module.is_some(), "a command")?;
                not_for("build.source", raw.source.is_some(), "a command")?;
                Recipe::Command(command)
            }
            (Some(Lang::Rust), None) => {
                not_for(
                    "build.world",
                    raw.world.is_some(),
                    "Rust (a Rust stage imports only what it calls)",
                )?;
                not_for("build.module", raw.module.is_some(), "Rust")?;
                not_for("build.source", raw.source.is_some(), "Rust")?;
                Recipe::Rust
            }
            (Some(lang @ (Lang::Python | Lang::Js)), None) => {
                let name = if lang == Lang::Python {
                    "Python"
                } else {
                    "JavaScript"
                };
                let Some(world) = raw.world else {
                    return Err(invalid(
                        "build.world",
                        &format!(
                            "a {name} stage must name its world (bare, configured or plugin): \
                             its toolchain imports every interface of the world, so the world \
                             decides the grants"
                        ),
                    ));
                };
                if lang == Lang::Python {
                    not_for("build.source", raw.source.is_some(), "Python (use module)")?;
                    Recipe::Python {
                        world,
                        module: raw.module.unwrap_or_else(|| "app".to_owned()),
                    }
                } else {
                    not_for(
                        "build.module",
                        raw.module.is_some(),
                        "JavaScript (use source)",
                    )?;
                    Recipe::Js {
                        world,
                        source: raw.source.unwrap_or_else(|| "stage.js".to_owned()),
                    }
                }
            }
        };
        // Absolute, so that tools run in another working directory (cargo
        // in the project) still find it.
        let dir = self.base.join(raw.path.unwrap_or_else(|| ".".into()));
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        Ok(BuildSpec { recipe, dir })
    }

    /// Every stage of the manifest, in order, with its `plugin`, pin,
    /// `build` and `cases`, without reading plugins. Stages sharing a plugin
    /// file are all listed; callers build each file once.
    pub(super) fn build_plan(&self, text: &str) -> Result<Vec<BuildTarget>, ManifestError> {
        let table = self.table(text)?;
        let Some(pipelines) = table.get("pipelines").and_then(|p| p.as_table()) else {
            return Err(self.error(
                super::key_location("pipelines"),
                ManifestErrorKind::Invalid("the manifest defines no pipeline".to_owned()),
            ));
        };
        let mut targets: Vec<BuildTarget> = Vec::new();
        for (pipeline, value) in pipelines {
            let stages = value
                .get("stages")
                .and_then(|s| s.as_array())
                .map(Vec::as_slice)
                .unwrap_or_default();
            for (index, stage) in stages.iter().enumerate() {
                let table = stage.as_table().cloned().unwrap_or_default();
                let here = Location {
                    pipeline: Some(pipeline.clone()),
                    stage: Some(
                        table
                            .get("name")
                            .and_then(|v| v.as_str())
                            .map_or_else(|| format!("#{}", index + 1), str::to_owned),
                    ),
                    key: None,
                };
                let at = |key: &str| Location {
                    key: Some(key.to_owned()),
                    ..here.clone()
                };
                let raw: PlanStage = self.typed(here.clone(), table)?;
                let plugin = self.base.join(&raw.plugin);
                let plugin = std::path::absolute(&plugin).unwrap_or(plugin);
                let pin = raw
                    .sha256
                    .as_deref()
                    .map(super::Digest::parse)
                    .transpose()
                    .map_err(|why| self.error(at("sha256"), ManifestErrorKind::Invalid(why)))?;
                let build = raw.build.map(|b| self.build(b, &at)).transpose()?;
                targets.push(BuildTarget {
                    pipeline: pipeline.clone(),
                    stage: raw.name,
                    plugin,
                    pin,
                    build,
                    cases: raw.cases.map(|c| self.base.join(c)),
                });
            }
        }
        Ok(targets)
    }
}
