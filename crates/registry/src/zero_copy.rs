//! Zero-copy blob GETs: the bytes of a blob on the filesystem store go from
//! the page cache to the socket by `sendfile(2)`, never through user space.
//!
//! hyper writes response bodies itself and has no sendfile path, so the
//! seam is below it, at the connection's I/O. A zero-copy body
//! ([`body`]) yields placeholder chunks: `Bytes` pointing into one
//! never-written, never-read region ([`placeholder`]), and for each chunk
//! it queues the real source (file, offset, length) on the connection's
//! [`Outbox`]. [`ZeroCopyIo`], the socket wrapper the server's accept loop
//! puts under hyper, recognises a placeholder slice by its address when
//! hyper writes it and sends the queued file range instead. This relies on
//! hyper's vectored write path (`is_write_vectored`), which queues body
//! chunks as they are rather than copying them into its own buffer; the
//! wrapper checks that every placeholder it sees is the next queued range
//! at the right offset and fails the connection otherwise, so a
//! placeholder byte can never reach a client. Only HTTP/1 connections the
//! accept loop wrapped carry an `Outbox` (HTTP/2 frames its own data).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Largest placeholder chunk (virtual memory only: the pages are never
/// touched, so they cost no RAM).
const CHUNK: usize = 8 << 20;

/// The placeholder region, allocated zeroed once and never written.
fn placeholder() -> &'static [u8] {
    static REGION: OnceLock<&'static [u8]> = OnceLock::new();
    REGION.get_or_init(|| Box::leak(vec![0u8; CHUNK].into_boxed_slice()))
}

/// Where `slice` starts within the placeholder region, if it is in it.
fn placeholder_offset(slice: &[u8]) -> Option<usize> {
    let region = placeholder();
    let start = region.as_ptr() as usize;
    let p = slice.as_ptr() as usize;
    (p >= start && p < start + region.len() && !slice.is_empty()).then(|| p - start)
}

/// A file range a placeholder chunk stands for.
struct Segment {
    file: Arc<std::fs::File>,
    offset: u64,
    len: usize,
    /// Bytes of it already sent.
    sent: usize,
}

/// One connection's queue of file ranges, in the order hyper will write
/// their placeholders.
#[derive(Clone, Default)]
pub struct Outbox(Arc<Mutex<VecDeque<Segment>>>);

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Segment>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A response body of `len` bytes of `file` from `offset`, sent by
/// `sendfile(2)` on the connection of `outbox`.
pub fn body(file: std::fs::File, offset: u64, len: u64, outbox: Outbox) -> Body {
    let file = Arc::new(file);
    let chunks = futures_util::stream::unfold((offset, len), move |(at, left)| {
        let (file, outbox) = (file.clone(), outbox.clone());
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK as u64) as usize;
            // Queued as the chunk is yielded: hyper writes chunks in the
            // order it polls them.
            outbox.lock().push_back(Segment {
                file,
                offset: at,
                len: n,
                sent: 0,
            });
            let chunk = Bytes::from_static(&placeholder()[..n]);
            Some((Ok::<_, io::Error>(chunk), (at + n as u64, left - n as u64)))
        }
    });
    Body::from_stream(chunks)
}

/// A TCP connection that sends placeholder chunks as their file ranges.
pub struct ZeroCopyIo {
    tcp: TcpStream,
    outbox: Outbox,
}

impl ZeroCopyIo {
    pub fn new(tcp: TcpStream, outbox: Outbox) -> ZeroCopyIo {
        ZeroCopyIo { tcp, outbox }
    }

    /// Send the file range behind the placeholder `slice` (or its start).
    fn poll_send_file(&self, cx: &mut Context<'_>, slice: &[u8]) -> Poll<io::Result<usize>> {
        let at = placeholder_offset(slice).unwrap_or(usize::MAX);
        let (file, offset, want) = {
            let q = self.outbox.lock();
            match q.front() {
                Some(s) if s.sent == at && s.len - s.sent == slice.len() => {
                    (s.file.clone(), s.offset + s.sent as u64, slice.len())
                }
                _ => {
                    return Poll::Ready(Err(io::Error::other(
                        "zero-copy body out of step with its queued file ranges",
                    )));
                }
            }
        };
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                let mut off = offset;
                rustix::fs::sendfile(&self.tcp, &*file, Some(&mut off), want)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob file shorter than its length",
                    )));
                }
                Ok(n) => {
                    let mut q = self.outbox.lock();
                    if let Some(s) = q.front_mut() {
                        s.sent += n;
                        if s.sent == s.len {
                            q.pop_front();
                        }
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for ZeroCopyIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ZeroCopyIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if placeholder_offset(buf).is_some() {
            return self.poll_send_file(cx, buf);
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        let bufs = &bufs[first..];
        if placeholder_offset(&bufs[0]).is_some() {
            return self.poll_send_file(cx, &bufs[0]);
        }
        // Ordinary bytes up to the next placeholder, in one writev.
        let end = bufs
            .iter()
            .position(|b| placeholder_offset(b).is_some())
            .unwrap_or(bufs.len());
        Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[..end])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
