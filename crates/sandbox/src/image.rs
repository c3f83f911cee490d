//! Running a whole image: entrypoint + cmd, config env, user and working
//! dir turned into a [`Process`], with Docker's rules (an overridden
//! entrypoint drops the image's cmd; `USER name[:group]` is looked up in the
//! image's `/etc/passwd` and `/etc/group`). For task `cmd` steps.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use oci_spec::image::Config;
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::error::SpecError;
use crate::spec::{DEFAULT_PATH, Process, RootFs};

/// How a task step runs an image.
#[derive(Debug, Clone, Default)]
pub struct ImageRun {
    /// Replaces the image's `Cmd` (arguments to the entrypoint).
    pub args: Option<Vec<String>>,
    /// Replaces the image's `Entrypoint` (and then drops its `Cmd`).
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=value` entries added to, or overriding, the image's `Env`.
    pub env: Vec<String>,
    /// Replaces the image's `User`.
    pub user: Option<String>,
    /// Replaces the image's `WorkingDir`.
    pub workdir: Option<String>,
    /// Host name inside.
    pub hostname: Option<String>,
}

/// The process an image's config describes, on `rootfs` (read for user and
/// group names only).
pub fn image_process(
    config: Option<&Config>,
    rootfs: &RootFs,
    run: &ImageRun,
) -> Result<Process, SpecError> {
    let get = |f: fn(&Config) -> Option<Vec<String>>| config.and_then(f).unwrap_or_default();
    let entrypoint = match &run.entrypoint {
        Some(e) => e.clone(),
        None => get(|c| c.entrypoint().clone()),
    };
    let args = match (&run.args, &run.entrypoint) {
        (Some(a), _) => a.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => get(|c| c.cmd().clone()),
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(args).collect();
    if argv.is_empty() {
        return Err(SpecError::EmptyArgv);
    }
    let mut env: Vec<String> = get(|c| c.env().clone());
    for e in &run.env {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        env.retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
        env.push(e.clone());
    }
    let user = run
        .user
        .clone()
        .or_else(|| config.and_then(|c| c.user().clone()))
        .filter(|u| !u.is_empty());
    let (uid, gid, home) = match &user {
        None => (0, 0, "/root".to_string()),
        Some(u) => resolve_user(rootfs, u)?,
    };
    let groups = match &user {
        None => Vec::new(),
        Some(u) => supplementary_groups(rootfs, u, gid),
    };
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    let cwd = run
        .workdir
        .clone()
        .or_else(|| config.and_then(|c| c.working_dir().clone()))
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let mut p = Process::new(argv);
    p.env = env;
    p.cwd = cwd;
    p.uid = uid;
    p.gid = gid;
    p.groups = groups;
    if let Some(h) = &run.hostname {
        p.hostname = h.clone();
    }
    Ok(p)
}

/// The supplementary groups of `USER spec` as runc gives them under
/// BuildKit: the groups of `/etc/group` that list the user's name, and the
/// primary group `gid`.
fn supplementary_groups(rootfs: &RootFs, spec: &str, gid: u32) -> Vec<u32> {
    let user = spec.split_once(':').map_or(spec, |(u, _)| u);
    let passwd = read_layered(rootfs, "etc/passwd").unwrap_or_default();
    // A numeric USER is a name too when passwd has that uid.
    let name = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && (f[0] == user || f[2] == user))
        .map(|f| f[0].to_owned());
    let mut groups = vec![gid];
    if let Some(name) = name {
        let group = read_layered(rootfs, "etc/group").unwrap_or_default();
        // name:x:gid:member,member
        for f in group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
            if f.len() >= 4
                && f[3].split(',').any(|m| m.trim() == name)
                && let Ok(g) = f[2].parse()
            {
                groups.push(g);
            }
        }
    }
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// `user[:group]`, names or numbers, against the image's passwd and group.
/// Public for `COPY --chown`, which resolves names the same way.
pub fn resolve_user(rootfs: &RootFs, spec: &str) -> Result<(u32, u32, String), SpecError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_layered(rootfs, "etc/passwd").unwrap_or_default();
    // name:x:uid:gid:gecos:home:shell
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && (f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user)));
    let (uid, mut gid, home) = match (&entry, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse()
                .map_err(|_| SpecError::Unsupported(format!("bad passwd entry for {user}")))?,
            f[3].parse()
                .map_err(|_| SpecError::Unsupported(format!("bad passwd entry for {user}")))?,
            f[5].to_string(),
        ),
        (None, Ok(n)) => (n, 0, "/".to_string()),
        (None, Err(_)) => {
            return Err(SpecError::Unsupported(format!(
                "user {user:?} not found in the image's /etc/passwd"
            )));
        }
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let groups = read_layered(rootfs, "etc/group").unwrap_or_default();
                groups
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 3 && f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| {
                        SpecError::Unsupported(format!(
                            "group {g:?} not found in the image's /etc/group"
                        ))
                    })?
            }
        };
    }
    Ok((uid, gid, home))
}

/// Reads a small file from the topmost layer that has it, resolving inside
/// each layer so that an image's symlink cannot point at a host file.
fn read_layered(rootfs: &RootFs, rel: &str) -> Option<String> {
    std::iter::once(&rootfs.upper)
        .chain(rootfs.lower.iter())
        .find_map(|layer| read_in(layer, rel))
}

fn read_in(layer: &Path, rel: &str) -> Option<String> {
    let dir = rustix::fs::open(
        layer,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let fd = rustix::fs::openat2(
        dir.as_fd(),
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    if !rustix::fs::fstat(&fd)
        .ok()
        .is_some_and(|s| rustix::fs::FileType::from_raw_mode(s.st_mode).is_file())
    {
        return None;
    }
    let mut s = String::new();
    std::fs::File::from(fd)
        .take(1 << 20)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::ConfigBuilder;

    fn rootfs(dir: &Path) -> RootFs {
        let l = dir.join("lower");
        std::fs::create_dir_all(l.join("etc")).unwrap();
        std::fs::write(
            l.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(l.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        std::fs::create_dir_all(dir.join("upper")).unwrap();
        RootFs {
            lower: vec![l],
            upper: dir.join("upper"),
            work: dir.join("work"),
        }
    }

    #[test]
    fn entrypoint_cmd_env_user_workdir() {
        let d = tempfile::tempdir().unwrap();
        let r = rootfs(d.path());
        let cfg = ConfigBuilder::default()
            .entrypoint(vec!["/bin/app".to_string()])
            .cmd(vec!["--serve".to_string()])
            .env(vec!["A=1".to_string(), "PATH=/bin".to_string()])
            .user("app:staff".to_string())
            .working_dir("/srv".to_string())
            .build()
            .unwrap();
        let p = image_process(Some(&cfg), &r, &ImageRun::default()).unwrap();
        assert_eq!(p.argv, ["/bin/app", "--serve"]);
        assert_eq!((p.uid, p.gid), (1000, 50));
        assert_eq!(p.cwd, "/srv");
        assert!(p.env.contains(&"HOME=/home/app".to_string()));
        assert!(p.env.contains(&"PATH=/bin".to_string()));

        let run = ImageRun {
            args: Some(vec!["--check".into()]),
            env: vec!["A=2".into()],
            user: Some("1234".into()),
            ..Default::default()
        };
        let p = image_process(Some(&cfg), &r, &run).unwrap();
        assert_eq!(p.argv, ["/bin/app", "--check"]);
        assert_eq!(p.uid, 1234);
        assert!(p.env.contains(&"A=2".to_string()) && !p.env.contains(&"A=1".to_string()));

        // Overriding the entrypoint drops the image's cmd.
        let run = ImageRun {
            entrypoint: Some(vec!["sh".into()]),
            ..Default::default()
        };
        assert_eq!(image_process(Some(&cfg), &r, &run).unwrap().argv, ["sh"]);
        assert!(matches!(
            image_process(None, &r, &ImageRun::default()),
            Err(SpecError::EmptyArgv)
        ));
        let run = ImageRun {
            user: Some("nobody-here".into()),
            args: Some(vec!["x".into()]),
            ..Default::default()
        };
        assert!(image_process(None, &r, &run).is_err());
    }

    #[test]
    fn passwd_symlink_cannot_reach_the_host() {
        let d = tempfile::tempdir().unwrap();
        let mut r = rootfs(d.path());
        let evil = d.path().join("evil");
        std::fs::create_dir_all(evil.join("etc")).unwrap();
        // An absolute symlink to /etc/passwd resolves inside its own layer
        // (to itself: a loop), never to the host's file; the lookup moves on
        // to the next layer.
        std::os::unix::fs::symlink("/etc/passwd", evil.join("etc/passwd")).unwrap();
        r.lower.insert(0, evil);
        assert!(read_layered(&r, "etc/passwd").is_some_and(|s| s.contains("app:x:1000")));
    }
}
