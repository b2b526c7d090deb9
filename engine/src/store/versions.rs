//! The store's schema version: which of `migrations/` a database has had, and bringing an older
//! database up to this binary's in one transaction.
//!
//! The record is sqlx's own `_sqlx_migrations` table (stores made before this runner were
//! migrated by sqlx and keep their rows), but the migrations are applied here: sqlx gives each
//! migration a transaction of its own, so an upgrade that failed halfway left a store at a
//! version no released binary had. Here every pending migration and its row commit together, or
//! nothing does; a database newer than this binary, or one whose applied migrations differ from
//! this binary's, is refused before anything is written.

use super::Backend;
use crate::error::{ApiError, ApiResult};
use sqlx::migrate::Migration;
use sqlx::{AnyConnection, Executor, Row};
use std::time::Instant;

/// The migrations this binary knows, in version order.
pub fn known(backend: Backend) -> Vec<Migration> {
    let migrator = match backend {
        Backend::Sqlite => sqlx::migrate!("../migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("../migrations/postgres"),
    };
    let mut all: Vec<Migration> = migrator.migrations.iter().cloned().collect();
    all.sort_by_key(|m| m.version);
    all
}

/// This binary's schema version: its newest migration.
pub fn current(backend: Backend) -> i64 {
    known(backend).last().map(|m| m.version).unwrap_or(0)
}

/// What opening a store did to its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The version the database had (0: empty).
    pub from: i64,
    pub to: i64,
}

/// One row of the record.
struct Applied {
    version: i64,
    checksum: Vec<u8>,
    success: bool,
}

/// Serializes servers opening one PostgreSQL database (`pg_advisory_xact_lock`'s key).
const PG_LOCK_KEY: i64 = 0x636f_6e76_6572_6765;

fn record_table(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "CREATE TABLE IF NOT EXISTS _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
             installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, \
             checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)"
        }
        Backend::Postgres => {
            "CREATE TABLE IF NOT EXISTS _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
             installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, \
             checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)"
        }
    }
}

async fn read_record(conn: &mut AnyConnection) -> ApiResult<Vec<Applied>> {
    // A BOOLEAN column is read as a number: sqlx's Any driver has no SQLite boolean.
    let rows = sqlx::query(
        "SELECT version, checksum, CAST(CASE WHEN success THEN 1 ELSE 0 END AS BIGINT) FROM _sqlx_migrations \
         ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Applied { version: row.try_get(0)?, checksum: row.try_get(1)?, success: row.try_get::<i64, _>(2)? != 0 })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(ApiError::from)
}

/// The versions the database has had; empty for a new database.
pub async fn applied_versions(conn: &mut AnyConnection) -> ApiResult<Vec<i64>> {
    if !record_exists(conn).await? {
        return Ok(Vec::new());
    }
    Ok(read_record(conn).await?.iter().map(|r| r.version).collect())
}

async fn record_exists(conn: &mut AnyConnection) -> ApiResult<bool> {
    // Both backends answer this one: SQLite's sqlite_master and PostgreSQL's catalog differ.
    let probe = sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations").fetch_optional(&mut *conn).await;
    Ok(probe.is_ok())
}

/// The migrations `applied` lacks, or why this binary must not open the database.
fn pending<'m>(known: &'m [Migration], applied: &[Applied]) -> Result<Vec<&'m Migration>, String> {
    let newest_known = known.last().map(|m| m.version).unwrap_or(0);
    for row in applied {
        if !row.success {
            return Err(format!(
                "migration {} failed part-way under an older converge; restore a backup made before it",
                row.version
            ));
        }
        match known.iter().find(|m| m.version == row.version) {
            None if row.version > newest_known => {
                return Err(format!(
                    "the store's schema is version {}, newer than this converge's ({newest_known}): it was \
                     written by a newer converge; run that one, or restore a backup made for this one",
                    applied.last().map(|r| r.version).unwrap_or(row.version)
                ))
            }
            None => return Err(format!("the store has migration {} that this converge does not know", row.version)),
            Some(m) if m.checksum.as_ref() != row.checksum.as_slice() => {
                return Err(format!(
                    "migration {} ({}) in the store differs from this converge's: the store was made by another build",
                    m.version, m.description
                ))
            }
            Some(_) => {}
        }
    }
    Ok(known.iter().filter(|m| !applied.iter().any(|r| r.version == m.version)).collect())
}

/// Brings the database up to `known`'s newest version in one transaction: all or nothing.
#[tracing::instrument(skip_all, fields(backend = ?backend))]
pub async fn migrate(conn: &mut AnyConnection, backend: Backend, known: &[Migration]) -> ApiResult<Upgrade> {
    let begin = match backend {
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => "BEGIN",
    };
    conn.execute(begin).await?;
    let result = migrate_in_transaction(conn, backend, known).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    match (result, conn.execute(end).await) {
        (Ok(upgrade), Ok(_)) => Ok(upgrade),
        (Ok(_), Err(e)) => Err(ApiError::unavailable(format!("database migration failed to commit: {e}"))),
        (Err(e), _) => Err(e),
    }
}

/// `migrate`'s work inside a transaction the caller opened (a restore loads rows in the same one).
pub(super) async fn migrate_in_transaction(
    conn: &mut AnyConnection,
    backend: Backend,
    known: &[Migration],
) -> ApiResult<Upgrade> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PG_LOCK_KEY).execute(&mut *conn).await?;
    }
    conn.execute(record_table(backend)).await?;
    let applied = read_record(conn).await?;
    let from = applied.last().map(|r| r.version).unwrap_or(0);
    let todo = pending(known, &applied).map_err(ApiError::unavailable)?;
    for migration in &todo {
        let started = Instant::now();
        conn.execute(&*migration.sql).await.map_err(|e| {
            ApiError::unavailable(format!(
                "database migration {} ({}) failed, nothing was changed: {e}",
                migration.version, migration.description
            ))
        })?;
        let nanos = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ($1, $2, TRUE, $3, $4)",
        )
        .bind(migration.version)
        .bind(migration.description.to_string())
        .bind(migration.checksum.to_vec())
        .bind(nanos)
        .execute(&mut *conn)
        .await?;
    }
    let to = todo.last().map(|m| m.version).unwrap_or(from);
    Ok(Upgrade { from, to })
}

/// Brings the store's schema up to this binary's. An SQLite store that had a schema is first
/// copied beside itself (`<file>.schema-<version>`), a way back that costs one file copy.
pub(super) async fn upgrade(
    pool: &sqlx::AnyPool,
    backend: Backend,
    file: Option<&std::path::Path>,
) -> ApiResult<Upgrade> {
    let known = known(backend);
    let mut conn = pool.acquire().await?;
    let had = applied_versions(&mut conn).await?;
    let newest = known.last().map(|m| m.version).unwrap_or(0);
    if let (Some(file), Some(&from)) = (file, had.last()) {
        if from < newest {
            let copy = format!("{}.schema-{from}", file.display());
            let _ = std::fs::remove_file(&copy);
            sqlx::query("VACUUM INTO $1")
                .bind(copy.clone())
                .execute(&mut *conn)
                .await
                .map_err(|e| ApiError::unavailable(format!("copying the store to {copy} before upgrading it: {e}")))?;
            tracing::info!(%copy, "the store before its upgrade");
        }
    }
    migrate(&mut conn, backend, &known).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::migrate::MigrationType;
    use sqlx::Connection;
    use std::borrow::Cow;

    fn migration(version: i64, sql: &'static str) -> Migration {
        Migration::new(version, Cow::Owned(format!("step {version}")), MigrationType::Simple, Cow::Borrowed(sql), false)
    }

    async fn memory() -> AnyConnection {
        sqlx::any::install_default_drivers();
        AnyConnection::connect("sqlite::memory:").await.expect("sqlite")
    }

    async fn tables(conn: &mut AnyConnection) -> Vec<String> {
        sqlx::query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY name",
        )
        .fetch_all(&mut *conn)
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect()
    }

    #[tokio::test]
    async fn an_older_store_is_brought_up_in_one_step_and_a_second_open_does_nothing() {
        let mut conn = memory().await;
        let old = [migration(1, "CREATE TABLE a (x BIGINT); INSERT INTO a VALUES (7);")];
        assert_eq!(migrate(&mut conn, Backend::Sqlite, &old).await.expect("v1"), Upgrade { from: 0, to: 1 });
        let new = [old[0].clone(), migration(2, "CREATE TABLE b (y TEXT);"), migration(3, "ALTER TABLE a ADD z TEXT;")];
        assert_eq!(migrate(&mut conn, Backend::Sqlite, &new).await.expect("v3"), Upgrade { from: 1, to: 3 });
        assert_eq!(migrate(&mut conn, Backend::Sqlite, &new).await.expect("again"), Upgrade { from: 3, to: 3 });
        assert_eq!(tables(&mut conn).await, ["a", "b"]);
        assert_eq!(applied_versions(&mut conn).await.expect("record"), [1, 2, 3]);
        let kept: i64 = sqlx::query("SELECT x FROM a").fetch_one(&mut conn).await.expect("row").get(0);
        assert_eq!(kept, 7);
    }

    #[tokio::test]
    async fn a_failing_migration_leaves_the_store_as_it_was() {
        let mut conn = memory().await;
        let old = [migration(1, "CREATE TABLE a (x BIGINT);")];
        migrate(&mut conn, Backend::Sqlite, &old).await.expect("v1");
        let broken =
            [old[0].clone(), migration(2, "CREATE TABLE b (y TEXT);"), migration(3, "ALTER TABLE nowhere ADD z;")];
        let err = migrate(&mut conn, Backend::Sqlite, &broken).await.expect_err("3 fails");
        assert!(err.message.contains("migration 3 (step 3) failed, nothing was changed"), "{}", err.message);
        assert_eq!(tables(&mut conn).await, ["a"], "migration 2 was rolled back with 3");
        assert_eq!(applied_versions(&mut conn).await.expect("record"), [1]);
    }

    #[tokio::test]
    async fn a_newer_or_different_store_is_refused_untouched() {
        let mut conn = memory().await;
        let newer = [migration(1, "CREATE TABLE a (x BIGINT);"), migration(2, "CREATE TABLE b (y TEXT);")];
        migrate(&mut conn, Backend::Sqlite, &newer).await.expect("v2");
        let err = migrate(&mut conn, Backend::Sqlite, &newer[..1]).await.expect_err("older binary");
        assert!(err.message.contains("schema is version 2, newer than this converge's (1)"), "{}", err.message);
        let other = [migration(1, "CREATE TABLE a (x BIGINT, w TEXT);"), newer[1].clone()];
        let err = migrate(&mut conn, Backend::Sqlite, &other).await.expect_err("other build");
        assert!(err.message.contains("migration 1 (step 1) in the store differs"), "{}", err.message);
        assert_eq!(tables(&mut conn).await, ["a", "b"]);
    }

    #[tokio::test]
    async fn a_new_database_has_no_version_and_the_shipped_migrations_apply() {
        let mut conn = memory().await;
        assert!(applied_versions(&mut conn).await.expect("empty").is_empty());
        let known = known(Backend::Sqlite);
        let upgrade = migrate(&mut conn, Backend::Sqlite, &known).await.expect("shipped");
        assert_eq!(upgrade, Upgrade { from: 0, to: current(Backend::Sqlite) });
        assert!(tables(&mut conn).await.contains(&"objects".to_string()));
    }
}
