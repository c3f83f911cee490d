//! The image being built seen through its stack of layer directories
//! (overlay lower dirs, bottom to top, and a step's upper dir): which dir
//! holds a path, whether it is a directory, where the image's symlinks
//! lead (inside its root), and the stack merged into one plain tree for
//! `COPY --from` and `RUN --mount=…,from=`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The filesystem that overlay-form layer dirs (bottom to top) stand for,
/// written out as a plain tree at `dest`: what `COPY --from` reads.
pub(crate) fn merge_layers(layers: &[PathBuf], dest: &Path) -> std::io::Result<()> {
    // Stages building together may merge the same tree: each in its own
    // partial dir, the first rename wins and the others are dropped.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = dest.with_extension(format!("partial-{n}"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    let mut links = HashMap::new();
    for layer in layers {
        merge_dir(layer, &partial, Path::new(""), &mut links)?;
    }
    match std::fs::rename(&partial, dest) {
        Err(_) if dest.is_dir() => std::fs::remove_dir_all(&partial),
        r => r,
    }
}

/// One layer dir merged onto `dest`. Owners, modes and times are kept
/// (COPY --from keeps a stage's owners), and files that are hardlinks in a
/// layer stay hardlinks (`links`: (device, inode) → merged path).
pub(crate) fn merge_dir(
    layer: &Path,
    dest: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut entries: Vec<_> = std::fs::read_dir(layer.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        let meta = std::fs::symlink_metadata(e.path())?;
        let at = dest.join(&r);
        let ft = meta.file_type();
        let existing = std::fs::symlink_metadata(&at).ok();
        let remove = |m: &std::fs::Metadata| {
            if m.is_dir() {
                std::fs::remove_dir_all(&at)
            } else {
                std::fs::remove_file(&at)
            }
        };
        if ft.is_char_device() && meta.rdev() == 0 {
            if let Some(m) = existing {
                remove(&m)?;
            }
            continue;
        }
        if ft.is_dir() {
            let opaque = layer::diff::is_opaque(&e.path());
            match existing {
                Some(m) if m.is_dir() && !opaque => {}
                Some(m) => {
                    remove(&m)?;
                    std::fs::create_dir(&at)?;
                }
                None => std::fs::create_dir(&at)?,
            }
            std::fs::set_permissions(&at, meta.permissions())?;
            std::os::unix::fs::chown(&at, Some(meta.uid()), Some(meta.gid()))?;
            merge_dir(layer, dest, &r, links)?;
            continue;
        }
        if let Some(m) = existing {
            remove(&m)?;
        }
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &at)?;
            std::os::unix::fs::lchown(&at, Some(meta.uid()), Some(meta.gid()))?;
        } else if ft.is_file() {
            let id = (meta.dev(), meta.ino());
            if meta.nlink() > 1
                && let Some(first) = links.get(&id)
                && std::fs::symlink_metadata(first).is_ok()
            {
                std::fs::hard_link(first, &at)?;
                continue;
            }
            std::fs::copy(e.path(), &at)?;
            // copy() keeps the mode; the owner and time are ours to keep.
            std::os::unix::fs::chown(&at, Some(meta.uid()), Some(meta.gid()))?;
            let times = std::fs::FileTimes::new().set_modified(meta.modified()?);
            std::fs::File::options()
                .write(true)
                .open(&at)?
                .set_times(times)?;
            if meta.nlink() > 1 {
                links.insert(id, at);
            }
        }
        // Devices, fifos and sockets are not files COPY can take.
    }
    Ok(())
}

/// The entry `rel` stands for in the image being built: the topmost of
/// `upper` and `lowers` (bottom to top) that has it; `None` if none does
/// or a whiteout hides it.
pub(crate) fn lookup_layers(
    upper: Option<&Path>,
    lowers: &[PathBuf],
    rel: &Path,
) -> Option<PathBuf> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for layer in upper
        .into_iter()
        .chain(lowers.iter().rev().map(PathBuf::as_path))
    {
        let at = layer.join(rel);
        if let Ok(m) = std::fs::symlink_metadata(&at) {
            if m.file_type().is_char_device() && m.rdev() == 0 {
                return None;
            }
            return Some(at);
        }
    }
    None
}

pub(crate) fn is_dir_in_layers(upper: Option<&Path>, lowers: &[PathBuf], rel: &Path) -> bool {
    // Never `metadata`: that would follow a link on the host.
    lookup_layers(upper, lowers, rel)
        .is_some_and(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
}

/// `rel` with the image's symlinks followed inside its root, the last
/// component included, as `sources::resolve_in_root` does for one tree.
pub(crate) fn resolve_in_layers(
    upper: Option<&Path>,
    lowers: &[PathBuf],
    rel: &Path,
) -> std::io::Result<PathBuf> {
    crate::sources::resolve_links(rel, |candidate| {
        match lookup_layers(upper, lowers, candidate) {
            Some(at)
                if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                std::fs::read_link(&at).map(Some)
            }
            _ => Ok(None),
        }
    })
}

/// A RUN's working directory made as BuildKit's runc executor makes it:
/// what is missing of the clean path belongs to the RUN's user (`owner`;
/// the executor's `MkdirAllAndChown`), then runc's `os.MkdirAll` of the
/// path as the config has it (a WORKDIR kept unclean) makes every prefix
/// that ends in a name, root's: `/w/./p/../q` leaves `/w/p` behind beside
/// `/w/q`. Symlinks and `..` resolve as the kernel's would, inside the
/// image; new directories are 0755 and go into `upper`.
pub(crate) fn make_cwd(
    upper: &Path,
    lowers: &[PathBuf],
    cwd: &str,
    owner: (u32, u32),
) -> std::io::Result<()> {
    use std::path::Component;
    let clean = crate::sources::clean(cwd);
    let real = resolve_in_layers(Some(upper), lowers, &clean)?;
    if !is_dir_in_layers(Some(upper), lowers, &real) {
        crate::copy::make_dirs(upper, &real, lowers, owner)?;
    }
    let mut prefix = PathBuf::new();
    for c in Path::new(cwd).components() {
        match c {
            Component::Normal(_) => prefix.push(c),
            Component::ParentDir => {
                prefix.push(c);
                continue;
            }
            _ => continue,
        }
        let real = resolve_in_layers(Some(upper), lowers, &prefix)?;
        if !is_dir_in_layers(Some(upper), lowers, &real) {
            crate::copy::make_dirs(upper, &real, lowers, (0, 0))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_cwd_leaves_the_dirs_of_an_unclean_path_as_runc_does() {
        if !testkit::root_or_skip("make_cwd (chown)") {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (lower, upper) = (d.path().join("lower"), d.path().join("upper"));
        std::fs::create_dir_all(lower.join("w/q")).unwrap();
        std::fs::create_dir_all(&upper).unwrap();
        let lowers = [lower];
        make_cwd(&upper, &lowers, "/w/./p/../q/", (5, 5)).unwrap();
        assert!(upper.join("w/p").is_dir());
        assert!(!upper.join("w/q").exists(), "w/q is below already");
        // A clean path that is missing is the RUN user's.
        make_cwd(&upper, &lowers, "/n/m", (5, 6)).unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(upper.join("n/m")).unwrap();
        assert_eq!((m.uid(), m.gid()), (5, 6));
        // Nothing to make: nothing made.
        make_cwd(&upper, &lowers, "/w/q", (5, 5)).unwrap();
        assert_eq!(std::fs::read_dir(&upper).unwrap().count(), 2);
    }
}
