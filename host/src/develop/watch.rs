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
    let plan = plan(manifest)?;
    for (target, spec) in &plan {
        let built = blocking_build(spec, &tools)
            .await
            .with_context(|| format!("stage \"{}\": the first build failed", target.stage))?;
        built.install(&target.plugin)?;
        write!(out, "{}", built.render(target, spec))?;
    }
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
    writeln!(out, "watching {} stage source(s); Ctrl-C stops", plan.len())?;
    out.flush()?;

    let (events, mut changes) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher = new_debouncer(debounce, None, move |result: DebounceEventResult| {
        if let Ok(batch) = result {
            let _ = events.send(batch.into_iter().flat_map(|e| e.event.paths).collect());
        }
    })?;
    let ignored = ignored_paths(manifest, &plan);
    let dirs: BTreeSet<PathBuf> = plan.iter().map(|(_, spec)| canonical(&spec.dir)).collect();
    for dir in &dirs {
        watcher
            .watch(dir, notify::RecursiveMode::Recursive)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
    }
    tokio::pin!(stop);
    loop {
        let paths = tokio::select! {
            paths = changes.recv() => match paths { Some(paths) => paths, None => break },
            () = &mut stop => break,
        };
        let touched: Vec<&(BuildTarget, BuildSpec)> = plan
            .iter()
            .filter(|(_, spec)| {
                let dir = canonical(&spec.dir);
                paths
                    .iter()
                    .any(|p| p.starts_with(&dir) && is_source(p, &dir, &ignored))
            })
            .collect();
        for (target, spec) in touched {
            let line = rebuild(manifest, target, spec, &tools, host.as_ref(), &reloads).await;
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

/// The stages with a `build` table.
fn plan(manifest: &Path) -> anyhow::Result<Vec<(BuildTarget, BuildSpec)>> {
    let plan: Vec<(BuildTarget, BuildSpec)> = Manifest::build_plan(manifest)?
        .into_iter()
        .filter_map(|t| t.build.clone().map(|b| (t, b)))
        .collect();
    if plan.is_empty() {
        bail!(
            "no stage in {} has a `build` table, so there is nothing to rebuild \
             (add e.g. build = {{ lang = \"rust\", path = \"...\" }})",
            manifest.display()
        );
    }
    Ok(plan)
}

/// Rebuild one stage, test it, install it and reload; one line (or a few)
/// saying what happened.
async fn rebuild(
    manifest: &Path,
    target: &BuildTarget,
    spec: &BuildSpec,
    tools: &Toolchains,
    host: Option<&RunningHost>,
    reloads: &Reloads,
) -> String {
    let stage = &target.stage;
    let built = match blocking_build(spec, tools).await {
        Ok(built) => built,
        Err(error) => {
            return format!(
                "{stage}: build failed; the previous version keeps serving:\n{error:#}"
            );
        }
    };
    let cases = match verify(manifest, target, &built).await {
        Ok(cases) => cases,
        Err(error) => {
            return format!(
                "{stage}: built {} but it is not installed; the previous version keeps serving:\n{error}",
                built.digest
            );
        }
    };
    if let Err(error) = built.install(&target.plugin) {
        return format!("{stage}: cannot install the new component: {error:#}");
    }
    let reload = match (host, reloads) {
        (Some(host), _) => {
            let report = crate::control::reload(host.app(), Trigger::host("watch")).await;
            match report.error {
                None => format!(
                    "reload {} (generation {})",
                    report.result, report.to_generation
                ),
                Some(error) => format!("reload failed: {error}"),
            }
        }
        (None, Reloads::Admin { url, token }) => admin_reload(url, token.as_deref()).await,
        (None, Reloads::Serve { .. }) => "not reloaded (no host)".to_owned(),
    };
    format!(
        "{stage}: built {} ({} bytes, {:.1} s), {cases} case(s) passed, {reload}",
        built.digest,
        built.bytes.len(),
        built.took.as_secs_f64()
    )
}

async fn blocking_build(spec: &BuildSpec, tools: &Toolchains) -> anyhow::Result<Built> {
    let (spec, tools) = (spec.clone(), tools.clone());
    tokio::task::spawn_blocking(move || build(&spec, &tools))
        .await
        .context("the build task failed")?
}

/// Load the new component in the stage's place (grants, limits, contract)
/// and run the stage's golden cases against it. Returns how many passed.
async fn verify(manifest: &Path, target: &BuildTarget, built: &Built) -> Result<usize, String> {
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
        if spec.plugin.pinned && spec.plugin.digest != digest {
            return Err(format!(
                "the manifest pins sha256 = \"{}\"; the new component is {digest}: \
                 update the pin, or remove it while developing",
                spec.plugin.digest
            ));
        }
        spec.plugin = PluginFile {
            path: spec.plugin.path.clone(),
            bytes: bytes.into(),
            digest,
            pinned: spec.plugin.pinned,
        };
        let runtime = Runtime::new(&manifest.runtime, None).map_err(|e| format!("{e:#}"))?;
        let stage = runtime
            .load_stage(&path, &pipeline, &spec, "plugin")
            .map_err(|e| e.to_string())?;
        Ok((runtime, stage, spec.cases.clone()))
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
async fn admin_reload(url: &str, token: Option<&str>) -> String {
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
        Err(error) => return format!("reload request to {url} failed: {error}"),
    };
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    match (status.is_success(), body["result"].as_str()) {
        (true, Some(result)) => format!(
            "reload {result} (generation {})",
            body["to_generation"].as_u64().unwrap_or_default()
        ),
        _ => format!(
            "reload refused ({status}): {}",
            body["error"]["message"]
                .as_str()
                .or(body["error"].as_str())
                .unwrap_or("no reason given")
        ),
    }
}

/// Paths whose changes are the build's or the host's own writes: the
/// components' directories and the data directory.
fn ignored_paths(manifest: &Path, plan: &[(BuildTarget, BuildSpec)]) -> Vec<PathBuf> {
    let base = manifest.parent().unwrap_or(Path::new("."));
    let data_dir = std::fs::read_to_string(manifest)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| {
            t.get("data_dir")
                .and_then(|d| d.as_str())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| "data".into());
    let mut ignored = vec![canonical(&base.join(data_dir))];
    for (target, spec) in plan {
        let out = target.plugin.parent().map(canonical);
        match out {
            Some(out) if out != canonical(&spec.dir) => ignored.push(out),
            _ => ignored.push(canonical(&target.plugin)),
        }
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
                && !matches!(
                    part.as_ref(),
                    "target" | "node_modules" | "__pycache__" | "build"
                )
        }
        _ => true,
    })
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
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
            "/p/build/stage.wasm",
            "/elsewhere/lib.rs",
        ] {
            assert!(!is_source(Path::new(path), dir, &ignored), "{path}");
        }
    }
}
