//! The registry's gc lock for replicas on PostgreSQL: a transaction-level
//! advisory lock, shared by manifest pushes and exclusive for a
//! collection, so a push through one replica never links a blob that a
//! collection on another is sweeping. (A file lock reaches one machine.)
//! Conditional tag writes take one keyed by the tag.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use registry::lock::{LockGuard, SharedLock};
use sqlx::{Any, AnyPool, Transaction};

/// The advisory lock's key: "slipway-gc" folded into 64 bits, fixed so
/// every replica and every version agrees.
const KEY: i64 = 0x736c_6970_7761_7967;
/// The class of the tag locks: PostgreSQL's two-key advisory locks (this
/// class and the tag's `hashtext`) never meet the one-key gc lock.
const TAG_CLASS: i32 = 0x736c_7467;

pub(crate) struct PgGcLock {
    pool: AnyPool,
}

impl PgGcLock {
    pub(crate) fn new(pool: AnyPool) -> Arc<PgGcLock> {
        Arc::new(PgGcLock { pool })
    }

    async fn take(&self, sql: &'static str) -> std::io::Result<LockGuard> {
        self.hold(sqlx::query(sql).bind(KEY)).await
    }

    async fn hold(
        &self,
        query: sqlx::query::Query<'static, Any, sqlx::any::AnyArguments<'static>>,
    ) -> std::io::Result<LockGuard> {
        let mut tx = self.pool.begin().await.map_err(std::io::Error::other)?;
        query
            .execute(&mut *tx)
            .await
            .map_err(std::io::Error::other)?;
        Ok(LockGuard::new(Held(Some(tx))))
    }
}

impl SharedLock for PgGcLock {
    fn shared(&self) -> BoxFuture<'_, std::io::Result<LockGuard>> {
        Box::pin(self.take("SELECT 1 FROM (SELECT pg_advisory_xact_lock_shared($1)) AS l"))
    }

    fn exclusive(&self) -> BoxFuture<'_, std::io::Result<LockGuard>> {
        Box::pin(self.take("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS l"))
    }

    fn tag(&self, key: &str) -> BoxFuture<'_, std::io::Result<LockGuard>> {
        let query =
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1, hashtext($2))) AS l")
                .bind(TAG_CLASS)
                .bind(key.to_owned());
        Box::pin(self.hold(query))
    }
}

/// The transaction holding the lock; ending it releases the lock.
struct Held(Option<Transaction<'static, Any>>);

impl Drop for Held {
    fn drop(&mut self) {
        // A rollback needs the runtime; without one the connection closes
        // with the process, which releases the lock as well.
        if let (Some(tx), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                if let Err(e) = tx.rollback().await {
                    tracing::warn!("releasing the gc lock: {e}");
                }
            });
        }
    }
}
