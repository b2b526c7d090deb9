//! The store's SQL, written once for both dialects (`$n` placeholders, BIGINT everywhere).

use super::db::{self, Db, DbRow};
use super::watch::{WatchEvent, WatchEventType};
use super::ListOptions;
use crate::error::ApiResult;
use crate::kinds::ResourceKind;
use crate::meta;
use serde_json::{Map, Value};
use std::sync::Arc;

pub async fn meta_value(conn: &mut impl Db, key: &str) -> ApiResult<i64> {
    let row = db::query("SELECT value FROM meta WHERE key = $1").bind(key).fetch_one(&mut *conn).await?;
    row.try_get::<i64>(0)
}

/// The next resourceVersion. The row lock this takes is held to commit, which orders commits.
pub async fn next_rv(conn: &mut impl Db) -> ApiResult<i64> {
    let row =
        db::query("UPDATE meta SET value = value + 1 WHERE key = 'rv' RETURNING value").fetch_one(&mut *conn).await?;
    row.try_get::<i64>(0)
}

pub fn parse_body(body: &str) -> ApiResult<Value> {
    serde_json::from_str(body).map_err(|e| crate::error::ApiError::internal(format!("stored object is corrupt: {e}")))
}

pub async fn load(conn: &mut impl Db, key: &str, namespace: &str, name: &str) -> ApiResult<Option<Value>> {
    let row = db::query("SELECT body FROM objects WHERE kind = $1 AND namespace = $2 AND name = $3")
        .bind(key)
        .bind(namespace)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(r) => Ok(Some(parse_body(&r.try_get::<String>(0)?)?)),
        None => Ok(None),
    }
}

/// Two objects in one round trip: `(first, second)`.
pub async fn load_two(
    conn: &mut impl Db,
    first: (&str, &str, &str),
    second: (&str, &str, &str),
) -> ApiResult<(Option<Value>, Option<Value>)> {
    let rows = db::query(
        "SELECT kind, namespace, name, body FROM objects \
         WHERE (kind = $1 AND namespace = $2 AND name = $3) OR (kind = $4 AND namespace = $5 AND name = $6)",
    )
    .bind(first.0)
    .bind(first.1)
    .bind(first.2)
    .bind(second.0)
    .bind(second.1)
    .bind(second.2)
    .fetch_all(&mut *conn)
    .await?;
    let (mut a, mut b) = (None, None);
    for row in rows {
        let id: (String, String, String) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let body = parse_body(&row.try_get::<String>(3)?)?;
        if (id.0.as_str(), id.1.as_str(), id.2.as_str()) == first {
            a = Some(body);
        } else {
            b = Some(body);
        }
    }
    Ok((a, b))
}

pub async fn uid_exists(conn: &mut impl Db, uid: &str) -> ApiResult<bool> {
    let row = db::query("SELECT COUNT(*) FROM objects WHERE uid = $1").bind(uid).fetch_one(&mut *conn).await?;
    Ok(row.try_get::<i64>(0)? > 0)
}

pub struct ScanResult {
    pub items: Vec<String>,
    pub last_key: Option<(String, String)>,
    pub remaining: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowVerdict {
    Skipped,
    Taken,
    /// Taken, and the page is full: the caller counts what is left and calls `finish_full`.
    Full,
}

/// A list's selectors and limit over rows in key order; both the sqlx scan and the SQLite
/// reader feed it, so a page means the same on either path.
pub struct RowFilter<'a> {
    opts: &'a ListOptions,
    limit: Option<usize>,
    needs_body_filter: bool,
    items: Vec<String>,
}

impl<'a> RowFilter<'a> {
    pub fn new(opts: &'a ListOptions) -> Self {
        RowFilter {
            opts,
            limit: opts.limit.filter(|l| *l > 0),
            needs_body_filter: opts.fields.0.iter().any(|(f, _, _)| f != "metadata.name" && f != "metadata.namespace"),
            items: Vec::new(),
        }
    }

    /// One row; `labels` and `body` are read only when needed.
    pub fn offer(
        &mut self,
        namespace: &str,
        name: &str,
        labels: impl FnOnce() -> ApiResult<String>,
        body: impl FnOnce() -> ApiResult<String>,
    ) -> ApiResult<RowVerdict> {
        if !self.opts.labels.is_empty() {
            let labels: Map<String, Value> = serde_json::from_str(&labels()?).unwrap_or_default();
            if !self.opts.labels.matches(&labels) {
                return Ok(RowVerdict::Skipped);
            }
        }
        let body = body()?;
        if !self.opts.fields.is_empty() {
            let matches = if self.needs_body_filter {
                self.opts.fields.matches(&parse_body(&body)?)
            } else {
                let stub = serde_json::json!({"metadata": {"namespace": namespace, "name": name}});
                self.opts.fields.matches(&stub)
            };
            if !matches {
                return Ok(RowVerdict::Skipped);
            }
        }
        self.items.push(body);
        Ok(if self.limit.is_some_and(|l| self.items.len() >= l) { RowVerdict::Full } else { RowVerdict::Taken })
    }

    /// The page ended on a full limit at `cursor`, with `remaining` rows of the kind after it.
    pub fn finish_full(self, cursor: (String, String), remaining: i64) -> ScanResult {
        let more = remaining > 0;
        let unfiltered = self.opts.labels.is_empty() && self.opts.fields.is_empty();
        ScanResult {
            items: self.items,
            last_key: if more { Some(cursor) } else { None },
            remaining: if more && unfiltered { Some(remaining) } else { None },
        }
    }

    /// The rows ran out before the limit.
    pub fn finish(self) -> ScanResult {
        ScanResult { items: self.items, last_key: None, remaining: None }
    }
}

const SCAN_BATCH: i64 = 1000;

/// Objects in key order after `after`, filtered, up to `opts.limit`.
pub async fn scan(
    conn: &mut impl Db,
    key: &str,
    namespace: Option<&str>,
    after: Option<(String, String)>,
    opts: &ListOptions,
) -> ApiResult<ScanResult> {
    let mut cursor = after.unwrap_or_default();
    let mut started = cursor != (String::new(), String::new());
    let mut filter = RowFilter::new(opts);
    loop {
        let mut q = String::from("SELECT namespace, name, labels, body FROM objects WHERE kind = $1");
        let mut n = 1;
        if namespace.is_some() {
            n += 1;
            q.push_str(&format!(" AND namespace = ${n}"));
        }
        if opts.fields.pinned_name().is_some() {
            n += 1;
            q.push_str(&format!(" AND name = ${n}"));
        }
        if started {
            q.push_str(&format!(" AND (namespace > ${} OR (namespace = ${} AND name > ${}))", n + 1, n + 1, n + 2));
        }
        q.push_str(&format!(" ORDER BY namespace, name LIMIT {SCAN_BATCH}"));
        let mut query = db::query(&q).bind(key);
        if let Some(ns) = namespace {
            query = query.bind(ns);
        }
        if let Some(name) = opts.fields.pinned_name() {
            query = query.bind(name);
        }
        if started {
            query = query.bind(cursor.0.clone()).bind(cursor.1.clone());
        }
        let rows = query.fetch_all(&mut *conn).await?;
        let batch_len = rows.len() as i64;
        for row in rows {
            cursor = (row.try_get(0)?, row.try_get(1)?);
            started = true;
            let verdict =
                filter.offer(&cursor.0, &cursor.1, || row.try_get::<String>(2), || row.try_get::<String>(3))?;
            if verdict == RowVerdict::Full {
                let remaining = count_after(conn, key, namespace, &cursor).await?;
                return Ok(filter.finish_full(cursor, remaining));
            }
        }
        if batch_len < SCAN_BATCH {
            return Ok(filter.finish());
        }
    }
}

async fn count_after(
    conn: &mut impl Db,
    key: &str,
    namespace: Option<&str>,
    after: &(String, String),
) -> ApiResult<i64> {
    let (q, with_ns) = match namespace {
        Some(_) => ("SELECT COUNT(*) FROM objects WHERE kind = $1 AND namespace = $2 AND (namespace > $3 OR (namespace = $3 AND name > $4))", true),
        None => ("SELECT COUNT(*) FROM objects WHERE kind = $1 AND (namespace > $2 OR (namespace = $2 AND name > $3))", false),
    };
    let mut query = db::query(q).bind(key);
    if with_ns {
        query = query.bind(namespace.unwrap_or_default());
    }
    let row = query.bind(after.0.clone()).bind(after.1.clone()).fetch_one(&mut *conn).await?;
    row.try_get::<i64>(0)
}

fn labels_text(obj: &Value) -> String {
    Value::Object(meta::labels(obj)).to_string()
}

/// Write the object at `rv` and log the change; `previous` is the stored version read (None on
/// create), whose labels selector watches need and whose owners tell whether to re-index them.
/// False when another writer got there first (nothing written).
pub async fn put(
    conn: &mut impl Db,
    kind: &ResourceKind,
    obj: &mut Value,
    rv: i64,
    previous: Option<&Value>,
) -> ApiResult<bool> {
    meta::metadata_mut(obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
    let key = kind.store_key();
    let (namespace, name, uid) =
        (meta::namespace(obj).to_string(), meta::name(obj).to_string(), meta::uid(obj).to_string());
    let body = obj.to_string();
    // A create inserts only where nothing is; an update changes only the version it read. Either
    // losing a race to another writer (another process, on PostgreSQL) writes nothing.
    let sql = match previous {
        None => "INSERT INTO objects (kind, namespace, name, uid, rv, deleting, labels, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (kind, namespace, name) DO NOTHING",
        Some(_) => "UPDATE objects SET uid = $4, rv = $5, deleting = $6, labels = $7, body = $8 \
                    WHERE kind = $1 AND namespace = $2 AND name = $3 AND rv = $9",
    };
    let mut query = db::query(sql)
        .bind(&key)
        .bind(&namespace)
        .bind(&name)
        .bind(&uid)
        .bind(rv)
        .bind(i64::from(meta::is_deleting(obj)))
        .bind(labels_text(obj))
        .bind(&body);
    if let Some(p) = previous {
        query = query.bind(meta::resource_version(p).unwrap_or(-1));
    }
    let written = query.execute(&mut *conn).await?;
    if written != 1 {
        return Ok(false);
    }
    let owners = meta::owner_uids(obj);
    let previous_owners = previous.map(meta::owner_uids).unwrap_or_default();
    if owners != previous_owners {
        if previous.is_some() {
            unindex_owners(conn, &key, &namespace, &name).await?;
        }
        for owner in owners {
            db::query(
                "INSERT INTO owner_refs (owner_uid, kind, namespace, name) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(owner)
            .bind(&key)
            .bind(&namespace)
            .bind(&name)
            .execute(&mut *conn)
            .await?;
        }
    }
    let (event_type, prev_labels) = match previous {
        None => (WatchEventType::Added, None),
        Some(p) => (WatchEventType::Modified, Some(meta::labels(p))),
    };
    log_event(conn, &key, &namespace, &name, event_type, prev_labels, &body, rv).await?;
    Ok(true)
}

/// Remove the object for good at `rv`, if it is still at the version read (`expected_rv`), and
/// log a DELETED carrying it. False when another writer changed it first (nothing written).
pub async fn remove(
    conn: &mut impl Db,
    kind: &ResourceKind,
    obj: &mut Value,
    rv: i64,
    expected_rv: i64,
) -> ApiResult<bool> {
    let key = kind.store_key();
    let (namespace, name) = (meta::namespace(obj).to_string(), meta::name(obj).to_string());
    let gone = db::query("DELETE FROM objects WHERE kind = $1 AND namespace = $2 AND name = $3 AND rv = $4")
        .bind(&key)
        .bind(&namespace)
        .bind(&name)
        .bind(expected_rv)
        .execute(&mut *conn)
        .await?;
    if gone != 1 {
        return Ok(false);
    }
    unindex_owners(conn, &key, &namespace, &name).await?;
    crate::macpool::release(conn, kind, obj).await?;
    crate::network::ipam::release(conn, kind, obj).await?;
    meta::metadata_mut(obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
    let body = obj.to_string();
    log_event(conn, &key, &namespace, &name, WatchEventType::Deleted, None, &body, rv).await?;
    Ok(true)
}

async fn unindex_owners(conn: &mut impl Db, key: &str, namespace: &str, name: &str) -> ApiResult<()> {
    db::query("DELETE FROM owner_refs WHERE kind = $1 AND namespace = $2 AND name = $3")
        .bind(key)
        .bind(namespace)
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Append one change to the log, in the writer's transaction.
#[allow(clippy::too_many_arguments)]
async fn log_event(
    conn: &mut impl Db,
    key: &str,
    namespace: &str,
    name: &str,
    event_type: WatchEventType,
    prev_labels: Option<Map<String, Value>>,
    body: &str,
    rv: i64,
) -> ApiResult<()> {
    let prev_text = prev_labels.map(|l| Value::Object(l).to_string());
    db::query("INSERT INTO watch_events (rv, kind, namespace, name, event_type, prev_labels, body) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(rv)
        .bind(key)
        .bind(namespace)
        .bind(name)
        .bind(event_type.as_str())
        .bind(prev_text)
        .bind(body)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Drop watch-log entries at or below `upto`; older resume points then answer 410.
pub async fn compact(conn: &mut impl Db, upto: i64) -> ApiResult<()> {
    if upto <= 0 {
        return Ok(());
    }
    db::query("DELETE FROM watch_events WHERE rv <= $1").bind(upto).execute(&mut *conn).await?;
    db::query("UPDATE meta SET value = $1 WHERE key = 'compacted_rv' AND value < $1")
        .bind(upto)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Logged changes of `key` after `rv`, oldest first.
pub async fn events_since(conn: &mut impl Db, key: &str, rv: i64) -> ApiResult<Vec<WatchEvent>> {
    let rows = db::query(
        "SELECT rv, namespace, name, event_type, prev_labels, body, kind FROM watch_events WHERE kind = $1 AND rv > $2 ORDER BY rv",
    )
    .bind(key)
    .bind(rv)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(event_from_row).collect()
}

/// Logged changes of every kind after `rv`, oldest first, at most `limit`.
pub async fn events_after(conn: &mut impl Db, rv: i64, limit: i64) -> ApiResult<Vec<WatchEvent>> {
    let rows = db::query(format!(
        "SELECT rv, namespace, name, event_type, prev_labels, body, kind FROM watch_events WHERE rv > $1 ORDER BY rv LIMIT {limit}"
    ))
    .bind(rv)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(event_from_row).collect()
}

fn event_from_row(row: &DbRow) -> ApiResult<WatchEvent> {
    let body: String = row.try_get(5)?;
    let prev: Option<String> = row.try_get(4)?;
    Ok(WatchEvent {
        rv: row.try_get(0)?,
        kind_key: row.try_get(6)?,
        namespace: row.try_get(1)?,
        name: row.try_get(2)?,
        event_type: WatchEventType::parse(&row.try_get::<String>(3)?),
        object: Arc::new(parse_body(&body)?),
        raw: Arc::from(body),
        prev_labels: prev.and_then(|p| serde_json::from_str(&p).ok()),
    })
}

pub async fn has_dependents(conn: &mut impl Db, uid: &str) -> ApiResult<bool> {
    let row = db::query("SELECT COUNT(*) FROM owner_refs WHERE owner_uid = $1").bind(uid).fetch_one(&mut *conn).await?;
    Ok(row.try_get::<i64>(0)? > 0)
}

pub async fn dependents(conn: &mut impl Db, uid: &str) -> ApiResult<Vec<(String, String, String)>> {
    let rows =
        db::query("SELECT kind, namespace, name FROM owner_refs WHERE owner_uid = $1 ORDER BY kind, namespace, name")
            .bind(uid)
            .fetch_all(&mut *conn)
            .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
}

pub async fn dangling_owner_refs(conn: &mut impl Db) -> ApiResult<Vec<(String, String, String, String)>> {
    let rows = db::query(
        "SELECT r.kind, r.namespace, r.name, r.owner_uid FROM owner_refs r LEFT JOIN objects o ON o.uid = r.owner_uid WHERE o.uid IS NULL",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).collect()
}

pub async fn deleting(conn: &mut impl Db) -> ApiResult<Vec<(String, Value)>> {
    let rows = db::query("SELECT kind, body FROM objects WHERE deleting = 1").fetch_all(&mut *conn).await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, parse_body(&r.try_get::<String>(1)?)?))).collect()
}

pub async fn namespace_contents(conn: &mut impl Db, namespace: &str) -> ApiResult<Vec<(String, String)>> {
    let rows = db::query("SELECT kind, name FROM objects WHERE namespace = $1 ORDER BY kind, name")
        .bind(namespace)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}
