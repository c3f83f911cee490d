//! The run's log on its way to the server: lines are masked (secret values
//! become `***`), batched into chunks numbered from 1, and uploaded by one
//! task that retries through server outages. A chunk keeps its number
//! across retries, so the server stores it once however often it arrives.

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
    tx: mpsc::UnboundedSender<Msg>,
    masks: Arc<Vec<String>>,
}

/// Upload when this much is pending, or after [`LINGER`].
const CHUNK_BYTES: usize = 64 * 1024;
const LINGER: Duration = Duration::from_millis(150);

impl LogSink {
    pub fn start(client: api::Client, run: String, token: String, masks: Vec<String>) -> LogSink {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(upload(client, run, token, rx));
        LogSink {
            tx,
            masks: Arc::new(masks),
        }
    }

    /// Text as the build printed it (may be a partial line).
    pub fn raw(&self, text: &str) {
        let mut t = text.to_owned();
        for m in self.masks.iter() {
            if t.contains(m.as_str()) {
                t = t.replace(m.as_str(), "***");
            }
        }
        let _ = self.tx.send(Msg::Text(t));
    }

    /// A line of the agent's own.
    pub fn line(&self, text: &str) {
        self.raw(&format!("[agent] {text}\n"));
    }

    /// Flush everything; `false` when the lease was lost on the way.
    pub async fn finish(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Finish(tx)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

async fn upload(
    client: api::Client,
    run: String,
    token: String,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) {
    let mut pending: Vec<AgentChunk> = Vec::new();
    let mut current = String::new();
    let mut seq = 0u64;
    let mut lost = false;
    let mut backoff = Backoff::new();
    loop {
        // Wait for text (or, with chunks still unsent, at most a linger),
        // then gather a linger's worth unless the chunk fills or we finish.
        let mut finish = None;
        let first = if current.is_empty() && pending.is_empty() {
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
        while finish.is_none() && !current.is_empty() && current.len() < CHUNK_BYTES {
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
                    if finish.is_none() {
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
