//! Editing the manifest in place (promote, roll back a candidate): the
//! operator's formatting and comments kept, written aside and renamed over
//! the file so a crash never leaves half a manifest.

use std::path::Path;

/// Rewrite the manifest with the candidate of `pipeline`/`stage` promoted or
/// removed, keeping everything else (comments included) as it was.
pub(super) fn edit_manifest(
    path: &Path,
    pipeline: &str,
    stage: &str,
    promote: bool,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // Edit the file a symlink points at, not the link: replacing the link
    // with a file would cut it from whatever manages the target.
    let path = std::fs::canonicalize(path)
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut document: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("cannot parse {}", path.display()))?;
    let stages = document
        .get_mut("pipelines")
        .and_then(|p| p.get_mut(pipeline))
        .and_then(|p| p.get_mut("stages"))
        .and_then(toml_edit::Item::as_array_of_tables_mut)
        .context("the pipeline's stages are not written as [[pipelines.NAME.stages]] tables")?;
    let table = stages
        .iter_mut()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(stage))
        .context("the stage is not in the manifest file")?;
    let candidate = table
        .remove("candidate")
        .context("the stage has no candidate in the manifest file")?;
    if promote {
        let candidate = candidate
            .as_table_like()
            .context("the candidate is not a table")?;
        for key in ["plugin", "sha256", "grants", "config"] {
            match candidate.get(key) {
                Some(value) => {
                    table.insert(key, value.clone());
                }
                // The old pin belongs to the old plugin.
                None if key == "sha256" || key == "plugin" => {
                    table.remove(key);
                }
                None => {}
            }
        }
    }
    replace_file(&path, document.to_string().as_bytes())
}

/// Replace `path` with `contents` so that a crash leaves the old file or the
/// new one, never a torn one: write a temporary file beside it with the
/// same permissions, flush it to disk, rename it over `path`, and flush the
/// directory so the rename itself survives a power cut.
pub(super) fn replace_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let directory = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    let metadata =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut aside = tempfile::Builder::new()
        .prefix(".strata-edit-")
        .tempfile_in(directory)
        .with_context(|| format!("cannot create a file in {}", directory.display()))?;
    aside
        .write_all(contents)
        .and_then(|()| aside.as_file().set_permissions(metadata.permissions()))
        .and_then(|()| aside.as_file().sync_all())
        .with_context(|| format!("cannot write {}", aside.path().display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        // Keep the owner too when allowed to (as root, or for the group
        // when the host is a member); otherwise the file is the host's, as
        // any file it writes.
        let _ =
            std::os::unix::fs::fchown(aside.as_file(), Some(metadata.uid()), Some(metadata.gid()));
    }
    aside
        .persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    // The new file is in place now, so a failure here must not report the
    // edit as not made; only whether the rename survives a power cut is in
    // doubt.
    #[cfg(unix)]
    if let Err(error) = std::fs::File::open(directory).and_then(|d| d.sync_all()) {
        tracing::warn!(directory = %directory.display(), %error, "cannot flush the directory of the edited manifest");
    }
    Ok(())
}
