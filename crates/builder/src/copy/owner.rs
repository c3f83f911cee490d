//! Who owns what COPY/ADD writes, and the mode of the directories it
//! makes: `--chown` resolved against the image's passwd and group,
//! `--chmod` parsed.

use std::path::{Path, PathBuf};

use sandbox::RootFs;

use crate::chmod::Chmod;
use crate::fault::StepError;

/// A uid and gid.
pub(crate) type Owner = (u32, u32);

/// `--chown` and `--chmod` of COPY/ADD, the owner resolved by
/// [`chown_ids`] against the image below the step.
pub(crate) fn ownership(
    chown: Option<&str>,
    chmod: Option<&str>,
    lowers: &[PathBuf],
    step: &Path,
) -> Result<(Option<Owner>, Option<Chmod>), StepError> {
    let owner = match chown {
        None => None,
        Some(spec) => {
            let view = RootFs {
                lower: lowers.iter().rev().cloned().collect(),
                upper: step.join("upper"),
                work: step.join("work"),
            };
            Some(chown_ids(&view, spec)?)
        }
    };
    let mode = chmod.map(Chmod::parse).transpose()?;
    Ok((owner, mode))
}

/// `user[:group]` as BuildKit's file operations read it (`--chown`, and the
/// stage's USER for the directories WORKDIR makes): a user name gives its
/// uid and primary group from the image's `/etc/passwd`; a number (or
/// `root`) is the uid and, without a group, the gid too, whatever passwd
/// says; a group, a name from `/etc/group` or a number, replaces the gid.
/// Names the image does not have are refused (BuildKit would use 0).
pub(crate) fn chown_ids(view: &RootFs, spec: &str) -> Result<Owner, StepError> {
    let (user, group) = spec
        .split_once(':')
        .map_or((spec, None), |(u, g)| (u, Some(g)));
    let user = if user == "root" { "0" } else { user };
    let by_id = user.parse::<u32>().is_ok();
    let full = match group {
        Some(g) => format!("{user}:{}", if g == "root" { "0" } else { g }),
        None => user.to_owned(),
    };
    // A name the image does not have is the Dockerfile's to fix.
    let (uid, gid, _) = sandbox::resolve_user(view, &full).map_err(StepError::user)?;
    Ok(match group {
        None if by_id => (uid, uid),
        _ => (uid, gid),
    })
}

/// The mode of the directories a COPY/ADD creates on the way to its
/// destination: an octal `--chmod`'s permission bits (BuildKit's MkdirAll
/// takes the copy's mode; Go drops the special bits there), else 0755.
pub(crate) fn new_dir_mode(mode: Option<&Chmod>) -> u32 {
    match mode {
        Some(Chmod::Octal(m)) => m & 0o777,
        _ => 0o755,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image whose `web` user's primary group (50) is not its uid.
    fn image(dir: &Path) -> RootFs {
        let l = dir.join("lower");
        std::fs::create_dir_all(l.join("etc")).unwrap();
        std::fs::write(
            l.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nweb:x:2000:50:web:/srv:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            l.join("etc/group"),
            "root:x:0:\nstaff:x:50:\nwww:x:3000:web\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("upper")).unwrap();
        RootFs {
            lower: vec![l],
            upper: dir.join("upper"),
            work: dir.join("work"),
        }
    }

    #[test]
    fn chown_takes_a_named_users_primary_group_and_a_uid_as_gid() {
        let d = tempfile::tempdir().unwrap();
        let v = image(d.path());
        assert_eq!(chown_ids(&v, "web").unwrap(), (2000, 50));
        assert_eq!(chown_ids(&v, "web:www").unwrap(), (2000, 3000));
        assert_eq!(chown_ids(&v, "web:7").unwrap(), (2000, 7));
        // A number is the uid and the gid, even when passwd has it.
        assert_eq!(chown_ids(&v, "2000").unwrap(), (2000, 2000));
        assert_eq!(chown_ids(&v, "2000:www").unwrap(), (2000, 3000));
        assert_eq!(chown_ids(&v, "4321").unwrap(), (4321, 4321));
        assert_eq!(chown_ids(&v, "root").unwrap(), (0, 0));
        assert_eq!(chown_ids(&v, "root:staff").unwrap(), (0, 50));
        assert!(chown_ids(&v, "ghost").is_err());
        assert!(chown_ids(&v, "web:nogroup").is_err());
    }

    #[test]
    fn created_dirs_take_an_octal_chmods_permission_bits() {
        assert_eq!(new_dir_mode(None), 0o755);
        assert_eq!(new_dir_mode(Some(&Chmod::parse("0640").unwrap())), 0o640);
        assert_eq!(new_dir_mode(Some(&Chmod::parse("4755").unwrap())), 0o755);
        assert_eq!(new_dir_mode(Some(&Chmod::parse("u+x").unwrap())), 0o755);
    }
}
