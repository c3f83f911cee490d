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

    /// `sql` on `KEY`, then the lock of `tag` if given, in one transaction.
    async fn take(&self, sql: &'static str, tag: Option<String>) -> std::io::Result<LockGuard> {
        let mut tx = self.pool.begin().await.map_err(std::io::Error::other)?;
        sqlx::query(sql)
            .bind(KEY)
            .execute(&mut *tx)
            .await
            .map_err(std::io::Error::other)?;
        if let Some(tag) = tag {
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1, hashtext($2))) AS l")
                .bind(TAG_CLASS)
                .bind(tag)
                .execute(&mut *tx)
                .await
                .map_err(std::io::Error::other)?;
        }
        Ok(LockGuard::new(Held(Some(tx))))
    }
}

const SHARED: &str = "SELECT 1 FROM (SELECT pg_advisory_xact_lock_shared($1)) AS l";

impl SharedLock for PgGcLock {
    fn shared(&self) -> BoxFuture<'_, std::io::Result<LockGuard>> {
        Box::pin(self.take(SHARED, None))
    }

    fn exclusive(&self) -> BoxFuture<'_, std::io::Result<LockGuard>> {
        Box::pin(self.take(
            "SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS l",
            None,
        ))
    }

    fn shared_and_tag(&self, key: &str) -> BoxFuture<'_, std::io::Result<LockGuard>> {
        Box::pin(self.take(SHARED, Some(key.to_owned())))
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
