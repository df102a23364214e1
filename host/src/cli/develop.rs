//! `strata new`, `strata build` and `strata watch`: the commands of the
//! rule writer's loop (the work is in [`crate::develop`]).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::develop::{
    COMPONENTIZE_JS, COMPONENTIZE_PY, Lang, RUST_TARGET, Reloads, Toolchains, build, new_stage,
    watch,
};
use crate::manifest::{Manifest, World};

/// What `strata new` makes.
#[derive(Debug, Subcommand)]
pub enum NewCommand {
    /// A stage project: source, build settings, `cases.toml` with passing
    /// cases, and `strata.toml`, a manifest with the stage and the grants
    /// its template needs.
    Stage {
        /// The stage's name (also the project directory's).
        name: String,
        /// The language.
        #[arg(long, value_enum)]
        lang: Lang,
        /// What the template imports: nothing (`bare`), its config
        /// (`configured`), or config and the answer bank (`plugin`; for
        /// Python and JavaScript also log and model, which their toolchains
        /// import with the world).
        #[arg(long, value_enum, default_value_t = World::Bare)]
        world: World,
        /// Create the project in this directory instead of the current one.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

/// Where toolchains are cached.
#[derive(Debug, Args)]
pub struct ToolchainArgs {
    /// Install and find toolchains (componentize-py, componentize-js) here
    /// instead of `STRATA_TOOLCHAINS` or `~/.cache/strata/toolchains`.
    #[arg(long)]
    toolchains: Option<PathBuf>,
}

/// `strata watch`'s options.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The manifest file.
    #[arg(default_value = "strata.toml")]
    manifest: PathBuf,
    /// Reload the host whose admin API is at this URL instead of serving
    /// the manifest here.
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// The admin token for `--admin` (default: `STRATA_ADMIN_TOKEN`).
    #[arg(long)]
    token: Option<String>,
    /// Listen here instead of the manifest's address (when serving).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve the admin API here instead of the manifest's (when serving).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Keep durable state here instead of the manifest's data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// How long sources must stay unchanged before a rebuild.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    debounce_ms: u64,
    #[command(flatten)]
    tools: ToolchainArgs,
}

pub(super) fn new(command: NewCommand, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let NewCommand::Stage {
        name,
        lang,
        world,
        dir,
    } = command;
    let (project, files) = new_stage(&dir, &name, lang, world)?;
    writeln!(out, "created {} ({} files)", project.display(), files.len())?;
    for file in files {
        writeln!(out, "  {}", file.display())?;
    }
    writeln!(
        out,
        "\nnext:\n  cd {}\n  strata build strata.toml   # build the component\n  \
         strata test strata.toml    # run cases.toml against it\n  \
         strata watch strata.toml   # serve it; rebuild, test and reload on save",
        project.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn install_toolchains(
    langs: Vec<Lang>,
    tools: ToolchainArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let tools = Toolchains::new(tools.toolchains)?;
    let langs = if langs.is_empty() {
        vec![Lang::Rust, Lang::Python, Lang::Js]
    } else {
        langs
    };
    for lang in langs {
        match lang {
            Lang::Rust => {
                tools.rust_target(Path::new("."))?;
                writeln!(out, "rust: the {RUST_TARGET} target is installed")?;
            }
            Lang::Python => {
                tools.componentize_py()?;
                writeln!(
                    out,
                    "python: componentize-py {COMPONENTIZE_PY} in {}",
                    tools.dir().display()
                )?;
            }
            Lang::Js => {
                tools.componentize_js()?;
                writeln!(
                    out,
                    "js: componentize-js {COMPONENTIZE_JS} in {}",
                    tools.dir().display()
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn build_all(
    manifest: PathBuf,
    stages: Vec<String>,
    tools: ToolchainArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let tools = Toolchains::new(tools.toolchains)?;
    let plan = Manifest::build_plan(&manifest)?;
    for wanted in &stages {
        if !plan.iter().any(|t| &t.stage == wanted) {
            let known: Vec<&str> = plan.iter().map(|t| t.stage.as_str()).collect();
            anyhow::bail!(
                "no stage named \"{wanted}\" in {}; it has: {}",
                manifest.display(),
                known.join(", ")
            );
        }
    }
    let (mut built, mut failed) = (0, 0);
    let mut done: Vec<(PathBuf, String)> = Vec::new();
    for target in plan {
        if !stages.is_empty() && !stages.contains(&target.stage) {
            continue;
        }
        if let Some((_, first)) = done.iter().find(|(plugin, _)| *plugin == target.plugin) {
            writeln!(
                out,
                "{}: same plugin as stage \"{first}\", built once\n",
                target.stage
            )?;
            continue;
        }
        done.push((target.plugin.clone(), target.stage.clone()));
        let Some(spec) = target.build.clone() else {
            if stages.contains(&target.stage) {
                anyhow::bail!(
                    "stage \"{}\" has no `build` table, so strata cannot build it",
                    target.stage
                );
            }
            writeln!(
                out,
                "{}: no `build` table; using {} as it is\n",
                target.stage,
                target.plugin.display()
            )?;
            continue;
        };
        let result = {
            let (spec, tools) = (spec.clone(), tools.clone());
            tokio::task::spawn_blocking(move || build(&spec, &tools)).await?
        };
        let result = result.and_then(|built| {
            built.check_pin(&target).map_err(anyhow::Error::msg)?;
            Ok(built)
        });
        match result.and_then(|b| b.install(&target.plugin).map(|()| b)) {
            Ok(component) => {
                built += 1;
                writeln!(out, "{}", component.render(&target, &spec))?;
            }
            Err(error) => {
                failed += 1;
                writeln!(out, "{}: build FAILED:\n{error:#}\n", target.stage)?;
            }
        }
        out.flush()?;
    }
    writeln!(
        out,
        "{built} built, {failed} failed{}",
        if failed == 0 {
            ""
        } else {
            " (components of failed stages were left as they were)"
        }
    )?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(super) async fn watch_manifest(
    args: WatchArgs,
    stop: impl Future<Output = ()>,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let tools = Toolchains::new(args.tools.toolchains)?;
    let reloads = match args.admin {
        Some(url) => Reloads::Admin {
            url,
            token: args
                .token
                .or_else(|| std::env::var("STRATA_ADMIN_TOKEN").ok())
                .filter(|t| !t.is_empty()),
        },
        None => Reloads::Serve {
            listen: args.listen,
            admin_listen: args.admin_listen,
            data: args.data,
        },
    };
    watch(
        &args.manifest,
        tools,
        reloads,
        Duration::from_millis(args.debounce_ms),
        stop,
        out,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
