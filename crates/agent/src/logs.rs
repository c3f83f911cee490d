//! The run's log on its way to the server: lines are masked (secret values
//! become `***`, a multi-line secret whole and line by line), batched into
//! chunks numbered from 1, and uploaded by one task that retries through
//! server outages. A chunk keeps its number across retries, so the server
//! stores it once however often it arrives.
//!
//! Memory is bounded whatever a build prints: a line is cut at
//! [`MAX_LINE`], the channel is bounded, and while [`MAX_PENDING`] bytes
//! wait for the server nothing more is taken in, so a build that writes
//! faster than the server accepts is slowed down (its pipe fills) rather
//! than the agent growing.

use std::sync::Arc;
use std::time::Duration;

use api::{AgentChunk, LogUpload};
use tokio::sync::{mpsc, oneshot};

use crate::Backoff;

enum Msg {
    Text(String),
    Finish(oneshot::Sender<bool>),
}

/// Cheap to clone; every clone feeds the same upload task.
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::Sender<Msg>,
    masks: Arc<Vec<String>>,
}

/// Upload when this much is pending, or after [`LINGER`].
const CHUNK_BYTES: usize = 64 * 1024;
const LINGER: Duration = Duration::from_millis(150);
/// The longest line kept; the rest of a longer one is dropped.
pub const MAX_LINE: usize = 64 * 1024;
/// Bytes waiting for the server beyond which no more is taken in.
pub const MAX_PENDING: usize = 8 * 1024 * 1024;

/// The texts to hide for `secrets`: each whole, and each line of a
/// multi-line one (a PEM key is printed line by line); longest first, so
/// a whole secret is replaced before its parts.
fn mask_list(secrets: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in secrets {
        if s.contains('\n') {
            for l in s.lines().map(str::trim) {
                if l.len() >= 4 && !out.iter().any(|o| o == l) {
                    out.push(l.to_owned());
                }
            }
        }
        let whole = s.trim_end_matches('\n').to_owned();
        if !whole.is_empty() && !out.contains(&whole) {
            out.push(whole);
        }
    }
    out.sort_by_key(|m| std::cmp::Reverse(m.len()));
    out
}

impl LogSink {
    pub fn start(client: api::Client, run: String, token: String, secrets: Vec<String>) -> LogSink {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(upload(client, run, token, rx));
        LogSink {
            tx,
            masks: Arc::new(mask_list(secrets)),
        }
    }

    fn mask(&self, text: &str) -> String {
        let mut t = text.to_owned();
        for m in self.masks.iter() {
            if t.contains(m.as_str()) {
                t = t.replace(m.as_str(), "***");
            }
        }
        t
    }

    /// Text of the agent's own (may be a partial line). Never blocks: when
    /// the channel is full the text waits in a task of its own.
    pub fn raw(&self, text: &str) {
        let msg = Msg::Text(self.mask(text));
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.tx.try_send(msg) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(msg).await;
            });
        }
    }

    /// A child's output, line by line under `prefix`, each line cut at
    /// [`MAX_LINE`]; waits while the upload is behind (backpressure).
    pub async fn copy_lines<R: tokio::io::AsyncRead + Unpin>(&self, r: R, prefix: &str) {
        self.copy_lines_observed(r, prefix, |_| {}).await;
    }

    /// [`LogSink::copy_lines`], handing each (masked) line to `observe` too.
    pub async fn copy_lines_observed<R: tokio::io::AsyncRead + Unpin>(
        &self,
        r: R,
        prefix: &str,
        mut observe: impl FnMut(&str),
    ) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let mut r = tokio::io::BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let mut cut = false;
            // Read at most MAX_LINE of the line, then skip to its end.
            match (&mut r)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut buf)
                .await
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if buf.last() != Some(&b'\n') && buf.len() >= MAX_LINE {
                cut = true;
                let mut skip = Vec::new();
                loop {
                    skip.clear();
                    match (&mut r)
                        .take(MAX_LINE as u64)
                        .read_until(b'\n', &mut skip)
                        .await
                    {
                        Ok(0) | Err(_) => break,
                        Ok(_) if skip.last() == Some(&b'\n') => break,
                        Ok(_) => {}
                    }
                }
            }
            let mut text = format!("{prefix}{}", String::from_utf8_lossy(&buf));
            if cut {
                text.push_str(&format!(" [line cut at {} KiB]\n", MAX_LINE / 1024));
            }
            let text = self.mask(&text);
            observe(&text);
            if self.tx.send(Msg::Text(text)).await.is_err() {
                return;
            }
        }
    }

    /// A line of the agent's own.
    pub fn line(&self, text: &str) {
        self.raw(&format!("[agent] {text}\n"));
    }

    /// Flush everything; `false` when the lease was lost on the way.
    pub async fn finish(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Finish(tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

async fn upload(client: api::Client, run: String, token: String, mut rx: mpsc::Receiver<Msg>) {
    let mut pending: Vec<AgentChunk> = Vec::new();
    let mut current = String::new();
    let mut seq = 0u64;
    let mut lost = false;
    let mut backoff = Backoff::new();
    loop {
        // Wait for text (or, with chunks still unsent, at most a linger),
        // then gather a linger's worth unless the chunk fills or we finish.
        let mut finish = None;
        let behind: usize = pending.iter().map(|c| c.data.len()).sum();
        let first = if behind >= MAX_PENDING {
            // The server is behind: take nothing in until it catches up.
            None
        } else if current.is_empty() && pending.is_empty() {
            match rx.recv().await {
                Some(m) => Some(m),
                None => return,
            }
        } else {
            tokio::time::timeout(LINGER, rx.recv()).await.ok().flatten()
        };
        match first {
            Some(Msg::Text(t)) => current.push_str(&t),
            Some(Msg::Finish(tx)) => finish = Some(tx),
            None => {}
        }
        let deadline = tokio::time::Instant::now() + LINGER;
        while behind < MAX_PENDING
            && finish.is_none()
            && !current.is_empty()
            && current.len() < CHUNK_BYTES
        {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Msg::Text(t))) => current.push_str(&t),
                Ok(Some(Msg::Finish(tx))) => finish = Some(tx),
                Ok(None) | Err(_) => break,
            }
        }
        if !current.is_empty() {
            seq += 1;
            pending.push(AgentChunk {
                seq,
                data: std::mem::take(&mut current),
            });
        }
        // Send what is pending; on a finish, keep trying until accepted.
        loop {
            if lost || pending.is_empty() {
                break;
            }
            let up = LogUpload {
                token: token.clone(),
                chunks: pending.clone(),
            };
            match client.upload_logs(&run, &up).await {
                Ok(()) => {
                    pending.clear();
                    backoff.reset();
                }
                Err(e) if e.status() == Some(409) => {
                    tracing::warn!(run, "log upload refused, lease lost: {e}");
                    lost = true;
                    pending.clear();
                }
                Err(e) if e.is_transient() || e.status() == Some(429) => {
                    let d = backoff.delay();
                    tracing::warn!(run, "log upload: {e}; retrying in {d:?}");
                    tokio::time::sleep(d).await;
                    if finish.is_none() && behind < MAX_PENDING {
                        // Go back to gathering; the pending chunks ride along next time.
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(run, "log upload refused: {e}");
                    pending.clear();
                }
            }
        }
        if let Some(tx) = finish {
            let _ = tx.send(!lost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mask_list;

    #[test]
    fn multi_line_secrets_are_masked_whole_and_line_by_line() {
        let pem = "-----BEGIN KEY-----\nAAAAsecretline1\nBBBBsecretline2\n-----END KEY-----\n";
        let m = mask_list(vec![pem.to_owned(), "short".to_owned()]);
        assert_eq!(m[0], pem.trim_end_matches('\n'));
        for part in ["AAAAsecretline1", "BBBBsecretline2", "short"] {
            assert!(m.iter().any(|x| x == part), "{part} not masked: {m:?}");
        }
        assert!(m.windows(2).all(|w| w[0].len() >= w[1].len()));
    }
}
