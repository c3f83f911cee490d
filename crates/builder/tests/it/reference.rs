//! Our flattening and our overlay layers give exactly umoci's rootfs.

use std::path::{Path, PathBuf};
use std::process::Command;

use builder::{WhiteoutMode, apply_layer};
use oci::Digest;

use crate::{require_root, run, tree};

pub struct Image {
    _dir: tempfile::TempDir,
    pub layout: PathBuf,
    pub layers: Vec<(Digest, Digest)>,
    pub rootfs: PathBuf,
}

/// umoci builds a 6-layer image: busybox; a tree with a symlink, a
/// hardlink, a setuid file and foreign owners; a second tree; a whiteout of
/// one file; an opaque replacement of a directory; a file over a directory.
pub fn umoci_image() -> Image {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let img = format!("{}:t", layout.display());
    let u = || Command::new("umoci");
    run(u().args(["init", "--layout"]).arg(&layout));
    run(u().args(["new", "--image", &img]));
    run(u().args(["insert", "--image", &img, "/bin/busybox", "/bin/busybox"]));
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(src.join("sub/b.txt"), "beta\n").unwrap();
    std::fs::write(src.join("sub/deeper/c.txt"), "gamma\n").unwrap();
    std::os::unix::fs::symlink("sub/b.txt", src.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/nowhere", src.join("dangling")).unwrap();
    std::fs::hard_link(src.join("a.txt"), src.join("a-hard")).unwrap();
    std::fs::write(src.join("suid"), "#!/bin/sh\n").unwrap();
    run(Command::new("chmod").arg("4755").arg(src.join("suid")));
    run(Command::new("chown")
        .arg("1234:5678")
        .arg(src.join("sub/b.txt")));
    run(Command::new("chmod").arg("0750").arg(src.join("sub")));
    run(u().args(["insert", "--image", &img]).arg(&src).arg("/srv"));
    let second = dir.path().join("second");
    std::fs::create_dir_all(second.join("keep")).unwrap();
    std::fs::write(second.join("keep/k.txt"), "kept\n").unwrap();
    std::fs::create_dir_all(second.join("replaced")).unwrap();
    std::fs::write(second.join("replaced/old.txt"), "old\n").unwrap();
    run(u()
        .args(["insert", "--image", &img])
        .arg(&second)
        .arg("/opt"));
    run(u().args(["insert", "--image", &img, "--whiteout", "/srv/a.txt"]));
    let new = dir.path().join("new");
    std::fs::create_dir_all(&new).unwrap();
    std::fs::write(new.join("new.txt"), "new\n").unwrap();
    run(u()
        .args(["insert", "--image", &img, "--opaque"])
        .arg(&new)
        .arg("/opt/replaced"));
    let file = dir.path().join("file-over-dir");
    std::fs::write(&file, "now a file\n").unwrap();
    run(u()
        .args(["insert", "--image", &img])
        .arg(&file)
        .arg("/srv/sub/deeper"));
    let bundle = dir.path().join("bundle");
    run(u().args(["unpack", "--image", &img]).arg(&bundle));

    let blob = |d: &str| {
        let (alg, hex) = d.split_once(':').unwrap();
        std::fs::read(layout.join("blobs").join(alg).join(hex)).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(config["rootfs"]["diff_ids"].as_array().unwrap())
        .map(|(l, d)| {
            (
                l["digest"].as_str().unwrap().parse().unwrap(),
                d.as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    Image {
        rootfs: bundle.join("rootfs"),
        layout,
        layers,
        _dir: dir,
    }
}

pub fn blob_path(layout: &Path, d: &Digest) -> PathBuf {
    layout
        .join("blobs")
        .join(d.algorithm().as_str())
        .join(d.hex())
}

#[test]
fn flattened_layers_equal_umoci_unpack() {
    if !require_root() {
        return;
    }
    let img = umoci_image();
    let out = tempfile::tempdir().unwrap();
    for (digest, diff_id) in &img.layers {
        let f = std::fs::File::open(blob_path(&img.layout, digest)).unwrap();
        let applied = apply_layer(
            f,
            digest,
            Some(diff_id),
            out.path(),
            WhiteoutMode::Flatten,
            &[],
        )
        .unwrap();
        assert!(applied.skipped.is_empty(), "{:?}", applied.skipped);
    }
    let ours = tree(out.path());
    let theirs = tree(&img.rootfs);
    assert_eq!(ours, theirs);
    assert!(theirs.contains_key("srv/link") && !theirs.contains_key("srv/a.txt"));
    assert!(
        theirs["srv/suid"].contains(" 4755 "),
        "{}",
        theirs["srv/suid"]
    );
    assert!(theirs["srv/sub/b.txt"].ends_with("1234:5678"));
    assert!(
        !theirs.contains_key("opt/replaced/old.txt") && theirs.contains_key("opt/replaced/new.txt")
    );
}

#[test]
fn overlay_lower_layers_mount_to_umoci_unpack() {
    if !require_root() {
        return;
    }
    let img = umoci_image();
    let work = tempfile::tempdir().unwrap();
    let mut lowers = Vec::new();
    for (i, (digest, diff_id)) in img.layers.iter().enumerate() {
        let dir = work.path().join(format!("l{i}"));
        std::fs::create_dir(&dir).unwrap();
        let f = std::fs::File::open(blob_path(&img.layout, digest)).unwrap();
        let below: Vec<PathBuf> = lowers.iter().rev().cloned().collect();
        apply_layer(
            f,
            digest,
            Some(diff_id),
            &dir,
            WhiteoutMode::Overlay { userxattr: false },
            &below,
        )
        .unwrap();
        lowers.push(dir);
    }
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let lowerdir: Vec<String> = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", lowerdir.join(":")))
        .arg(&mnt));
    let ours = tree(&mnt);
    run(Command::new("umount").arg(&mnt));
    assert_eq!(ours, tree(&img.rootfs));
}

#[test]
fn wrong_digest_or_diff_id_is_refused_and_compressions_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o640);
    h.set_uid(rustix::process::geteuid().as_raw().into());
    h.set_gid(rustix::process::getegid().as_raw().into());
    h.set_mtime(1_600_000_000);
    tar.append_data(&mut h, "d/hello.txt", &b"hello"[..])
        .unwrap();
    let raw = tar.into_inner().unwrap();
    let diff_id = Digest::sha256(&raw);
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&raw).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::encode_all(&raw[..], 3).unwrap();
    let mut trees = Vec::new();
    for (name, bytes) in [("plain", &raw), ("gzip", &gz), ("zstd", &zst)] {
        let target = dir.path().join(name);
        std::fs::create_dir(&target).unwrap();
        let d = Digest::sha256(bytes);
        let applied = apply_layer(
            &bytes[..],
            &d,
            Some(&diff_id),
            &target,
            WhiteoutMode::Flatten,
            &[],
        )
        .unwrap();
        assert_eq!(applied.diff_id, diff_id);
        trees.push(tree(&target));
    }
    assert!(trees.windows(2).all(|w| w[0] == w[1]));
    assert!(trees[0]["d/hello.txt"].contains(" 640 "), "{:?}", trees[0]);

    let target = dir.path().join("bad");
    std::fs::create_dir(&target).unwrap();
    let wrong = Digest::sha256(b"other");
    let err = apply_layer(&gz[..], &wrong, None, &target, WhiteoutMode::Flatten, &[]).unwrap_err();
    assert!(err.to_string().contains("content digest"), "{err}");
    let err = apply_layer(
        &gz[..],
        &Digest::sha256(&gz),
        Some(&wrong),
        &target,
        WhiteoutMode::Flatten,
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("diffID"), "{err}");
    let err = apply_layer(
        &b"\x1f\x8bnot gzip at all"[..],
        &wrong,
        None,
        &target,
        WhiteoutMode::Flatten,
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("reading the archive"), "{err}");
}
