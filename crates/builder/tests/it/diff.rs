//! A RUN step's changes, made through a real overlay mount, exported from
//! the upper dir as a layer and applied again, give back the merged view.

use std::path::{Path, PathBuf};
use std::process::Command;

use builder::{Compression, LayerOptions, WhiteoutMode, apply_layer, write_layer};
use oci::Digest;

use crate::reference::{blob_path, umoci_image};
use crate::{require_root, run, tree};

fn sh(dir: &Path, script: &str) {
    run(Command::new("sh").arg("-ec").arg(script).current_dir(dir));
}

fn export(upper: &Path, out: &Path, opts: &LayerOptions) -> builder::LayerInfo {
    let f = std::fs::File::create(out).unwrap();
    let info = write_layer(upper, std::io::BufWriter::new(f), opts).unwrap();
    assert_eq!(Digest::sha256(&std::fs::read(out).unwrap()), info.digest);
    assert_eq!(std::fs::metadata(out).unwrap().len(), info.size);
    info
}

#[test]
fn overlay_changes_round_trip_through_a_layer() {
    if !require_root() {
        return;
    }
    let image = umoci_image();
    let work = tempfile::tempdir().unwrap();
    let [lower, upper, ovl_work, merged] = ["lower", "upper", "work", "merged"].map(|d| {
        let p = work.path().join(d);
        std::fs::create_dir(&p).unwrap();
        p
    });
    let base_layers: Vec<(PathBuf, Digest, Digest)> = image
        .layers
        .iter()
        .map(|(d, id)| (blob_path(&image.layout, d), d.clone(), id.clone()))
        .collect();
    for (path, d, id) in &base_layers {
        apply_layer(
            std::fs::File::open(path).unwrap(),
            d,
            Some(id),
            &lower,
            WhiteoutMode::Flatten,
            &[],
        )
        .unwrap();
    }
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            ovl_work.display()
        ))
        .arg(&merged));
    sh(
        &merged,
        "echo new > srv/new.txt
         echo changed >> opt/keep/k.txt
         rm srv/link
         rm -r opt/replaced && mkdir opt/replaced && echo fresh > opt/replaced/only.txt
         ln -s ../opt/keep/k.txt srv/to-k
         echo same > srv/h1 && ln srv/h1 srv/h2
         chmod 0700 srv/sub
         echo owned > srv/owned && chown 42:43 srv/owned
         mkdir -p a/very/$(printf 'long%.0s' $(seq 1 40))/dir && echo deep > a/very/$(printf 'long%.0s' $(seq 1 40))/dir/f
         echo x > srv/xattr && setfattr -n user.slipway -v yes srv/xattr",
    );
    let expected = tree(&merged);
    run(Command::new("umount").arg(&merged));

    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let out = work.path().join(format!("layer-{compression:?}"));
        let opts = LayerOptions {
            compression,
            source_date_epoch: None,
        };
        let info = export(&upper, &out, &opts);
        assert_eq!(info.media_type, compression.media_type());
        let again = export(&upper, &work.path().join("again"), &opts);
        assert_eq!(again.digest, info.digest, "export is not deterministic");

        let target = work.path().join(format!("applied-{compression:?}"));
        std::fs::create_dir(&target).unwrap();
        for (path, d, id) in &base_layers {
            apply_layer(
                std::fs::File::open(path).unwrap(),
                d,
                Some(id),
                &target,
                WhiteoutMode::Flatten,
                &[],
            )
            .unwrap();
        }
        let applied = apply_layer(
            std::fs::File::open(&out).unwrap(),
            &info.digest,
            Some(&info.diff_id),
            &target,
            WhiteoutMode::Flatten,
            &[],
        )
        .unwrap();
        assert!(applied.skipped.is_empty(), "{:?}", applied.skipped);
        assert_eq!(tree(&target), expected, "{compression:?}");
        let got = run(Command::new("getfattr")
            .args(["--only-values", "-n", "user.slipway"])
            .arg(target.join("srv/xattr")));
        assert_eq!(got, "yes");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(target.join("srv/h1")).unwrap().ino(),
            std::fs::metadata(target.join("srv/h2")).unwrap().ino(),
            "hard link lost"
        );
    }

    // GNU tar reads it, whiteouts and all.
    let listing = run(Command::new("tar")
        .arg("-tzf")
        .arg(work.path().join("layer-Gzip")));
    for name in [
        "srv/.wh.link",
        "opt/replaced/.wh..wh..opq",
        "srv/new.txt",
        "srv/h2",
    ] {
        assert!(
            listing.lines().any(|l| l == name),
            "{name} missing from:\n{listing}"
        );
    }

    // SOURCE_DATE_EPOCH clamps every time stamp.
    let out = work.path().join("clamped");
    let opts = LayerOptions {
        compression: Compression::None,
        source_date_epoch: Some(1000),
    };
    export(&upper, &out, &opts);
    let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        assert!(
            e.header().mtime().unwrap() <= 1000,
            "{:?}",
            e.path().unwrap()
        );
    }
}
