//! Watching the manifest and plugin files: a change (after a quiet
//! period) reloads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;

use super::reload::files_changed;
use crate::app::App;

/// The file watcher, with its debouncer.
type Watcher = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// Watch the manifest and its plugins; reload when they change and stay
/// unchanged for `debounce` (notify-debouncer-full), so a file still being
/// written is not read.
pub fn spawn_watcher(app: Arc<App>, files: Vec<PathBuf>, debounce: Duration) -> anyhow::Result<()> {
    let cancel = app.lifecycle.cancel.clone();
    let (events, mut changes) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher = new_debouncer(debounce, None, move |result: DebounceEventResult| {
        if let Ok(batch) = result {
            let paths = batch.into_iter().flat_map(|e| e.event.paths).collect();
            let _ = events.send(paths);
        }
    })?;
    // The first watches are in place before start-up returns, so no change
    // made right after can be missed.
    let mut directories = BTreeSet::new();
    watch_directories(&mut watcher, &mut directories, &files);
    app.lifecycle.clone().spawn(async move {
        let mut files = files;
        loop {
            // Wait for a settled change to one of the files.
            tokio::select! {
                paths = changes.recv() => match paths {
                    Some(paths) if paths.iter().any(|p| files.contains(p)) => {}
                    Some(_) => continue,
                    None => return,
                },
                () = cancel.cancelled() => return,
            }
            files_changed(&app).await;
            files = app.ops.watched_files().await;
            watch_directories(&mut watcher, &mut directories, &files);
        }
    });
    Ok(())
}

/// Watch the directories holding `files`, and no others. Directories, not
/// files: a deploy that renames a new file over an old one is still seen.
pub(super) fn watch_directories(
    watcher: &mut Watcher,
    directories: &mut BTreeSet<PathBuf>,
    files: &[PathBuf],
) {
    let wanted: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_owned))
        .collect();
    for gone in directories.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    for new in wanted.difference(directories) {
        if let Err(error) = watcher.watch(new, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(directory = %new.display(), %error, "cannot watch for changes");
        }
    }
    *directories = wanted;
}
