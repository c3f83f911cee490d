//! The control protocol between the parent, the monitor and pid 1: JSON
//! lines over the Unix socket each process gets as its stdin. Output never
//! goes through it: stdout and stderr are the process's own pipes.
//!
//! ```text
//! parent  → monitor : Start(plan)            monitor → parent : NeedMaps{pid}   (user namespace only)
//! parent  → monitor : Mapped | Kill          monitor → parent : Started{pid}, SetupFailed(msg) | Exited(status)
//! monitor → pid 1   : Pid1(plan)             pid 1   → monitor: SetupFailed(msg), or EOF when exec succeeded
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::spec::ExitStatus;
use crate::sys::Op;

/// The first message an init process reads: which stage it is.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum InitMsg {
    /// Be the monitor: unshare, spawn pid 1, report its end.
    Monitor(MonitorPlan),
    /// Be pid 1: set up the rootfs and exec the process.
    Pid1(Pid1Plan),
}

/// What the monitor does.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MonitorPlan {
    /// `CLONE_NEW*` flags for `unshare`.
    pub unshare: i32,
    /// A user namespace is among them: ask the parent for id maps.
    pub userns: bool,
    /// Cgroup files to write `0` to before anything else.
    pub cgroup_join: Vec<std::path::PathBuf>,
    /// The plan handed to pid 1.
    pub pid1: Pid1Plan,
}

/// What pid 1 does.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Pid1Plan {
    /// Privileged steps.
    pub ops: Vec<Op>,
    /// The program.
    pub argv: Vec<String>,
    /// Its environment, `KEY=value`.
    pub env: Vec<String>,
    /// Its working directory (inside).
    pub cwd: String,
}

/// Parent → monitor after `Start`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Control {
    /// The id maps are written.
    Mapped,
    /// Kill the process tree now.
    Kill,
}

/// Monitor → parent, pid 1 → monitor.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    /// Write the id maps of this (host) pid.
    NeedMaps { pid: u32 },
    /// Pid 1 runs, with this host pid.
    Started { pid: u32 },
    /// Setup failed; the process never ran.
    SetupFailed(String),
    /// The process ended.
    Exited(ExitStatus),
}

/// Encodes one message as a line.
pub(crate) fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    v
}

/// Sends one message on a blocking socket.
pub(crate) fn send<T: Serialize>(s: &mut UnixStream, msg: &T) -> std::io::Result<()> {
    s.write_all(&encode(msg))
}

/// A blocking line reader that can tell whether a whole line is buffered, so
/// that it can be mixed with `poll`.
pub(crate) struct Lines {
    pub stream: UnixStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Lines {
    pub fn new(stream: UnixStream) -> Self {
        Lines {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// A complete line (or EOF) is available without blocking.
    pub fn ready(&self) -> bool {
        self.eof || self.buf.contains(&b'\n')
    }

    /// Reads once from the socket into the buffer (call when poll says so).
    pub fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            self.eof = true;
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The next message; `Ok(None)` at EOF. Blocks until one is complete.
    pub fn next<T: DeserializeOwned>(&mut self) -> std::io::Result<Option<T>> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
            if self.eof {
                return Ok(None);
            }
            self.fill()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_eof() {
        let (mut a, b) = UnixStream::pair().unwrap();
        send(&mut a, &Report::Started { pid: 7 }).unwrap();
        send(&mut a, &Control::Kill).unwrap();
        drop(a);
        let mut l = Lines::new(b);
        assert!(matches!(
            l.next::<Report>().unwrap(),
            Some(Report::Started { pid: 7 })
        ));
        assert!(l.ready());
        assert!(matches!(l.next::<Control>().unwrap(), Some(Control::Kill)));
        assert!(l.next::<Control>().unwrap().is_none());
    }

    #[test]
    fn garbage_is_an_error() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"{nope\n").unwrap();
        assert!(Lines::new(b).next::<Report>().is_err());
    }
}
