//! Content digests of source files, remembered across builds by their
//! metadata (device, inode, size, mtime, ctime), as BuildKit's content-hash
//! cache does: computing the cache key of a COPY over an unchanged
//! 10,000-file context then reads no file. A file modified in the last
//! 100 ms is never remembered, since a second change within the same
//! timestamp tick would go unseen (git's "racy clean" rule; Linux stamps
//! files with a clock that advances in jiffies, 1–10 ms, so 100 ms is many
//! ticks).
//!
//! Kept in `<cache>/.file-hashes` (one line per file), loaded once per
//! process and written back by one rename at the end of a build; a missing
//! or damaged file only means reading the sources again.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

#[derive(Default)]
struct State {
    map: HashMap<PathBuf, (Stamp, [u8; 32])>,
    dirty: bool,
}

pub struct FileHashes {
    file: Option<PathBuf>,
    state: Mutex<State>,
}

const RACY: Duration = Duration::from_millis(100);

impl FileHashes {
    /// The table for a cache directory (`None`: in memory only), shared by
    /// every build of this process.
    pub fn for_cache(cache_dir: Option<&Path>) -> Arc<FileHashes> {
        static TABLES: OnceLock<Mutex<HashMap<Option<PathBuf>, Arc<FileHashes>>>> = OnceLock::new();
        let key = cache_dir.map(|c| c.join(".file-hashes"));
        let mut tables = TABLES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        tables
            .entry(key.clone())
            .or_insert_with(|| Arc::new(FileHashes::load(key)))
            .clone()
    }

    fn load(file: Option<PathBuf>) -> FileHashes {
        let mut state = State::default();
        if let Some(f) = file.as_ref().and_then(|p| std::fs::File::open(p).ok()) {
            for line in std::io::BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                if let Some((path, entry)) = parse_line(&line) {
                    state.map.insert(path, entry);
                }
            }
        }
        FileHashes {
            file,
            state: Mutex::new(state),
        }
    }

    /// SHA-256 of the file at `path` (whose `symlink_metadata` is `meta`),
    /// from the table when the file is unchanged, else read and remembered.
    pub fn digest(&self, path: &Path, meta: &std::fs::Metadata) -> Option<[u8; 32]> {
        let stamp = Stamp::of(meta);
        {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((s, d)) = state.map.get(path)
                && *s == stamp
            {
                return Some(*d);
            }
        }
        let mut f = std::fs::File::open(path).ok()?;
        let mut h = oci::Digester::new(oci::Algorithm::Sha256);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match std::io::Read::read(&mut f, &mut buf) {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(_) => return None,
            }
        }
        let hex = h.finish().hex().to_owned();
        let mut digest = [0u8; 32];
        for (i, b) in digest.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        let settled = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > RACY)
            && SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .is_ok_and(|now| {
                    let ctime = Duration::new(
                        u64::try_from(meta.ctime()).unwrap_or(u64::MAX / 2),
                        u32::try_from(meta.ctime_nsec()).unwrap_or(0),
                    );
                    now.saturating_sub(ctime) > RACY
                });
        if settled && !path.as_os_str().as_encoded_bytes().contains(&b'\n') {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.map.insert(path.to_owned(), (stamp, digest));
            state.dirty = true;
        }
        Some(digest)
    }

    /// Write the table back if it changed (temp file + rename).
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !state.dirty {
            return;
        }
        let Some(dir) = file.parent() else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let Ok(tmp) = tempfile::NamedTempFile::new_in(dir) else {
            return;
        };
        let mut w = std::io::BufWriter::new(tmp);
        for (path, (s, d)) in &state.map {
            // Entries for files that are gone are dropped on the way.
            if std::fs::symlink_metadata(path).is_err() {
                continue;
            }
            let _ = writeln!(
                w,
                "{} {} {} {} {} {} {}",
                s.dev,
                s.ino,
                s.size,
                s.mtime_ns,
                s.ctime_ns,
                hex(d),
                path.display()
            );
        }
        let saved = w
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|t| t.persist(file).map_err(|e| e.error));
        if saved.is_ok() {
            state.dirty = false;
        }
    }
}

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_line(line: &str) -> Option<(PathBuf, (Stamp, [u8; 32]))> {
    let mut it = line.splitn(7, ' ');
    let stamp = Stamp {
        dev: it.next()?.parse().ok()?,
        ino: it.next()?.parse().ok()?,
        size: it.next()?.parse().ok()?,
        mtime_ns: it.next()?.parse().ok()?,
        ctime_ns: it.next()?.parse().ok()?,
    };
    let h = it.next()?;
    if h.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, b) in digest.iter_mut().enumerate() {
        *b = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((PathBuf::from(it.next()?), (stamp, digest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_settled_files_and_notices_changes() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.txt");
        std::fs::write(&f, "one").unwrap();
        // Age the file past the racy window.
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let cache = d.path().join("cache");
        let t = FileHashes::load(Some(cache.join(".file-hashes")));
        let meta = std::fs::symlink_metadata(&f).unwrap();
        let first = t.digest(&f, &meta).unwrap();
        assert_eq!(hex(&first), oci::Digest::sha256(b"one").hex());
        // A remembered entry is used while the stamp matches …
        t.state
            .lock()
            .unwrap()
            .map
            .insert(f.clone(), (Stamp::of(&meta), [7u8; 32]));
        t.state.lock().unwrap().dirty = true;
        assert_eq!(t.digest(&f, &meta).unwrap(), [7u8; 32]);
        t.save();
        let back = FileHashes::load(Some(cache.join(".file-hashes")));
        assert_eq!(back.digest(&f, &meta).unwrap(), [7u8; 32], "persisted");
        // … and a change of content (new size, mtime, ctime) is read again.
        std::fs::write(&f, "two!").unwrap();
        let meta2 = std::fs::symlink_metadata(&f).unwrap();
        assert_eq!(
            hex(&back.digest(&f, &meta2).unwrap()),
            oci::Digest::sha256(b"two!").hex()
        );
    }
}
