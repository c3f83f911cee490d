//! The control plane behind `/api/v1`: pools, agent tokens, runs and their
//! leases, logs and build contexts. It sits next to the embedded registry
//! (sharing its API tokens, so one admin token opens both) and keeps its
//! state in SQL ([`db`]).
//!
//! Flow: a client uploads a context and `POST /runs`; an agent of the pool
//! long-polls `POST /agent/lease`, gets the run with a lease token, a fencing
//! number, the run's secrets and a registry credential minted for this
//! attempt; it heartbeats, uploads numbered log chunks and reports a result,
//! each presenting the lease token. The reaper re-queues runs whose lease
//! expired and flags runs past their timeout.

pub mod db;
mod gc_lock;
mod local;
mod routes;
mod seal;
pub use seal::derive_key;
mod task_routes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry::Registry;
use tokio::sync::Notify;

pub use db::{Db, DbError};
pub use local::AgentCommand;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data: PathBuf,
    /// `sqlite://…` or `postgres://…`; default SQLite under `data`.
    pub database_url: Option<String>,
    /// How long a lease lives without a heartbeat.
    pub lease_ttl: Duration,
    /// Run time limit when the request gives none.
    pub default_timeout: Duration,
    /// Leases a run may use before it errors out.
    pub max_attempts: u32,
    /// `host:port` under which agents and clients reach the embedded
    /// registry; tags on it need the submitter's push permission.
    pub registry_host: String,
    /// How to start agents of local pools (`None`: local pools get none).
    pub agent_command: Option<AgentCommand>,
    /// Finished runs (with their logs) and unused contexts older than this
    /// are deleted.
    pub retention: Duration,
    /// The registry's garbage collection runs this often (on one replica
    /// at a time); `None`: only by `slipway registry gc`.
    pub gc_every: Option<Duration>,
    /// How often pool counts are reconciled besides on every pool change.
    pub scale_every: Duration,
    /// Task files' image aliases (`bash`, `curl`, `az`, …) → images in a
    /// registry the pools reach (a private network reaches no public one).
    pub image_aliases: std::collections::BTreeMap<String, String>,
    /// Largest context upload accepted (`413` past it).
    pub max_context_bytes: u64,
    /// The sealing key, when every replica is given the same secret
    /// (`--secret-key-file`); `None`: `<data>/secret.key`.
    pub seal_key: Option<[u8; 32]>,
}

impl ServerConfig {
    pub fn new(data: impl Into<PathBuf>, registry_host: impl Into<String>) -> Self {
        ServerConfig {
            data: data.into(),
            database_url: None,
            lease_ttl: Duration::from_secs(10),
            default_timeout: Duration::from_secs(3600),
            max_attempts: 3,
            registry_host: registry_host.into(),
            agent_command: None,
            retention: Duration::from_secs(30 * 24 * 3600),
            gc_every: None,
            scale_every: Duration::from_secs(30),
            image_aliases: Default::default(),
            max_context_bytes: 2 << 30,
            seal_key: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("contexts store: {0}")]
    Store(#[from] store::StoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Wake-ups keyed by pool (new runs) or run (new log lines, state changes).
/// On PostgreSQL each wake-up also goes to the other replicas (`NOTIFY
/// slipway, 'KIND:KEY'`), whose listener wakes their waiters the same way.
struct Signals {
    map: Mutex<HashMap<String, Arc<Notify>>>,
    /// `pool` or `run`: the kind named in notifications.
    kind: &'static str,
    /// Wake one waiter per event, not all (see [`Signals::wake_local`]).
    one_waiter: bool,
    out: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl Signals {
    fn new(kind: &'static str, one_waiter: bool) -> Signals {
        Signals {
            map: Mutex::default(),
            kind,
            one_waiter,
            out: std::sync::OnceLock::new(),
        }
    }

    fn get(&self, key: &str) -> Arc<Notify> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key.to_owned()).or_default().clone()
    }

    fn publish(&self, key: &str) {
        if let Some(tx) = self.out.get() {
            let _ = tx.send(format!("{}:{key}", self.kind));
        }
    }

    /// Wake this replica's waiters only (a notification from another).
    /// A pool wakes one waiting agent per event: each event is one run to
    /// claim, and waking every agent of the pool made each of them try a
    /// claim that all but one lose (a transaction each on PostgreSQL). An
    /// agent back from a run claims before it waits, so none is left
    /// queued. A run wakes every follower of its log.
    fn wake_local(&self, key: &str) {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get(key) {
            if self.one_waiter {
                n.notify_one();
            } else {
                n.notify_waiters();
            }
        }
    }

    fn wake(&self, key: &str) {
        self.wake_local(key);
        self.publish(key);
    }

    fn wake_and_forget(&self, key: &str) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.remove(key) {
            n.notify_waiters();
        }
        drop(m);
        self.publish(key);
    }
}

pub struct Server {
    config: ServerConfig,
    db: Db,
    registry: Arc<Registry>,
    contexts: Arc<dyn store::BlobStore>,
    sealer: seal::Sealer,
    pools: Signals,
    runs: Signals,
    /// `run:<id>:<attempt>` of every live lease: the registry honours a
    /// per-run credential only while its attempt is in this set.
    leases: Arc<Mutex<std::collections::HashSet<String>>>,
    /// When this replica granted each recent lease: a refresh from the
    /// database that began before the grant committed must not drop it.
    granted: Mutex<HashMap<String, std::time::Instant>>,
    /// Agents this replica wrote as seen within the last second (a lease
    /// request right after a claim need not write again).
    seen: Mutex<HashMap<String, std::time::Instant>>,
    /// What keeps pools' agent workloads at their count (Kubernetes).
    scaler: std::sync::OnceLock<Arc<dyn PoolScaler>>,
    /// A pool was created, changed or deleted: reconcile now.
    pools_changed: Notify,
}

/// Keeps each pool's agents at its `count` outside the server (the
/// replicas of its Kubernetes Deployment, say): given every non-local
/// pool's count, returns a line per change made.
pub trait PoolScaler: Send + Sync {
    fn reconcile(
        &self,
        pools: std::collections::BTreeMap<String, u32>,
    ) -> futures_util::future::BoxFuture<'_, Result<Vec<String>, String>>;
}

impl Server {
    /// Open the database (migrating it), the contexts store and the secret
    /// key, and give a fresh period to leases that expired while no server
    /// ran (their agents could not heartbeat).
    pub async fn open(
        config: ServerConfig,
        registry: Arc<Registry>,
    ) -> Result<Arc<Server>, ServerError> {
        let contexts: Arc<dyn store::BlobStore> =
            Arc::new(store::FsStore::open(config.data.join("contexts")).await?);
        Self::open_with(config, registry, contexts).await
    }

    /// [`Server::open`] with build contexts kept in `contexts` (an object
    /// store shared by replicas, say).
    pub async fn open_with(
        config: ServerConfig,
        registry: Arc<Registry>,
        contexts: Arc<dyn store::BlobStore>,
    ) -> Result<Arc<Server>, ServerError> {
        std::fs::create_dir_all(&config.data).map_err(|source| ServerError::Io {
            context: format!("creating {}", config.data.display()),
            source,
        })?;
        let db = Db::open(config.database_url.as_deref(), &config.data).await?;
        let sealer = match config.seal_key {
            Some(k) => seal::Sealer::from_key(k),
            None => seal::Sealer::open(&config.data.join("secret.key"))?,
        };
        if db.postgres_url().is_some() {
            sync_tokens(&db, &registry, true).await?;
            registry.set_gc_lock(db.gc_lock());
        }
        let extended = db.extend_expired_leases(config.lease_ttl).await?;
        if extended > 0 {
            tracing::info!(
                "{extended} runs lost their lease while no server ran; their leases restart now"
            );
        }
        let leases: Arc<Mutex<std::collections::HashSet<String>>> = Arc::new(Mutex::new(
            db.live_leases()
                .await?
                .into_iter()
                .map(|(run, attempt)| run_subject(&run, attempt))
                .collect(),
        ));
        {
            let leases = leases.clone();
            // With replicas, a lease granted by another since the last
            // refresh is asked of the database (and remembered).
            let shared = db.postgres_url().is_some().then(|| db.reader());
            registry
                .auth()
                .set_subject_check(Arc::new(move |sub: &str| {
                    if !sub.starts_with("run:") {
                        return true;
                    }
                    if leases
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains(sub)
                    {
                        return true;
                    }
                    let live = shared.as_ref().is_some_and(|r| r.lease_is_live_now(sub));
                    if live {
                        leases
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(sub.to_owned());
                    }
                    live
                }));
        }
        Ok(Arc::new(Server {
            config,
            db,
            registry,
            contexts,
            sealer,
            pools: Signals::new("pool", true),
            runs: Signals::new("run", false),
            leases,
            granted: Mutex::default(),
            seen: Mutex::default(),
            scaler: std::sync::OnceLock::new(),
            pools_changed: Notify::new(),
        }))
        .inspect(|s: &Arc<Server>| s.clone().share_with_replicas())
    }

    /// On PostgreSQL, other replicas may serve the same runs: send and
    /// receive wake-ups through `LISTEN/NOTIFY`, and keep the set of live
    /// leases (what per-run registry credentials are checked against) in
    /// step with the database, where other replicas grant and end them.
    fn share_with_replicas(self: Arc<Self>) {
        let Some(url) = self.db.postgres_url().map(str::to_owned) else {
            return;
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let _ = self.pools.out.set(tx.clone());
        let _ = self.runs.out.set(tx);
        let weak = Arc::downgrade(&self);
        tokio::spawn(async move {
            while let Some(payload) = rx.recv().await {
                let Some(s) = weak.upgrade() else { return };
                if let Err(e) = s.db.notify(&payload).await {
                    tracing::warn!("notifying other replicas: {e}");
                }
            }
        });
        let weak = Arc::downgrade(&self);
        tokio::spawn(async move {
            loop {
                match sqlx::postgres::PgListener::connect(&url).await {
                    Ok(mut l) => {
                        if let Err(e) = l.listen("slipway").await {
                            tracing::warn!("LISTEN slipway: {e}");
                        }
                        while let Ok(n) = l.recv().await {
                            let Some(s) = weak.upgrade() else { return };
                            // Its own wake-ups this replica has acted on.
                            let Some(payload) = s.db.from_others(n.payload()) else {
                                continue;
                            };
                            match payload.split_once(':') {
                                Some(("pool", p)) => s.pools.wake_local(p),
                                Some(("run", r)) => s.runs.wake_local(r),
                                // Another replica made or deleted a token:
                                // read them now, not at the next refresh.
                                Some(("tokens", _)) => {
                                    if let Err(e) = sync_tokens(&s.db, &s.registry, false).await {
                                        tracing::warn!("reading API tokens: {e}");
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    Err(e) => tracing::warn!("listening for other replicas: {e}"),
                }
                if weak.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let weak = Arc::downgrade(&self);
        tokio::spawn(async move {
            // The tokens are read again when their generation moved (read
            // before them, so a change meanwhile shows next round), and
            // every 30 s whatever it says.
            let mut synced: Option<(i64, std::time::Instant)> = None;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(s) = weak.upgrade() else { return };
                match s.db.tokens_generation().await {
                    Ok(g)
                        if synced.is_some_and(|(at, when)| {
                            at == g && when.elapsed() < Duration::from_secs(30)
                        }) => {}
                    Ok(g) => match sync_tokens(&s.db, &s.registry, false).await {
                        Ok(()) => synced = Some((g, std::time::Instant::now())),
                        Err(e) => tracing::warn!("reading API tokens: {e}"),
                    },
                    Err(e) => tracing::warn!("reading the API tokens' generation: {e}"),
                }
                let started = std::time::Instant::now();
                match s.db.live_leases().await {
                    Ok(live) => {
                        let mut live: std::collections::HashSet<String> =
                            live.into_iter().map(|(r, a)| run_subject(&r, a)).collect();
                        let mut granted = s.granted.lock().unwrap_or_else(|p| p.into_inner());
                        granted.retain(|_, at| at.elapsed() < Duration::from_secs(10));
                        live.extend(
                            granted
                                .iter()
                                .filter(|(_, at)| **at >= started)
                                .map(|(k, _)| k.clone()),
                        );
                        drop(granted);
                        *s.leases.lock().unwrap_or_else(|p| p.into_inner()) = live;
                    }
                    Err(e) => tracing::warn!("reading live leases: {e}"),
                }
            }
        });
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Store in the shared database the tokens made outside the API (the
    /// first admin token), so other replicas know them.
    pub async fn publish_tokens(&self) -> Result<(), ServerError> {
        if self.db.postgres_url().is_some() {
            sync_tokens(&self.db, &self.registry, true).await?;
        }
        Ok(())
    }

    /// Keep pools' agent workloads at their count with `scaler` (once).
    pub fn set_scaler(&self, scaler: Arc<dyn PoolScaler>) {
        let _ = self.scaler.set(scaler);
    }

    /// Reconcile pool counts on every pool change and every `every`
    /// (which undoes a scale made by hand). Every replica may run it: a
    /// reconcile sets, it never adds.
    async fn scale_forever(self: Arc<Self>, scaler: Arc<dyn PoolScaler>, every: Duration) {
        let mut failing = false;
        loop {
            let pools = self.db.list_pools().await.map(|ps| {
                ps.into_iter()
                    .filter(|p| !p.local)
                    .map(|p| (p.name, p.count))
                    .collect()
            });
            let done = match pools {
                Ok(pools) => scaler.reconcile(pools).await,
                Err(e) => Err(e.to_string()),
            };
            match done {
                Ok(changes) => {
                    if failing {
                        tracing::info!("pool scaling works again");
                    }
                    failing = false;
                    for c in changes {
                        tracing::info!("{c}");
                    }
                }
                // Once per outage, not every period.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!("scaling pools: {e}");
                }
                Err(e) => tracing::debug!("scaling pools: {e}"),
            }
            tokio::select! {
                () = self.pools_changed.notified() => {}
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    pub(crate) fn mark_seen(&self, agent: &str) {
        let mut m = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        m.retain(|_, t| now.duration_since(*t) < Duration::from_secs(1));
        m.insert(agent.to_owned(), now);
    }

    pub(crate) fn seen_recently(&self, agent: &str) -> bool {
        let m = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        m.get(agent)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// `/api/v1` routes (merge with the registry's router).
    pub fn router(self: &Arc<Self>) -> axum::Router {
        routes::router(self.clone())
    }

    /// Background work: the lease reaper, and the agents of local pools
    /// when `agent_command` is set. Ends when `shutdown` resolves; local
    /// agents are stopped before it returns.
    pub async fn run_background(
        self: Arc<Self>,
        server_url: String,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        let reaper = {
            let s = self.clone();
            tokio::spawn(async move { s.reap_forever().await })
        };
        let janitor = {
            let s = self.clone();
            tokio::spawn(async move {
                loop {
                    // One replica at a time (a crashed one's claim runs
                    // out after ten minutes).
                    let hour = Duration::from_secs(3600);
                    match s.db.take_job("retention", Duration::from_secs(600)).await {
                        Ok(true) => {
                            if let Err(e) = s.clean_up().await {
                                tracing::error!("retention clean-up: {e}");
                            }
                            if let Err(e) = s.db.release_job("retention").await {
                                tracing::warn!("retention: {e}");
                            }
                        }
                        Ok(false) => tracing::debug!("retention: another replica has it"),
                        Err(e) => tracing::error!("retention clean-up: {e}"),
                    }
                    tokio::time::sleep(hour).await;
                }
            })
        };
        let scaling = self.scaler.get().cloned().map(|scaler| {
            let s = self.clone();
            let every = s.config.scale_every;
            tokio::spawn(async move { s.scale_forever(scaler, every).await })
        });
        let collector = self.config.gc_every.map(|every| {
            let s = self.clone();
            tokio::spawn(async move { s.collect_forever(every).await })
        });
        let local = self
            .config
            .agent_command
            .clone()
            .map(|cmd| local::Supervisor::new(self.clone(), cmd, server_url));
        match local {
            Some(mut sup) => sup.run(shutdown).await,
            None => shutdown.await,
        }
        reaper.abort();
        janitor.abort();
        for t in [collector, scaling].into_iter().flatten() {
            t.abort();
        }
    }

    /// The registry's gc every `every`. The job claim is kept for the
    /// whole period (never released), so of several replicas one collects
    /// per period; the gc lock keeps pushes on every replica safe from it.
    async fn collect_forever(self: Arc<Self>, every: Duration) {
        loop {
            match self.db.take_job("registry-gc", every).await {
                Ok(true) => {
                    let opts = registry::gc::GcOptions::default();
                    match registry::gc::collect(&self.registry, &opts).await {
                        Ok(r) => tracing::info!(
                            blobs_deleted = r.blobs_deleted,
                            bytes_freed = r.bytes_freed,
                            cache_manifests_pruned = r.manifests_pruned,
                            "registry gc"
                        ),
                        Err(e) => tracing::error!("registry gc: {}", e.message),
                    }
                }
                Ok(false) => tracing::debug!("registry gc: not due, or another replica has it"),
                Err(e) => tracing::error!("registry gc: {e}"),
            }
            // Checked often enough that a replica takes over soon after
            // the one that collected last goes away.
            tokio::time::sleep(every.min(Duration::from_secs(3600))).await;
        }
    }

    /// Apply the retention period: delete finished runs with their logs,
    /// agents not seen since, and stored contexts no live run needs.
    pub async fn clean_up(&self) -> Result<(usize, usize), ServerError> {
        let cutoff = db::now_ms() - self.config.retention.as_millis() as i64;
        let runs = self.db.delete_finished_before(cutoff).await?;
        let needed = self.db.live_contexts().await?;
        let before = std::time::SystemTime::now()
            .checked_sub(self.config.retention)
            .unwrap_or(std::time::UNIX_EPOCH);
        let mut contexts = 0;
        for blob in self.contexts.list().await? {
            if blob.modified < before && !needed.contains(&blob.digest.to_string()) {
                self.contexts.delete(&blob.digest).await?;
                self.db.forget_context(&blob.digest.to_string()).await?;
                contexts += 1;
            }
        }
        if runs + contexts > 0 {
            tracing::info!(runs, contexts, "deleted what is past the retention period");
        }
        Ok((runs, contexts))
    }

    async fn reap_forever(&self) {
        let period =
            (self.config.lease_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            tokio::time::sleep(period).await;
            match self.db.reap().await {
                Ok(r) => {
                    for (run, pool) in &r.requeued {
                        tracing::warn!(run, pool, "lease expired; run re-queued");
                        self.revoke_run_credentials(run);
                        self.pools.wake(pool);
                        self.runs.wake(run);
                    }
                    for run in &r.finished {
                        self.revoke_run_credentials(run);
                        self.runs.wake_and_forget(run);
                    }
                    for run in &r.timed_out {
                        tracing::warn!(run, "run timed out; asking its agent to stop");
                    }
                }
                Err(e) => tracing::error!("lease reaper: {e}"),
            }
        }
    }

    /// A run's lease ended (or moved): its registry credential stops working.
    fn revoke_run_credentials(&self, run: &str) {
        let prefix = format!("run:{run}:");
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| !s.starts_with(&prefix));
    }

    fn grant_run_credentials(&self, run: &str, attempt: u32) -> String {
        let s = run_subject(run, attempt);
        self.granted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.clone(), std::time::Instant::now());
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.clone());
        s
    }
}

/// Keep the registry's API tokens in step with the database other
/// replicas write to. With `publish`, first store the tokens this replica
/// has that the database lacks (its first start seeds it). A token made or
/// deleted here while the database was read is not undone: that round is
/// skipped.
async fn sync_tokens(db: &Db, registry: &Registry, publish: bool) -> Result<(), ServerError> {
    let (local, generation) = registry.auth().records();
    if publish {
        for t in &local {
            db.insert_token(t).await?;
        }
    }
    let shared = db.tokens().await?;
    registry
        .auth()
        .replace_records(shared, generation)
        .map_err(|e| ServerError::Io {
            context: "saving the API tokens".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(())
}

fn run_subject(run: &str, attempt: u32) -> String {
    format!("run:{run}:{attempt}")
}

/// SHA-256 hex of a secret, as tokens are stored.
fn hash_secret(secret: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(secret.trim().as_bytes()))
}

fn random_token(prefix: &str) -> Result<String, getrandom::Error> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)?;
    Ok(format!("{prefix}{}", hex::encode(b)))
}

/// Where a server's data lives, for `slipway up` to print.
pub fn admin_token_path(data: &Path) -> PathBuf {
    data.join("admin-token")
}
