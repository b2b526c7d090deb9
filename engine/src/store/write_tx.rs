//! Write transactions. On a SQLite file every write runs on one rusqlite connection whose mutex
//! is the writer lock (SQLite takes one writer at a time anyway; queueing here is fairer than
//! its busy-wait). Otherwise a sqlx transaction: PostgreSQL's row lock on the counter orders
//! writers, and an in-memory SQLite database is serialized by a mutex of its own.

use super::db::{Db, DbRow, Query};
use crate::error::{ApiError, ApiResult};
use futures::future::Either;
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};

pub enum Writer {
    Sqlite(Mutex<rusqlite::Connection>),
    Pool { serial: Option<Mutex<()>> },
}

impl Writer {
    /// The one writer connection of the SQLite file at `path`.
    pub fn sqlite(path: &Path) -> ApiResult<Writer> {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
                | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )?;
        // Never wait for the lock inside SQLite: that would block an async worker thread, and the
        // other writer (a sqlx connection: bridge records, tokens) may need that very thread to
        // reach its COMMIT. `begin` waits for the lock asynchronously instead.
        conn.busy_timeout(Duration::ZERO)?;
        // The same settings sqlx's connections get (journal_mode is the file's, set at open).
        conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
        Ok(Writer::Sqlite(Mutex::new(conn)))
    }

    pub async fn begin<'s>(&'s self, pool: &sqlx::AnyPool, immediate: bool) -> ApiResult<WriteTx<'s>> {
        match self {
            Writer::Sqlite(conn) => {
                let mut conn = conn.lock().await;
                begin_immediate(&mut conn).await?;
                Ok(WriteTx::Sqlite { conn, open: true })
            }
            Writer::Pool { serial } => {
                let serial = match serial {
                    Some(m) => Some(m.lock().await),
                    None => None,
                };
                let tx = if immediate { pool.begin_with("BEGIN IMMEDIATE").await? } else { pool.begin().await? };
                Ok(WriteTx::Pool { tx: Some(tx), _serial: serial })
            }
        }
    }
}

/// How long a write waits for another connection's write to finish.
const LOCK_WAIT: Duration = Duration::from_secs(10);

async fn begin_immediate(conn: &mut rusqlite::Connection) -> ApiResult<()> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(16));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One write transaction; dropped without `commit`, it rolls back.
pub enum WriteTx<'s> {
    Sqlite { conn: MutexGuard<'s, rusqlite::Connection>, open: bool },
    Pool { tx: Option<sqlx::Transaction<'static, sqlx::Any>>, _serial: Option<MutexGuard<'s, ()>> },
}

impl WriteTx<'_> {
    pub async fn commit(mut self) -> ApiResult<()> {
        self.end("COMMIT").await
    }

    pub async fn rollback(mut self) -> ApiResult<()> {
        self.end("ROLLBACK").await
    }

    async fn end(&mut self, how: &str) -> ApiResult<()> {
        match self {
            WriteTx::Sqlite { conn, open } => {
                let result = conn.execute_batch(how);
                if result.is_ok() {
                    *open = false;
                }
                Ok(result?)
            }
            WriteTx::Pool { tx, .. } => {
                let tx = tx.take().ok_or_else(|| ApiError::internal("storage: the transaction already ended"))?;
                if how == "COMMIT" {
                    tx.commit().await?
                } else {
                    tx.rollback().await?
                }
                Ok(())
            }
        }
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if let WriteTx::Sqlite { conn, open: true } = self {
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "rolling back an abandoned write failed");
            }
        }
    }
}

impl Db for WriteTx<'_> {
    fn execute(&mut self, query: Query<'_>) -> impl Future<Output = ApiResult<u64>> + Send {
        match self {
            WriteTx::Sqlite { conn, .. } => Either::Left(Db::execute(&mut **conn, query)),
            WriteTx::Pool { tx, .. } => Either::Right(async move {
                let tx = tx.as_mut().ok_or_else(|| ApiError::internal("storage: the transaction already ended"))?;
                Db::execute(tx, query).await
            }),
        }
    }

    fn fetch_all(&mut self, query: Query<'_>) -> impl Future<Output = ApiResult<Vec<DbRow>>> + Send {
        match self {
            WriteTx::Sqlite { conn, .. } => Either::Left(Db::fetch_all(&mut **conn, query)),
            WriteTx::Pool { tx, .. } => Either::Right(async move {
                let tx = tx.as_mut().ok_or_else(|| ApiError::internal("storage: the transaction already ended"))?;
                Db::fetch_all(tx, query).await
            }),
        }
    }
}
