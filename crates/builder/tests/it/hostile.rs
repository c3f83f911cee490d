//! Archives that try to write outside the target stay inside it.

use builder::{WhiteoutMode, apply_layer};
use oci::Digest;

use crate::tree;

/// A tar whose entry names are written raw, bypassing the tar crate's own
/// refusal of `..` and absolute names (an attacker's tool would not refuse).
fn raw_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_old();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_uid(rustix::process::geteuid().as_raw().into());
        h.set_gid(rustix::process::getegid().as_raw().into());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn hostile_names_and_links_stay_inside_the_target() {
    let base = tempfile::tempdir().unwrap();
    let target = base.path().join("root");
    std::fs::create_dir(&target).unwrap();
    let canary = base.path().join("canary");
    std::fs::create_dir(&canary).unwrap();
    let canary_abs = canary.display().to_string();
    let t = tar::EntryType::Regular;
    let layer = raw_tar(&[
        ("../../escape.txt", t, "", b"x"),
        ("/abs.txt", t, "", b"x"),
        // A symlink to the host canary dir, then a file through it.
        ("evil", tar::EntryType::Symlink, &canary_abs, b""),
        ("evil/pwned", t, "", b"x"),
        // A relative symlink climbing out, then a file through it.
        ("up", tar::EntryType::Symlink, "../../../../..", b""),
        ("up/tmp/pwned2", t, "", b"x"),
        // A hardlink to a host file by climbing.
        ("hl", tar::EntryType::Link, "../canary-file", b""),
    ]);
    std::fs::write(base.path().join("canary-file"), "host").unwrap();
    let d = Digest::sha256(&layer);
    let result = apply_layer(&layer[..], &d, None, &target, WhiteoutMode::Flatten, &[]);
    // The hardlink's target does not exist inside the root: a clear error.
    let err = result.unwrap_err().to_string();
    assert!(err.contains("hl") && err.contains("hardlink"), "{err}");
    assert!(
        std::fs::read_dir(&canary).unwrap().next().is_none(),
        "wrote into the host canary"
    );
    assert!(!base.path().join("escape.txt").exists());
    assert_eq!(
        std::fs::read_to_string(base.path().join("canary-file")).unwrap(),
        "host"
    );
    let inside = tree(&target);
    for p in ["escape.txt", "abs.txt", "tmp/pwned2"] {
        assert!(inside.contains_key(p), "{p} not inside: {inside:?}");
    }
    // `evil` points at an absolute path; inside the root that path is
    // created under the root, never on the host.
    assert!(
        target
            .join(canary_abs.trim_start_matches('/'))
            .join("pwned")
            .is_file()
    );
}

#[test]
fn whiteouts_cannot_delete_outside_the_target() {
    let base = tempfile::tempdir().unwrap();
    let target = base.path().join("root");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(base.path().join("precious"), "keep").unwrap();
    let layer = raw_tar(&[
        ("up", tar::EntryType::Symlink, "..", b""),
        ("up/.wh.precious", tar::EntryType::Regular, "", b""),
        ("../.wh.precious", tar::EntryType::Regular, "", b""),
    ]);
    apply_layer(
        &layer[..],
        &Digest::sha256(&layer),
        None,
        &target,
        WhiteoutMode::Flatten,
        &[],
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(base.path().join("precious")).unwrap(),
        "keep"
    );
}
