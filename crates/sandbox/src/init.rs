//! The init: the code that runs in the re-executed binary (`slipway
//! sandbox-init`, or the `sandbox-init` test binary), never in the caller's
//! multi-threaded process.
//!
//! Two stages, each a fresh single-threaded exec of the same binary:
//!
//! 1. **Monitor** (on the host side of the PID namespace): `unshare`s the
//!    namespaces, waits for the parent to write its id maps if a user
//!    namespace is among them, spawns pid 1, then waits for it, relaying a
//!    kill request, and reports its exit status. If the parent goes away,
//!    the monitor kills pid 1.
//! 2. **Pid 1** (first process of the new PID namespace, so that `/proc`
//!    shows only the run): applies the mount/security plan through [`Sys`]
//!    (after which it has the program's uid, capabilities and
//!    `no_new_privs`, and is not dumpable), spawns the program as pid 2,
//!    reaps orphans until the program exits, and reports its status. So a
//!    signal kills the program as it would anywhere (a process that is
//!    pid 1 ignores default-action signals), and exit codes and signals
//!    propagate. When pid 1 exits the kernel kills every other process of
//!    the namespace: nothing survives a run. It dies with the monitor
//!    (`PR_SET_PDEATHSIG`).
//!
//! A fresh exec instead of `fork` in the caller keeps everything before the
//! program's `exec` ordinary safe Rust: after `fork` in a multi-threaded
//! process only async-signal-safe calls are allowed.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, Stdio};

use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid};
use rustix::event::{PollFd, PollFlags, poll};

use crate::error::SysError;
use crate::spec::ExitStatus;
use crate::sys::{Op, RealSys, Sys};
use crate::wire::{Control, InitMsg, Lines, MonitorPlan, Pid1Plan, Report, send};

/// Applies `ops` in order, stopping at the first failure.
pub fn apply_all<S: Sys + ?Sized>(sys: &mut S, ops: &[Op]) -> Result<(), SysError> {
    for op in ops {
        sys.apply(op)?;
    }
    Ok(())
}

/// Entry point of the init. The binary that dispatches to it must do so
/// before starting any thread (no async runtime yet): `unshare` of a user
/// namespace requires a single-threaded process.
pub fn main() -> ExitCode {
    let stdin = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => return usage(&format!("stdin: {e}")),
    };
    let is_socket = rustix::fs::fstat(&stdin).is_ok_and(|s| {
        rustix::fs::FileType::from_raw_mode(s.st_mode) == rustix::fs::FileType::Socket
    });
    if !is_socket {
        return usage("stdin is not the control socket");
    }
    let mut lines = Lines::new(UnixStream::from(stdin));
    match lines.next::<InitMsg>() {
        Ok(Some(InitMsg::Monitor(plan))) => monitor(lines, plan),
        Ok(Some(InitMsg::Pid1(plan))) => pid1(lines, plan),
        Ok(None) => usage("no plan received"),
        Err(e) => usage(&format!("reading the plan: {e}")),
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("sandbox-init: {msg}; this entry point is started by the sandbox library only");
    ExitCode::from(2)
}

fn report(ctl: &mut UnixStream, r: &Report) {
    // The parent may be gone; then nobody is listening anyway.
    let _ = send(ctl, r);
}

fn monitor(mut ctl: Lines, plan: MonitorPlan) -> ExitCode {
    let fail = |ctl: &mut Lines, msg: String| {
        report(&mut ctl.stream, &Report::SetupFailed(msg));
        ExitCode::from(1)
    };
    // Under a memory limit the monitor shares the run's cgroup: it must not
    // be the OOM killer's victim, or the run's status would be lost. (Only
    // root may lower it; pid 1 sets 0 again for the program.)
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    // Join the run's cgroups; pid 1 and everything after it inherit them.
    for f in &plan.cgroup_join {
        if let Err(e) = std::fs::write(f, "0") {
            return fail(&mut ctl, format!("joining cgroup {}: {e}", f.display()));
        }
    }
    let flags = CloneFlags::from_bits_truncate(plan.unshare);
    if let Err(e) = nix::sched::unshare(flags) {
        return fail(&mut ctl, format!("unshare({flags:?}): {e}"));
    }
    if plan.userns {
        report(
            &mut ctl.stream,
            &Report::NeedMaps {
                pid: std::process::id(),
            },
        );
        match ctl.next::<Control>() {
            Ok(Some(Control::Mapped)) => {}
            Ok(Some(Control::Kill)) | Ok(None) => return ExitCode::from(1),
            Err(e) => return fail(&mut ctl, format!("waiting for id maps: {e}")),
        }
        // Become root of the new namespace so that pid 1 is exec'd with
        // its full capability set there.
        let ids = nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .and_then(|()| {
                nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            });
        if let Err(e) = ids {
            return fail(
                &mut ctl,
                format!("becoming root in the user namespace: {e}"),
            );
        }
    }

    let (mut to_pid1, pid1_end) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => return fail(&mut ctl, format!("socketpair: {e}")),
    };
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(std::env::args_os().skip(1))
        .env_clear()
        .stdin(Stdio::from(OwnedFd::from(pid1_end)));
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(&mut ctl, format!("spawning pid 1: {e}")),
    };
    // Close our copy of pid 1's end, so that its exit reads as EOF.
    drop(cmd);
    let pid = child.id();
    let Ok(raw_pid) = i32::try_from(pid) else {
        return fail(&mut ctl, "pid out of range".into());
    };
    let nix_pid = Pid::from_raw(raw_pid);
    if let Err(e) = send(&mut to_pid1, &InitMsg::Pid1(plan.pid1)) {
        let _ = kill(nix_pid, Signal::SIGKILL);
        let _ = child.wait();
        return fail(&mut ctl, format!("sending the plan to pid 1: {e}"));
    }
    report(&mut ctl.stream, &Report::Started { pid });
    let pidfd = rustix::process::Pid::from_raw(raw_pid)
        .ok_or(rustix::io::Errno::SRCH)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()));
    let pidfd = match pidfd {
        Ok(fd) => fd,
        Err(e) => {
            let _ = kill(nix_pid, Signal::SIGKILL);
            let _ = child.wait();
            return fail(&mut ctl, format!("pidfd_open: {e}"));
        }
    };

    let mut pid1_lines = Some(Lines::new(to_pid1));
    let mut setup_error: Option<String> = None;
    let mut program_status: Option<ExitStatus> = None;
    let mut parent_open = true;
    loop {
        // Drain what is already buffered before sleeping in poll.
        if parent_open && ctl.ready() {
            match ctl.next::<Control>() {
                Ok(Some(Control::Kill)) | Ok(None) | Err(_) => {
                    let _ = kill(nix_pid, Signal::SIGKILL);
                    parent_open = false;
                }
                Ok(Some(Control::Mapped)) => {}
            }
            continue;
        }
        if let Some(l) = pid1_lines.as_mut()
            && l.ready()
        {
            match l.next::<Report>() {
                Ok(Some(Report::SetupFailed(m))) => setup_error = Some(m),
                Ok(Some(Report::Exited(s))) => program_status = Some(s),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => pid1_lines = None,
            }
            continue;
        }
        let mut fds = vec![PollFd::new(&pidfd, PollFlags::IN)];
        if parent_open {
            fds.push(PollFd::new(&ctl.stream, PollFlags::IN));
        }
        if let Some(l) = &pid1_lines {
            fds.push(PollFd::new(&l.stream, PollFlags::IN));
        }
        match poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                let _ = kill(nix_pid, Signal::SIGKILL);
                setup_error.get_or_insert(format!("poll: {e}"));
            }
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        if ready[0] {
            break;
        }
        let mut i = 1;
        if parent_open {
            if ready[i] && ctl.fill().is_err() {
                let _ = kill(nix_pid, Signal::SIGKILL);
                parent_open = false;
            }
            i += 1;
        }
        if let Some(l) = pid1_lines.as_mut()
            && ready[i]
            && l.fill().is_err()
        {
            pid1_lines = None;
        }
    }
    // pid 1 is a zombie now: the kernel has killed and reaped the rest of
    // its namespace before letting it exit.
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => return fail(&mut ctl, format!("waiting for pid 1: {e}")),
    };
    // pid 1's last report may still be in the socket buffer.
    if let Some(l) = pid1_lines.as_mut()
        && setup_error.is_none()
        && program_status.is_none()
    {
        match l.next::<Report>() {
            Ok(Some(Report::SetupFailed(m))) => setup_error = Some(m),
            Ok(Some(Report::Exited(s))) => program_status = Some(s),
            _ => {}
        }
    }
    let r = match (setup_error, program_status) {
        (Some(m), _) => Report::SetupFailed(m),
        (None, Some(s)) => Report::Exited(s),
        // pid 1 itself was killed (timeout, cancel): its status stands.
        (None, None) => Report::Exited(match (status.code(), status.signal()) {
            (Some(c), _) => ExitStatus::exited(c),
            (None, Some(s)) => ExitStatus::signaled(s),
            (None, None) => ExitStatus::exited(255),
        }),
    };
    report(&mut ctl.stream, &r);
    ExitCode::SUCCESS
}

fn pid1(ctl: Lines, plan: Pid1Plan) -> ExitCode {
    // `main` read the plan through a close-on-exec copy of stdin, which the
    // program does not inherit; pid 1 reports through it.
    let mut ctl = ctl.stream;
    let mut fail = |msg: String| {
        report(&mut ctl, &Report::SetupFailed(msg));
        ExitCode::from(1)
    };
    let mut sys = RealSys::new();
    if let Err(e) = apply_all(&mut sys, &plan.ops) {
        return fail(e.to_string());
    }
    let devnull = match std::fs::File::open("/dev/null") {
        Ok(f) => f,
        Err(e) => return fail(format!("opening /dev/null: {e}")),
    };
    let Some((program, args)) = plan.argv.split_first() else {
        return fail("empty argv".into());
    };
    let env = plan.env.iter().filter_map(|e| e.split_once('='));
    let child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir(&plan.cwd)
        .stdin(devnull)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return fail(format!("exec {program:?} in {}: {e}", plan.cwd)),
    };
    let status = reap_until(child.id());
    report(&mut ctl, &Report::Exited(status));
    // Returning ends the namespace: the kernel kills whatever is left.
    ExitCode::SUCCESS
}

/// Pid 1's duty: reap every orphan until the program itself exits.
fn reap_until(main: u32) -> ExitStatus {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(p, c)) if i64::from(p.as_raw()) == i64::from(main) => {
                return ExitStatus::exited(c);
            }
            Ok(WaitStatus::Signaled(p, s, _)) if i64::from(p.as_raw()) == i64::from(main) => {
                return ExitStatus::signaled(s as i32);
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return ExitStatus::exited(255),
        }
    }
}
