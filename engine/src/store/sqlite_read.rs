//! Reads on SQLite without sqlx's connection thread.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands every statement and every
//! row across a channel, so a point read costs two thread wake-ups and a pool checkout: on two
//! cores that was most of a GET's time (perf: futex and flume signal wake-ups, not SQL). WAL lets
//! readers see the last commit without blocking the writer or each other, so reads here take a
//! connection of their own from a small idle list and run on the caller's thread. A point read
//! from the page cache is microseconds, short enough to run inline on an async worker; a scan is
//! not, so `Store::list` runs it on the blocking pool.

use super::sql::{RowFilter, RowVerdict, ScanResult};
use super::ListOptions;
use crate::error::{ApiError, ApiResult};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Connections kept idle; more are opened under load and closed when returned past this.
const IDLE_KEPT: usize = 8;

pub struct SqliteReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        tracing::error!(error = %e, "database error");
        ApiError::internal(format!("storage: {e}"))
    }
}

impl SqliteReader {
    /// A reader of the database file at `path` (already created and migrated by sqlx).
    pub fn open(path: &Path) -> ApiResult<SqliteReader> {
        let reader = SqliteReader { path: path.to_path_buf(), idle: Mutex::new(Vec::new()) };
        let first = reader.connect()?;
        reader.give_back(first);
        Ok(reader)
    }

    fn connect(&self) -> ApiResult<Connection> {
        // Read-write without CREATE: a WAL reader must be able to map the shared-memory index.
        // `query_only` keeps this connection from ever writing.
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch("PRAGMA query_only = 1;")?;
        Ok(conn)
    }

    pub fn take(&self) -> ApiResult<Connection> {
        let idle = self.idle.lock().map_err(|_| ApiError::internal("storage: reader pool poisoned"))?.pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
    }

    /// Return a connection from `take`; one left inside a transaction is closed instead.
    pub fn give_back(&self, conn: Connection) {
        if !conn.is_autocommit() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < IDLE_KEPT {
                idle.push(conn);
            }
        }
    }

    fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> ApiResult<T>) -> ApiResult<T> {
        let mut conn = self.take()?;
        let result = f(&mut conn);
        // A connection left inside a transaction (an error mid-scan) would pin an old snapshot.
        self.give_back(conn);
        result
    }

    /// The stored text of one object.
    pub fn get(&self, key: &str, namespace: &str, name: &str) -> ApiResult<Option<String>> {
        self.with_conn(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT body FROM objects WHERE kind = ?1 AND namespace = ?2 AND name = ?3")?;
            Ok(stmt.query_row((key, namespace, name), |row| row.get::<_, String>(0)).optional()?)
        })
    }

    /// `(current rv, compacted rv, page)` from one snapshot, as `Store::list` reads them.
    pub fn list(
        &self,
        key: &str,
        namespace: Option<&str>,
        after: Option<(String, String)>,
        opts: &ListOptions,
    ) -> ApiResult<(i64, i64, ScanResult)> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            let meta = |k: &str| -> ApiResult<i64> {
                let mut stmt = tx.prepare_cached("SELECT value FROM meta WHERE key = ?1")?;
                Ok(stmt.query_row([k], |row| row.get::<_, i64>(0))?)
            };
            let current = meta("rv")?;
            let compacted = meta("compacted_rv")?;
            let page = scan(&tx, key, namespace, after, opts)?;
            tx.commit()?;
            Ok((current, compacted, page))
        })
    }
}

/// `sql::scan` in one statement: rows stream from SQLite as the filter takes them.
fn scan(
    conn: &Connection,
    key: &str,
    namespace: Option<&str>,
    after: Option<(String, String)>,
    opts: &ListOptions,
) -> ApiResult<ScanResult> {
    let mut sql = String::from("SELECT namespace, name, labels, body FROM objects WHERE kind = ?1");
    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&key];
    let pinned = opts.fields.pinned_name();
    if let Some(ns) = &namespace {
        params.push(ns);
        sql.push_str(&format!(" AND namespace = ?{}", params.len()));
    }
    if let Some(name) = &pinned {
        params.push(name);
        sql.push_str(&format!(" AND name = ?{}", params.len()));
    }
    if let Some((ns, name)) = &after {
        params.push(ns);
        params.push(name);
        let (a, b) = (params.len() - 1, params.len());
        sql.push_str(&format!(" AND (namespace > ?{a} OR (namespace = ?{a} AND name > ?{b}))"));
    }
    sql.push_str(" ORDER BY namespace, name");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params.as_slice())?;
    let mut filter = RowFilter::new(opts);
    while let Some(row) = rows.next()? {
        let namespace_of_row = row.get_ref(0)?.as_str().map_err(bad_column)?;
        let name_of_row = row.get_ref(1)?.as_str().map_err(bad_column)?;
        let verdict = filter.offer(
            namespace_of_row,
            name_of_row,
            || Ok(row.get::<_, String>(2)?),
            || Ok(row.get::<_, String>(3)?),
        )?;
        if verdict == RowVerdict::Full {
            let cursor = (namespace_of_row.to_string(), name_of_row.to_string());
            drop(rows);
            let remaining = count_after(conn, key, namespace, &cursor)?;
            return Ok(filter.finish_full(cursor, remaining));
        }
    }
    Ok(filter.finish())
}

fn bad_column(e: rusqlite::types::FromSqlError) -> ApiError {
    ApiError::internal(format!("stored object is corrupt: {e}"))
}

fn count_after(conn: &Connection, key: &str, namespace: Option<&str>, after: &(String, String)) -> ApiResult<i64> {
    let count = match namespace {
        Some(ns) => conn
            .prepare_cached(
                "SELECT COUNT(*) FROM objects WHERE kind = ?1 AND namespace = ?2 AND (namespace > ?3 OR (namespace = ?3 AND name > ?4))",
            )?
            .query_row((key, ns, &after.0, &after.1), |row| row.get(0))?,
        None => conn
            .prepare_cached(
                "SELECT COUNT(*) FROM objects WHERE kind = ?1 AND (namespace > ?2 OR (namespace = ?2 AND name > ?3))",
            )?
            .query_row((key, &after.0, &after.1), |row| row.get(0))?,
    };
    Ok(count)
}
