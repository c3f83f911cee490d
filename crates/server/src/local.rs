//! Agents of local pools: the server keeps `count` agent processes of each
//! pool marked `local` alive, restarting crashed ones (with a back-off when
//! they crash at once), and stops them on shutdown. They are ordinary
//! agents: they dial the server's URL with a pool token like any other.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::{Server, hash_secret, random_token};

/// How to start one agent: `program args… --server URL --pool P
/// --work-dir DIR --agent-id ID`, with the token in `SLIPWAY_TOKEN`.
#[derive(Debug, Clone)]
pub struct AgentCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Each agent works under `<work_root>/<pool>-<n>`.
    pub work_root: PathBuf,
    /// Extra environment (e.g. a shared build cache location).
    pub env: Vec<(String, String)>,
}

struct Slot {
    child: Option<Child>,
    started: Instant,
    failures: u32,
    next_start: Instant,
}

pub struct Supervisor {
    server: Arc<Server>,
    cmd: AgentCommand,
    url: String,
    tokens: HashMap<String, String>,
    slots: HashMap<(String, u32), Slot>,
}

impl Supervisor {
    pub fn new(server: Arc<Server>, cmd: AgentCommand, url: String) -> Self {
        Supervisor {
            server,
            cmd,
            url,
            tokens: HashMap::new(),
            slots: HashMap::new(),
        }
    }

    pub async fn run(&mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.reconcile().await {
                tracing::error!("local agents: {e}");
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        self.stop_all().await;
    }

    /// The pool's token for local agents: made fresh each server start,
    /// replacing the last start's.
    async fn token(&mut self, pool: &str) -> Result<String, crate::DbError> {
        if let Some(t) = self.tokens.get(pool) {
            return Ok(t.clone());
        }
        let db = self.server.db();
        db.delete_agent_tokens_named(pool, "local").await?;
        let token = random_token("slwa_").map_err(|e| crate::DbError::Corrupt {
            what: "token",
            detail: e.to_string(),
        })?;
        db.add_agent_token(pool, &hash_secret(&token), "local")
            .await?;
        self.tokens.insert(pool.to_owned(), token.clone());
        Ok(token)
    }

    async fn reconcile(&mut self) -> Result<(), crate::DbError> {
        let pools = self.server.db().list_pools().await?;
        let mut wanted = std::collections::HashSet::new();
        for p in pools.iter().filter(|p| p.local) {
            for n in 0..p.count {
                wanted.insert((p.name.clone(), n));
            }
        }
        // Scale down (or pool deleted): stop the agents no longer wanted.
        let extra: Vec<(String, u32)> = self
            .slots
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for k in extra {
            if let Some(mut slot) = self.slots.remove(&k)
                && let Some(child) = slot.child.as_mut()
            {
                stop(child).await;
            }
        }
        let now = Instant::now();
        let mut keys: Vec<_> = wanted.into_iter().collect();
        keys.sort();
        for key in keys {
            let slot = self.slots.entry(key.clone()).or_insert(Slot {
                child: None,
                started: now,
                failures: 0,
                next_start: now,
            });
            if let Some(child) = slot.child.as_mut() {
                match child.try_wait() {
                    Ok(None) => continue,
                    Ok(Some(status)) => {
                        // A crash soon after start backs off; a long life resets.
                        if slot.started.elapsed() < Duration::from_secs(10) {
                            slot.failures += 1;
                        } else {
                            slot.failures = 0;
                        }
                        let delay = Duration::from_millis(250 << slot.failures.min(7));
                        tracing::warn!(pool = key.0, agent = key.1, %status, "local agent exited; restarting in {delay:?}");
                        slot.child = None;
                        slot.next_start = now + delay;
                    }
                    Err(e) => tracing::error!("checking local agent: {e}"),
                }
            }
            if slot.child.is_none() && now >= slot.next_start {
                let token = match self.tokens.get(&key.0) {
                    Some(t) => t.clone(),
                    None => self.token(&key.0).await?,
                };
                let Some(slot) = self.slots.get_mut(&key) else {
                    continue;
                };
                let id = format!("local-{}-{}", key.0, key.1);
                let work = self.cmd.work_root.join(format!("{}-{}", key.0, key.1));
                let mut c = Command::new(&self.cmd.program);
                c.args(&self.cmd.args)
                    .arg("--server")
                    .arg(&self.url)
                    .arg("--pool")
                    .arg(&key.0)
                    .arg("--work-dir")
                    .arg(&work)
                    .arg("--agent-id")
                    .arg(&id)
                    .env("SLIPWAY_TOKEN", &token)
                    // Die with the server: a killed `slipway up` must not
                    // leave agents behind that a restart would double.
                    .env("SLIPWAY_DIE_WITH_PARENT", "1")
                    .envs(self.cmd.env.iter().map(|(k, v)| (k, v)))
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true);
                match c.spawn() {
                    Ok(child) => {
                        tracing::info!(agent = id, "started local agent");
                        slot.child = Some(child);
                        slot.started = Instant::now();
                    }
                    Err(e) => {
                        tracing::error!(
                            agent = id,
                            "starting local agent {}: {e}",
                            self.cmd.program.display()
                        );
                        slot.failures += 1;
                        slot.next_start = now + Duration::from_secs(5);
                    }
                }
            }
        }
        Ok(())
    }

    async fn stop_all(&mut self) {
        let mut children: Vec<Child> = self.slots.drain().filter_map(|(_, s)| s.child).collect();
        futures_util::future::join_all(children.iter_mut().map(stop)).await;
    }
}

/// SIGTERM (the agent abandons its run, which the server re-queues), then
/// SIGKILL after a grace period.
async fn stop(child: &mut Child) {
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
