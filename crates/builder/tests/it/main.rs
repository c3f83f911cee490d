//! `builder::build` in process (`engine`); layer application against the
//! reference: images built and unpacked by umoci, flattened and as overlay
//! lower layers (mounted by the kernel), and hostile archives that try to
//! write outside the target; and the layer store pulling from Slipway's
//! registry, shared and concurrent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod diff;
mod engine;
mod hostile;
mod reference;
mod store;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

pub fn run(cmd: &mut Command) -> String {
    testkit::run(cmd)
}

pub fn require_root() -> bool {
    testkit::root_or_skip("this builder test")
}

/// Every path below `root` with what a layer can set: type, permission
/// bits, owner, content digest or link target.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let ft = m.file_type();
        let what = if ft.is_symlink() {
            format!("link -> {}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_file() {
            use sha2::Digest;
            format!(
                "file {}",
                hex::encode(sha2::Sha256::digest(std::fs::read(&p).unwrap()))
            )
        } else {
            format!("special {:o}", m.mode() & 0o170000)
        };
        let perms = if ft.is_symlink() {
            String::new()
        } else {
            format!(" {:o}", m.permissions().mode() & 0o7777)
        };
        out.insert(rel, format!("{what}{perms} {}:{}", m.uid(), m.gid()));
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}
