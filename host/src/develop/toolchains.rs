//! The toolchains that turn stage sources into components, pinned, and
//! installed on first use into a cache directory: componentize-py into a
//! Python virtual environment, componentize-js into an npm project, and the
//! Rust `wasm32-wasip2` target through rustup.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, bail};

/// The componentize-py release Python stages are built with.
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// The componentize-js release JavaScript stages are built with.
pub const COMPONENTIZE_JS: &str = "0.23.0";

/// The Rust target stages are built for.
pub const RUST_TARGET: &str = "wasm32-wasip2";

/// The stage contract, for projects that carry no `wit/` directory.
pub const PIPELINE_WIT: &str = include_str!("../../../wit/pipeline.wit");

/// The componentize-js driver: builds SOURCE into OUT against WORLD of the
/// WIT package in WIT_DIR, with every optional engine feature off.
const JS_DRIVER: &str = include_str!("templates/build.mjs");

/// Where toolchains live.
#[derive(Debug, Clone)]
pub struct Toolchains {
    dir: PathBuf,
}

impl Toolchains {
    /// The cache directory: `dir` if given, else `STRATA_TOOLCHAINS`, else
    /// `$XDG_CACHE_HOME/strata/toolchains`, else
    /// `$HOME/.cache/strata/toolchains`.
    pub fn new(dir: Option<PathBuf>) -> anyhow::Result<Toolchains> {
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let dir = match dir {
            Some(dir) => dir,
            None => match env("STRATA_TOOLCHAINS") {
                Some(dir) => dir.into(),
                None => match env("XDG_CACHE_HOME") {
                    Some(cache) => PathBuf::from(cache).join("strata/toolchains"),
                    None => match env("HOME") {
                        Some(home) => PathBuf::from(home).join(".cache/strata/toolchains"),
                        None => bail!(
                            "no directory for toolchains: set STRATA_TOOLCHAINS (or HOME) or pass --toolchains"
                        ),
                    },
                },
            },
        };
        // Absolute: tools run in other working directories.
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        Ok(Toolchains { dir })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The WIT directory for a project: its own `wit/` if it has one, else
    /// the contract this binary carries, written into the cache.
    pub fn wit_dir(&self, project: &Path) -> anyhow::Result<PathBuf> {
        let own = project.join("wit");
        if own.join("pipeline.wit").is_file() {
            return Ok(own);
        }
        let dir = self.dir.join("wit");
        let file = dir.join("pipeline.wit");
        if std::fs::read_to_string(&file).ok().as_deref() != Some(PIPELINE_WIT) {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            write_atomically(&file, PIPELINE_WIT.as_bytes())?;
        }
        Ok(dir)
    }

    /// A command running componentize-py, installed first if missing.
    ///
    /// The virtual environment is made in a staging directory and renamed
    /// into place, so a half-made one is never used and two first uses at
    /// once do not undo each other. Its scripts name the staging path, so
    /// componentize-py is run through the environment's own interpreter.
    pub fn componentize_py(&self) -> anyhow::Result<Command> {
        let home = self.dir.join(format!("componentize-py-{COMPONENTIZE_PY}"));
        let python = home.join("bin/python3");
        if !python.is_file() {
            self.install(&home, "componentize-py", COMPONENTIZE_PY, |staging| {
                let system = find_program(&["python3", "python"])
                    .context("Python stages need Python 3.10 or newer: no python3 on PATH")?;
                run_quietly(Command::new(system).arg("-m").arg("venv").arg(staging)).context(
                    "cannot create a Python virtual environment (is the venv module installed?)",
                )?;
                run_quietly(
                    Command::new(staging.join("bin/python3"))
                        .args([
                            "-m",
                            "pip",
                            "install",
                            "--quiet",
                            "--disable-pip-version-check",
                        ])
                        .arg(format!("componentize-py=={COMPONENTIZE_PY}")),
                )
                .with_context(|| {
                    format!(
                        "cannot install componentize-py {COMPONENTIZE_PY} from the Python package \
                         index; check the network, or point pip at a mirror (PIP_INDEX_URL)"
                    )
                })
            })?;
        }
        let mut command = Command::new(python);
        command.args([
            "-c",
            "import sys; from componentize_py import script; \
             sys.argv[0] = 'componentize-py'; sys.exit(script())",
        ]);
        Ok(command)
    }

    /// The componentize-js driver script, installed first if missing.
    pub fn componentize_js(&self) -> anyhow::Result<PathBuf> {
        let home = self.dir.join(format!("componentize-js-{COMPONENTIZE_JS}"));
        let driver = home.join("build.mjs");
        let installed = home
            .join("node_modules/@bytecodealliance/componentize-js/package.json")
            .is_file();
        if !installed {
            self.install(&home, "componentize-js", COMPONENTIZE_JS, |staging| {
                find_program(&["node"])
                    .context("JavaScript stages need Node.js 18 or newer: no node on PATH")?;
                let npm =
                    find_program(&["npm"]).context("JavaScript stages need npm: no npm on PATH")?;
                let package = serde_json::json!({
                    "name": "strata-componentize-js",
                    "private": true,
                    "type": "module",
                    "dependencies": { "@bytecodealliance/componentize-js": COMPONENTIZE_JS },
                });
                std::fs::write(staging.join("package.json"), package.to_string())?;
                run_quietly(Command::new(npm).current_dir(staging).args([
                    "install",
                    "--no-fund",
                    "--no-audit",
                    "--loglevel=error",
                ]))
                .with_context(|| {
                    format!(
                        "cannot install componentize-js {COMPONENTIZE_JS} from the npm registry; \
                         check the network, or point npm at a mirror (npm config set registry)"
                    )
                })
            })?;
        }
        if std::fs::read_to_string(&driver).ok().as_deref() != Some(JS_DRIVER) {
            write_atomically(&driver, JS_DRIVER.as_bytes())?;
        }
        Ok(driver)
    }

    /// Make sure the Rust standard library for `wasm32-wasip2` is there
    /// (for the toolchain `project` selects), adding it with rustup if not.
    pub fn rust_target(&self, project: &Path) -> anyhow::Result<()> {
        let sysroot = Command::new("rustc")
            .current_dir(project)
            .args(["--print", "sysroot"])
            .output()
            .context("Rust stages need a Rust toolchain: cannot run rustc")?;
        let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
        if sysroot.join("lib/rustlib").join(RUST_TARGET).is_dir() {
            return Ok(());
        }
        eprintln!("strata: adding the Rust target {RUST_TARGET} (rustup target add)");
        run_quietly(Command::new("rustup").current_dir(project).args([
            "target",
            "add",
            RUST_TARGET,
        ]))
        .with_context(|| {
            format!(
                "cannot add the Rust target {RUST_TARGET}; run `rustup target add {RUST_TARGET}`"
            )
        })
    }

    /// Install a toolchain into `home` through a staging directory, so a
    /// failed install leaves nothing half-made behind.
    fn install(
        &self,
        home: &Path,
        what: &str,
        version: &str,
        fill: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        eprintln!(
            "strata: installing {what} {version} into {} (first use)",
            self.dir.display()
        );
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{what}-"))
            .tempdir_in(&self.dir)?;
        fill(staging.path())?;
        // Another first use may have finished meanwhile; its copy is as good.
        let staged = staging.keep();
        match std::fs::rename(&staged, home) {
            Ok(()) => Ok(()),
            Err(_) if home.is_dir() => {
                let _ = std::fs::remove_dir_all(&staged);
                Ok(())
            }
            Err(error) => {
                let _ = std::fs::remove_dir_all(&staged);
                Err(error).with_context(|| format!("cannot move {what} into {}", home.display()))
            }
        }
    }
}

/// The first of `names` found on PATH.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        names
            .iter()
            .map(|name| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Run a command; on failure, the error carries the tail of what it printed.
pub(super) fn run_quietly(command: &mut Command) -> anyhow::Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    check(&program, &output)
}

/// An error for a command that failed, with the tail of its output.
pub(super) fn check(program: &str, output: &Output) -> anyhow::Result<()> {
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&output.stdout).into_owned();
    }
    bail!(
        "{program} failed ({}):\n{}",
        output.status,
        tail(text.trim_end(), 40)
    )
}

/// The last `lines` lines of `text`.
pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Write `bytes` to `path` through a temporary file in the same directory
/// and a rename, so a reader (a host watching the file) never sees half.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
