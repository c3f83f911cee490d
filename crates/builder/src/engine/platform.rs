//! Which platform a stage builds for, and whether this machine can run its
//! programs.

use std::path::Path;

use regclient::Platform;

use super::BuildRequest;
use crate::fault::StepError;

/// The platform this machine runs, as BuildKit's `BUILDPLATFORM` names it.
pub(super) fn host_platform() -> dockerfile::Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    dockerfile::Platform {
        os: "linux".into(),
        arch: arch.into(),
        variant: String::new(),
    }
}

/// Whether this machine can run `p`'s programs: its own platform, or one
/// with an emulator registered in `binfmt` (`/proc/sys/fs/binfmt_misc`,
/// where qemu-user-static puts `qemu-aarch64` …), as BuildKit checks.
/// Without one, the machine is at fault: an emulator would make it run.
pub(super) fn can_run(p: &Platform, binfmt: &Path) -> Result<(), StepError> {
    let host = host_platform();
    if p.os == host.os && p.architecture == host.arch {
        return Ok(());
    }
    let qemu = match p.architecture.as_str() {
        "arm64" => "aarch64",
        "amd64" => "x86_64",
        "386" => "i386",
        "ppc64le" => "ppc64le",
        "loong64" => "loongarch64",
        other => other,
    };
    if binfmt.join(format!("qemu-{qemu}")).exists() {
        return Ok(());
    }
    Err(StepError::machine(format!(
        "this {host} machine cannot run {p} programs (no qemu-{qemu} in {}); \
         run build steps on this machine with FROM --platform=$BUILDPLATFORM",
        binfmt.display()
    )))
}

/// A stage's platform: `FROM --platform=…` (already expanded) or the
/// build's `--platform`.
pub(super) fn stage_platform(
    stage: &dockerfile::Stage,
    req: &BuildRequest,
) -> Result<Platform, StepError> {
    match stage.platform.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => p
            .parse()
            .map_err(|e: regclient::RegClientError| StepError::user(e)),
        None => Ok(req.platform.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_only_what_this_machine_or_an_emulator_can() {
        let binfmt = tempfile::tempdir().unwrap();
        let host = host_platform();
        let here = Platform {
            os: host.os.clone(),
            architecture: host.arch.clone(),
            variant: None,
        };
        assert_eq!(can_run(&here, binfmt.path()), Ok(()));
        let foreign = Platform {
            architecture: if host.arch == "s390x" {
                "arm64"
            } else {
                "s390x"
            }
            .into(),
            ..here
        };
        let err = can_run(&foreign, binfmt.path()).unwrap_err();
        assert_eq!(err.fault(), crate::Fault::Machine);
        let err = err.to_string();
        assert!(
            err.contains(&foreign.to_string()) && err.contains("--platform=$BUILDPLATFORM"),
            "{err}"
        );
        std::fs::write(
            binfmt.path().join(format!("qemu-{}", foreign.architecture)),
            "enabled\n",
        )
        .unwrap();
        assert_eq!(can_run(&foreign, binfmt.path()), Ok(()));
    }
}
