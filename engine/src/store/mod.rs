//! The object store: every kind's objects with Kubernetes metadata semantics, on SQLite or
//! PostgreSQL through one code path (sqlx `Any`).
//!
//! Each write bumps a counter row inside its transaction; the row lock is held to commit, so
//! resourceVersions follow commit order on PostgreSQL too (a sequence would not). Writes are
//! conditional — a create inserts only where nothing is, an update or delete changes only the
//! version it read — so concurrent writers, in this process or another, lose nothing; a caller
//! that pinned no resourceVersion has a lost race retried. Each change is appended to
//! `watch_events` in the same transaction. One hub task per store tails that log in
//! resourceVersion order — woken at once by this process's commits, and by a timer for other
//! processes' — and fans each change out to watchers. So a watch resumed from any retained
//! resourceVersion, on any process, sees every change once.

pub mod backup;
mod continue_token;
pub(crate) mod db;
mod sql;
mod sqlite_read;
mod update_rules;
pub mod versions;
pub mod watch;
mod write_tx;

use crate::error::{ApiError, ApiResult};
use crate::kinds::{self, ResourceKind};
use crate::macpool::MacRange;
use crate::meta;
use crate::network::ipam::{self, ServiceNetwork};
use crate::selector::{FieldSelector, LabelSelector};
use serde_json::{json, Value};
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, Mutex, Notify};

use continue_token::ContinueToken;
use update_rules::{merge_for_update, spec_of};

pub use watch::{WatchEvent, WatchEventType, WatchFilter, WatchItem};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub url: String,
    /// Changes kept in the watch log; older resourceVersions answer 410 Expired.
    pub watch_log_retention: i64,
    pub mac_range: MacRange,
    /// Where Services get cluster IPs and node ports.
    pub service_network: ServiceNetwork,
    /// What of the host guests may reach; admission and the node read it from the store.
    pub host_access: crate::host_access::HostAccess,
}

impl StoreConfig {
    pub fn new(url: impl Into<String>) -> Self {
        StoreConfig {
            url: url.into(),
            watch_log_retention: 100_000,
            mac_range: MacRange::default(),
            service_network: ServiceNetwork::default(),
            host_access: Default::default(),
        }
    }
}

/// How a list is narrowed and paged.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

/// One page of a list: raw JSON bodies, so large lists are never re-parsed.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub items: Vec<String>,
    pub resource_version: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateMode {
    /// PUT/PATCH on the object: `.status` is kept as stored where the kind has a status subresource.
    Main,
    /// `/status`: only `.status` is taken.
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub propagation: Option<Propagation>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

#[derive(Debug, Clone)]
pub enum DeleteOutcome {
    /// Gone from the store; the object as it was, with the deletion's resourceVersion.
    Deleted(Value),
    /// Held by finalizers; the object with its deletionTimestamp.
    Pending(Value),
}

pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
pub const ORPHAN_FINALIZER: &str = "orphan";
pub const NAMESPACE_FINALIZER: &str = "kubernetes";

pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite point reads and scans off sqlx's connection threads (None on PostgreSQL and for an
    /// in-memory database, which a second connection cannot see).
    reader: Option<Arc<sqlite_read::SqliteReader>>,
    writer: write_tx::Writer,
    events: broadcast::Sender<Arc<WatchEvent>>,
    retention: i64,
    mac_range: MacRange,
    service_network: ServiceNetwork,
    host_access: crate::host_access::HostAccess,
    committed: Arc<Notify>,
    hub: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The file behind a SQLite pool; None for an in-memory database.
async fn sqlite_file(pool: &AnyPool) -> ApiResult<Option<std::path::PathBuf>> {
    use sqlx::Row;
    let rows = sqlx::query("SELECT file FROM pragma_database_list WHERE name = 'main'").fetch_all(pool).await?;
    let file = match rows.first() {
        Some(row) => row.try_get::<String, _>(0)?,
        None => String::new(),
    };
    Ok(if file.is_empty() { None } else { Some(file.into()) })
}

/// How often the hub looks for changes other processes committed.
const FOREIGN_POLL: Duration = Duration::from_millis(500);
const HUB_BATCH: i64 = 1000;

impl Store {
    #[tracing::instrument(skip_all, fields(backend))]
    pub async fn open(config: &StoreConfig) -> ApiResult<Arc<Store>> {
        sqlx::any::install_default_drivers();
        let backend = if config.url.starts_with("postgres") { Backend::Postgres } else { Backend::Sqlite };
        tracing::Span::current().record("backend", format!("{backend:?}"));
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        use sqlx::Executor;
                        conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&config.url)
            .await
            .map_err(|e| ApiError::unavailable(format!("cannot open database: {e}")))?;
        let file = match backend {
            Backend::Sqlite => sqlite_file(&pool).await?,
            Backend::Postgres => None,
        };
        let upgrade = versions::upgrade(&pool, backend, file.as_deref()).await?;
        if upgrade.from != upgrade.to {
            tracing::info!(from = upgrade.from, to = upgrade.to, "store schema upgraded");
        }
        let (reader, writer) = match (&file, backend) {
            (Some(file), _) => {
                (Some(Arc::new(sqlite_read::SqliteReader::open(file)?)), write_tx::Writer::sqlite(file)?)
            }
            (None, Backend::Sqlite) => (None, write_tx::Writer::Pool { serial: Some(Mutex::new(())) }),
            (None, Backend::Postgres) => (None, write_tx::Writer::Pool { serial: None }),
        };
        let (events, _) = broadcast::channel(8192);
        let start = {
            let mut conn = pool.acquire().await?;
            sql::meta_value(&mut conn, "rv").await?
        };
        let committed = Arc::new(Notify::new());
        let hub = tokio::spawn(run_hub(pool.clone(), reader.clone(), events.clone(), Arc::clone(&committed), start));
        let store = Arc::new(Store {
            pool,
            backend,
            reader,
            writer,
            events,
            retention: config.watch_log_retention,
            mac_range: config.mac_range,
            service_network: config.service_network,
            host_access: config.host_access.clone(),
            committed,
            hub: std::sync::Mutex::new(Some(hub)),
        });
        store.ensure_namespace("default").await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// What of the host the admin lets guests reach.
    pub fn host_access(&self) -> &crate::host_access::HostAccess {
        &self.host_access
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.events.subscribe()
    }

    pub async fn close(&self) {
        if let Some(hub) = self.hub.lock().ok().and_then(|mut h| h.take()) {
            hub.abort();
        }
        self.pool.close().await;
    }

    /// Create a namespace unless it exists (used at start for `default`).
    pub async fn ensure_namespace(&self, name: &str) -> ApiResult<()> {
        if self.get(&kinds::NAMESPACE, "", name).await?.is_some() {
            return Ok(());
        }
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        match self.create(&kinds::NAMESPACE, ns, false).await {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn get(&self, kind: &ResourceKind, namespace: &str, name: &str) -> ApiResult<Option<Value>> {
        if let Some(reader) = &self.reader {
            return reader.get(&kind.store_key(), namespace, name)?.map(|raw| sql::parse_body(&raw)).transpose();
        }
        let mut conn = self.pool.acquire().await?;
        sql::load(&mut conn, &kind.store_key(), namespace, name).await
    }

    /// One object as stored JSON text, for answers that need not parse it.
    pub async fn get_raw(&self, kind: &ResourceKind, namespace: &str, name: &str) -> ApiResult<Option<String>> {
        match &self.reader {
            Some(reader) => reader.get(&kind.store_key(), namespace, name),
            None => Ok(self.get(kind, namespace, name).await?.map(|obj| obj.to_string())),
        }
    }

    /// Every object of `kind` (in `namespace`, or everywhere), parsed.
    pub async fn list_values(&self, kind: &ResourceKind, namespace: Option<&str>) -> ApiResult<Vec<Value>> {
        let mut out = Vec::new();
        let mut opts = ListOptions { limit: Some(1000), ..ListOptions::default() };
        loop {
            let page = self.list(kind, namespace, &opts).await?;
            for raw in &page.items {
                out.push(serde_json::from_str(raw).map_err(|e| ApiError::internal(e.to_string()))?);
            }
            match page.continue_token {
                Some(token) => opts.continue_token = Some(token),
                None => return Ok(out),
            }
        }
    }

    pub async fn current_rv(&self) -> ApiResult<i64> {
        let mut conn = self.pool.acquire().await?;
        sql::meta_value(&mut conn, "rv").await
    }

    pub async fn exists_uid(&self, uid: &str) -> ApiResult<bool> {
        let mut conn = self.pool.acquire().await?;
        sql::uid_exists(&mut conn, uid).await
    }

    /// One page of objects of `kind`, in `namespace` or across all of them.
    pub async fn list(&self, kind: &ResourceKind, namespace: Option<&str>, opts: &ListOptions) -> ApiResult<ListPage> {
        let token = match &opts.continue_token {
            Some(t) if !t.is_empty() => Some(ContinueToken::decode(t)?),
            _ => None,
        };
        let token_rv = token.as_ref().map(|t| t.rv);
        let after = token.map(|t| (t.namespace, t.name));
        let (current, compacted, page) = match &self.reader {
            Some(reader) => {
                let (reader, key, namespace, opts) =
                    (Arc::clone(reader), kind.store_key(), namespace.map(str::to_string), opts.clone());
                tokio::task::spawn_blocking(move || reader.list(&key, namespace.as_deref(), after, &opts))
                    .await
                    .map_err(|e| ApiError::internal(format!("storage: list task failed: {e}")))??
            }
            None => self.list_through_pool(kind, namespace, after, opts).await?,
        };
        if token_rv.is_some_and(|rv| rv < compacted) {
            return Err(ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."));
        }
        let list_rv = token_rv.unwrap_or(current);
        let continue_token =
            page.last_key.map(|(ns, name)| ContinueToken { rv: list_rv, namespace: ns, name }.encode());
        Ok(ListPage { items: page.items, resource_version: list_rv, continue_token, remaining: page.remaining })
    }

    /// `(current rv, compacted rv, page)` from one snapshot through sqlx.
    async fn list_through_pool(
        &self,
        kind: &ResourceKind,
        namespace: Option<&str>,
        after: Option<(String, String)>,
        opts: &ListOptions,
    ) -> ApiResult<(i64, i64, sql::ScanResult)> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            // One snapshot for the items and the list's resourceVersion.
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
        }
        let current = sql::meta_value(&mut tx, "rv").await?;
        let compacted = sql::meta_value(&mut tx, "compacted_rv").await?;
        let page = sql::scan(&mut tx, &kind.store_key(), namespace, after, opts).await?;
        tx.commit().await?;
        Ok((current, compacted, page))
    }

    /// Store a new object, filling uid, creationTimestamp, generation and resourceVersion.
    #[tracing::instrument(skip(self, obj), fields(kind = kind.kind))]
    pub async fn create(&self, kind: &ResourceKind, mut obj: Value, dry_run: bool) -> ApiResult<Value> {
        let _timer = self.transaction_timer("create");
        let mut tx = self.begin_write().await?;
        let key = kind.store_key();
        let namespace = meta::namespace(&obj).to_string();
        let prefix = meta::meta_str(&obj, "generateName").unwrap_or("").to_string();
        let generate = meta::name(&obj).is_empty();
        if generate && prefix.is_empty() {
            let cause = crate::error::Cause::required("metadata.name", "name or generateName is required");
            return Err(ApiError::invalid(kind.group, kind.kind, "", vec![cause]));
        }
        let ns_key = kinds::NAMESPACE.store_key();
        let mut attempts = 0;
        loop {
            if generate {
                meta::metadata_mut(&mut obj)
                    .insert("name".into(), Value::String(format!("{prefix}{}", random_suffix())));
            }
            let name = meta::name(&obj).to_string();
            // The namespace and a same-named object, in one round trip.
            let (ns, existing) = sql::load_two(&mut tx, (&ns_key, "", &namespace), (&key, &namespace, &name)).await?;
            if kind.namespaced {
                match ns {
                    None => return Err(ApiError::not_found("", "namespaces", &namespace)),
                    Some(ns) if meta::is_deleting(&ns) => {
                        return Err(ApiError::forbidden(format!(
                            "{} \"{name}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                            qualified(kind),
                        )))
                    }
                    Some(_) => {}
                }
            }
            match existing {
                None => break,
                Some(_) if generate && attempts < 8 => attempts += 1,
                Some(_) => return Err(ApiError::already_exists(kind.group, kind.plural, &name)),
            }
        }
        {
            let m = meta::metadata_mut(&mut obj);
            m.insert("uid".into(), Value::String(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), Value::String(meta::now_rfc3339()));
            m.insert("generation".into(), json!(1));
            for system in ["deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
                m.remove(system);
            }
            if !kind.namespaced {
                m.remove("namespace");
            }
        }
        if std::ptr::eq(kind, &kinds::NAMESPACE) {
            *meta::at_mut(&mut obj, &["spec", "finalizers"]) = json!([NAMESPACE_FINALIZER]);
            *meta::at_mut(&mut obj, &["status"]) = json!({"phase": "Active"});
        }
        crate::macpool::sync(&mut crate::macpool::SqlLeases(&mut tx), kind, &mut obj, None, &self.mac_range).await?;
        ipam::sync_service(&mut tx, kind, &mut obj, None, &self.service_network).await?;
        let rv = sql::next_rv(&mut tx).await?;
        if !sql::put(&mut tx, kind, &mut obj, rv, None).await? {
            return Err(ApiError::already_exists(kind.group, kind.plural, meta::name(&obj)));
        }
        self.finish(tx, dry_run, rv).await?;
        Ok(obj)
    }

    /// Replace an object (or, in `Status` mode, its status). A stale resourceVersion is a 409; a
    /// change that changes nothing returns the stored object and writes nothing.
    #[tracing::instrument(skip(self, new), fields(kind = kind.kind))]
    pub async fn update(&self, kind: &ResourceKind, new: Value, mode: UpdateMode, dry_run: bool) -> ApiResult<Value> {
        // Without a resourceVersion the caller asked for whatever is stored: a lost race is
        // retried on the new version, as the apiserver's update loop does.
        let unconditional = meta::meta_str(&new, "resourceVersion").is_none_or(str::is_empty);
        retry_lost_races(unconditional, || self.update_once(kind, new.clone(), mode, dry_run)).await
    }

    async fn update_once(&self, kind: &ResourceKind, new: Value, mode: UpdateMode, dry_run: bool) -> ApiResult<Value> {
        let _timer = self.transaction_timer("update");
        let mut tx = self.begin_write().await?;
        let key = kind.store_key();
        let (namespace, name) = (meta::namespace(&new).to_string(), meta::name(&new).to_string());
        let current = sql::load(&mut tx, &key, &namespace, &name)
            .await?
            .ok_or_else(|| ApiError::not_found(kind.group, kind.plural, &name))?;
        if let Some(sent) = meta::meta_str(&new, "resourceVersion").filter(|s| !s.is_empty()) {
            if Some(sent) != meta::meta_str(&current, "resourceVersion") {
                return Err(ApiError::conflict(
                    kind.group,
                    kind.plural,
                    &name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
        }
        if let Some(sent_uid) = meta::meta_str(&new, "uid").filter(|s| !s.is_empty()) {
            if sent_uid != meta::uid(&current) {
                return Err(ApiError::conflict(
                    kind.group,
                    kind.plural,
                    &name,
                    format!(
                        "Precondition failed: UID in precondition: {sent_uid}, UID in object meta: {}",
                        meta::uid(&current)
                    ),
                ));
            }
        }
        let mut merged = merge_for_update(kind, &current, new, mode);
        if meta::is_deleting(&current) {
            let before = meta::finalizers(&current);
            if meta::finalizers(&merged).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    kind.group,
                    kind.kind,
                    &name,
                    vec![crate::error::Cause::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        if spec_of(&merged) != spec_of(&current) {
            let generation =
                meta::metadata(&current).and_then(|m| m.get("generation")).and_then(Value::as_i64).unwrap_or(0);
            meta::metadata_mut(&mut merged).insert("generation".into(), json!(generation + 1));
        }
        if merged == current {
            return Ok(current);
        }
        let rv = sql::next_rv(&mut tx).await?;
        if meta::is_deleting(&merged) && blocking_finalizers(kind, &merged).is_empty() {
            if !sql::remove(&mut tx, kind, &mut merged, rv, current_rv(&current)).await? {
                return Err(lost_race(kind, &name));
            }
        } else {
            crate::macpool::sync(
                &mut crate::macpool::SqlLeases(&mut tx),
                kind,
                &mut merged,
                Some(&current),
                &self.mac_range,
            )
            .await?;
            ipam::sync_service(&mut tx, kind, &mut merged, Some(&current), &self.service_network).await?;
            if !sql::put(&mut tx, kind, &mut merged, rv, Some(&current)).await? {
                return Err(lost_race(kind, &name));
            }
        }
        self.finish(tx, dry_run, rv).await?;
        Ok(merged)
    }

    /// Delete by the propagation policy: held by finalizers (including the collector's own) or
    /// removed now.
    #[tracing::instrument(skip(self, opts), fields(kind = kind.kind))]
    pub async fn delete(
        &self,
        kind: &ResourceKind,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<DeleteOutcome> {
        retry_lost_races(opts.precondition_rv.is_none(), || self.delete_once(kind, namespace, name, opts)).await
    }

    async fn delete_once(
        &self,
        kind: &ResourceKind,
        namespace: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<DeleteOutcome> {
        let _timer = self.transaction_timer("delete");
        let mut tx = self.begin_write().await?;
        let key = kind.store_key();
        let current = sql::load(&mut tx, &key, namespace, name)
            .await?
            .ok_or_else(|| ApiError::not_found(kind.group, kind.plural, name))?;
        if let Some(uid) = &opts.precondition_uid {
            if uid != meta::uid(&current) {
                return Err(ApiError::conflict(
                    kind.group,
                    kind.plural,
                    name,
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta::uid(&current)
                    ),
                ));
            }
        }
        if let Some(rv) = &opts.precondition_rv {
            if Some(rv.as_str()) != meta::meta_str(&current, "resourceVersion") {
                return Err(ApiError::conflict(kind.group, kind.plural, name, format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", meta::meta_str(&current, "resourceVersion").unwrap_or(""))));
            }
        }
        let mut obj = current.clone();
        let mut finalizers = meta::finalizers(&obj);
        if sql::has_dependents(&mut tx, meta::uid(&obj)).await? {
            let wanted = match opts.propagation.unwrap_or_default() {
                Propagation::Foreground => Some(FOREGROUND_FINALIZER),
                Propagation::Orphan => Some(ORPHAN_FINALIZER),
                Propagation::Background => None,
            };
            if let Some(f) = wanted {
                if !finalizers.iter().any(|x| x == f) {
                    finalizers.push(f.to_string());
                }
            }
        }
        meta::set_finalizers(&mut obj, &finalizers);
        if blocking_finalizers(kind, &obj).is_empty() {
            let rv = sql::next_rv(&mut tx).await?;
            if !sql::remove(&mut tx, kind, &mut obj, rv, current_rv(&current)).await? {
                return Err(lost_race(kind, name));
            }
            self.finish(tx, opts.dry_run, rv).await?;
            return Ok(DeleteOutcome::Deleted(obj));
        }
        if !meta::is_deleting(&obj) {
            let m = meta::metadata_mut(&mut obj);
            m.insert("deletionTimestamp".into(), Value::String(meta::now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            if std::ptr::eq(kind, &kinds::NAMESPACE) {
                *meta::at_mut(&mut obj, &["status", "phase"]) = json!("Terminating");
            }
        }
        if obj == current {
            return Ok(DeleteOutcome::Pending(current));
        }
        let rv = sql::next_rv(&mut tx).await?;
        if !sql::put(&mut tx, kind, &mut obj, rv, Some(&current)).await? {
            return Err(lost_race(kind, name));
        }
        self.finish(tx, opts.dry_run, rv).await?;
        Ok(DeleteOutcome::Pending(obj))
    }

    /// SQLite has one writer at a time anyway: taking turns here saves its busy-waiting. On
    /// PostgreSQL, writers run concurrently; the counter row orders their commits and
    /// conditional writes (`sql::put`, `sql::remove`) catch lost races.
    /// Observes a write's duration (waiting for the writer included) when dropped.
    fn transaction_timer(&self, operation: &str) -> prometheus::HistogramTimer {
        let backend = match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        crate::metrics::STORE_TRANSACTION_DURATION.with_label_values(&[operation, backend]).start_timer()
    }

    /// Watches following this store's changes.
    pub fn watchers(&self) -> usize {
        self.events.receiver_count()
    }

    async fn begin_write(&self) -> ApiResult<write_tx::WriteTx<'_>> {
        self.writer.begin(&self.pool, self.backend == Backend::Sqlite).await
    }

    async fn finish(&self, mut tx: write_tx::WriteTx<'_>, dry_run: bool, rv: i64) -> ApiResult<()> {
        if dry_run {
            tx.rollback().await?;
            return Ok(());
        }
        if rv % 1000 == 0 {
            sql::compact(&mut tx, rv - self.retention).await?;
        }
        tx.commit().await?;
        self.committed.notify_one();
        Ok(())
    }

    /// Objects whose ownerReferences name `owner_uid`: (kind key, namespace, name).
    pub async fn dependents(&self, owner_uid: &str) -> ApiResult<Vec<(String, String, String)>> {
        let mut conn = self.pool.acquire().await?;
        sql::dependents(&mut conn, owner_uid).await
    }

    /// Dependents whose owner no longer exists: (kind key, namespace, name, owner uid).
    pub async fn dangling_owner_refs(&self) -> ApiResult<Vec<(String, String, String, String)>> {
        let mut conn = self.pool.acquire().await?;
        sql::dangling_owner_refs(&mut conn).await
    }

    /// Objects with a deletionTimestamp: (kind key, body).
    pub async fn deleting(&self) -> ApiResult<Vec<(String, Value)>> {
        let mut conn = self.pool.acquire().await?;
        sql::deleting(&mut conn).await
    }

    /// Every object in `namespace`: (kind key, name).
    pub async fn namespace_contents(&self, namespace: &str) -> ApiResult<Vec<(String, String)>> {
        let mut conn = self.pool.acquire().await?;
        sql::namespace_contents(&mut conn, namespace).await
    }

    /// The pod address of a VMI (kept while the VMI exists): see [`ipam::lease_pod_address`].
    pub async fn lease_pod_address(
        &self,
        cidr: &crate::network::Cidr,
        reserved: &[std::net::Ipv4Addr],
        vmi: &Value,
    ) -> ApiResult<std::net::Ipv4Addr> {
        let _timer = self.transaction_timer("lease");
        let mut tx = self.begin_write().await?;
        let key = kinds::VIRTUAL_MACHINE_INSTANCE.store_key();
        let address =
            ipam::lease_pod_address(&mut tx, cidr, reserved, (&key, meta::namespace(vmi), meta::name(vmi))).await?;
        tx.commit().await?;
        Ok(address)
    }

    /// Gives back a VMI's pod address (its domain is gone).
    pub async fn release_pod_address(&self, namespace: &str, name: &str) -> ApiResult<()> {
        let _timer = self.transaction_timer("release");
        let mut tx = self.begin_write().await?;
        let key = kinds::VIRTUAL_MACHINE_INSTANCE.store_key();
        ipam::release_owner(&mut tx, Some(ipam::POD_POOL), (&key, namespace, name)).await?;
        tx.commit().await
    }

    /// Every lease of an address pool: (address, kind key, namespace, name).
    pub async fn address_leases(&self, pool: &str) -> ApiResult<Vec<(String, String, String, String)>> {
        let mut conn = self.pool.acquire().await?;
        ipam::all(&mut conn, pool).await
    }

    /// Every MAC lease: (mac, owner kind key, namespace, name).
    pub async fn mac_leases(&self) -> ApiResult<Vec<(u64, String, String, String)>> {
        let mut conn = self.pool.acquire().await?;
        crate::macpool::all_leases(&mut conn).await
    }
}

/// Tail the change log in resourceVersion order and broadcast each change once.
async fn run_hub(
    pool: AnyPool,
    reader: Option<Arc<sqlite_read::SqliteReader>>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    committed: Arc<Notify>,
    mut last: i64,
) {
    loop {
        tokio::select! {
            _ = committed.notified() => {}
            _ = tokio::time::sleep(FOREIGN_POLL) => {}
        }
        loop {
            let batch = match &reader {
                Some(reader) => {
                    async {
                        let mut conn = reader.take()?;
                        let batch = sql::events_after(&mut conn, last, HUB_BATCH).await;
                        reader.give_back(conn);
                        batch
                    }
                    .await
                }
                None => {
                    async {
                        let mut conn = pool.acquire().await?;
                        sql::events_after(&mut conn, last, HUB_BATCH).await
                    }
                    .await
                }
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    if pool.is_closed() {
                        return;
                    }
                    tracing::warn!(error = %e, "reading the change log failed; retrying");
                    break;
                }
            };
            let full = batch.len() as i64 == HUB_BATCH;
            for ev in batch {
                last = ev.rv;
                let _ = events.send(Arc::new(ev));
            }
            if !full {
                break;
            }
        }
    }
}

const WRITE_RETRIES: usize = 5;

/// Run a write again when it lost a race, if the caller did not pin a resourceVersion.
async fn retry_lost_races<T, F, Fut>(unconditional: bool, mut write: F) -> ApiResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ApiResult<T>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match write().await {
            Err(e) if unconditional && e.reason == "Conflict" && attempt < WRITE_RETRIES => continue,
            other => return other,
        }
    }
}

fn current_rv(obj: &Value) -> i64 {
    meta::resource_version(obj).unwrap_or(-1)
}

fn lost_race(kind: &ResourceKind, name: &str) -> ApiError {
    ApiError::conflict(
        kind.group,
        kind.plural,
        name,
        "the object has been modified; please apply your changes to the latest version and try again",
    )
}

/// Finalizers that hold an object: its own, plus a namespace's `spec.finalizers`.
pub fn blocking_finalizers(kind: &ResourceKind, obj: &Value) -> Vec<String> {
    let mut all = meta::finalizers(obj);
    if std::ptr::eq(kind, &kinds::NAMESPACE) {
        if let Some(spec) = meta::at(obj, &["spec", "finalizers"]).and_then(Value::as_array) {
            all.extend(spec.iter().filter_map(Value::as_str).map(str::to_string));
        }
    }
    all
}

fn qualified(kind: &ResourceKind) -> String {
    if kind.group.is_empty() {
        kind.plural.to_string()
    } else {
        format!("{}.{}", kind.plural, kind.group)
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}
