//! Docker's default seccomp profile, compiled with `seccompiler` (no
//! hand-written BPF) and installed by pid 1 as its very last step, after
//! capabilities are limited, ids are set and `no_new_privs` is on, so that
//! the program and everything it starts run under it.
//!
//! The profile is moby's `profiles/seccomp/default.json` as data: an
//! allow-list, `EPERM` for every other system call, and Docker's
//! conditional rules evaluated for the capabilities the run keeps
//! ([`crate::caps::DOCKER_DEFAULT`]: no `CAP_SYS_ADMIN`, so no `mount`,
//! `unshare`, `setns`, `bpf`, `perf_event_open`, `keyctl`, `add_key`,
//! `userfaultfd`, `kexec_load`, `open_by_handle_at`…):
//!
//! - `clone` only without namespace flags (`flags & 0x7E020000 == 0`:
//!   `CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET`);
//! - `clone3` returns `ENOSYS` (its flags are behind a pointer, so it cannot
//!   be inspected), which makes glibc fall back to `clone`;
//! - `socket` for every family but `AF_VSOCK`;
//! - `personality` only with Docker's five values (`PER_LINUX`,
//!   `PER_LINUX32`, `UNAME26`, both, and the query `0xffffffff`);
//! - `ptrace`, `process_vm_readv`/`writev` allowed, as Docker does on
//!   kernels ≥ 4.8 (this crate needs ≥ 5.6 for `openat2`);
//! - `chroot` allowed because `CAP_SYS_CHROOT` is kept; the other
//!   capability-gated groups are not.
//!
//! Two filters are installed: the allow-list, and one that answers `clone3`
//! with `ENOSYS` (a seccompiler filter has one match action; the kernel
//! takes the strictest answer of all filters, and an errno beats "allow").
//!
//! Architectures: the filter is built for the running one (x86_64, aarch64
//! or riscv64, what seccompiler supports). System calls of another ABI on
//! the same kernel (i386 `int 0x80`, arm32 compat) are killed with `SIGSYS`
//! by seccompiler's architecture check, where Docker lists them too; x32
//! calls do not match any rule and get `EPERM`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `EPERM`, what every call outside the allow-list returns.
const EPERM: u32 = 1;
/// `ENOSYS`, what `clone3` returns without `CAP_SYS_ADMIN`.
const ENOSYS: u32 = 38;

const CAP_DAC_READ_SEARCH: u8 = 2;
const CAP_SYS_MODULE: u8 = 16;
const CAP_SYS_RAWIO: u8 = 17;
const CAP_SYS_CHROOT: u8 = 18;
const CAP_SYS_PTRACE: u8 = 19;
const CAP_SYS_PACCT: u8 = 20;
const CAP_SYS_ADMIN: u8 = 21;
const CAP_SYS_BOOT: u8 = 22;
const CAP_SYS_NICE: u8 = 23;
const CAP_SYS_TIME: u8 = 25;
const CAP_SYS_TTY_CONFIG: u8 = 26;
const CAP_SYSLOG: u8 = 34;
const CAP_PERFMON: u8 = 38;
const CAP_BPF: u8 = 39;

/// Docker's unconditional allow-list.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // Docker: on kernels ≥ 4.8, where seccomp can no longer be bypassed
    // through ptrace.
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    // Docker's per-architecture groups; a name the running architecture
    // lacks is dropped when the filter is built.
    "sync_file_range2",
    "swapcontext",
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "breakpoint",
    "cacheflush",
    "set_tls",
    "arch_prctl",
    "modify_ldt",
    "s390_pci_mmio_read",
    "s390_pci_mmio_write",
    "s390_runtime_instr",
    "riscv_flush_icache",
];

/// Docker's groups allowed only to a process that keeps a capability.
const BY_CAPABILITY: &[(u8, &[&str])] = &[
    (CAP_DAC_READ_SEARCH, &["open_by_handle_at"]),
    (
        CAP_SYS_ADMIN,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (CAP_SYS_BOOT, &["reboot"]),
    (CAP_SYS_CHROOT, &["chroot"]),
    (
        CAP_SYS_MODULE,
        &["delete_module", "init_module", "finit_module"],
    ),
    (CAP_SYS_PACCT, &["acct"]),
    (
        CAP_SYS_PTRACE,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (CAP_SYS_RAWIO, &["iopl", "ioperm"]),
    (
        CAP_SYS_TIME,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (CAP_SYS_TTY_CONFIG, &["vhangup"]),
    (
        CAP_SYS_NICE,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (CAP_SYSLOG, &["syslog"]),
    (CAP_BPF, &["bpf"]),
    (CAP_PERFMON, &["perf_event_open"]),
];

/// `AF_VSOCK`: the one socket family Docker refuses.
const AF_VSOCK: u64 = 40;
/// `CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET`.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// `personality` values Docker allows: `PER_LINUX`, `PER_LINUX32`,
/// `UNAME26`, `PER_LINUX32|UNAME26`, and the query.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// One argument comparison (all of a rule's must hold).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cond {
    /// `arg[i] == v` (32 bits: the kernel reads these arguments as `int`).
    Eq(u8, u64),
    /// `arg[i] != v` (32 bits).
    Ne(u8, u64),
    /// `arg[i] & mask == 0` (32 bits).
    MaskedZero(u8, u64),
}

impl Cond {
    fn json(&self) -> Value {
        let (index, op, val) = match self {
            Cond::Eq(i, v) => (i, json!("eq"), v),
            Cond::Ne(i, v) => (i, json!("ne"), v),
            Cond::MaskedZero(i, m) => (i, json!({ "masked_eq": m }), &0),
        };
        json!({ "index": index, "type": "dword", "op": op, "val": val })
    }
}

/// When a system call is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allow {
    /// Whatever its arguments.
    Always,
    /// When one of these rules (each a conjunction) holds.
    When(Vec<Vec<Cond>>),
}

/// The profile for a process keeping capabilities `caps`: system call name
/// → when it is allowed, and the calls answered with `ENOSYS`.
fn profile(caps: &[u8]) -> (BTreeMap<&'static str, Allow>, Vec<&'static str>) {
    let mut allow: BTreeMap<&'static str, Allow> = BTreeMap::new();
    for n in ALLOWED {
        allow.insert(n, Allow::Always);
    }
    for (cap, names) in BY_CAPABILITY {
        if caps.contains(cap) {
            for n in *names {
                allow.insert(n, Allow::Always);
            }
        }
    }
    fn conditional(
        allow: &mut BTreeMap<&'static str, Allow>,
        name: &'static str,
        rules: Vec<Vec<Cond>>,
    ) {
        // An unconditional allow wins over argument rules.
        match allow.entry(name).or_insert_with(|| Allow::When(Vec::new())) {
            Allow::Always => {}
            Allow::When(v) => v.extend(rules),
        }
    }
    conditional(&mut allow, "socket", vec![vec![Cond::Ne(0, AF_VSOCK)]]);
    conditional(
        &mut allow,
        "personality",
        PERSONALITIES
            .iter()
            .map(|p| vec![Cond::Eq(0, *p)])
            .collect(),
    );
    let mut enosys = Vec::new();
    if !caps.contains(&CAP_SYS_ADMIN) {
        // s390 passes the flags second; that architecture is not built for.
        conditional(
            &mut allow,
            "clone",
            vec![vec![Cond::MaskedZero(0, CLONE_NAMESPACE_FLAGS)]],
        );
        // Allowed by the allow-list, answered with ENOSYS by the second
        // filter whatever the order they run in.
        allow.insert("clone3", Allow::Always);
        enosys.push("clone3");
    }
    (allow, enosys)
}

/// One compiled classic-BPF program, as it crosses the wire to pid 1: each
/// instruction packed as `code << 48 | jt << 40 | jf << 32 | k`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program(pub Vec<u64>);

impl Program {
    fn from_bpf(p: &[seccompiler::sock_filter]) -> Self {
        Program(
            p.iter()
                .map(|i| {
                    (u64::from(i.code) << 48)
                        | (u64::from(i.jt) << 40)
                        | (u64::from(i.jf) << 32)
                        | u64::from(i.k)
                })
                .collect(),
        )
    }

    fn to_bpf(&self) -> Vec<seccompiler::sock_filter> {
        self.0
            .iter()
            .map(|w| seccompiler::sock_filter {
                code: (w >> 48) as u16,
                jt: (w >> 40) as u8,
                jf: (w >> 32) as u8,
                k: *w as u32,
            })
            .collect()
    }

    /// Number of instructions.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No instructions.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The filters of Docker's default profile for the running architecture,
/// in the order pid 1 installs them. Compiled once per process.
pub fn docker_default(caps: &[u8]) -> Result<Vec<Program>, String> {
    type Compiled = Result<Vec<Program>, String>;
    static CACHE: OnceLock<(Vec<u8>, Compiled)> = OnceLock::new();
    let (cached_caps, filters) = CACHE.get_or_init(|| (caps.to_vec(), compile(caps)));
    if cached_caps.as_slice() == caps {
        filters.clone()
    } else {
        compile(caps)
    }
}

fn target_arch() -> Result<seccompiler::TargetArch, String> {
    seccompiler::TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("seccomp: {e} (seccompiler supports x86_64, aarch64, riscv64)"))
}

/// Whether seccompiler knows `name` on `arch`.
fn known(name: &str, arch: seccompiler::TargetArch) -> bool {
    let doc = json!({ "probe": {
        "mismatch_action": "allow",
        "match_action": { "errno": EPERM },
        "filter": [{ "syscall": name }],
    }});
    seccompiler::compile_from_json(doc.to_string().as_bytes(), arch).is_ok()
}

fn compile(caps: &[u8]) -> Result<Vec<Program>, String> {
    let arch = target_arch()?;
    let (allow, enosys) = profile(caps);
    let mut rules = Vec::new();
    for (name, how) in &allow {
        if !known(name, arch) {
            continue;
        }
        match how {
            Allow::Always => rules.push(json!({ "syscall": name })),
            Allow::When(alternatives) => {
                for conds in alternatives {
                    rules.push(json!({
                        "syscall": name,
                        "args": conds.iter().map(Cond::json).collect::<Vec<_>>(),
                    }));
                }
            }
        }
    }
    let enosys: Vec<Value> = enosys
        .iter()
        .filter(|n| known(n, arch))
        .map(|n| json!({ "syscall": n }))
        .collect();
    let mut doc = json!({ "allow": {
        "mismatch_action": { "errno": EPERM },
        "match_action": "allow",
        "filter": rules,
    }});
    if !enosys.is_empty() {
        doc["enosys"] = json!({
            "mismatch_action": "allow",
            "match_action": { "errno": ENOSYS },
            "filter": enosys,
        });
    }
    let mut map = seccompiler::compile_from_json(doc.to_string().as_bytes(), arch)
        .map_err(|e| format!("compiling the seccomp profile: {e}"))?;
    let mut out = Vec::new();
    for name in ["enosys", "allow"] {
        if let Some(p) = map.remove(name) {
            out.push(Program::from_bpf(&p));
        }
    }
    Ok(out)
}

/// Installs `filters` in order on the calling thread (pid 1 is
/// single-threaded; its children inherit them).
pub(crate) fn install(filters: &[Program]) -> std::io::Result<()> {
    for f in filters {
        seccompiler::apply_filter(&f.to_bpf()).map_err(std::io::Error::other)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the instructions seccompiler emits,
    /// run on a `struct seccomp_data`: the filter's decision table.
    fn run(p: &Program, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&nr.to_ne_bytes());
        data.extend_from_slice(&arch.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes());
        for a in args {
            data.extend_from_slice(&a.to_ne_bytes());
        }
        let prog = p.to_bpf();
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                // BPF_LD | BPF_W | BPF_ABS
                0x20 => {
                    let o = i.k as usize;
                    acc = u32::from_ne_bytes(data[o..o + 4].try_into().unwrap());
                }
                // BPF_ALU | BPF_AND | BPF_K
                0x54 => acc &= i.k,
                // BPF_JMP | BPF_JA
                0x05 => pc += i.k as usize,
                // BPF_JMP | BPF_JEQ / JGT / JGE | BPF_K
                0x15 | 0x25 | 0x35 => {
                    let t = match i.code {
                        0x15 => acc == i.k,
                        0x25 => acc > i.k,
                        _ => acc >= i.k,
                    };
                    pc += usize::from(if t { i.jt } else { i.jf });
                }
                // BPF_RET | BPF_K
                0x06 => return i.k,
                c => panic!("unexpected BPF opcode {c:#x}"),
            }
        }
    }

    const ALLOW: u32 = 0x7fff_0000;
    const ERRNO: u32 = 0x0005_0000;

    /// What the kernel answers: the strictest result of all filters.
    fn decide(filters: &[Program], nr: i64, args: [u64; 6]) -> u32 {
        let arch = native_audit_arch();
        filters
            .iter()
            .map(|f| run(f, arch, nr as u32, args))
            .min_by_key(|r| (r & 0xffff_0000) as i32)
            .unwrap()
    }

    fn native_audit_arch() -> u32 {
        match std::env::consts::ARCH {
            "x86_64" => 62 | 0x8000_0000 | 0x4000_0000,
            "aarch64" => 183 | 0x8000_0000 | 0x4000_0000,
            _ => 243 | 0x8000_0000 | 0x4000_0000,
        }
    }

    fn filters() -> Vec<Program> {
        docker_default(crate::caps::DOCKER_DEFAULT).unwrap()
    }

    #[test]
    fn denied_calls_get_eperm() {
        let f = filters();
        for nr in [
            nix::libc::SYS_keyctl,
            nix::libc::SYS_add_key,
            nix::libc::SYS_request_key,
            nix::libc::SYS_userfaultfd,
            nix::libc::SYS_bpf,
            nix::libc::SYS_perf_event_open,
            nix::libc::SYS_mount,
            nix::libc::SYS_umount2,
            nix::libc::SYS_unshare,
            nix::libc::SYS_setns,
            nix::libc::SYS_kexec_load,
            nix::libc::SYS_open_by_handle_at,
            nix::libc::SYS_init_module,
            nix::libc::SYS_finit_module,
            nix::libc::SYS_reboot,
            nix::libc::SYS_sethostname,
            nix::libc::SYS_pivot_root,
            nix::libc::SYS_swapon,
            nix::libc::SYS_fsopen,
            nix::libc::SYS_open_tree,
            nix::libc::SYS_clock_settime,
            nix::libc::SYS_syslog,
            nix::libc::SYS_kcmp,
            nix::libc::SYS_pidfd_getfd,
        ] {
            assert_eq!(decide(&f, nr, [0; 6]), ERRNO | 1, "syscall {nr}");
        }
    }

    #[test]
    fn ordinary_calls_are_allowed() {
        let f = filters();
        for nr in [
            nix::libc::SYS_read,
            nix::libc::SYS_write,
            nix::libc::SYS_openat,
            nix::libc::SYS_execve,
            nix::libc::SYS_mknodat,
            nix::libc::SYS_chroot,
            nix::libc::SYS_ptrace,
            nix::libc::SYS_io_uring_setup,
            nix::libc::SYS_seccomp,
            nix::libc::SYS_wait4,
        ] {
            assert_eq!(decide(&f, nr, [0; 6]), ALLOW, "syscall {nr}");
        }
    }

    #[test]
    fn conditional_rules_follow_docker() {
        let f = filters();
        let clone = nix::libc::SYS_clone;
        // fork-like and thread-like clones pass; any namespace flag fails.
        assert_eq!(decide(&f, clone, [0x11, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(decide(&f, clone, [0x3d0f00, 0, 0, 0, 0, 0]), ALLOW);
        for ns in [
            0x1000_0000u64, // CLONE_NEWUSER
            0x0002_0000,    // CLONE_NEWNS
            0x2000_0000,    // CLONE_NEWPID
            0x4000_0000,    // CLONE_NEWNET
        ] {
            assert_eq!(decide(&f, clone, [ns | 0x11, 0, 0, 0, 0, 0]), ERRNO | 1);
        }
        // clone3 cannot be inspected: ENOSYS, so that libc falls back.
        assert_eq!(decide(&f, nix::libc::SYS_clone3, [0; 6]), ERRNO | 38);
        let socket = nix::libc::SYS_socket;
        assert_eq!(decide(&f, socket, [2, 1, 0, 0, 0, 0]), ALLOW);
        assert_eq!(decide(&f, socket, [40, 1, 0, 0, 0, 0]), ERRNO | 1);
        // The kernel reads the family as an int: high bits do not help.
        assert_eq!(decide(&f, socket, [40 | 1 << 32, 1, 0, 0, 0, 0]), ERRNO | 1);
        let pers = nix::libc::SYS_personality;
        for ok in PERSONALITIES {
            assert_eq!(decide(&f, pers, [*ok, 0, 0, 0, 0, 0]), ALLOW);
        }
        // ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC.
        for bad in [0x0040000u64, 0x0400000] {
            assert_eq!(decide(&f, pers, [bad, 0, 0, 0, 0, 0]), ERRNO | 1);
        }
    }

    #[test]
    fn another_architecture_is_killed() {
        let f = filters();
        // AUDIT_ARCH_I386 for x86_64 hosts, AUDIT_ARCH_ARM elsewhere.
        let foreign = if std::env::consts::ARCH == "x86_64" {
            3 | 0x4000_0000
        } else {
            40 | 0x4000_0000
        };
        let r = run(&f[f.len() - 1], foreign, 0, [0; 6]);
        assert_eq!(r & 0xffff_0000, 0x8000_0000, "{r:#x}");
    }

    #[test]
    fn sys_admin_lifts_the_namespace_rules() {
        let mut caps = crate::caps::DOCKER_DEFAULT.to_vec();
        caps.push(CAP_SYS_ADMIN);
        let f = compile(&caps).unwrap();
        assert_eq!(f.len(), 1, "no ENOSYS filter with CAP_SYS_ADMIN");
        assert_eq!(
            decide(&f, nix::libc::SYS_clone, [0x1000_0011, 0, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(decide(&f, nix::libc::SYS_mount, [0; 6]), ALLOW);
        assert_eq!(decide(&f, nix::libc::SYS_keyctl, [0; 6]), ERRNO | 1);
    }

    #[test]
    fn programs_round_trip_through_the_wire_format() {
        let f = filters();
        let json = serde_json::to_string(&f).unwrap();
        let back: Vec<Program> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f);
        assert!(
            f.iter()
                .all(|p| !p.is_empty() && p.len() < u16::MAX as usize)
        );
    }
}
