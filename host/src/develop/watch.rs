//! `strata watch`: rebuild a stage when its source changes, run its golden
//! cases against the new component, and only then put it in place and
//! reload the host, its own or a running one through the admin API. A
//! build, load or case that fails leaves the previous version serving.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio::sync::mpsc;

use super::build::{Built, build};
use super::toolchains::Toolchains;
use crate::cases::{CaseFile, run_stage};
use crate::manifest::{BuildSpec, BuildTarget, Manifest, PluginFile};
use crate::ops::Trigger;
use crate::runtime::Runtime;
use crate::server::{HostOptions, RunningHost, start};

/// Where `strata watch` sends its reloads.
#[derive(Debug, Clone)]
pub enum Reloads {
    /// Serve the manifest in this process.
    Serve {
        /// Listen here instead of the manifest's address.
        listen: Option<SocketAddr>,
        /// Serve the admin API here instead of the manifest's.
        admin_listen: Option<SocketAddr>,
        /// Keep state here instead of the manifest's data directory.
        data: Option<PathBuf>,
    },
    /// A host already running: `POST {url}/admin/reload` with this token.
    Admin {
        /// The admin listener's base URL.
        url: String,
        /// The admin token, if the host requires one.
        token: Option<String>,
    },
}

/// Build every stage with a `build` table, serve (or reach the host), then
/// rebuild on every settled change until `stop` resolves.
pub async fn watch(
    manifest: &Path,
    tools: Toolchains,
    reloads: Reloads,
    debounce: Duration,
    stop: impl Future<Output = ()>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut plan = plan(manifest)?;
    for (target, spec) in &plan {
        let built = blocking_build(spec, &tools)
            .await
            .with_context(|| format!("stage \"{}\": the first build failed", target.stage))?;
        built
            .check_pin(target)
            .map_err(|why| anyhow::anyhow!("stage \"{}\": {why}", target.stage))?;
        built.install(&target.plugin)?;
        write!(out, "{}", built.render(target, spec))?;
    }
    let data_dir = data_dir(manifest, &reloads)?;
    let host = match &reloads {
        Reloads::Serve {
            listen,
            admin_listen,
            data,
        } => {
            let host = start(HostOptions {
                listen: *listen,
                admin_listen: *admin_listen,
                data_dir: data.clone(),
                // Reloads come from here, once a change is built and tested.
                no_file_watch: true,
                ..HostOptions::new(manifest)
            })
            .await?;
            writeln!(
                out,
                "serving {} on http://{} (admin http://{})",
                manifest.display(),
                host.addr(),
                host.admin_addr()
            )?;
            Some(host)
        }
        Reloads::Admin { url, .. } => {
            writeln!(out, "reloading the host at {url} after each change")?;
            None
        }
    };

    let (events, mut changes) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher = new_debouncer(debounce, None, move |result: DebounceEventResult| {
        if let Ok(batch) = result {
            let _ = events.send(batch.into_iter().flat_map(|e| e.event.paths).collect());
        }
    })?;
    let manifest_file = resolved(manifest);
    let manifest_dir = manifest_file
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let mut watches = Watches::default();
    watches.update(&mut watcher, &plan, &manifest_dir)?;
    let mut ignored = ignored_paths(&data_dir, &plan);
    // Only now: a change made once this line is out is seen.
    writeln!(out, "watching {} stage source(s); Ctrl-C stops", plan.len())?;
    out.flush()?;
    let context = Rebuild {
        manifest,
        tools: &tools,
        host: host.as_ref(),
        reloads: &reloads,
        compile_cache: data_dir.join("compile-cache"),
    };
    tokio::pin!(stop);
    loop {
        let mut paths = tokio::select! {
            paths = changes.recv() => match paths { Some(paths) => paths, None => break },
            () = &mut stop => break,
        };
        // Saves that settled while the last build ran are one change.
        while let Ok(more) = changes.try_recv() {
            paths.extend(more);
        }
        if paths.contains(&manifest_file) {
            // The manifest changed: stages (or their `build` tables) may
            // have come or gone. The host reloads the manifest itself.
            match plan_of(manifest) {
                Ok(new) => {
                    for (target, spec) in &new {
                        let known = plan
                            .iter()
                            .any(|(t, s)| t.plugin == target.plugin && s == spec);
                        if !known {
                            let line = context.rebuild(target, spec).await;
                            writeln!(out, "{line}")?;
                        }
                    }
                    plan = new;
                    watches.update(&mut watcher, &plan, &manifest_dir)?;
                    ignored = ignored_paths(&data_dir, &plan);
                    writeln!(out, "watching {} stage source(s)", plan.len())?;
                }
                Err(error) => writeln!(
                    out,
                    "{}: {error:#}\n(the build plan stays as it was)",
                    manifest.display()
                )?,
            }
            out.flush()?;
        }
        let touched: Vec<&(BuildTarget, BuildSpec)> = plan
            .iter()
            .filter(|(_, spec)| {
                let dir = resolved(&spec.dir);
                paths
                    .iter()
                    .any(|p| *p != manifest_file && is_source(p, &dir, &ignored))
            })
            .collect();
        for (target, spec) in touched {
            let line = context.rebuild(target, spec).await;
            writeln!(out, "{line}")?;
            out.flush()?;
        }
    }
    drop(watcher);
    if let Some(host) = host {
        host.shutdown().await;
    }
    Ok(())
}

/// The stages with a `build` table; at least one.
fn plan(manifest: &Path) -> anyhow::Result<Vec<(BuildTarget, BuildSpec)>> {
    let plan = plan_of(manifest)?;
    if plan.is_empty() {
        bail!(
            "no stage in {} has a `build` table, so there is nothing to rebuild \
             (add e.g. build = {{ lang = \"rust\", path = \"...\" }})",
            manifest.display()
        );
    }
    Ok(plan)
}

/// The directories `watch` has asked to hear about.
#[derive(Default)]
struct Watches {
    /// Stage projects, recursively.
    projects: BTreeSet<PathBuf>,
    /// The manifest's directory, on its own, when no project holds it.
    manifest_dir: Option<PathBuf>,
}

impl Watches {
    /// Watch each stage's project and the manifest; stop watching what no
    /// stage needs any more.
    fn update(
        &mut self,
        watcher: &mut Watcher,
        plan: &[(BuildTarget, BuildSpec)],
        manifest_dir: &Path,
    ) -> anyhow::Result<()> {
        let wanted: BTreeSet<PathBuf> = plan.iter().map(|(_, spec)| resolved(&spec.dir)).collect();
        let covered = wanted.iter().any(|dir| manifest_dir.starts_with(dir));
        if covered && let Some(dir) = self.manifest_dir.take() {
            let _ = watcher.unwatch(&dir);
        }
        for gone in self.projects.difference(&wanted) {
            let _ = watcher.unwatch(gone);
        }
        for dir in wanted.difference(&self.projects) {
            watcher
                .watch(dir, notify::RecursiveMode::Recursive)
                .with_context(|| format!("cannot watch {}", dir.display()))?;
        }
        self.projects = wanted;
        if !covered && self.manifest_dir.is_none() {
            watcher
                .watch(manifest_dir, notify::RecursiveMode::NonRecursive)
                .with_context(|| format!("cannot watch {}", manifest_dir.display()))?;
            self.manifest_dir = Some(manifest_dir.to_owned());
        }
        Ok(())
    }
}

/// The file watcher, with its debouncer.
type Watcher = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// The stages with a `build` table, each plugin file once.
fn plan_of(manifest: &Path) -> anyhow::Result<Vec<(BuildTarget, BuildSpec)>> {
    let mut plan: Vec<(BuildTarget, BuildSpec)> = Vec::new();
    for target in Manifest::build_plan(manifest)? {
        // Stages sharing one plugin file are built once.
        if plan.iter().any(|(t, _)| t.plugin == target.plugin) {
            continue;
        }
        if let Some(spec) = target.build.clone() {
            plan.push((target, spec));
        }
    }
    Ok(plan)
}

/// What a rebuild needs besides the stage.
struct Rebuild<'a> {
    manifest: &'a Path,
    tools: &'a Toolchains,
    host: Option<&'a RunningHost>,
    reloads: &'a Reloads,
    /// The host's compile cache, so that testing a component and then
    /// loading it compile it once.
    compile_cache: PathBuf,
}

impl Rebuild<'_> {
    /// Rebuild one stage, test it, install it and reload; one line (or a
    /// few) saying what happened.
    async fn rebuild(&self, target: &BuildTarget, spec: &BuildSpec) -> String {
        let stage = &target.stage;
        let built = match blocking_build(spec, self.tools).await {
            Ok(built) => built,
            Err(error) => {
                return format!(
                    "{stage}: build failed; the previous version keeps serving:\n{error:#}"
                );
            }
        };
        // A stage new to the manifest has no component yet, and the
        // manifest cannot be read without one: it is put in place first
        // (nothing serves it yet) and taken away again if it fails.
        let new_stage = !target.plugin.exists();
        if new_stage && let Err(error) = built.install(&target.plugin) {
            return format!("{stage}: cannot install the new component: {error:#}");
        }
        let verified = match built.check_pin(target) {
            Ok(()) => verify(self.manifest, target, &built, &self.compile_cache).await,
            Err(why) => Err(why),
        };
        if new_stage && verified.is_err() {
            let _ = std::fs::remove_file(&target.plugin);
        }
        let cases = match verified {
            Ok(cases) => cases,
            Err(error) => {
                return format!(
                    "{stage}: built {} but it is not installed; the previous version keeps serving:\n{error}",
                    built.digest
                );
            }
        };
        let previous = std::fs::read(&target.plugin).ok();
        if let Err(error) = built.install(&target.plugin) {
            return format!("{stage}: cannot install the new component: {error:#}");
        }
        match self.reload().await {
            Ok(reload) => format!(
                "{stage}: built {} ({} bytes, {:.1} s), {cases} case(s) passed, {reload}",
                built.digest,
                built.bytes.len(),
                built.took.as_secs_f64()
            ),
            Err(error) => {
                // The host did not take it: the file goes back to what the
                // host serves, so a restart serves the same.
                let restored = match previous {
                    Some(bytes) => {
                        crate::develop::toolchains::write_atomically(&target.plugin, &bytes)
                            .map_or_else(
                                |e| format!("; restoring the old file failed: {e:#}"),
                                |()| String::new(),
                            )
                    }
                    None => String::new(),
                };
                format!(
                    "{stage}: built {} and passed {cases} case(s), but the reload failed \
                     (the previous version keeps serving{restored}): {error}",
                    built.digest
                )
            }
        }
    }
}

impl Rebuild<'_> {
    /// Reload the host: this process's, or the one behind `--admin`.
    async fn reload(&self) -> Result<String, String> {
        match (self.host, self.reloads) {
            (Some(host), _) => {
                let report = crate::control::reload(host.app(), Trigger::host("watch")).await;
                match report.error {
                    None => Ok(format!(
                        "reload {} (generation {})",
                        report.result, report.to_generation
                    )),
                    Some(error) => Err(error),
                }
            }
            (None, Reloads::Admin { url, token }) => admin_reload(url, token.as_deref()).await,
            (None, Reloads::Serve { .. }) => Err("no host to reload".to_owned()),
        }
    }
}

async fn blocking_build(spec: &BuildSpec, tools: &Toolchains) -> anyhow::Result<Built> {
    let (spec, tools) = (spec.clone(), tools.clone());
    tokio::task::spawn_blocking(move || build(&spec, &tools))
        .await
        .context("the build task failed")?
}

/// Load the new component in the stage's place (grants, limits, contract)
/// and run the stage's golden cases against it. Returns how many passed.
async fn verify(
    manifest: &Path,
    target: &BuildTarget,
    built: &Built,
    compile_cache: &Path,
) -> Result<usize, String> {
    let compile_cache = compile_cache.to_owned();
    let (path, pipeline, name) = (
        manifest.to_owned(),
        target.pipeline.clone(),
        target.stage.clone(),
    );
    let (bytes, digest) = (built.bytes.clone(), built.digest.clone());
    let loaded = tokio::task::spawn_blocking(move || {
        let manifest = Manifest::load(&path).map_err(|e| e.to_string())?;
        let mut spec = manifest
            .stages()
            .find(|(p, s)| *p == pipeline && s.name.as_str() == name)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| format!("the manifest no longer has stage \"{name}\""))?;
        spec.plugin = PluginFile {
            path: spec.plugin.path.clone(),
            bytes: bytes.into(),
            digest,
            pinned: spec.plugin.pinned,
        };
        let runtime =
            Runtime::new(&manifest.runtime, Some(&compile_cache)).map_err(|e| format!("{e:#}"))?;
        let stage = runtime
            .load_stage(&path, &pipeline, &spec, "plugin")
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((runtime, stage, spec.cases.clone()))
    })
    .await
    .map_err(|e| format!("the test task failed: {e}"))??;
    let (runtime, stage, cases) = loaded;
    let Some(cases) = cases else {
        return Ok(0);
    };
    let file = CaseFile::load(&cases, Some((&target.pipeline, Some(&target.stage))))?;
    let report = run_stage(&runtime, &stage, &file, file.target()).await;
    if report.failures.is_empty() {
        Ok(report.passed)
    } else {
        Err(report.render())
    }
}

/// `POST {url}/admin/reload`; what the host said, in a few words.
async fn admin_reload(url: &str, token: Option<&str>) -> Result<String, String> {
    let client = reqwest::Client::new();
    let mut request = client
        .post(format!("{}/admin/reload", url.trim_end_matches('/')))
        .header("X-Strata-Admin", "1")
        .timeout(Duration::from_secs(60));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => return Err(format!("the reload request to {url} failed: {error}")),
    };
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    match (status.is_success(), body["result"].as_str()) {
        (true, Some(result)) if result != "failed" => Ok(format!(
            "reload {result} (generation {})",
            body["to_generation"].as_u64().unwrap_or_default()
        )),
        _ => Err(format!(
            "the host answered {status}: {}",
            body["error"]["message"]
                .as_str()
                .or(body["error"].as_str())
                .unwrap_or("no reason given")
        )),
    }
}

/// The data directory the host uses: `--data`, else the manifest's.
fn data_dir(manifest: &Path, reloads: &Reloads) -> anyhow::Result<PathBuf> {
    if let Reloads::Serve {
        data: Some(data), ..
    } = reloads
    {
        return Ok(resolved(data));
    }
    Ok(resolved(&Manifest::load(manifest)?.data_dir))
}

/// Paths whose changes are the build's or the host's own writes: the data
/// directory, each component, and a component's directory when it lies
/// inside its project (`build/`), never the project itself.
fn ignored_paths(data_dir: &Path, plan: &[(BuildTarget, BuildSpec)]) -> Vec<PathBuf> {
    let mut ignored = vec![data_dir.to_owned()];
    for (target, spec) in plan {
        let plugin = resolved(&target.plugin);
        let project = resolved(&spec.dir);
        if let Some(out) = plugin.parent()
            && out.starts_with(&project)
            && out != project
        {
            ignored.push(out.to_owned());
        }
        ignored.push(plugin);
    }
    ignored
}

/// Whether a change at `path` (inside project `dir`) is to the stage's
/// source: not build output, dependencies, caches or hidden files.
fn is_source(path: &Path, dir: &Path, ignored: &[PathBuf]) -> bool {
    if ignored.iter().any(|i| path.starts_with(i)) {
        return false;
    }
    let Ok(relative) = path.strip_prefix(dir) else {
        return false;
    };
    relative.components().all(|c| match c {
        Component::Normal(part) => {
            let part = part.to_string_lossy();
            !part.starts_with('.')
                && !matches!(part.as_ref(), "target" | "node_modules" | "__pycache__")
        }
        _ => true,
    })
}

/// `path` as file-system events name it: absolute, with links resolved as
/// far as it exists (a component not built yet has a directory that does).
fn resolved(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    if let Ok(real) = std::fs::canonicalize(&path) {
        return real;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => resolved(parent).join(name),
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sources_count() {
        let dir = Path::new("/p");
        let ignored = vec![PathBuf::from("/p/out"), PathBuf::from("/p/data")];
        assert!(is_source(Path::new("/p/src/lib.rs"), dir, &ignored));
        assert!(is_source(Path::new("/p/app.py"), dir, &ignored));
        for path in [
            "/p/target/release/x.wasm",
            "/p/out/stage.wasm",
            "/p/data/strata.db",
            "/p/__pycache__/app.pyc",
            "/p/node_modules/x/index.js",
            "/p/.git/index",
            "/p/src/.lib.rs.swp",
            "/elsewhere/lib.rs",
        ] {
            assert!(!is_source(Path::new(path), dir, &ignored), "{path}");
        }
    }
}
