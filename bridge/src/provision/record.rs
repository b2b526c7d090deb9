//! Provisioning records in SQL (`bridge_hosts`, `bridge_host_steps`): one per host request,
//! written before anything is made, so a crash leaves a record the next server finishes.
//! Every state change is a conditional update from the state it leaves, so two actors never
//! both move a record.

use super::error::BridgeError;
use super::request::{HostRequest, PlannedStep};
use super::state::{HostState, StepState};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    pub seq: i64,
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub state: HostState,
    pub idempotency_key: String,
    pub request_hash: String,
    pub request: HostRequest,
    /// The answer given, replayed for the same key: (HTTP code, body); `None` until there is one.
    pub response: Option<(u16, String)>,
    pub error: Option<BridgeError>,
    pub created_by: String,
    pub owner: String,
    /// Milliseconds since the epoch; `updated_at` is the last change of `state` (steps keep
    /// their own times).
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: i64,
    pub steps: Vec<StepRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub position: i64,
    pub name: String,
    pub kind: String,
    pub object_name: String,
    pub state: StepState,
    pub started_at: i64,
    pub finished_at: i64,
    pub error: String,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const HOST_COLUMNS: &str = "seq, id, namespace, name, state, idempotency_key, request_hash, request, response_code, \
    response, error, created_by, owner, created_at, updated_at, deleted_at";

fn corrupt(what: &str) -> BridgeError {
    BridgeError::internal(format!("a provisioning record is unreadable: {what}"))
}

fn host_from_row(row: &AnyRow) -> Result<HostRecord, BridgeError> {
    let state: String = row.try_get(4)?;
    let request: String = row.try_get(7)?;
    let code: i64 = row.try_get(8)?;
    let response: String = row.try_get(9)?;
    let error: String = row.try_get(10)?;
    Ok(HostRecord {
        seq: row.try_get(0)?,
        id: row.try_get(1)?,
        namespace: row.try_get(2)?,
        name: row.try_get(3)?,
        state: HostState::parse(&state).ok_or_else(|| corrupt(&format!("state {state:?}")))?,
        idempotency_key: row.try_get(5)?,
        request_hash: row.try_get(6)?,
        request: serde_json::from_str(&request).map_err(|e| corrupt(&format!("request: {e}")))?,
        response: (code != 0).then(|| (u16::try_from(code).unwrap_or(500), response)),
        error: if error.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&error).map_err(|e| corrupt(&format!("error: {e}")))?)
        },
        created_by: row.try_get(11)?,
        owner: row.try_get(12)?,
        created_at: row.try_get(13)?,
        updated_at: row.try_get(14)?,
        deleted_at: row.try_get(15)?,
        steps: vec![],
    })
}

fn step_from_row(row: &AnyRow) -> Result<(String, StepRecord), BridgeError> {
    let state: String = row.try_get(5)?;
    Ok((
        row.try_get(0)?,
        StepRecord {
            position: row.try_get(1)?,
            name: row.try_get(2)?,
            kind: row.try_get(3)?,
            object_name: row.try_get(4)?,
            state: StepState::parse(&state).ok_or_else(|| corrupt(&format!("step state {state:?}")))?,
            started_at: row.try_get(6)?,
            finished_at: row.try_get(7)?,
            error: row.try_get(8)?,
        },
    ))
}

/// What a new record starts as.
pub struct NewHost<'a> {
    pub id: &'a str,
    pub request: &'a HostRequest,
    pub idempotency_key: &'a str,
    pub request_hash: &'a str,
    pub created_by: &'a str,
    pub owner: &'a str,
    pub steps: &'a [PlannedStep],
}

/// Why a record could not be written.
pub enum InsertConflict {
    /// A record with this idempotency key exists.
    SameKey(Box<HostRecord>),
    /// A live host of this name exists.
    HostExists,
}

/// Writes the record and its Pending steps in one transaction.
pub async fn insert(pool: &AnyPool, new: &NewHost<'_>) -> Result<Result<(), InsertConflict>, BridgeError> {
    let now = now_ms();
    let request = serde_json::to_string(new.request).map_err(|e| BridgeError::internal(e.to_string()))?;
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO bridge_hosts (id, namespace, name, state, idempotency_key, request_hash, request, created_by, owner, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
    )
    .bind(new.id)
    .bind(&new.request.namespace)
    .bind(&new.request.name)
    .bind(HostState::Creating.as_str())
    .bind(new.idempotency_key)
    .bind(new.request_hash)
    .bind(&request)
    .bind(new.created_by)
    .bind(new.owner)
    .bind(now)
    .execute(&mut *tx)
    .await;
    if let Err(e) = inserted {
        let unique = e.as_database_error().is_some_and(|d| d.is_unique_violation());
        drop(tx);
        if !unique {
            return Err(e.into());
        }
        if !new.idempotency_key.is_empty() {
            if let Some(existing) = by_key(pool, new.idempotency_key).await? {
                return Ok(Err(InsertConflict::SameKey(Box::new(existing))));
            }
        }
        return Ok(Err(InsertConflict::HostExists));
    }
    for (i, step) in new.steps.iter().enumerate() {
        sqlx::query(
            "INSERT INTO bridge_host_steps (host_id, position, name, kind, object_name, state) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(new.id)
        .bind(i as i64)
        .bind(&step.name)
        .bind(step.kind)
        .bind(step.object_name())
        .bind(StepState::Pending.as_str())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Ok(()))
}

async fn with_steps(pool: &AnyPool, mut hosts: Vec<HostRecord>) -> Result<Vec<HostRecord>, BridgeError> {
    if hosts.is_empty() {
        return Ok(hosts);
    }
    let placeholders: Vec<String> = (1..=hosts.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT host_id, position, name, kind, object_name, state, started_at, finished_at, error \
         FROM bridge_host_steps WHERE host_id IN ({}) ORDER BY host_id, position",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for h in &hosts {
        query = query.bind(h.id.clone());
    }
    for row in query.fetch_all(pool).await? {
        let (host_id, step) = step_from_row(&row)?;
        if let Some(h) = hosts.iter_mut().find(|h| h.id == host_id) {
            h.steps.push(step);
        }
    }
    Ok(hosts)
}

async fn one(pool: &AnyPool, condition: &str, binds: &[&str]) -> Result<Option<HostRecord>, BridgeError> {
    let sql = format!("SELECT {HOST_COLUMNS} FROM bridge_hosts WHERE {condition} ORDER BY seq DESC LIMIT 1");
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = query.bind(b.to_string());
    }
    let Some(row) = query.fetch_optional(pool).await? else { return Ok(None) };
    Ok(with_steps(pool, vec![host_from_row(&row)?]).await?.pop())
}

pub async fn by_key(pool: &AnyPool, key: &str) -> Result<Option<HostRecord>, BridgeError> {
    one(pool, "idempotency_key = $1", &[key]).await
}

pub async fn by_id(pool: &AnyPool, id: &str) -> Result<Option<HostRecord>, BridgeError> {
    one(pool, "id = $1", &[id]).await
}

/// The live host of this name, else the newest record of it (failed or deleted).
pub async fn by_name(pool: &AnyPool, namespace: &str, name: &str) -> Result<Option<HostRecord>, BridgeError> {
    if let Some(live) =
        one(pool, "namespace = $1 AND name = $2 AND state NOT IN ('Failed', 'Deleted')", &[namespace, name]).await?
    {
        return Ok(Some(live));
    }
    one(pool, "namespace = $1 AND name = $2", &[namespace, name]).await
}

/// Moves a record from `from` to `to` if it is still in `from`; false when it was not.
pub async fn transition(pool: &AnyPool, id: &str, from: HostState, to: HostState) -> Result<bool, BridgeError> {
    if !from.may_become(to) {
        return Err(BridgeError::internal(format!("a host may not go from {from:?} to {to:?}")));
    }
    let now = now_ms();
    let deleted_at = if to == HostState::Deleted { now } else { 0 };
    let done = sqlx::query(
        "UPDATE bridge_hosts SET state = $1, updated_at = $2, deleted_at = $3 WHERE id = $4 AND state = $5",
    )
    .bind(to.as_str())
    .bind(now)
    .bind(deleted_at)
    .bind(id)
    .bind(from.as_str())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves a record to its settled state and stores the answer its request gets, in one
/// statement: a retry with the same key never sees the state without the answer.
pub async fn settle(
    pool: &AnyPool,
    id: &str,
    from: HostState,
    to: HostState,
    updated_at: i64,
    code: u16,
    body: &str,
) -> Result<bool, BridgeError> {
    if !from.may_become(to) {
        return Err(BridgeError::internal(format!("a host may not go from {from:?} to {to:?}")));
    }
    let done = sqlx::query(
        "UPDATE bridge_hosts SET state = $1, updated_at = $2, response_code = $3, response = $4 \
         WHERE id = $5 AND state = $6 AND response_code = 0",
    )
    .bind(to.as_str())
    .bind(updated_at)
    .bind(i64::from(code))
    .bind(body)
    .bind(id)
    .bind(from.as_str())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves a step; timestamps follow (started when it runs, finished when it settles).
pub async fn step(
    pool: &AnyPool,
    id: &str,
    position: usize,
    from: StepState,
    to: StepState,
    error: &str,
) -> Result<(), BridgeError> {
    if !from.may_become(to) {
        return Err(BridgeError::internal(format!("a step may not go from {from:?} to {to:?}")));
    }
    let now = now_ms();
    let sql = if to == StepState::Running {
        "UPDATE bridge_host_steps SET state = $1, started_at = $2, error = $3 WHERE host_id = $4 AND position = $5 AND state = $6"
    } else {
        "UPDATE bridge_host_steps SET state = $1, finished_at = $2, error = $3 WHERE host_id = $4 AND position = $5 AND state = $6"
    };
    sqlx::query(sql)
        .bind(to.as_str())
        .bind(now)
        .bind(error)
        .bind(id)
        .bind(position as i64)
        .bind(from.as_str())
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn set_error(pool: &AnyPool, id: &str, error: &BridgeError) -> Result<(), BridgeError> {
    let text = serde_json::to_string(error).map_err(|e| BridgeError::internal(e.to_string()))?;
    sqlx::query("UPDATE bridge_hosts SET error = $1 WHERE id = $2").bind(text).bind(id).execute(pool).await?;
    Ok(())
}

/// Takes an unfinished record over from a server that is gone; false when another took it.
pub async fn claim(pool: &AnyPool, id: &str, from_owner: &str, to_owner: &str) -> Result<bool, BridgeError> {
    let done = sqlx::query("UPDATE bridge_hosts SET owner = $1 WHERE id = $2 AND owner = $3")
        .bind(to_owner)
        .bind(id)
        .bind(from_owner)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// This server is alive now.
pub async fn heartbeat(pool: &AnyPool, owner: &str) -> Result<(), BridgeError> {
    sqlx::query(
        "INSERT INTO bridge_servers (owner, heartbeat_at) VALUES ($1, $2) \
         ON CONFLICT (owner) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
    )
    .bind(owner)
    .bind(now_ms())
    .execute(pool)
    .await?;
    Ok(())
}

/// When `owner` last said it was alive; `None` if it never did (or was forgotten).
pub async fn last_heartbeat(pool: &AnyPool, owner: &str) -> Result<Option<i64>, BridgeError> {
    let row = sqlx::query("SELECT heartbeat_at FROM bridge_servers WHERE owner = $1")
        .bind(owner)
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get(0)?),
        None => None,
    })
}

/// Forgets servers silent since before `before` (ms).
pub async fn forget_servers(pool: &AnyPool, before: i64) -> Result<(), BridgeError> {
    sqlx::query("DELETE FROM bridge_servers WHERE heartbeat_at < $1").bind(before).execute(pool).await?;
    Ok(())
}

/// Records someone has to act on (creating, rolling back, deleting), oldest first.
pub async fn unfinished(pool: &AnyPool) -> Result<Vec<HostRecord>, BridgeError> {
    let sql = format!(
        "SELECT {HOST_COLUMNS} FROM bridge_hosts WHERE state IN ('Creating', 'RollingBack', 'Deleting') ORDER BY seq"
    );
    let rows = sqlx::query(&sql).fetch_all(pool).await?;
    let hosts = rows.iter().map(host_from_row).collect::<Result<Vec<_>, _>>()?;
    with_steps(pool, hosts).await
}

/// How a list is narrowed and paged.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only these namespaces (a namespace-scoped token's); `None`: all.
    pub allowed_namespaces: Option<Vec<String>>,
    pub namespace: Option<String>,
    pub states: Vec<HostState>,
    pub name_prefix: Option<String>,
    pub limit: usize,
    /// Records after this `seq` (the continue token).
    pub after: i64,
}

/// One page, oldest first, and whether more follow.
pub async fn list(pool: &AnyPool, f: &ListFilter) -> Result<(Vec<HostRecord>, bool), BridgeError> {
    let mut conditions = vec!["seq > $1".to_string()];
    let mut binds: Vec<String> = vec![];
    let mut next = 2;
    let mut placeholder = |binds: &mut Vec<String>, v: String| {
        binds.push(v);
        let p = format!("${next}");
        next += 1;
        p
    };
    if let Some(allowed) = &f.allowed_namespaces {
        if allowed.is_empty() {
            return Ok((vec![], false));
        }
        let ps: Vec<String> = allowed.iter().map(|ns| placeholder(&mut binds, ns.clone())).collect();
        conditions.push(format!("namespace IN ({})", ps.join(", ")));
    }
    if let Some(ns) = &f.namespace {
        conditions.push(format!("namespace = {}", placeholder(&mut binds, ns.clone())));
    }
    if !f.states.is_empty() {
        let ps: Vec<String> = f.states.iter().map(|s| placeholder(&mut binds, s.as_str().to_string())).collect();
        conditions.push(format!("state IN ({})", ps.join(", ")));
    }
    if let Some(prefix) = &f.name_prefix {
        // substr, not LIKE: no wildcard to escape, and no collation in the way on PostgreSQL.
        let p = placeholder(&mut binds, prefix.clone());
        conditions.push(format!("substr(name, 1, {}) = {p}", prefix.chars().count()));
    }
    let sql = format!(
        "SELECT {HOST_COLUMNS} FROM bridge_hosts WHERE {} ORDER BY seq LIMIT {}",
        conditions.join(" AND "),
        f.limit + 1
    );
    let mut query = sqlx::query(&sql).bind(f.after);
    for b in binds {
        query = query.bind(b);
    }
    let rows = query.fetch_all(pool).await?;
    let mut hosts = rows.iter().map(host_from_row).collect::<Result<Vec<_>, _>>()?;
    let more = hosts.len() > f.limit;
    hosts.truncate(f.limit);
    Ok((with_steps(pool, hosts).await?, more))
}

/// The request's fingerprint, to tell a replay from a different request under the same key.
pub fn request_hash(request: &HostRequest) -> String {
    use sha2::Digest;
    let text = serde_json::to_string(request).unwrap_or_default();
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
