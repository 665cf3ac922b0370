//! Writing files so that a crash never leaves a torn one behind.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder
/// is written, flushed to disk and renamed over `path`, then the folder is
/// synced so the rename itself survives a power cut. Readers see either the
/// old complete file or the new complete one, never a mix.
///
/// A symbolic link is followed (the file it names is replaced, the link
/// kept), and a path that is no regular file (`/dev/stdout`, a FIFO, a
/// device) is written through, since renaming over it would replace the
/// device itself.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    match fs::metadata(path) {
        Ok(info) if info.is_dir() => {
            anyhow::bail!("cannot write {}: it is a folder", path.display())
        }
        Ok(info) if !info.is_file() => {
            let mut target = fs::OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            return target
                .write_all(bytes)
                .and_then(|()| target.flush())
                .with_context(|| format!("cannot write {}", path.display()));
        }
        Ok(_) if fs::symlink_metadata(path).is_ok_and(|l| l.file_type().is_symlink()) => {
            let target = fs::canonicalize(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            return write_atomic(&target, bytes);
        }
        _ => {}
    }
    replace_file(path, bytes)
}

/// [`write_atomic`] for files of polyhead's own (cache entries): whatever
/// sits at `path`, a link or a FIFO included, is replaced by a regular file.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_name(path);
    let result = (|| -> Result<()> {
        let mut file =
            File::create(&tmp).with_context(|| format!("cannot write {}", path.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot write {}", path.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_parent(path);
    Ok(())
}

/// `dir/.name.tmp-PID-N`: hidden, unique per process and call (two threads
/// may write the same file), in the target's folder (a rename across file
/// systems would not be atomic).
fn temporary_name(path: &Path) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}-{call}", std::process::id()))
}

fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(parent) {
        // Not every file system supports syncing a directory; the data
        // itself is already on disk, so a failure here is not an error.
        let _ = dir.sync_all();
    }
}

/// Removes temporary files that an interrupted [`write_atomic`] of `path`
/// left behind (from any process).
pub fn remove_stale_temporaries(path: &Path) {
    let name = match path.file_name() {
        Some(n) => format!(".{}.tmp-", n.to_string_lossy()),
        None => return,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(entries) = fs::read_dir(parent) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&name) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Whether `a` and `b` name the same file: the same path once resolved when
/// both exist, the same text otherwise.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_through_devices_and_links_instead_of_replacing_them() {
        let dir = std::env::temp_dir().join(format!("polyhead-fsutil-dev-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();

        // A full device reports its error and stays a device.
        let err = write_atomic(Path::new("/dev/full"), b"x").unwrap_err();
        assert!(format!("{err:#}").contains("/dev/full"), "{err:#}");
        assert!(!fs::metadata("/dev/full").unwrap().is_file());
        write_atomic(Path::new("/dev/null"), b"x").unwrap();
        assert!(!fs::metadata("/dev/null").unwrap().is_file());

        // A link keeps pointing at the file, which gets the new content.
        let target = dir.join("target.json");
        fs::write(&target, b"old").unwrap();
        let link = dir.join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&target).unwrap(), b"new");

        let err = write_atomic(&dir, b"x").unwrap_err();
        assert!(err.to_string().contains("it is a folder"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("polyhead-fsutil-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
