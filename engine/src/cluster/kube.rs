//! [`Cluster`] over the Kubernetes API with kube-rs: what `converge node` and `converge
//! controllers` run on when the API is another process — Converge's own `serve` or a
//! kube-apiserver. Objects travel as `DynamicObject`s and are handed on as JSON, as the store
//! keeps them.
//!
//! Watching a kind starts one kube-rs `watcher` for it (list, then watch from the list's
//! resourceVersion, relisting with backoff when the watch ends or expires) feeding an informer
//! cache of that kind; `list` of a watched kind is answered from the cache once the first list
//! has arrived. A relist is diffed against the cache, so subscribers see what changed while the
//! watch was down — deletions included — and nothing for objects that did not change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams, Preconditions, PropagationPolicy};
use kube::core::ApiResource;
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::{Cluster, ClusterFuture};
use crate::error::{ApiError, ApiResult};
use crate::kinds::ResourceKind;
use crate::meta;
use crate::store::{DeleteOptions, Propagation, UpdateMode, WatchEvent, WatchEventType};

/// Events buffered per subscriber before it lags (and lists again).
const EVENT_BUFFER: usize = 8192;
/// How long a list waits for its kind's first watch list before asking the server itself.
const CACHE_SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

type ObjectKey = (String, String);

/// One watched kind: its objects as last seen, and whether the first list has arrived.
struct KindCache {
    objects: RwLock<HashMap<ObjectKey, Arc<Value>>>,
    /// The resourceVersion each object was deleted at, since the last list: a write's answer
    /// that arrives after its object's DELETED event must not bring it back.
    deleted: std::sync::Mutex<HashMap<ObjectKey, i64>>,
    synced: watch::Sender<bool>,
}

/// Tombstones kept at most (then forgotten all at once: a phantom is then possible again until
/// the next relist, as it was without them).
const TOMBSTONES: usize = 10_000;

impl KindCache {
    /// Keeps `obj` unless the cache holds a newer version of it; answers the version replaced
    /// (or `None` when it was new, or when `obj` was older and dropped: then `Err`).
    fn apply(&self, obj: Value) -> Result<Option<Arc<Value>>, ()> {
        let mut objects = self.objects.write().map_err(|_| ())?;
        let key = key_of(&obj);
        if let Some(held) = objects.get(&key) {
            if older(&obj, held) {
                return Err(());
            }
        }
        if let Ok(mut deleted) = self.deleted.lock() {
            match (deleted.get(&key), meta::resource_version(&obj)) {
                (Some(gone_at), Some(rv)) if rv <= *gone_at => return Err(()),
                (Some(_), _) => {
                    deleted.remove(&key); // made again since
                }
                (None, _) => {}
            }
        }
        Ok(objects.insert(key, Arc::new(obj)))
    }

    /// Drops `obj` (deleted at its resourceVersion) and remembers when.
    fn remove(&self, obj: &Value) {
        let key = key_of(obj);
        if let Ok(mut objects) = self.objects.write() {
            objects.remove(&key);
        }
        if let (Ok(mut deleted), Some(rv)) = (self.deleted.lock(), meta::resource_version(obj)) {
            if deleted.len() >= TOMBSTONES {
                deleted.clear();
            }
            deleted.insert(key, rv);
        }
    }

    fn new() -> KindCache {
        KindCache { objects: RwLock::default(), deleted: Default::default(), synced: watch::Sender::new(false) }
    }
}

/// Whether `a` is an older version of the object than `b`. resourceVersions are opaque to
/// clients, but both Converge's and etcd's are increasing integers; anything else counts as new.
fn older(a: &Value, b: &Value) -> bool {
    match (meta::resource_version(a), meta::resource_version(b)) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    }
}

pub struct KubeCluster {
    client: kube::Client,
    events: broadcast::Sender<Arc<WatchEvent>>,
    caches: Mutex<HashMap<String, Arc<KindCache>>>,
    watchers: Mutex<Vec<JoinHandle<()>>>,
    /// The API is a kube-apiserver serving Converge's kinds as CRDs (`converge manifests`).
    crds: std::sync::atomic::AtomicBool,
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        if let Ok(tasks) = self.watchers.lock() {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading kubeconfig {0}: {1}")]
    Kubeconfig(String, String),
    #[error("the kubeconfig does not make a client: {0}")]
    Client(String),
}

impl KubeCluster {
    pub fn new(client: kube::Client) -> Arc<KubeCluster> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Arc::new(KubeCluster {
            client,
            events,
            caches: Mutex::default(),
            watchers: Mutex::default(),
            crds: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A client from a kubeconfig file (its current context).
    pub async fn from_kubeconfig(path: &std::path::Path) -> Result<Arc<KubeCluster>, ConnectError> {
        let shown = path.display().to_string();
        let kubeconfig = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| ConnectError::Kubeconfig(shown.clone(), e.to_string()))?;
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| ConnectError::Kubeconfig(shown, e.to_string()))?;
        let client = kube::Client::try_from(config).map_err(|e| ConnectError::Client(e.to_string()))?;
        Ok(KubeCluster::new(client))
    }

    /// The API serves Converge's kinds as `converge manifests`' CRDs: a VMI's status is written
    /// in the object itself.
    pub fn kinds_are_crds(&self) {
        self.crds.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn has_status_subresource(&self, kind: &ResourceKind) -> bool {
        match self.crds.load(std::sync::atomic::Ordering::Relaxed) {
            true => crate::kinds::crd_status_subresource(kind),
            false => kind.status_subresource,
        }
    }

    /// GET of an object outside the kind table (a webhook configuration), as JSON.
    pub async fn raw_get(&self, path: &str) -> ApiResult<Value> {
        let request = http::Request::get(path).body(vec![]).map_err(|e| ApiError::internal(e.to_string()))?;
        self.client.request::<Value>(request).await.map_err(api_error)
    }

    /// PUT of an object outside the kind table.
    pub async fn raw_put(&self, path: &str, body: &Value) -> ApiResult<Value> {
        self.raw_send(http::Method::PUT, path, body).await
    }

    /// POST outside the kind table (a SubjectAccessReview).
    pub async fn raw_post(&self, path: &str, body: &Value) -> ApiResult<Value> {
        self.raw_send(http::Method::POST, path, body).await
    }

    async fn raw_send(&self, method: http::Method, path: &str, body: &Value) -> ApiResult<Value> {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(body).map_err(|e| ApiError::internal(e.to_string()))?)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        self.client.request::<Value>(request).await.map_err(api_error)
    }

    /// A client from inside a pod: the service account's token and CA, and the API at
    /// `KUBERNETES_SERVICE_HOST`.
    pub fn in_cluster() -> Result<Arc<KubeCluster>, ConnectError> {
        let config = kube::Config::incluster()
            .map_err(|e| ConnectError::Kubeconfig("the pod's service account".into(), e.to_string()))?;
        let client = kube::Client::try_from(config).map_err(|e| ConnectError::Client(e.to_string()))?;
        Ok(KubeCluster::new(client))
    }

    fn api(&self, kind: &ResourceKind, namespace: Option<&str>) -> Api<DynamicObject> {
        let resource = api_resource(kind);
        match namespace.filter(|_| kind.namespaced) {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        }
    }

    fn cache(&self, kind: &ResourceKind) -> Option<Arc<KindCache>> {
        self.caches.lock().ok()?.get(&kind.store_key()).cloned()
    }

    /// Puts what a write answered into the kind's cache (unless the watch brought something
    /// newer already), so this process reads its own writes: a controller listing right after
    /// it created or placed something counts it, as client-go's expectations and the
    /// scheduler's assumed pods make sure.
    fn remember(&self, kind: &ResourceKind, obj: &Value) {
        if let Some(cache) = self.cache(kind) {
            // An answer older than what the watch brought is dropped.
            let _ = cache.apply(obj.clone());
        }
    }

    fn forget(&self, kind: &ResourceKind, namespace: &str, name: &str) {
        if let Some(cache) = self.cache(kind) {
            if let Ok(mut objects) = cache.objects.write() {
                objects.remove(&(namespace.to_string(), name.to_string()));
            }
        }
    }

    /// Starts the watcher of `kind` unless it runs already.
    fn ensure_watched(&self, kind: &'static ResourceKind) {
        let Ok(mut caches) = self.caches.lock() else { return };
        let key = kind.store_key();
        if caches.contains_key(&key) {
            return;
        }
        let cache = Arc::new(KindCache::new());
        caches.insert(key, Arc::clone(&cache));
        let task = tokio::spawn(follow(self.api(kind, None), kind, cache, self.events.clone()));
        if let Ok(mut watchers) = self.watchers.lock() {
            watchers.push(task);
        }
    }
}

pub fn api_resource(kind: &ResourceKind) -> ApiResource {
    ApiResource {
        group: kind.group.to_string(),
        version: kind.version.to_string(),
        api_version: kind.api_version(),
        kind: kind.kind.to_string(),
        plural: kind.plural.to_string(),
    }
}

/// The Kubernetes `Status` of a failed call as the engine's error (same code, reason and
/// message); a call that never got an answer is 503.
pub fn api_error(e: kube::Error) -> ApiError {
    match e {
        kube::Error::Api(status) => ApiError::from_status(status.code, &status.reason, status.message),
        other => ApiError::unavailable(format!("the API could not be reached: {other}")),
    }
}

fn to_value(obj: DynamicObject) -> ApiResult<Value> {
    serde_json::to_value(obj).map_err(|e| ApiError::internal(format!("an object from the API: {e}")))
}

fn to_dynamic(obj: Value) -> ApiResult<DynamicObject> {
    serde_json::from_value(obj).map_err(|e| ApiError::bad_request(format!("not a Kubernetes object: {e}")))
}

fn version_of(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/resourceVersion")
}

fn key_of(obj: &Value) -> ObjectKey {
    (meta::namespace(obj).to_string(), meta::name(obj).to_string())
}

fn event(kind: &ResourceKind, event_type: WatchEventType, object: Arc<Value>) -> Arc<WatchEvent> {
    Arc::new(WatchEvent {
        rv: meta::resource_version(&object).unwrap_or(0),
        kind_key: kind.store_key(),
        namespace: meta::namespace(&object).to_string(),
        name: meta::name(&object).to_string(),
        event_type,
        object,
        raw: Arc::from(""),
        prev_labels: None,
    })
}

/// Runs one kind's watcher for as long as the client lives: applies each change to the cache,
/// then tells subscribers (so one that lists after an event finds it there).
async fn follow(
    api: Api<DynamicObject>,
    kind: &'static ResourceKind,
    cache: Arc<KindCache>,
    events: broadcast::Sender<Arc<WatchEvent>>,
) {
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut relisted: Option<HashMap<ObjectKey, Arc<Value>>> = None;
    while let Some(item) = stream.next().await {
        let ev = match item {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(kind = kind.plural, error = %e, "watch failed; listing again after a backoff");
                continue;
            }
        };
        let send = |t, obj: Arc<Value>| {
            let _ = events.send(event(kind, t, obj));
        };
        match ev {
            watcher::Event::Init => relisted = Some(HashMap::new()),
            watcher::Event::InitApply(obj) => {
                if let (Some(buffer), Ok(obj)) = (relisted.as_mut(), to_value(obj)) {
                    buffer.insert(key_of(&obj), Arc::new(obj));
                }
            }
            watcher::Event::InitDone => {
                let fresh = relisted.take().unwrap_or_default();
                let old = match cache.objects.write() {
                    Ok(mut objects) => std::mem::replace(&mut *objects, fresh.clone()),
                    Err(_) => return,
                };
                // A list is the whole truth as of now: older tombstones say nothing more.
                if let Ok(mut deleted) = cache.deleted.lock() {
                    deleted.clear();
                }
                for (key, obj) in &fresh {
                    match old.get(key) {
                        None => send(WatchEventType::Added, Arc::clone(obj)),
                        Some(before) if version_of(before) != version_of(obj) => {
                            send(WatchEventType::Modified, Arc::clone(obj))
                        }
                        Some(_) => {}
                    }
                }
                for (key, obj) in old {
                    if !fresh.contains_key(&key) {
                        send(WatchEventType::Deleted, obj);
                    }
                }
                cache.synced.send_replace(true);
            }
            watcher::Event::Apply(obj) => {
                let Ok(obj) = to_value(obj) else { continue };
                let obj = Arc::new(obj);
                // A version this process wrote is often in the cache before its event: it is
                // still told, as the store tells its own writers.
                let kind_of_event = match cache.apply(Value::clone(&obj)) {
                    Ok(Some(_)) => WatchEventType::Modified,
                    Ok(None) => WatchEventType::Added,
                    Err(()) => continue,
                };
                send(kind_of_event, obj);
            }
            watcher::Event::Delete(obj) => {
                let Ok(obj) = to_value(obj) else { continue };
                cache.remove(&obj);
                send(WatchEventType::Deleted, Arc::new(obj));
            }
        }
    }
}

fn propagation(p: Propagation) -> PropagationPolicy {
    match p {
        Propagation::Background => PropagationPolicy::Background,
        Propagation::Foreground => PropagationPolicy::Foreground,
        Propagation::Orphan => PropagationPolicy::Orphan,
    }
}

impl Cluster for KubeCluster {
    fn get<'a>(
        &'a self,
        kind: &'static ResourceKind,
        namespace: &'a str,
        name: &'a str,
    ) -> ClusterFuture<'a, Option<Value>> {
        Box::pin(async move {
            match self.api(kind, Some(namespace)).get_opt(name).await.map_err(api_error)? {
                Some(obj) => Ok(Some(to_value(obj)?)),
                None => Ok(None),
            }
        })
    }

    fn list<'a>(&'a self, kind: &'static ResourceKind, namespace: Option<&'a str>) -> ClusterFuture<'a, Vec<Value>> {
        Box::pin(async move {
            if let Some(cache) = self.cache(kind) {
                // A watch that cannot list (refused, unreachable) must not hang its readers: past
                // a bound they ask the server, and get its answer or its error.
                let mut synced = cache.synced.subscribe();
                let ready = tokio::time::timeout(CACHE_SYNC_WAIT, synced.wait_for(|s| *s)).await;
                if matches!(ready, Ok(Ok(_))) {
                    let objects = cache.objects.read().map_err(|_| ApiError::internal("informer cache poisoned"))?;
                    return Ok(objects
                        .values()
                        .filter(|o| namespace.is_none_or(|ns| meta::namespace(o) == ns))
                        .map(|o| Value::clone(o))
                        .collect());
                }
            }
            let list = self.api(kind, namespace).list(&Default::default()).await.map_err(api_error)?;
            list.items.into_iter().map(to_value).collect()
        })
    }

    fn create(&self, kind: &'static ResourceKind, obj: Value) -> ClusterFuture<'_, Value> {
        Box::pin(async move {
            let namespace = meta::namespace(&obj).to_string();
            let obj = to_dynamic(obj)?;
            let api = self.api(kind, Some(&namespace));
            let created = to_value(api.create(&PostParams::default(), &obj).await.map_err(api_error)?)?;
            self.remember(kind, &created);
            Ok(created)
        })
    }

    fn update(&self, kind: &'static ResourceKind, obj: Value, mode: UpdateMode) -> ClusterFuture<'_, Value> {
        Box::pin(async move {
            let (namespace, name) = key_of(&obj);
            let obj = to_dynamic(obj)?;
            let api = self.api(kind, Some(&namespace));
            let pp = PostParams::default();
            // A kind without a status subresource (KubeVirt's VMI CRD has none) takes its status
            // in the object itself.
            let updated = match mode {
                UpdateMode::Status if self.has_status_subresource(kind) => api.replace_status(&name, &pp, &obj).await,
                _ => api.replace(&name, &pp, &obj).await,
            };
            let updated = to_value(updated.map_err(api_error)?)?;
            self.remember(kind, &updated);
            Ok(updated)
        })
    }

    fn delete<'a>(
        &'a self,
        kind: &'static ResourceKind,
        namespace: &'a str,
        name: &'a str,
        opts: DeleteOptions,
    ) -> ClusterFuture<'a, ()> {
        Box::pin(async move {
            let preconditions = (opts.precondition_uid.is_some() || opts.precondition_rv.is_some())
                .then_some(Preconditions { uid: opts.precondition_uid, resource_version: opts.precondition_rv });
            let dp = DeleteParams {
                dry_run: opts.dry_run,
                propagation_policy: opts.propagation.map(propagation),
                preconditions,
                ..DeleteParams::default()
            };
            let answer = self.api(kind, Some(namespace)).delete(name, &dp).await.map_err(api_error)?;
            if !opts.dry_run {
                match answer.left() {
                    // Held by finalizers: it stays, marked.
                    Some(marked) => self.remember(kind, &to_value(marked)?),
                    None => self.forget(kind, namespace, name),
                }
            }
            Ok(())
        })
    }

    fn watch(&self, kinds: &[&'static ResourceKind]) -> broadcast::Receiver<Arc<WatchEvent>> {
        let rx = self.events.subscribe();
        kinds.iter().for_each(|k| self.ensure_watched(k));
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn version(rv: &str, data: &str) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "resourceVersion": rv}, "data": data})
    }

    #[test]
    fn the_cache_keeps_the_newest_version_whichever_arrives_first() {
        let cache = KindCache::new();
        assert!(matches!(cache.apply(version("5", "write answer")), Ok(None)), "new");
        // The watch's event of an older version, arriving after this process's write: dropped.
        assert!(cache.apply(version("4", "older event")).is_err());
        assert!(matches!(cache.apply(version("5", "its own event")), Ok(Some(_))), "the same version again");
        assert!(matches!(cache.apply(version("6", "newer")), Ok(Some(_))));
        let held = cache.objects.read().map(|o| o.get(&("ns".to_string(), "a".to_string())).cloned());
        assert_eq!(held.ok().flatten().map(|o| o["data"].clone()), Some(json!("newer")));
        // resourceVersions that are not integers are opaque: the last one wins.
        assert!(!older(&version("abc", ""), &version("7", "")));
        // Deleted at 8: a write's answer of version 7 arriving late does not bring it back; the
        // object made again (a newer version) does come back.
        cache.remove(&version("8", "deleted"));
        assert!(cache.apply(version("7", "late answer")).is_err());
        let none = cache.objects.read().map(|o| o.is_empty()).unwrap_or(false);
        assert!(none, "no phantom");
        assert!(matches!(cache.apply(version("9", "made again")), Ok(None)));
    }

    #[test]
    fn kinds_map_to_their_api_resources_and_refusals_keep_their_code() {
        let r = api_resource(&crate::kinds::VIRTUAL_MACHINE_INSTANCE);
        assert_eq!(
            (r.group.as_str(), r.version.as_str(), r.api_version.as_str()),
            ("kubevirt.io", "v1", "kubevirt.io/v1")
        );
        assert_eq!((r.kind.as_str(), r.plural.as_str()), ("VirtualMachineInstance", "virtualmachineinstances"));
        let core = api_resource(&crate::kinds::NODE);
        assert_eq!((core.group.as_str(), core.api_version.as_str()), ("", "v1"));
        let status = kube::core::Status::failure("nope", "Forbidden").with_code(403);
        let e = api_error(kube::Error::Api(Box::new(status)));
        assert_eq!((e.code, e.reason, e.message.as_str()), (403, "Forbidden", "nope"));
        let odd = kube::core::Status::failure("teapot", "SomethingNew").with_code(418);
        assert_eq!(api_error(kube::Error::Api(Box::new(odd))).reason, "InternalError");
    }
}
