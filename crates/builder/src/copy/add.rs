//! ADD's own sources: local tar archives, extracted into the layer (not
//! copied), and URLs, downloaded (verified by `--checksum`); and how a URL
//! may be shown in an error.

use std::path::{Path, PathBuf};

use super::{Owner, clean_rel, make_dirs, make_dirs_mode, new_dir_mode};
use crate::chmod::Chmod;
use crate::fault::{Fault, StepError};
use crate::layered::{is_dir_in_layers, resolve_in_layers};

/// ADD of a local tar archive (plain, gzip, zstd, bzip2 or xz): extracted
/// into `dest`, keeping the archive's modes, and its owners unless
/// `--chown` gives one (`owner`), which every entry of the archive then
/// has, as BuildKit's untar does. Returns `false` for anything that is not
/// an archive, which ADD then copies like COPY. An archive that does not
/// decompress or extract is the user's; reading and writing, the machine's.
pub(crate) fn add_archive(
    context: &Path,
    source: &str,
    dest: &str,
    owner: Option<Owner>,
    upper: &Path,
    lowers: &[PathBuf],
    limits: layer::unpack::Limits,
) -> Result<bool, StepError> {
    use std::io::{Read, Seek};
    let Some(rel) = clean_rel(source) else {
        return Ok(false);
    };
    let Ok(real_rel) = crate::sources::resolve_in_root(context, &rel) else {
        return Ok(false);
    };
    let real = context.join(real_rel);
    if !std::fs::symlink_metadata(&real).is_ok_and(|m| m.is_file()) {
        return Ok(false);
    }
    let io = StepError::machine;
    let mut f = std::fs::File::open(&real).map_err(io)?;
    let mut magic = [0u8; 6];
    let n = f.read(&mut magic).map_err(io)?;
    f.rewind().map_err(io)?;
    let magic = &magic[..n];
    // bzip2 and xz are decompressed to a scratch file first (the layer
    // code reads gzip, zstd and plain tar itself).
    let mut f = if magic.starts_with(b"BZh") {
        let mut tmp = tempfile::tempfile().map_err(io)?;
        std::io::copy(
            &mut bzip2::read::BzDecoder::new(std::io::BufReader::new(f)),
            &mut tmp,
        )
        .map_err(|e| StepError::user(format!("decompressing bzip2: {e}")))?;
        tmp.rewind().map_err(io)?;
        tmp
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        let mut tmp = tempfile::tempfile().map_err(io)?;
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(f), &mut tmp)
            .map_err(|e| StepError::user(format!("decompressing xz: {e:?}")))?;
        tmp.rewind().map_err(io)?;
        tmp
    } else {
        f
    };
    // An archive is what decompresses to a tar; anything else is copied as a
    // file, as Docker decides it.
    let mut head = vec![0u8; 512];
    let got = {
        let mut probe = tar_stream(magic, &mut f).map_err(io)?;
        let mut got = 0;
        while got < head.len() {
            match probe.read(&mut head[got..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
        got
    };
    if got < 262 || &head[257..262] != b"ustar" {
        return Ok(false);
    }
    f.rewind().map_err(io)?;
    let digest = {
        let mut d = oci::Digester::new(oci::Algorithm::Sha256);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = f.read(&mut buf).map_err(io)?;
            if k == 0 {
                break;
            }
            d.update(&buf[..k]);
        }
        d.finish()
    };
    f.rewind().map_err(io)?;
    let dest_rel = resolve_in_layers(Some(upper), lowers, &crate::sources::clean(dest))
        .map_err(StepError::io)?;
    make_dirs(upper, &dest_rel, lowers, owner.unwrap_or((0, 0))).map_err(StepError::io)?;
    // The names --chown applies to: the archive's own entries (directories
    // it only implies stay as extracting makes them, as in BuildKit).
    let names = match owner {
        None => Vec::new(),
        Some(_) => {
            let mut names = Vec::new();
            let mut archive = tar::Archive::new(tar_stream(magic, &mut f).map_err(io)?);
            let bad = |e: std::io::Error| StepError::user(format!("reading the archive: {e}"));
            for e in archive.entries().map_err(bad)? {
                let e = e.map_err(bad)?;
                let name = e.path().map_err(bad)?;
                let mut rel = PathBuf::new();
                for c in name.components() {
                    match c {
                        std::path::Component::Normal(n) => rel.push(n),
                        std::path::Component::ParentDir => {
                            rel.pop();
                        }
                        _ => {}
                    }
                }
                names.push(rel);
            }
            drop(archive);
            f.rewind().map_err(io)?;
            names
        }
    };
    let target = upper.join(&dest_rel);
    // An archive from the context: no device node comes out of it.
    layer::unpack::apply_archive(
        f,
        &digest,
        None,
        &target,
        layer::unpack::WhiteoutMode::Flatten,
        &[],
        layer::unpack::Unpack {
            origin: layer::unpack::Origin::Context,
            limits,
        },
    )
    .map_err(|e| {
        // What the archive holds is the user's; the step dir it goes into, ours.
        let fault = match e {
            layer::unpack::UnpackError::Target { .. } => Fault::Machine,
            _ => Fault::User,
        };
        StepError::new(fault, format!("extracting: {e}"))
    })?;
    if let Some(owner) = owner {
        chown_beneath(&target, &names, owner)
            .map_err(|e| StepError::machine(format!("--chown: {e}")))?;
    }
    Ok(true)
}

/// The tar inside an archive whose first bytes are `magic` (gzip and zstd
/// are decompressed as read; anything else is read as it is).
fn tar_stream<'a>(
    magic: &[u8],
    f: &'a mut std::fs::File,
) -> std::io::Result<Box<dyn std::io::Read + 'a>> {
    Ok(match magic {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(f)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(zstd::stream::read::Decoder::new(f)?),
        _ => Box::new(f),
    })
}

/// Give `owner` to each of `names` under `dir`, the entry itself (a
/// symlink is not followed). Names are resolved beneath `dir` without
/// following any symlink, so an archive's planted link never leads the
/// chown elsewhere; a name that is not there (a whiteout, an entry reached
/// only through a link) is skipped.
fn chown_beneath(dir: &Path, names: &[PathBuf], owner: Owner) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
    let root = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let (uid, gid) = (
        rustix::fs::Uid::from_raw(owner.0),
        rustix::fs::Gid::from_raw(owner.1),
    );
    for name in names.iter().filter(|n| !n.as_os_str().is_empty()) {
        let fd = match rustix::fs::openat2(
            &root,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) => {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // A chown clears setuid/setgid: the mode is put back after it.
        let mode = rustix::fs::fstat(&fd)?.st_mode;
        rustix::fs::chownat(&fd, "", Some(uid), Some(gid), AtFlags::EMPTY_PATH)?;
        if rustix::fs::FileType::from_raw_mode(mode) != rustix::fs::FileType::Symlink
            && mode & 0o6000 != 0
        {
            rustix::fs::chmodat(
                rustix::fs::CWD,
                format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)),
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )?;
        }
    }
    Ok(())
}

/// ADD of a URL: downloaded (verified against `--checksum` when given) to
/// `dest`, or into it under the URL's last path segment; mode 0600 as in Docker.
/// A URL that does not answer, or answers with an error, is the network's
/// fault; content other than `--checksum` says, the user's.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn add_url(
    http: &reqwest::Client,
    url: &str,
    checksum: Option<&str>,
    dest: &str,
    into_dir: bool,
    owner: (u32, u32),
    mode: Option<&Chmod>,
    upper: &Path,
    lowers: &[PathBuf],
) -> Result<(), StepError> {
    let expected: Option<oci::Digest> = checksum
        .map(|c| {
            c.parse()
                .map_err(|e| StepError::user(format!("--checksum: {e}")))
        })
        .transpose()?;
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split(['/', '?', '#']).next())
        .unwrap_or(url);
    let resp = http.get(url).send().await.map_err(|e| {
        StepError::network(format!("downloading: {}", regclient::explain(host, &e)))
    })?;
    if !resp.status().is_success() {
        return Err(StepError::network(format!(
            "downloading: {host} answered HTTP {}",
            resp.status()
        )));
    }

    let bytes = resp
        .bytes()
        .await
        .map_err(|e| StepError::network(format!("downloading: {e}")))?;
    if let Some(e) = &expected {
        let actual = oci::Digest::of(e.algorithm(), &bytes);
        if &actual != e {
            return Err(StepError::user(format!(
                "checksum is {actual}, not the {e} given"
            )));
        }
    }
    let name = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .unwrap_or("download");
    let dest_rel = resolve_in_layers(Some(upper), lowers, &crate::sources::clean(dest))
        .map_err(StepError::io)?;
    let target = if into_dir || is_dir_in_layers(Some(upper), lowers, &dest_rel) {
        dest_rel.join(name)
    } else {
        dest_rel
    };
    make_dirs_mode(
        upper,
        target.parent().unwrap_or(Path::new("")),
        lowers,
        owner,
        new_dir_mode(mode),
    )
    .map_err(StepError::io)?;
    let at = upper.join(&target);
    std::fs::write(&at, &bytes).map_err(StepError::machine)?;
    use std::os::unix::fs::PermissionsExt;
    let mode = mode.map_or(0o600, |m| m.apply(0o600, false));
    std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode))
        .map_err(StepError::machine)?;
    std::os::unix::fs::chown(&at, Some(owner.0), Some(owner.1)).map_err(StepError::machine)?;
    Ok(())
}
