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

/// A layer carrying device nodes and xattrs that only the host's kernel
/// should set: a block device and a non-standard character device are not
/// created, nor are `trusted.*`, `user.overlay.*` and `security.*` other
/// than `security.capability`; standard devices and 0:0 whiteouts are
/// (as root); from a build context no device node at all.
#[test]
fn devices_and_privileged_xattrs_from_an_archive_are_not_applied() {
    if !crate::require_root() {
        return;
    }
    use builder::unpack::{Origin, Unpack, apply_archive};
    let mut b = tar::Builder::new(Vec::new());
    let dev = |name: &str, kind: tar::EntryType, major: u32, minor: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_mode(0o666);
        h.set_size(0);
        h.set_cksum();
        h
    };
    let mut dir = tar::Header::new_gnu();
    dir.set_path("dev").unwrap();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_cksum();
    b.append(&dir, &b""[..]).unwrap();
    for (name, kind, major, minor) in [
        ("dev/sda", tar::EntryType::Block, 8, 0),
        ("dev/mem", tar::EntryType::Char, 1, 1),
        ("dev/null", tar::EntryType::Char, 1, 3),
        ("wh", tar::EntryType::Char, 0, 0),
    ] {
        b.append(&dev(name, kind, major, minor), &b""[..]).unwrap();
    }
    // security.capability v2: cap_net_raw permitted and effective.
    let mut cap = Vec::new();
    for w in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        cap.extend_from_slice(&w.to_le_bytes());
    }
    b.append_pax_extensions([
        ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
        ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
        ("SCHILY.xattr.user.overlay.opaque", &b"y"[..]),
        (
            "SCHILY.xattr.security.selinux",
            &b"system_u:object_r:shadow_t:s0"[..],
        ),
        ("SCHILY.xattr.security.capability", &cap[..]),
    ])
    .unwrap();
    let mut f = tar::Header::new_gnu();
    f.set_path("bin/ping").unwrap();
    f.set_entry_type(tar::EntryType::Regular);
    f.set_mode(0o755);
    f.set_size(3);
    f.set_cksum();
    b.append(&f, &b"elf"[..]).unwrap();
    let layer = b.into_inner().unwrap();
    let d = Digest::sha256(&layer);

    let base = tempfile::tempdir().unwrap();
    let target = base.path().join("image");
    std::fs::create_dir(&target).unwrap();
    let applied = apply_layer(&layer[..], &d, None, &target, WhiteoutMode::Flatten, &[]).unwrap();
    let skipped = applied.skipped.join("\n");
    assert!(!target.join("dev/sda").exists(), "{skipped}");
    assert!(!target.join("dev/mem").exists(), "{skipped}");
    assert!(
        skipped.contains("dev/sda: block device 8:0 not created"),
        "{skipped}"
    );
    assert!(
        skipped.contains("dev/mem: non-standard character device 1:1"),
        "{skipped}"
    );
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let null = std::fs::symlink_metadata(target.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    let wh = std::fs::symlink_metadata(target.join("wh")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    let ping = target.join("bin/ping");
    let get = |k: &str| {
        let mut buf = vec![0u8; 256];
        rustix::fs::lgetxattr(&ping, k, &mut buf).map(|n| buf[..n].to_vec())
    };
    for dropped in [
        "trusted.overlay.redirect",
        "trusted.overlay.opaque",
        "user.overlay.opaque",
        "security.selinux",
    ] {
        assert_eq!(
            get(dropped),
            Err(rustix::io::Errno::NODATA),
            "{dropped} was applied"
        );
        assert!(
            skipped.contains(&format!("xattr {dropped} dropped")),
            "{skipped}"
        );
    }
    // File capabilities are kept, as Docker keeps them.
    assert_eq!(get("security.capability").unwrap(), cap);

    // The same archive as a build context: no device node at all.
    let ctx = base.path().join("context");
    std::fs::create_dir(&ctx).unwrap();
    let applied = apply_archive(
        &layer[..],
        &d,
        None,
        &ctx,
        WhiteoutMode::Flatten,
        &[],
        Unpack {
            origin: Origin::Context,
            ..Default::default()
        },
    )
    .unwrap();
    for p in ["dev/sda", "dev/mem", "dev/null", "wh"] {
        assert!(
            std::fs::symlink_metadata(ctx.join(p)).is_err(),
            "{p} created from a context: {:?}",
            applied.skipped
        );
    }
    assert!(ctx.join("bin/ping").is_file());
}

/// A gzip bomb (a few KiB that decompress to 256 MiB) and an archive of
/// too many entries stop at their limit, naming it; nothing past the limit
/// is written.
#[test]
fn decompression_bombs_stop_at_the_limit() {
    use builder::unpack::{Limits, Origin, Unpack, UnpackError, apply_archive};
    use std::io::{Read, Write};
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    {
        let mut b = tar::Builder::new(&mut gz);
        for name in ["a", "b"] {
            let mut h = tar::Header::new_gnu();
            h.set_path(name).unwrap();
            h.set_size(128 << 20);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, std::io::repeat(0).take(128 << 20)).unwrap();
        }
        b.finish().unwrap();
    }
    gz.flush().unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let d = Digest::sha256(&bomb);
    let how = |max_bytes, max_entries| Unpack {
        origin: Origin::Context,
        limits: Limits {
            max_bytes,
            max_entries,
        },
    };
    let base = tempfile::tempdir().unwrap();
    let target = base.path().join("t");
    std::fs::create_dir(&target).unwrap();
    let err = apply_archive(
        &bomb[..],
        &d,
        None,
        &target,
        WhiteoutMode::Flatten,
        &[],
        how(100 << 20, 10),
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::Limit { limit, .. } if limit == 100 << 20),
        "{err}"
    );
    assert!(err.to_string().contains("--max-unpacked-size"), "{err}");
    let written: u64 = walk_sizes(&target);
    assert!(
        written <= 100 << 20,
        "{written} bytes written past the limit"
    );
    assert!(!target.join("b").exists());

    let target = base.path().join("entries");
    std::fs::create_dir(&target).unwrap();
    let err = apply_archive(
        &bomb[..],
        &d,
        None,
        &target,
        WhiteoutMode::Flatten,
        &[],
        how(1 << 30, 1),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--max-unpacked-entries"), "{err}");
    assert!(!target.join("b").exists());

    // As many entries as the limit allows is fine.
    let target = base.path().join("fits");
    std::fs::create_dir(&target).unwrap();
    let fits = apply_archive(
        &bomb[..],
        &d,
        None,
        &target,
        WhiteoutMode::Flatten,
        &[],
        how(1 << 30, 2),
    )
    .unwrap();
    assert_eq!(fits.entries, 2);
}

fn walk_sizes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}
