//! Online snapshots of the store and loading them into an empty one.
//!
//! A snapshot is always an SQLite file at the source's schema version, whatever the source:
//! - SQLite: `VACUUM INTO`, one read transaction, so it sees one commit and runs beside writers
//!   (WAL readers never wait for them);
//! - PostgreSQL: every table read in one `REPEATABLE READ READ ONLY` transaction (one MVCC
//!   snapshot) and written into a fresh SQLite file migrated to the same version.
//!
//! A restore loads a snapshot into an empty store of either kind: migrated to the snapshot's
//! version, the rows copied in one transaction; the next `Store::open` upgrades it as it would
//! the original. So a snapshot also moves a store between SQLite and PostgreSQL.

use super::versions;
use super::Backend;
use sqlx::{AnyConnection, Connection, Executor, Row};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Store(#[from] crate::error::ApiError),
    #[error("{0}")]
    Refused(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Int,
    Text,
    /// Text that may be NULL.
    MaybeText,
}

use Column::{Int, MaybeText, Text};

/// Every table a store has at the newest schema, with its columns; `_sqlx_migrations` is the
/// schema's record and is made by migrating. A test holds this list to the migrations.
const TABLES: &[(&str, &[(&str, Column)])] = &[
    ("meta", &[("key", Text), ("value", Int)]),
    (
        "objects",
        &[
            ("kind", Text),
            ("namespace", Text),
            ("name", Text),
            ("uid", Text),
            ("rv", Int),
            ("deleting", Int),
            ("labels", Text),
            ("body", Text),
        ],
    ),
    ("owner_refs", &[("owner_uid", Text), ("kind", Text), ("namespace", Text), ("name", Text)]),
    (
        "watch_events",
        &[
            ("rv", Int),
            ("kind", Text),
            ("namespace", Text),
            ("name", Text),
            ("event_type", Text),
            ("prev_labels", MaybeText),
            ("body", Text),
        ],
    ),
    ("mac_leases", &[("mac", Int), ("kind", Text), ("namespace", Text), ("name", Text)]),
    (
        "tokens",
        &[
            ("id", Text),
            ("subject", Text),
            ("role", Text),
            ("namespaces", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("revoked", Int),
        ],
    ),
    ("address_leases", &[("pool", Text), ("address", Text), ("kind", Text), ("namespace", Text), ("name", Text)]),
    (
        "bridge_hosts",
        &[
            ("seq", Int),
            ("id", Text),
            ("namespace", Text),
            ("name", Text),
            ("state", Text),
            ("idempotency_key", Text),
            ("request_hash", Text),
            ("request", Text),
            ("response_code", Int),
            ("response", Text),
            ("error", Text),
            ("created_by", Text),
            ("owner", Text),
            ("created_at", Int),
            ("updated_at", Int),
            ("deleted_at", Int),
        ],
    ),
    (
        "bridge_host_steps",
        &[
            ("host_id", Text),
            ("position", Int),
            ("name", Text),
            ("kind", Text),
            ("object_name", Text),
            ("state", Text),
            ("started_at", Int),
            ("finished_at", Int),
            ("error", Text),
        ],
    ),
    ("bridge_servers", &[("owner", Text), ("heartbeat_at", Int)]),
];

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The schema version (newest migration applied).
    pub schema: i64,
    /// The resourceVersion of its last change.
    pub resource_version: i64,
    pub objects: i64,
}

fn backend_of(url: &str) -> Backend {
    if url.starts_with("postgres") {
        Backend::Postgres
    } else {
        Backend::Sqlite
    }
}

async fn connect(url: &str) -> Result<AnyConnection, BackupError> {
    sqlx::any::install_default_drivers();
    Ok(AnyConnection::connect(url).await?)
}

fn sqlite_url(file: &Path, create: bool) -> String {
    format!("sqlite://{}?mode={}", file.display(), if create { "rwc" } else { "ro" })
}

/// Reads a store's summary through `conn`.
async fn summarize(conn: &mut AnyConnection) -> Result<Summary, BackupError> {
    let schema = versions::applied_versions(conn).await?.last().copied().unwrap_or(0);
    if schema == 0 {
        return Err(BackupError::Refused("not a Converge store: it has no schema record".into()));
    }
    let rv: i64 = sqlx::query("SELECT value FROM meta WHERE key = 'rv'").fetch_one(&mut *conn).await?.try_get(0)?;
    let objects: i64 = sqlx::query("SELECT COUNT(*) FROM objects").fetch_one(&mut *conn).await?.try_get(0)?;
    Ok(Summary { schema, resource_version: rv, objects })
}

/// The SQLite summary of a snapshot file.
pub async fn inspect(snapshot: &Path) -> Result<Summary, BackupError> {
    let mut conn = connect(&sqlite_url(snapshot, false)).await?;
    summarize(&mut conn).await
}

/// Writes a consistent snapshot of the store at `url` into `dest`, a new SQLite file.
#[tracing::instrument(skip(url))]
pub async fn snapshot(url: &str, dest: &Path) -> Result<Summary, BackupError> {
    if dest.exists() {
        return Err(BackupError::Refused(format!("{} exists", dest.display())));
    }
    let mut source = connect(url).await?;
    match backend_of(url) {
        Backend::Sqlite => {
            let target = dest.to_string_lossy().into_owned();
            sqlx::query("VACUUM INTO $1").bind(target).execute(&mut source).await?;
        }
        Backend::Postgres => {
            source.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
            let copied = copy_from_postgres(&mut source, dest).await;
            source.execute("COMMIT").await?;
            copied?;
        }
    }
    inspect(dest).await
}

async fn copy_from_postgres(source: &mut AnyConnection, dest: &Path) -> Result<(), BackupError> {
    let schema = versions::applied_versions(source).await?;
    let mut target = connect(&sqlite_url(dest, true)).await?;
    in_transaction(&mut target, Backend::Sqlite, &schema, source).await
}

/// Migrates an empty store exactly to the versions `schema` lists, which this binary must know,
/// inside the caller's transaction.
async fn migrate_to(conn: &mut AnyConnection, backend: Backend, schema: &[i64]) -> Result<(), BackupError> {
    let known = versions::known(backend);
    let wanted: Vec<_> = known.iter().filter(|m| schema.contains(&m.version)).cloned().collect();
    if wanted.len() != schema.len() {
        let newest = known.last().map(|m| m.version).unwrap_or(0);
        return Err(BackupError::Refused(format!(
            "the snapshot's schema ({:?}) is not one this converge knows (up to {newest}): restore it with the \
             converge that made it",
            schema
        )));
    }
    versions::migrate_in_transaction(conn, backend, &wanted).await?;
    Ok(())
}

async fn copy_table(
    source: &mut AnyConnection,
    target: &mut AnyConnection,
    table: &str,
    columns: &[(&str, Column)],
) -> Result<u64, BackupError> {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let select = format!("SELECT {} FROM {table}", names.join(", "));
    let places: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
    let insert = format!("INSERT INTO {table} ({}) VALUES ({})", names.join(", "), places.join(", "));
    let rows = sqlx::query(&select).fetch_all(&mut *source).await?;
    for row in &rows {
        let mut query = sqlx::query(&insert);
        for (i, (_, column)) in columns.iter().enumerate() {
            query = match column {
                Int => query.bind(row.try_get::<i64, _>(i)?),
                Text => query.bind(row.try_get::<String, _>(i)?),
                MaybeText => query.bind(row.try_get::<Option<String>, _>(i)?),
            };
        }
        query.execute(&mut *target).await?;
    }
    Ok(rows.len() as u64)
}

/// Loads the snapshot `snapshot` into the empty store at `url` (SQLite or PostgreSQL).
#[tracing::instrument(skip(url))]
pub async fn restore(snapshot: &Path, url: &str) -> Result<Summary, BackupError> {
    let mut source = connect(&sqlite_url(snapshot, false)).await?;
    let summary = summarize(&mut source).await?;
    let schema = versions::applied_versions(&mut source).await?;
    let backend = backend_of(url);
    let mut target = connect(url).await?;
    if !versions::applied_versions(&mut target).await?.is_empty() {
        return Err(BackupError::Refused(
            "the target already holds a store: restore into a fresh data dir or an empty database".into(),
        ));
    }
    in_transaction(&mut target, backend, &schema, &mut source).await?;
    Ok(summary)
}

/// Migrates the empty `target` to `schema` and loads `source`'s rows into it: one transaction,
/// so a restore that fails leaves the target as empty as it was.
async fn in_transaction(
    target: &mut AnyConnection,
    backend: Backend,
    schema: &[i64],
    source: &mut AnyConnection,
) -> Result<(), BackupError> {
    target.execute(if backend == Backend::Sqlite { "BEGIN IMMEDIATE" } else { "BEGIN" }).await?;
    let done = async {
        migrate_to(target, backend, schema).await?;
        load(source, target, backend).await
    }
    .await;
    target.execute(if done.is_ok() { "COMMIT" } else { "ROLLBACK" }).await?;
    done
}

async fn load(source: &mut AnyConnection, target: &mut AnyConnection, backend: Backend) -> Result<(), BackupError> {
    // The migrations seeded the counters: the snapshot's replace them.
    target.execute("DELETE FROM meta").await?;
    for (table, columns) in TABLES {
        copy_table(source, target, table, columns).await?;
    }
    if backend == Backend::Postgres {
        // Rows were written with their own `seq`: the sequence must continue after them.
        target
            .execute(
                "SELECT setval(pg_get_serial_sequence('bridge_hosts', 'seq'), \
                 (SELECT COALESCE(MAX(seq), 0) + 1 FROM bridge_hosts), false)",
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_table_list_is_every_table_and_column_of_the_newest_schema() {
        let mut conn = connect("sqlite::memory:").await.expect("sqlite");
        versions::migrate(&mut conn, Backend::Sqlite, &versions::known(Backend::Sqlite)).await.expect("migrate");
        let tables: Vec<String> = sqlx::query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN ('_sqlx_migrations', 'sqlite_sequence') \
             ORDER BY name",
        )
        .fetch_all(&mut conn)
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
        let mut listed: Vec<String> = TABLES.iter().map(|(t, _)| t.to_string()).collect();
        listed.sort();
        assert_eq!(tables, listed, "a migration added or dropped a table: update TABLES");
        for (table, columns) in TABLES {
            let found: Vec<(String, i64)> =
                sqlx::query(&format!("SELECT name, \"notnull\" + pk FROM pragma_table_info('{table}') ORDER BY cid"))
                    .fetch_all(&mut conn)
                    .await
                    .expect("columns")
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
            let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
            let listed: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, listed, "columns of {table}");
            for ((name, not_null), (_, column)) in found.iter().zip(columns.iter()) {
                assert_eq!(*not_null == 0, *column == MaybeText, "{table}.{name}: NULL allowed iff MaybeText");
            }
        }
    }
}
