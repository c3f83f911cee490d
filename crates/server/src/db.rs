//! The control plane's state in SQL, through sqlx's `Any` driver: SQLite (WAL)
//! by default, PostgreSQL by URL. Every statement is portable: `$N`
//! placeholders, `RETURNING`, `ON CONFLICT`, no autoincrement; the queue's
//! correctness rests on conditional single-row updates (`… WHERE state =
//! 'queued'`, `… WHERE lease_hash = $x`), never on SQLite's one-writer lock.
//!
//! With SQLite, writes also pass through one in-process mutex: SQLite allows
//! one writer, and queueing writers here is cheaper than `SQLITE_BUSY` retries.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api::{AgentInfo, Attempt, BuildSpec, LogChunk, Pool, PoolSpec, Run, RunState};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use tokio::sync::{Mutex, MutexGuard};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database holds a bad value in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("sealing the run's secrets: {0}")]
    Seal(String),
    #[error(
        "the database schema is version {db}, newer than this server knows (version {ours}): \
         a newer slipway migrated it; run that version (or newer) here too"
    )]
    TooNew { db: i64, ours: i64 },
    #[error("database {url}: {why}")]
    Unreachable { url: String, why: String },
}

/// `url` without its password, for errors.
fn shown_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A read-only handle on the database for checks that cannot wait for an
/// async context (the registry's credential check).
#[derive(Clone)]
pub struct DbReader {
    pool: AnyPool,
}

impl DbReader {
    /// Whether `run:<id>:<attempt>` names a lease that is live now. Blocks
    /// the calling worker thread briefly; `false` off a multi-threaded
    /// runtime, where blocking is not allowed.
    pub fn lease_is_live_now(&self, subject: &str) -> bool {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let mut parts = subject.splitn(3, ':').skip(1);
        let (Some(run), Some(attempt)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Ok(attempt) = attempt.parse::<i64>() else {
            return false;
        };
        let Ok(handle) = Handle::try_current() else {
            return false;
        };
        if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
            return false;
        }
        let pool = self.pool.clone();
        let (run, now) = (run.to_owned(), now_ms());
        tokio::task::block_in_place(|| {
            handle.block_on(async move {
                sqlx::query(
                    "SELECT 1 FROM runs WHERE id = $1 AND attempt = $2 AND state = 'running' AND lease_expires > $3",
                )
                .bind(run)
                .bind(attempt)
                .bind(now)
                .fetch_optional(&pool)
                .await
                .map(|r| r.is_some())
                .unwrap_or(false)
            })
        })
    }
}

/// A run to queue.
pub struct NewRun<'a> {
    pub pool: &'a str,
    pub spec: &'a BuildSpec,
    pub secret_ids: &'a [String],
    /// The submitting API token's unique id (never its name: a later token
    /// may take a deleted one's name).
    pub submitter: &'a str,
    /// Its name now, shown as who started the run.
    pub submitter_name: &'a str,
    pub timeout: Duration,
    pub max_attempts: u32,
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn corrupt(what: &'static str, detail: impl ToString) -> DbError {
    DbError::Corrupt {
        what,
        detail: detail.to_string(),
    }
}

pub struct Db {
    pool: AnyPool,
    url: String,
    /// This process among the replicas: its notifications carry it, so it
    /// skips its own when they come back through `LISTEN`.
    replica: String,
    /// Some for SQLite: the one-writer queue (see the module comment).
    writer: Option<Mutex<()>>,
}

/// A freshly claimed lease, before the server adds secrets and credentials.
pub struct Claimed {
    pub run: Run,
    pub attempt: u32,
    pub fence: i64,
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    NotFound,
    /// It was queued and is canceled now.
    Canceled,
    /// It is running; its agent is told to stop.
    Requested,
    AlreadyFinal(RunState),
}

/// What the reaper found and did, for logs and notifications.
#[derive(Debug, Default)]
pub struct Reaped {
    pub requeued: Vec<(String, String)>,
    pub finished: Vec<String>,
    pub timed_out: Vec<String>,
}

/// The migrations, compiled in (sqlx's `migrate!` macro would pull in the
/// whole compile-time query machinery for this one use).
#[derive(Debug)]
struct Embedded;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "credentials, secrets, tasks",
        include_str!("../migrations/0002_credentials.sql"),
    ),
    (
        3,
        "context uploaders",
        include_str!("../migrations/0003_access.sql"),
    ),
    (
        4,
        "registry gc job",
        include_str!("../migrations/0004_gc_job.sql"),
    ),
    (
        5,
        "API token generation",
        include_str!("../migrations/0005_token_generation.sql"),
    ),
];

impl sqlx::migrate::MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> futures_util::future::BoxFuture<
        'static,
        Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>,
    > {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(v, d, sql)| {
                    sqlx::migrate::Migration::new(
                        *v,
                        (*d).into(),
                        sqlx::migrate::MigrationType::Simple,
                        (*sql).into(),
                        false,
                    )
                })
                .collect())
        })
    }
}

const RUN_COLUMNS: &str = "id, pool, state, spec, secret_ids, timeout_ms, created_at, started_at, finished_at, exit_code, image_digest, message, revision, steps, submitter_name";

impl Db {
    /// Open (creating, for SQLite) and migrate. `url` is `sqlite://PATH` or
    /// `postgres://…`; `None` means `sqlite://<data>/slipway.db`.
    pub async fn open(url: Option<&str>, data: &Path) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let url = match url {
            Some(u) => u.to_owned(),
            None => format!("sqlite://{}?mode=rwc", data.join("slipway.db").display()),
        };
        let sqlite = url.starts_with("sqlite:");
        let opts = AnyConnectOptions::from_str(&url)?;
        if !sqlite {
            // One connection first: a wrong address, password or database
            // name is then its own error at once, not the pool's timeout.
            let unreachable = |why: String| DbError::Unreachable {
                url: shown_url(&url),
                why,
            };
            let first = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                <sqlx::AnyConnection as sqlx::Connection>::connect_with(&opts),
            )
            .await
            .map_err(|_| unreachable("no answer within 10 s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
            let _ = sqlx::Connection::close(first).await;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 8 } else { 16 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL: readers never wait for the writer. NORMAL
                        // sync: a committed transaction survives a killed
                        // process (it is in the WAL); only power loss may
                        // drop the last ones.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        // A newer server may have migrated the schema past what this one
        // knows: refuse to run against it rather than misread it.
        let ours = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
        let applied: Option<i64> = sqlx::query("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()
            .and_then(|row| row.try_get::<Option<i64>, _>(0).ok().flatten());
        if let Some(db) = applied
            && db > ours
        {
            return Err(DbError::TooNew { db, ours });
        }
        sqlx::migrate::Migrator::new(Embedded)
            .await?
            .run(&pool)
            .await?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(Db {
            pool,
            url,
            replica: format!("{:x}.{nanos:x}", std::process::id()),
            writer: sqlite.then(|| Mutex::new(())),
        })
    }

    async fn write_lock(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.writer {
            Some(m) => Some(m.lock().await),
            None => None,
        }
    }

    async fn next_counter(tx: &mut sqlx::Transaction<'_, sqlx::Any>, name: &str) -> Result<i64> {
        let row =
            sqlx::query("UPDATE counters SET value = value + 1 WHERE name = $1 RETURNING value")
                .bind(name)
                .fetch_one(&mut **tx)
                .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    // ---- pools ----

    /// `Ok(false)` when the name is taken.
    pub async fn create_pool(&self, spec: &PoolSpec) -> Result<bool> {
        let _w = self.write_lock().await;
        let r = sqlx::query(
            "INSERT INTO pools (name, tier, count, network, local, created_at, allow_insecure) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&spec.name)
        .bind(spec.tier.as_str())
        .bind(i64::from(spec.count))
        .bind(spec.network.clone())
        .bind(i64::from(spec.local))
        .bind(now_ms())
        .bind(i64::from(spec.allow_insecure))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    fn pool_from_row(row: &AnyRow, counts: &BTreeMap<(String, String), u64>) -> Result<Pool> {
        let name: String = row.try_get("name")?;
        let tier: String = row.try_get("tier")?;
        let count = |state: &str| {
            counts
                .get(&(name.clone(), state.to_owned()))
                .copied()
                .unwrap_or(0)
        };
        Ok(Pool {
            tier: tier.parse().map_err(|e| corrupt("pools.tier", e))?,
            count: u32::try_from(row.try_get::<i64, _>("count")?).unwrap_or(0),
            network: row.try_get("network")?,
            local: row.try_get::<i64, _>("local")? != 0,
            allow_insecure: row.try_get::<i64, _>("allow_insecure")? != 0,
            created_at: row.try_get("created_at")?,
            queued: count("queued"),
            running: count("running"),
            name,
        })
    }

    async fn run_counts(&self, pool: Option<&str>) -> Result<BTreeMap<(String, String), u64>> {
        let rows = sqlx::query(
            "SELECT pool, state, COUNT(*) AS n FROM runs WHERE state IN ('queued', 'running') AND ($1 IS NULL OR pool = $1) GROUP BY pool, state",
        )
        .bind(pool.map(str::to_owned))
        .fetch_all(&self.pool)
        .await?;
        let mut m = BTreeMap::new();
        for r in rows {
            m.insert(
                (r.try_get("pool")?, r.try_get("state")?),
                u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
            );
        }
        Ok(m)
    }

    pub async fn list_pools(&self) -> Result<Vec<Pool>> {
        let counts = self.run_counts(None).await?;
        let rows = sqlx::query("SELECT * FROM pools ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Self::pool_from_row(r, &counts))
            .collect()
    }

    pub async fn pool(&self, name: &str) -> Result<Option<Pool>> {
        let counts = self.run_counts(Some(name)).await?;
        let row = sqlx::query("SELECT * FROM pools WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Self::pool_from_row(&r, &counts)).transpose()
    }

    /// A pool's settings without its queue counts (which cost a count
    /// over the runs): what the hot paths (submit, lease) need.
    pub async fn pool_settings(&self, name: &str) -> Result<Option<Pool>> {
        let row = sqlx::query("SELECT * FROM pools WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Self::pool_from_row(&r, &BTreeMap::new()))
            .transpose()
    }

    pub async fn update_pool(&self, name: &str, up: &api::PoolUpdate) -> Result<bool> {
        let _w = self.write_lock().await;
        let r = sqlx::query(
            "UPDATE pools SET count = COALESCE($2, count), tier = COALESCE($3, tier), allow_insecure = COALESCE($4, allow_insecure) WHERE name = $1",
        )
        .bind(name)
        .bind(up.count.map(i64::from))
        .bind(up.tier.map(|t| t.as_str().to_owned()))
        .bind(up.allow_insecure.map(i64::from))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Delete a pool with its tokens and agents; with `force`, its active
    /// runs are canceled first. Returns the ids of the runs it canceled, or
    /// `Err(n)` when `n` runs are active and `force` is off.
    pub async fn delete_pool(&self, name: &str, force: bool) -> Result<Result<Vec<String>, u64>> {
        let _w = self.write_lock().await;
        let mut tx = self.pool.begin().await?;
        let active: Vec<String> =
            sqlx::query("SELECT id FROM runs WHERE pool = $1 AND state IN ('queued', 'running')")
                .bind(name)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
        if !active.is_empty() && !force {
            return Ok(Err(active.len() as u64));
        }
        let now = now_ms();
        sqlx::query(
            "UPDATE runs SET state = 'canceled', finished_at = $2, message = 'pool deleted', lease_hash = NULL, secrets = NULL WHERE pool = $1 AND state IN ('queued', 'running')",
        )
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for q in [
            "DELETE FROM agent_tokens WHERE pool = $1",
            "DELETE FROM agents WHERE pool = $1",
            "DELETE FROM credentials WHERE pool = $1",
            "DELETE FROM pools WHERE name = $1",
        ] {
            sqlx::query(q).bind(name).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Ok(active))
    }

    // ---- tokens and agents ----

    pub async fn add_agent_token(&self, pool: &str, sha256: &str, name: &str) -> Result<()> {
        let _w = self.write_lock().await;
        sqlx::query(
            "INSERT INTO agent_tokens (sha256, pool, name, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(sha256)
        .bind(pool)
        .bind(name)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_agent_tokens_named(&self, pool: &str, name: &str) -> Result<()> {
        let _w = self.write_lock().await;
        sqlx::query("DELETE FROM agent_tokens WHERE pool = $1 AND name = $2")
            .bind(pool)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The pool an agent token is bound to.
    pub async fn agent_token_pool(&self, sha256: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT pool FROM agent_tokens WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn touch_agent(
        conn: &mut sqlx::AnyConnection,
        id: &str,
        pool: &str,
        current_run: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO agents (id, pool, last_seen, current_run) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET pool = excluded.pool, last_seen = excluded.last_seen, current_run = excluded.current_run",
        )
        .bind(id)
        .bind(pool)
        .bind(now_ms())
        .bind(current_run.map(str::to_owned))
        .execute(conn)
        .await?;
        Ok(())
    }

    pub async fn agent_seen(&self, id: &str, pool: &str) -> Result<()> {
        let _w = self.write_lock().await;
        let mut conn = self.pool.acquire().await?;
        Self::touch_agent(&mut conn, id, pool, None).await
    }

    pub async fn agents(&self, pool: &str, offline_after: Duration) -> Result<Vec<AgentInfo>> {
        let rows = sqlx::query(
            "SELECT id, pool, last_seen, current_run FROM agents WHERE pool = $1 ORDER BY id",
        )
        .bind(pool)
        .fetch_all(&self.pool)
        .await?;
        let now = now_ms();
        rows.iter()
            .map(|r| {
                let last: i64 = r.try_get("last_seen")?;
                let current: Option<String> = r.try_get("current_run")?;
                let status = if now - last > offline_after.as_millis() as i64 {
                    "offline"
                } else if current.is_some() {
                    "busy"
                } else {
                    "idle"
                };
                Ok(AgentInfo {
                    id: r.try_get("id")?,
                    pool: r.try_get("pool")?,
                    status: status.into(),
                    last_heartbeat: last,
                    current_run: current,
                })
            })
            .collect()
    }

    // ---- runs ----

    /// Insert a queued run and return its id (`r1`, `r2`, …). `seal` seals
    /// the run's secrets for the id the run gets (bound to it).
    pub async fn insert_run(
        &self,
        run: NewRun<'_>,
        seal: impl FnOnce(&str) -> std::result::Result<Option<String>, String>,
    ) -> Result<String> {
        let NewRun {
            pool,
            spec,
            secret_ids,
            submitter,
            submitter_name,
            timeout,
            max_attempts,
        } = run;
        let context = match &spec.context {
            api::ContextSource::Upload { digest } => Some(digest.clone()),
            api::ContextSource::Url { .. } => None,
        };
        let spec_json = serde_json::to_string(spec).map_err(|e| corrupt("runs.spec", e))?;
        let ids_json =
            serde_json::to_string(secret_ids).map_err(|e| corrupt("runs.secret_ids", e))?;
        let _w = self.write_lock().await;
        let mut tx = self.pool.begin().await?;
        let n = Self::next_counter(&mut tx, "run").await?;
        let id = format!("r{n}");
        let sealed_secrets = seal(&id).map_err(DbError::Seal)?;
        sqlx::query(
            "INSERT INTO runs (id, seq, pool, state, spec, secret_ids, secrets, submitter, timeout_ms, created_at, attempt, max_attempts, log_next, context, submitter_name) VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, 0, $10, 0, $11, $12)",
        )
        .bind(&id)
        .bind(n)
        .bind(pool)
        .bind(spec_json)
        .bind(ids_json)
        .bind(sealed_secrets)
        .bind(submitter)
        .bind(timeout.as_millis() as i64)
        .bind(now_ms())
        .bind(i64::from(max_attempts))
        .bind(context)
        .bind(submitter_name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    fn run_from_row(row: &AnyRow, attempts: Vec<Attempt>) -> Result<Run> {
        let state: String = row.try_get("state")?;
        let spec: String = row.try_get("spec")?;
        let ids: String = row.try_get("secret_ids")?;
        Ok(Run {
            id: row.try_get("id")?,
            pool: row.try_get("pool")?,
            state: state.parse().map_err(|e| corrupt("runs.state", e))?,
            build: serde_json::from_str(&spec).map_err(|e| corrupt("runs.spec", e))?,
            secret_ids: serde_json::from_str(&ids).map_err(|e| corrupt("runs.secret_ids", e))?,
            timeout_secs: (row.try_get::<i64, _>("timeout_ms")? / 1000) as u64,
            created_at: row.try_get("created_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            attempts,
            exit_code: row
                .try_get::<Option<i64>, _>("exit_code")?
                .map(|c| c as i32),
            image_digest: row.try_get("image_digest")?,
            message: row.try_get("message")?,
            revision: row
                .try_get::<Option<String>, _>("revision")?
                .map(|r| serde_json::from_str(&r).map_err(|e| corrupt("runs.revision", e)))
                .transpose()?,
            steps: row
                .try_get::<Option<String>, _>("steps")?
                .map(|r| serde_json::from_str(&r).map_err(|e| corrupt("runs.steps", e)))
                .transpose()?
                .unwrap_or_default(),
            submitted_by: row.try_get("submitter_name")?,
        })
    }

    async fn attempts(&self, run: &str) -> Result<Vec<Attempt>> {
        let rows = sqlx::query(
            "SELECT attempt, agent, fence, started_at, ended_at, outcome FROM attempts WHERE run_id = $1 ORDER BY attempt",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Attempt {
                    number: r.try_get::<i64, _>("attempt")? as u32,
                    agent: r.try_get("agent")?,
                    fence: r.try_get("fence")?,
                    started_at: r.try_get("started_at")?,
                    ended_at: r.try_get("ended_at")?,
                    outcome: r.try_get("outcome")?,
                })
            })
            .collect()
    }

    pub async fn run(&self, id: &str) -> Result<Option<Run>> {
        let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => {
                let attempts = self.attempts(id).await?;
                Ok(Some(Self::run_from_row(&r, attempts)?))
            }
            None => Ok(None),
        }
    }

    /// Store a sealed credential. `false`: one exists for that kind and
    /// host (with `replace`: none exists to replace).
    pub async fn put_credential(
        &self,
        pool: &str,
        kind: api::CredentialKind,
        host: &str,
        username: &str,
        sealed: &str,
        replace: bool,
    ) -> Result<bool> {
        let _w = self.write_lock().await;
        let now = now_ms();
        let r = if replace {
            sqlx::query(
                "UPDATE credentials SET username = $4, sealed = $5, updated_at = $6 WHERE pool = $1 AND kind = $2 AND host = $3",
            )
        } else {
            sqlx::query(
                "INSERT INTO credentials (pool, kind, host, username, sealed, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT DO NOTHING",
            )
        }
        .bind(pool)
        .bind(kind.as_str())
        .bind(host)
        .bind(username)
        .bind(sealed)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn delete_credential(
        &self,
        pool: &str,
        kind: api::CredentialKind,
        host: &str,
    ) -> Result<bool> {
        let _w = self.write_lock().await;
        let r = sqlx::query("DELETE FROM credentials WHERE pool = $1 AND kind = $2 AND host = $3")
            .bind(pool)
            .bind(kind.as_str())
            .bind(host)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// A pool's credentials with their sealed passwords, by kind and host.
    pub async fn credentials(&self, pool: &str) -> Result<Vec<(api::CredentialInfo, String)>> {
        let rows = sqlx::query(
            "SELECT pool, kind, host, username, created_at, updated_at, sealed FROM credentials WHERE pool = $1 ORDER BY kind, host",
        )
        .bind(pool)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get(1)?;
                Ok((
                    api::CredentialInfo {
                        pool: r.try_get(0)?,
                        kind: kind.parse().map_err(|e| corrupt("credentials.kind", e))?,
                        host: r.try_get(2)?,
                        username: r.try_get(3)?,
                        created_at: r.try_get(4)?,
                        updated_at: r.try_get(5)?,
                    },
                    r.try_get(6)?,
                ))
            })
            .collect()
    }

    /// Store a sealed secret (created or replaced).
    pub async fn put_secret(&self, name: &str, sealed: &str) -> Result<()> {
        let _w = self.write_lock().await;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO secrets (name, sealed, created_at, updated_at) VALUES ($1, $2, $3, $3) ON CONFLICT (name) DO UPDATE SET sealed = $2, updated_at = $3",
        )
        .bind(name)
        .bind(sealed)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_secret(&self, name: &str) -> Result<bool> {
        let _w = self.write_lock().await;
        let r = sqlx::query("DELETE FROM secrets WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Every secret: info and sealed value.
    pub async fn secrets(&self) -> Result<Vec<(api::SecretInfo, String)>> {
        let rows =
            sqlx::query("SELECT name, created_at, updated_at, sealed FROM secrets ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    api::SecretInfo {
                        name: r.try_get(0)?,
                        created_at: r.try_get(1)?,
                        updated_at: r.try_get(2)?,
                    },
                    r.try_get(3)?,
                ))
            })
            .collect()
    }

    /// Store a task definition. `replace`: update an existing one (`false`
    /// when none); else create (`false` when it exists).
    pub async fn put_task(&self, def: &api::TaskDef, replace: bool) -> Result<bool> {
        let _w = self.write_lock().await;
        let now = now_ms();
        let mut def = def.clone();
        def.updated_at = now;
        if !replace {
            def.created_at = now;
        }
        let json = serde_json::to_string(&def).map_err(|e| corrupt("tasks.def", e))?;
        let r = if replace {
            sqlx::query("UPDATE tasks SET pool = $2, def = $3, updated_at = $4 WHERE name = $1")
        } else {
            sqlx::query(
                "INSERT INTO tasks (name, pool, def, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) ON CONFLICT DO NOTHING",
            )
        }
        .bind(&def.name)
        .bind(&def.pool)
        .bind(json)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn task(&self, name: &str) -> Result<Option<api::TaskDef>> {
        let row = sqlx::query("SELECT def FROM tasks WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let s: String = r.try_get(0)?;
            serde_json::from_str(&s).map_err(|e| corrupt("tasks.def", e))
        })
        .transpose()
    }

    pub async fn tasks(&self) -> Result<Vec<api::TaskDef>> {
        let rows = sqlx::query("SELECT def FROM tasks ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let s: String = r.try_get(0)?;
                serde_json::from_str(&s).map_err(|e| corrupt("tasks.def", e))
            })
            .collect()
    }

    pub async fn delete_task(&self, name: &str) -> Result<bool> {
        let _w = self.write_lock().await;
        let r = sqlx::query("DELETE FROM tasks WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The run's submitter and sealed secrets (for the lease).
    pub async fn run_private(&self, id: &str) -> Result<Option<(String, Option<String>)>> {
        let row = sqlx::query("SELECT submitter, secrets FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// The newest `limit` runs, of `pool` and in `state` when given, whose
    /// id, spec (tags, Dockerfile), message or submitter contain `text`
    /// (case-insensitive).
    pub async fn list_runs(
        &self,
        pool: Option<&str>,
        state: Option<RunState>,
        text: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Run>> {
        let like = text.map(|t| {
            let escaped = t
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        });
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE ($1 IS NULL OR pool = $1) AND ($2 IS NULL OR state = $2) \
             AND ($4 IS NULL OR LOWER(id) LIKE $4 ESCAPE '\\' OR LOWER(spec) LIKE $4 ESCAPE '\\' \
             OR LOWER(COALESCE(message, '')) LIKE $4 ESCAPE '\\' OR LOWER(COALESCE(submitter_name, '')) LIKE $4 ESCAPE '\\') \
             ORDER BY seq DESC LIMIT $3"
        ))
        .bind(pool.map(str::to_owned))
        .bind(state.map(|s| s.as_str().to_owned()))
        .bind(i64::from(limit))
        .bind(like)
        .fetch_all(&self.pool)
        .await?;
        let mut runs = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get("id")?;
            let attempts = self.attempts(&id).await?;
            runs.push(Self::run_from_row(r, attempts)?);
        }
        Ok(runs)
    }

    /// Append server-written lines to a run's log (attempt markers, notes).
    async fn append_note(
        conn: &mut sqlx::AnyConnection,
        run: &str,
        attempt: i64,
        seq: i64,
        text: &str,
    ) -> Result<()> {
        let row =
            sqlx::query("UPDATE runs SET log_next = log_next + 1 WHERE id = $1 RETURNING log_next")
                .bind(run)
                .fetch_one(&mut *conn)
                .await?;
        let pos: i64 = row.try_get(0)?;
        sqlx::query(
            "INSERT INTO log_chunks (run_id, pos, attempt, seq, data) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id, attempt, seq) DO NOTHING",
        )
        .bind(run)
        .bind(pos)
        .bind(attempt)
        .bind(seq)
        .bind(format!("[slipway] {text}\n"))
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Take the oldest queued run of `pool` for `agent`, or `None`.
    pub async fn claim(
        &self,
        pool: &str,
        agent: &str,
        lease_hash: &str,
        ttl: Duration,
    ) -> Result<Option<Claimed>> {
        if self.postgres_url().is_some() {
            return self.claim_postgres(pool, agent, lease_hash, ttl).await;
        }
        let _w = self.write_lock().await;
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        // SQLite has one writer (the lock above), so the fence can come
        // first; the outer `state = 'queued'` makes this a compare-and-set.
        let fence = Self::next_counter(&mut tx, "fence").await?;
        let row = sqlx::query(
            "UPDATE runs SET state = 'running', attempt = attempt + 1, fence = $1, lease_hash = $2, lease_expires = $3, agent = $4, started_at = COALESCE(started_at, $5) \
             WHERE id = (SELECT id FROM runs WHERE pool = $6 AND state = 'queued' ORDER BY seq LIMIT 1) AND state = 'queued' \
             RETURNING id, attempt",
        )
        .bind(fence)
        .bind(lease_hash)
        .bind(now + ttl.as_millis() as i64)
        .bind(agent)
        .bind(now)
        .bind(pool)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            // Nothing claimed: leave the fence counter as it was.
            tx.rollback().await?;
            return Ok(None);
        };
        let id: String = row.try_get(0)?;
        let attempt: i64 = row.try_get(1)?;
        sqlx::query(
            "INSERT INTO attempts (run_id, attempt, agent, fence, started_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(attempt)
        .bind(agent)
        .bind(fence)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        Self::touch_agent(&mut tx, agent, pool, Some(&id)).await?;
        Self::append_note(
            &mut tx,
            &id,
            attempt,
            -1,
            &format!("attempt {attempt} started on agent {agent}"),
        )
        .await?;
        tx.commit().await?;
        let run = self
            .run(&id)
            .await?
            .ok_or_else(|| corrupt("runs", format!("claimed run {id} vanished")))?;
        Ok(Some(Claimed {
            run,
            attempt: attempt as u32,
            fence,
        }))
    }

    /// [`Db::claim`] on PostgreSQL: one statement, so one round trip
    /// (then one for the run's attempts), where the SQLite path takes
    /// nine. Replicas claim at once: each skips the runs another is
    /// claiming (`SKIP LOCKED`), and the fence counter is taken only once
    /// a run is picked. Same writes as the SQLite path: the run, its
    /// attempt, the agent row and the log's attempt line.
    async fn claim_postgres(
        &self,
        pool: &str,
        agent: &str,
        lease_hash: &str,
        ttl: Duration,
    ) -> Result<Option<Claimed>> {
        let now = now_ms();
        // `note` writes the line `append_note` writes on SQLite (the
        // control tests read it on both).
        let row = sqlx::query(&format!(
            "WITH picked AS MATERIALIZED ( \
               SELECT id FROM runs WHERE pool = $1 AND state = 'queued' ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED \
             ), fence AS ( \
               UPDATE counters SET value = value + 1 WHERE name = 'fence' AND EXISTS (SELECT 1 FROM picked) RETURNING value \
             ), claimed AS ( \
               UPDATE runs SET state = 'running', attempt = attempt + 1, fence = (SELECT value FROM fence), \
                 lease_hash = $2, lease_expires = $3, agent = $4, started_at = COALESCE(started_at, $5), log_next = log_next + 1 \
               FROM picked WHERE runs.id = picked.id AND runs.state = 'queued' \
               RETURNING runs.*, runs.attempt AS claimed_attempt, runs.fence AS claimed_fence \
             ), attempt_row AS ( \
               INSERT INTO attempts (run_id, attempt, agent, fence, started_at) \
               SELECT id, attempt, $4, fence, $5 FROM claimed \
             ), note AS ( \
               INSERT INTO log_chunks (run_id, pos, attempt, seq, data) \
               SELECT id, log_next, attempt, -1, '[slipway] attempt ' || attempt || ' started on agent ' || $4 || chr(10) FROM claimed \
               ON CONFLICT (run_id, attempt, seq) DO NOTHING \
             ), agent_row AS ( \
               INSERT INTO agents (id, pool, last_seen, current_run) SELECT $4, $1, $5, id FROM claimed \
               ON CONFLICT (id) DO UPDATE SET pool = excluded.pool, last_seen = excluded.last_seen, current_run = excluded.current_run \
             ) \
             SELECT {RUN_COLUMNS}, claimed_attempt, claimed_fence FROM claimed"
        ))
        .bind(pool)
        .bind(lease_hash)
        .bind(now + ttl.as_millis() as i64)
        .bind(agent)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: String = row.try_get("id")?;
        let attempt: i64 = row.try_get("claimed_attempt")?;
        let fence: i64 = row.try_get("claimed_fence")?;
        let attempts = self.attempts(&id).await?;
        Ok(Some(Claimed {
            run: Self::run_from_row(&row, attempts)?,
            attempt: attempt as u32,
            fence,
        }))
    }

    /// Extend a lease. `None`: the lease is no longer this token's.
    /// `Some(cancel)`: whether the agent must stop.
    pub async fn heartbeat(
        &self,
        run: &str,
        lease_hash: &str,
        ttl: Duration,
    ) -> Result<Option<bool>> {
        let _w = self.write_lock().await;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE runs SET lease_expires = $3 WHERE id = $1 AND lease_hash = $2 AND state = 'running' RETURNING cancel_reason, agent, pool",
        )
        .bind(run)
        .bind(lease_hash)
        .bind(now_ms() + ttl.as_millis() as i64)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let reason: Option<String> = row.try_get(0)?;
        let agent: String = row.try_get(1)?;
        let pool: String = row.try_get(2)?;
        Self::touch_agent(&mut tx, &agent, &pool, Some(run)).await?;
        tx.commit().await?;
        Ok(Some(reason.is_some()))
    }

    /// Store an agent's log chunks once each. `Ok(false)`: the lease is not
    /// this token's (fenced off).
    pub async fn append_logs(
        &self,
        run: &str,
        lease_hash: &str,
        chunks: &[api::AgentChunk],
    ) -> Result<bool> {
        let _w = self.write_lock().await;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT attempt, log_next FROM runs WHERE id = $1 AND lease_hash = $2 AND state = 'running'",
        )
        .bind(run)
        .bind(lease_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let attempt: i64 = row.try_get(0)?;
        let mut next: i64 = row.try_get(1)?;
        let min_seq = chunks.iter().map(|c| c.seq).min().unwrap_or(0) as i64;
        let seen: std::collections::HashSet<i64> = sqlx::query(
            "SELECT seq FROM log_chunks WHERE run_id = $1 AND attempt = $2 AND seq >= $3",
        )
        .bind(run)
        .bind(attempt)
        .bind(min_seq)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<_, _>>()?;
        for c in chunks {
            let seq = c.seq as i64;
            if seen.contains(&seq) {
                continue;
            }
            next += 1;
            sqlx::query(
                "INSERT INTO log_chunks (run_id, pos, attempt, seq, data) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(run)
            .bind(next)
            .bind(attempt)
            .bind(seq)
            .bind(&c.data)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE runs SET log_next = $2 WHERE id = $1")
            .bind(run)
            .bind(next)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Chunks after `after` (at most `limit`), oldest first.
    pub async fn logs(&self, run: &str, after: u64, limit: u32) -> Result<Vec<LogChunk>> {
        let rows = sqlx::query(
            "SELECT pos, attempt, data FROM log_chunks WHERE run_id = $1 AND pos > $2 ORDER BY pos LIMIT $3",
        )
        .bind(run)
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LogChunk {
                    pos: r.try_get::<i64, _>(0)? as u64,
                    attempt: r.try_get::<i64, _>(1)? as u32,
                    data: r.try_get(2)?,
                })
            })
            .collect()
    }

    pub async fn run_state(&self, run: &str) -> Result<Option<RunState>> {
        let row = sqlx::query("SELECT state FROM runs WHERE id = $1")
            .bind(run)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let s: String = r.try_get(0)?;
            s.parse().map_err(|e| corrupt("runs.state", e))
        })
        .transpose()
    }

    /// Record an agent's result. `None`: fenced off (not this lease).
    pub async fn finish(
        &self,
        run: &str,
        lease_hash: &str,
        result: &api::RunResult,
    ) -> Result<Option<RunState>> {
        let _w = self.write_lock().await;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT attempt, cancel_reason, agent, pool FROM runs WHERE id = $1 AND lease_hash = $2 AND state = 'running'",
        )
        .bind(run)
        .bind(lease_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let attempt: i64 = row.try_get(0)?;
        let reason: Option<String> = row.try_get(1)?;
        let agent: String = row.try_get(2)?;
        let pool: String = row.try_get(3)?;
        let state = match result.outcome {
            api::Outcome::Succeeded => RunState::Succeeded,
            api::Outcome::Failed => RunState::Failed,
            api::Outcome::Error => RunState::Error,
            api::Outcome::Stopped => match reason.as_deref() {
                Some("timed-out") => RunState::TimedOut,
                _ => RunState::Canceled,
            },
        };
        let now = now_ms();
        sqlx::query(
            "UPDATE runs SET state = $3, finished_at = $4, exit_code = $5, image_digest = $6, message = $7, revision = $8, steps = $9, lease_hash = NULL, lease_expires = NULL, secrets = NULL WHERE id = $1 AND lease_hash = $2",
        )
        .bind(run)
        .bind(lease_hash)
        .bind(state.as_str())
        .bind(now)
        .bind(result.exit_code.map(i64::from))
        .bind(result.image_digest.clone())
        .bind(result.message.clone())
        .bind(
            result
                .revision
                .as_ref()
                .and_then(|r| serde_json::to_string(r).ok()),
        )
        .bind(
            (!result.steps.is_empty())
                .then(|| serde_json::to_string(&result.steps).ok())
                .flatten(),
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE attempts SET ended_at = $3, outcome = $4 WHERE run_id = $1 AND attempt = $2",
        )
        .bind(run)
        .bind(attempt)
        .bind(now)
        .bind(state.as_str())
        .execute(&mut *tx)
        .await?;
        Self::touch_agent(&mut tx, &agent, &pool, None).await?;
        Self::append_note(&mut tx, run, attempt, -2, &format!("run {run} {state}")).await?;
        tx.commit().await?;
        Ok(Some(state))
    }

    /// Cancel: a queued run ends at once; a running one is flagged for its
    /// agent; a final one stays as it is.
    pub async fn cancel(&self, run: &str) -> Result<Cancel> {
        let _w = self.write_lock().await;
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE runs SET state = 'canceled', finished_at = $2, secrets = NULL WHERE id = $1 AND state = 'queued'",
        )
        .bind(run)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 1 {
            Self::append_note(&mut tx, run, 0, -3, "canceled while queued").await?;
            tx.commit().await?;
            return Ok(Cancel::Canceled);
        }
        let r = sqlx::query(
            "UPDATE runs SET cancel_reason = COALESCE(cancel_reason, 'canceled') WHERE id = $1 AND state = 'running'",
        )
        .bind(run)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if r.rows_affected() == 1 {
            return Ok(Cancel::Requested);
        }
        Ok(match self.run_state(run).await? {
            Some(state) => Cancel::AlreadyFinal(state),
            None => Cancel::NotFound,
        })
    }

    /// Give a fresh period to the leases that expired with nobody to reap
    /// them (every server was down, so their agents could not heartbeat).
    /// A lease still running out is left alone: another replica is serving
    /// its agent.
    pub async fn extend_expired_leases(&self, ttl: Duration) -> Result<u64> {
        let _w = self.write_lock().await;
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE runs SET lease_expires = $1 WHERE state = 'running' AND lease_expires < $2",
        )
        .bind(now + ttl.as_millis() as i64)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Take job `name` for at most `limit` unless another replica is
    /// running it: `true` means this replica runs it now, and releases it
    /// with [`Db::release_job`] (a crashed holder's claim runs out).
    pub async fn take_job(&self, name: &str, limit: Duration) -> Result<bool> {
        let _w = self.write_lock().await;
        let now = now_ms();
        let r = sqlx::query("UPDATE jobs SET until_ms = $1 WHERE name = $2 AND until_ms <= $3")
            .bind(now + limit.as_millis() as i64)
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn release_job(&self, name: &str) -> Result<()> {
        let _w = self.write_lock().await;
        sqlx::query("UPDATE jobs SET until_ms = 0 WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The registry's gc lock shared by every replica on this database
    /// (PostgreSQL).
    pub fn gc_lock(&self) -> std::sync::Arc<dyn registry::lock::SharedLock> {
        crate::gc_lock::PgGcLock::new(self.pool.clone())
    }

    /// A notification's payload, unless this replica sent it.
    pub fn from_others<'a>(&self, notification: &'a str) -> Option<&'a str> {
        match notification.split_once(' ') {
            Some((from, payload)) if from != self.replica => Some(payload),
            Some(_) => None,
            None => Some(notification),
        }
    }

    pub fn reader(&self) -> DbReader {
        DbReader {
            pool: self.pool.clone(),
        }
    }

    /// The PostgreSQL URL, when the database is PostgreSQL (several server
    /// replicas may share it).
    pub fn postgres_url(&self) -> Option<&str> {
        self.url
            .starts_with("postgres")
            .then_some(self.url.as_str())
    }

    /// Store an API token; `Ok(false)` when its id, name or hash is taken.
    pub async fn insert_token(&self, t: &registry::auth::TokenRecord) -> Result<bool> {
        let grants =
            serde_json::to_string(&t.grants).map_err(|e| corrupt("api_tokens.grants", e))?;
        let _w = self.write_lock().await;
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "INSERT INTO api_tokens (id, name, sha256, admin, grants, created) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&t.id)
        .bind(&t.name)
        .bind(&t.sha256)
        .bind(i64::from(t.admin))
        .bind(grants)
        .bind(i64::try_from(t.created).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        let inserted = r.rows_affected() == 1;
        if inserted {
            Self::next_counter(&mut tx, "tokens").await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    pub async fn delete_token(&self, id: &str) -> Result<()> {
        let _w = self.write_lock().await;
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("DELETE FROM api_tokens WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() > 0 {
            Self::next_counter(&mut tx, "tokens").await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Moves on every token insert and delete: a replica reads the tokens
    /// again only when it has moved (or now and then, to be sure).
    pub async fn tokens_generation(&self) -> Result<i64> {
        let row = sqlx::query("SELECT value FROM counters WHERE name = 'tokens'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    pub async fn tokens(&self) -> Result<Vec<registry::auth::TokenRecord>> {
        let rows = sqlx::query("SELECT id, name, sha256, admin, grants, created FROM api_tokens")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let grants: String = r.try_get("grants")?;
                Ok(registry::auth::TokenRecord {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    sha256: r.try_get("sha256")?,
                    admin: r.try_get::<i64, _>("admin")? != 0,
                    grants: serde_json::from_str(&grants)
                        .map_err(|e| corrupt("api_tokens.grants", e))?,
                    created: u64::try_from(r.try_get::<i64, _>("created")?).unwrap_or(0),
                })
            })
            .collect()
    }

    /// Tell every replica listening on PostgreSQL (`LISTEN slipway`):
    /// `NOTIFY slipway` with `payload`, marked as this replica's.
    pub async fn notify(&self, payload: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify('slipway', $1)")
            .bind(format!("{} {payload}", self.replica))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Expire leases whose agent went quiet (re-queue, or give up after the
    /// attempts allowed) and flag runs past their timeout.
    pub async fn reap(&self) -> Result<Reaped> {
        let mut out = Reaped::default();
        let now = now_ms();
        let over: Vec<String> = sqlx::query(
            "SELECT id FROM runs WHERE state = 'running' AND cancel_reason IS NULL AND started_at + timeout_ms < $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        for id in over {
            let _w = self.write_lock().await;
            sqlx::query("UPDATE runs SET cancel_reason = 'timed-out' WHERE id = $1 AND cancel_reason IS NULL")
                .bind(&id)
                .execute(&self.pool)
                .await?;
            out.timed_out.push(id);
        }
        let expired = sqlx::query(
            "SELECT id, attempt, max_attempts, lease_hash, cancel_reason, agent, pool FROM runs WHERE state = 'running' AND lease_expires < $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        for row in expired {
            let id: String = row.try_get(0)?;
            let attempt: i64 = row.try_get(1)?;
            let max: i64 = row.try_get(2)?;
            let hash: Option<String> = row.try_get(3)?;
            let reason: Option<String> = row.try_get(4)?;
            let agent: Option<String> = row.try_get(5)?;
            let agent = agent.unwrap_or_default();
            let _w = self.write_lock().await;
            let mut tx = self.pool.begin().await?;
            let (state, note) = match reason.as_deref() {
                Some("timed-out") => (
                    "timed-out",
                    format!("agent {agent} did not stop in time; run timed out"),
                ),
                Some(_) => (
                    "canceled",
                    format!("agent {agent} did not confirm the cancel; run canceled"),
                ),
                None if attempt < max => (
                    "queued",
                    format!("agent {agent} stopped responding; lease expired, run re-queued"),
                ),
                None => (
                    "error",
                    format!("agent {agent} stopped responding; {attempt} attempts used, giving up"),
                ),
            };
            let r = if state == "queued" {
                sqlx::query(
                    "UPDATE runs SET state = 'queued', lease_hash = NULL, lease_expires = NULL, agent = NULL WHERE id = $1 AND lease_hash = $2 AND state = 'running'",
                )
                .bind(&id)
                .bind(hash.clone())
                .execute(&mut *tx)
                .await?
            } else {
                sqlx::query(
                    "UPDATE runs SET state = $3, finished_at = $4, message = $5, lease_hash = NULL, lease_expires = NULL, secrets = NULL WHERE id = $1 AND lease_hash = $2 AND state = 'running'",
                )
                .bind(&id)
                .bind(hash.clone())
                .bind(state)
                .bind(now)
                .bind(&note)
                .execute(&mut *tx)
                .await?
            };
            if r.rows_affected() != 1 {
                continue;
            }
            sqlx::query("UPDATE attempts SET ended_at = $3, outcome = $4 WHERE run_id = $1 AND attempt = $2")
                .bind(&id)
                .bind(attempt)
                .bind(now)
                .bind(if state == "queued" { "lost" } else { state })
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE agents SET current_run = NULL WHERE id = $1 AND current_run = $2")
                .bind(&agent)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            Self::append_note(&mut tx, &id, attempt, -4, &note).await?;
            tx.commit().await?;
            if state == "queued" {
                out.requeued.push((id, row.try_get::<String, _>(6)?));
            } else {
                out.finished.push(id);
            }
        }
        Ok(out)
    }

    /// Delete runs that ended before `cutoff` (ms), with their attempts and
    /// logs, and agents last seen before it. Returns the runs deleted.
    pub async fn delete_finished_before(&self, cutoff: i64) -> Result<usize> {
        let _w = self.write_lock().await;
        let mut tx = self.pool.begin().await?;
        let old = "SELECT id FROM runs WHERE finished_at IS NOT NULL AND finished_at < $1";
        for q in [
            format!("DELETE FROM log_chunks WHERE run_id IN ({old})"),
            format!("DELETE FROM attempts WHERE run_id IN ({old})"),
        ] {
            sqlx::query(&q).bind(cutoff).execute(&mut *tx).await?;
        }
        let r = sqlx::query("DELETE FROM runs WHERE finished_at IS NOT NULL AND finished_at < $1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM agents WHERE last_seen < $1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() as usize)
    }

    /// Digests of the uploaded contexts that queued or running runs need.
    pub async fn live_contexts(&self) -> Result<std::collections::HashSet<String>> {
        let rows = sqlx::query("SELECT spec FROM runs WHERE state IN ('queued', 'running')")
            .fetch_all(&self.pool)
            .await?;
        let mut out = std::collections::HashSet::new();
        for r in rows {
            let spec: String = r.try_get(0)?;
            let spec: BuildSpec =
                serde_json::from_str(&spec).map_err(|e| corrupt("runs.spec", e))?;
            if let api::ContextSource::Upload { digest } = spec.context {
                out.insert(digest);
            }
        }
        Ok(out)
    }

    /// Note that the API token `token_id` uploaded (or sent again) `digest`.
    pub async fn record_context_upload(&self, digest: &str, token_id: &str) -> Result<()> {
        let _w = self.write_lock().await;
        sqlx::query(
            "INSERT INTO context_uploads (digest, token_id, created_at) VALUES ($1, $2, $3) ON CONFLICT (digest, token_id) DO NOTHING",
        )
        .bind(digest)
        .bind(token_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn context_uploaded_by(&self, digest: &str, token_id: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM context_uploads WHERE digest = $1 AND token_id = $2")
            .bind(digest)
            .bind(token_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Whether an agent of `pool` holds a lease on a run of context `digest`.
    pub async fn context_leased(&self, pool: &str, digest: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM runs WHERE pool = $1 AND context = $2 AND state = 'running'",
        )
        .bind(pool)
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// A context was deleted: nobody uploaded it any more.
    pub async fn forget_context(&self, digest: &str) -> Result<()> {
        let _w = self.write_lock().await;
        sqlx::query("DELETE FROM context_uploads WHERE digest = $1")
            .bind(digest)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// `(run, attempt)` of every run an agent holds now.
    pub async fn live_leases(&self) -> Result<Vec<(String, u32)>> {
        let rows = sqlx::query("SELECT id, attempt FROM runs WHERE state = 'running'")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? as u32)))
            .collect()
    }

    /// Pool of a run (for notifications).
    pub async fn run_pool(&self, run: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT pool FROM runs WHERE id = $1")
            .bind(run)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            super::shown_url("postgres://app:s3cret@db:5432/slipway"),
            "postgres://app:***@db:5432/slipway"
        );
        assert_eq!(
            super::shown_url("postgres://app@db/slipway"),
            "postgres://app@db/slipway"
        );
    }

    /// Replicas read the tokens when this moves: on every insert and
    /// delete that changed something, and on nothing else.
    #[tokio::test]
    async fn the_token_generation_moves_with_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(None, dir.path()).await.unwrap();
        let t = registry::auth::TokenRecord {
            id: "id-1".into(),
            name: "ci".into(),
            sha256: "ab".repeat(32),
            admin: false,
            grants: Vec::new(),
            created: 1,
        };
        let g0 = db.tokens_generation().await.unwrap();
        assert!(db.insert_token(&t).await.unwrap());
        let g1 = db.tokens_generation().await.unwrap();
        assert!(g1 > g0);
        assert!(!db.insert_token(&t).await.unwrap(), "inserted twice");
        assert_eq!(db.tokens_generation().await.unwrap(), g1);
        db.delete_token("id-1").await.unwrap();
        let g2 = db.tokens_generation().await.unwrap();
        assert!(g2 > g1);
        db.delete_token("id-1").await.unwrap();
        assert_eq!(db.tokens_generation().await.unwrap(), g2);
        assert!(db.tokens().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_job_runs_on_one_replica_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(None, dir.path()).await.unwrap();
        let hour = Duration::from_secs(3600);
        assert!(db.take_job("retention", hour).await.unwrap());
        assert!(
            !db.take_job("retention", hour).await.unwrap(),
            "taken twice"
        );
        db.release_job("retention").await.unwrap();
        assert!(db.take_job("retention", hour).await.unwrap(), "free again");
        assert!(!db.take_job("no-such-job", hour).await.unwrap());
    }

    #[tokio::test]
    async fn a_schema_newer_than_this_server_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(None, dir.path()).await.unwrap();
        // What a newer server would have left behind.
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'from the future', TRUE, X'00', 0)",
        )
        .execute(&db.pool)
        .await
        .unwrap();
        drop(db);
        let e = Db::open(None, dir.path()).await.err().unwrap();
        let ours = MIGRATIONS.iter().map(|m| m.0).max().unwrap();
        assert!(
            matches!(e, DbError::TooNew { db: 99, ours: o } if o == ours),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("version 99") && msg.contains(&format!("version {ours}")),
            "{msg}"
        );
    }
}
