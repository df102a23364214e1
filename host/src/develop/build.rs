//! `strata build`: make a stage's component from its source with the
//! toolchain its `build` table names, and describe what came out.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::toolchains::{RUST_TARGET, Toolchains, check, write_atomically};
use crate::manifest::{BuildSpec, BuildTarget, Digest, Recipe};

/// A component just built, not yet installed at the stage's `plugin` path.
#[derive(Debug)]
pub struct Built {
    /// The component's bytes.
    pub bytes: Vec<u8>,
    /// Their digest, as manifests pin it.
    pub digest: Digest,
    /// The component's imports (interface names), in order.
    pub imports: Vec<String>,
    /// How long the build took.
    pub took: Duration,
}

impl Built {
    /// Write the component to `plugin`, atomically: a host watching the
    /// file sees the old component or the new one, never half of one.
    pub fn install(&self, plugin: &Path) -> anyhow::Result<()> {
        write_atomically(plugin, &self.bytes)
    }

    /// Whether the component may go where the manifest pins a digest: one
    /// that differs is not put in place, since the host would refuse it.
    pub fn check_pin(&self, target: &BuildTarget) -> Result<(), String> {
        match &target.pin {
            Some(pin) if *pin != self.digest => Err(format!(
                "the manifest pins sha256 = \"{pin}\" and the new component is {}: \
                 change the pin to the new digest (or remove it while developing) to install it",
                self.digest
            )),
            _ => Ok(()),
        }
    }

    /// One line per fact: size, digest, imports.
    pub fn render(&self, target: &BuildTarget, spec: &BuildSpec) -> String {
        let imports = if self.imports.is_empty() {
            "none".to_owned()
        } else {
            self.imports.join(", ")
        };
        format!(
            "{} ({}, pipeline {}) built in {:.1} s\n  plugin   {}\n  size     {} bytes\n  digest   {}\n  imports  {imports}\n",
            target.stage,
            spec.recipe.label(),
            target.pipeline,
            self.took.as_secs_f64(),
            target.plugin.display(),
            self.bytes.len(),
            self.digest,
        )
    }
}

/// Build `spec` with the toolchains in `tools`. Nothing is written at the
/// stage's `plugin` path: the caller installs what it accepts.
pub fn build(spec: &BuildSpec, tools: &Toolchains) -> anyhow::Result<Built> {
    let started = Instant::now();
    if !spec.dir.is_dir() {
        bail!("no project directory at {}", spec.dir.display());
    }
    let scratch = tempfile::tempdir().context("cannot make a scratch directory")?;
    let out = scratch.path().join("stage.wasm");
    let bytes = match &spec.recipe {
        Recipe::Rust => rust(&spec.dir, tools)?,
        Recipe::Python { world, module } => {
            let mut command = tools.componentize_py()?;
            let wit = tools.wit_dir(&spec.dir)?;
            let output = command
                .current_dir(&spec.dir)
                .arg("-q")
                .arg("-d")
                .arg(&wit)
                .args(["-w", world.as_str(), "componentize", module, "-o"])
                .arg(&out)
                .output()
                .context("cannot run componentize-py")?;
            check("componentize-py", &output)?;
            read(&out)?
        }
        Recipe::Js { world, source } => {
            let driver = tools.componentize_js()?;
            let wit = tools.wit_dir(&spec.dir)?;
            let source = spec.dir.join(source);
            if !source.is_file() {
                bail!("no JavaScript source at {}", source.display());
            }
            let output = Command::new("node")
                .arg(driver)
                .arg(&source)
                .arg(&out)
                .arg(world.as_str())
                .arg(&wit)
                .output()
                .context("cannot run node")?;
            check("componentize-js", &output)?;
            read(&out)?
        }
        Recipe::Command(command) => {
            let output = Command::new("sh")
                .current_dir(&spec.dir)
                .arg("-c")
                .arg(command)
                .env("STRATA_OUT", &out)
                .output()
                .context("cannot run sh")?;
            check(&format!("`{command}`"), &output)?;
            if !out.is_file() {
                bail!("`{command}` succeeded but wrote nothing to $STRATA_OUT");
            }
            read(&out)?
        }
    };
    let imports = component_imports(&bytes)?;
    Ok(Built {
        digest: Digest::of(&bytes),
        imports,
        took: started.elapsed(),
        bytes,
    })
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the built {}", path.display()))
}

/// `cargo build --release --target wasm32-wasip2` in `dir`; the bytes of
/// the `.wasm` of the package whose manifest is `dir/Cargo.toml`.
fn rust(dir: &Path, tools: &Toolchains) -> anyhow::Result<Vec<u8>> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!("no Cargo.toml in {}", dir.display());
    }
    tools.rust_target(dir)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(dir)
        .args(["build", "--release", "--target", RUST_TARGET])
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stdin(Stdio::null())
        .output()
        .context("cannot run cargo")?;
    check("cargo build", &output)?;
    // Compared with links resolved on both sides: cargo reports the path
    // normalised, not canonical.
    let canonical = |path: &Path| std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let manifest = canonical(&manifest);
    let mut found: Option<PathBuf> = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact"
            || message["manifest_path"]
                .as_str()
                .map(|p| canonical(Path::new(p)))
                != Some(manifest.clone())
        {
            continue;
        }
        let wasm = message["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"));
        if let Some(wasm) = wasm {
            found = Some(wasm.into());
        }
    }
    let Some(wasm) = found else {
        bail!(
            "cargo built no .wasm for {}: is the crate a cdylib (`[lib] crate-type = [\"cdylib\"]`)?",
            manifest.display()
        );
    };
    read(&wasm)
}

/// The names a component imports, from its top-level import section (no
/// compilation needed).
pub fn component_imports(bytes: &[u8]) -> anyhow::Result<Vec<String>> {
    use wasmparser::{Parser, Payload};
    if !Parser::is_component(bytes) {
        bail!("the build produced a core module, not a component");
    }
    let mut depth = 0usize;
    let mut imports = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.context("the built component is malformed")? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    imports.push(import?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(imports)
}
