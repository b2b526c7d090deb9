//! The store's SQL runs through one small interface with two connections behind it: sqlx's
//! (`AnyConnection`: PostgreSQL, and SQLite where no file is open) and a rusqlite connection
//! (SQLite on a file). sqlx works each SQLite connection on a thread of its own and hands every
//! statement and every row across a channel; a create is ten statements under the writer lock,
//! so twenty thread wake-ups bounded how many creates a second the store could take. On
//! rusqlite the statements run on the caller's thread, microseconds each (WAL, no fsync at
//! commit with `synchronous=NORMAL`).
//!
//! SQL is written once, with `$n` placeholders (PostgreSQL's); for SQLite they become `?n`,
//! which bind by number whatever order they appear in.

use crate::error::{ApiError, ApiResult};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use std::borrow::Cow;
use std::future::Future;

#[derive(Debug, Clone)]
pub enum Arg<'q> {
    Null,
    Int(i64),
    Text(Cow<'q, str>),
}

pub trait IntoArg<'q> {
    fn into_arg(self) -> Arg<'q>;
}

impl<'q> IntoArg<'q> for i64 {
    fn into_arg(self) -> Arg<'q> {
        Arg::Int(self)
    }
}

impl<'q> IntoArg<'q> for &'q str {
    fn into_arg(self) -> Arg<'q> {
        Arg::Text(Cow::Borrowed(self))
    }
}

impl<'q> IntoArg<'q> for &'q String {
    fn into_arg(self) -> Arg<'q> {
        Arg::Text(Cow::Borrowed(self.as_str()))
    }
}

impl<'q> IntoArg<'q> for String {
    fn into_arg(self) -> Arg<'q> {
        Arg::Text(Cow::Owned(self))
    }
}

impl<'q, T: IntoArg<'q>> IntoArg<'q> for Option<T> {
    fn into_arg(self) -> Arg<'q> {
        self.map_or(Arg::Null, IntoArg::into_arg)
    }
}

/// One statement and its arguments, run with `execute`/`fetch_*` on any `Db`.
#[derive(Debug, Clone)]
pub struct Query<'q> {
    sql: Cow<'q, str>,
    args: Vec<Arg<'q>>,
}

pub fn query<'q>(sql: impl Into<Cow<'q, str>>) -> Query<'q> {
    Query { sql: sql.into(), args: Vec::new() }
}

impl<'q> Query<'q> {
    pub fn bind(mut self, arg: impl IntoArg<'q>) -> Self {
        self.args.push(arg.into_arg());
        self
    }

    /// Rows changed.
    pub async fn execute(self, db: &mut impl Db) -> ApiResult<u64> {
        db.execute(self).await
    }

    pub async fn fetch_all(self, db: &mut impl Db) -> ApiResult<Vec<DbRow>> {
        db.fetch_all(self).await
    }

    pub async fn fetch_optional(self, db: &mut impl Db) -> ApiResult<Option<DbRow>> {
        Ok(db.fetch_all(self).await?.into_iter().next())
    }

    pub async fn fetch_one(self, db: &mut impl Db) -> ApiResult<DbRow> {
        self.fetch_optional(db).await?.ok_or_else(|| ApiError::internal("storage: the query returned no row"))
    }
}

/// A connection the store's SQL runs on.
pub trait Db: Send {
    fn execute(&mut self, query: Query<'_>) -> impl Future<Output = ApiResult<u64>> + Send;
    fn fetch_all(&mut self, query: Query<'_>) -> impl Future<Output = ApiResult<Vec<DbRow>>> + Send;
}

/// A result row from either connection; columns are read by index.
pub enum DbRow {
    Any(AnyRow),
    Sqlite(Vec<rusqlite::types::Value>),
}

impl DbRow {
    pub fn try_get<T: FromDb>(&self, index: usize) -> ApiResult<T> {
        match self {
            DbRow::Any(row) => T::from_any(row, index),
            DbRow::Sqlite(values) => match values.get(index) {
                Some(value) => T::from_sqlite(value),
                None => Err(ApiError::internal(format!("storage: no column {index}"))),
            },
        }
    }
}

pub trait FromDb: Sized {
    fn from_any(row: &AnyRow, index: usize) -> ApiResult<Self>;
    fn from_sqlite(value: &rusqlite::types::Value) -> ApiResult<Self>;
}

fn mismatched(want: &str, got: &rusqlite::types::Value) -> ApiError {
    ApiError::internal(format!("storage: expected {want}, the column holds {:?}", got.data_type()))
}

impl FromDb for i64 {
    fn from_any(row: &AnyRow, index: usize) -> ApiResult<Self> {
        Ok(sqlx::Row::try_get(row, index)?)
    }
    fn from_sqlite(value: &rusqlite::types::Value) -> ApiResult<Self> {
        match value {
            rusqlite::types::Value::Integer(i) => Ok(*i),
            other => Err(mismatched("an integer", other)),
        }
    }
}

impl FromDb for String {
    fn from_any(row: &AnyRow, index: usize) -> ApiResult<Self> {
        Ok(sqlx::Row::try_get(row, index)?)
    }
    fn from_sqlite(value: &rusqlite::types::Value) -> ApiResult<Self> {
        match value {
            rusqlite::types::Value::Text(s) => Ok(s.clone()),
            other => Err(mismatched("text", other)),
        }
    }
}

impl FromDb for Option<String> {
    fn from_any(row: &AnyRow, index: usize) -> ApiResult<Self> {
        Ok(sqlx::Row::try_get(row, index)?)
    }
    fn from_sqlite(value: &rusqlite::types::Value) -> ApiResult<Self> {
        match value {
            rusqlite::types::Value::Null => Ok(None),
            other => String::from_sqlite(other).map(Some),
        }
    }
}

impl Db for AnyConnection {
    async fn execute(&mut self, query: Query<'_>) -> ApiResult<u64> {
        let done = sqlx::Executor::execute(&mut *self, to_sqlx(&query)).await?;
        Ok(done.rows_affected())
    }

    async fn fetch_all(&mut self, query: Query<'_>) -> ApiResult<Vec<DbRow>> {
        let rows = sqlx::Executor::fetch_all(&mut *self, to_sqlx(&query)).await?;
        Ok(rows.into_iter().map(DbRow::Any).collect())
    }
}

impl Db for sqlx::pool::PoolConnection<sqlx::Any> {
    fn execute(&mut self, query: Query<'_>) -> impl Future<Output = ApiResult<u64>> + Send {
        Db::execute(&mut **self, query)
    }

    fn fetch_all(&mut self, query: Query<'_>) -> impl Future<Output = ApiResult<Vec<DbRow>>> + Send {
        Db::fetch_all(&mut **self, query)
    }
}

impl Db for sqlx::Transaction<'_, sqlx::Any> {
    fn execute(&mut self, query: Query<'_>) -> impl Future<Output = ApiResult<u64>> + Send {
        Db::execute(&mut **self, query)
    }

    fn fetch_all(&mut self, query: Query<'_>) -> impl Future<Output = ApiResult<Vec<DbRow>>> + Send {
        Db::fetch_all(&mut **self, query)
    }
}

fn to_sqlx<'a>(query: &'a Query<'_>) -> sqlx::query::Query<'a, sqlx::Any, sqlx::any::AnyArguments<'a>> {
    let mut q = sqlx::query(&query.sql);
    for arg in &query.args {
        q = match arg {
            Arg::Null => q.bind(None::<String>),
            Arg::Int(i) => q.bind(*i),
            Arg::Text(s) => q.bind(s.as_ref()),
        };
    }
    q
}

impl Db for rusqlite::Connection {
    fn execute(&mut self, query: Query<'_>) -> impl Future<Output = ApiResult<u64>> + Send {
        std::future::ready(sqlite_execute(self, &query))
    }

    fn fetch_all(&mut self, query: Query<'_>) -> impl Future<Output = ApiResult<Vec<DbRow>>> + Send {
        std::future::ready(sqlite_fetch_all(self, &query))
    }
}

fn sqlite_statement<'c>(conn: &'c rusqlite::Connection, query: &Query<'_>) -> ApiResult<rusqlite::CachedStatement<'c>> {
    let mut stmt = conn.prepare_cached(&sqlite_placeholders(&query.sql))?;
    for (i, arg) in query.args.iter().enumerate() {
        match arg {
            Arg::Null => stmt.raw_bind_parameter(i + 1, rusqlite::types::Null)?,
            Arg::Int(v) => stmt.raw_bind_parameter(i + 1, v)?,
            Arg::Text(s) => stmt.raw_bind_parameter(i + 1, s.as_ref())?,
        }
    }
    Ok(stmt)
}

fn sqlite_execute(conn: &rusqlite::Connection, query: &Query<'_>) -> ApiResult<u64> {
    let mut stmt = sqlite_statement(conn, query)?;
    Ok(stmt.raw_execute()? as u64)
}

fn sqlite_fetch_all(conn: &rusqlite::Connection, query: &Query<'_>) -> ApiResult<Vec<DbRow>> {
    let mut stmt = sqlite_statement(conn, query)?;
    let columns = stmt.column_count();
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let values = (0..columns).map(|i| row.get::<_, rusqlite::types::Value>(i)).collect::<Result<Vec<_>, _>>()?;
        out.push(DbRow::Sqlite(values));
    }
    Ok(out)
}

/// `$n` → `?n`: the same numbered parameter in SQLite's spelling (its `$name` would number
/// parameters by first appearance, not by the digits).
pub fn sqlite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_keep_their_numbers() {
        assert_eq!(
            sqlite_placeholders("UPDATE t SET a = $4 WHERE k = $1 AND (n > $12 OR n = $12) AND s = '$x'"),
            "UPDATE t SET a = ?4 WHERE k = ?1 AND (n > ?12 OR n = ?12) AND s = '$x'"
        );
    }

    #[tokio::test]
    async fn a_statement_binds_by_number_on_sqlite() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        query("CREATE TABLE t (a INTEGER, b TEXT, c TEXT)").execute(&mut conn).await.unwrap();
        let n = query("INSERT INTO t (b, a, c) VALUES ($2, $1, $3)")
            .bind(7)
            .bind("seven")
            .bind(None::<String>)
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 1);
        let row = query("SELECT a, b, c FROM t WHERE a = $1").bind(7).fetch_one(&mut conn).await.unwrap();
        assert_eq!(row.try_get::<i64>(0).unwrap(), 7);
        assert_eq!(row.try_get::<String>(1).unwrap(), "seven");
        assert_eq!(row.try_get::<Option<String>>(2).unwrap(), None);
        assert!(row.try_get::<i64>(1).is_err());
        assert!(query("SELECT a FROM t WHERE a = $1").bind(8).fetch_optional(&mut conn).await.unwrap().is_none());
    }
}
