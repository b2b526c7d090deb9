//! The one seam between the engine and the API: controllers and the node agent read, watch and
//! write cluster objects through [`Cluster`], never the store directly. Two implementations: the
//! in-process [`Store`] (what `converge serve` runs on, no overhead but a boxed future) and
//! [`kube::KubeCluster`], a kube-rs client speaking the Kubernetes API to any server — Converge's
//! own or a kube-apiserver.
//!
//! Both behave as an API client sees the API: a create goes through admission (defaults,
//! presets, instancetypes, the MAC pool), an update of the main resource keeps the stored status
//! where the kind has a status subresource, `UpdateMode::Status` writes only the status.

pub mod kube;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use crate::error::ApiResult;
use crate::kinds::ResourceKind;
use crate::store::{DeleteOptions, Store, UpdateMode, WatchEvent};

pub type ClusterFuture<'a, T> = Pin<Box<dyn Future<Output = ApiResult<T>> + Send + 'a>>;

/// Cluster objects as a controller or node agent reads and writes them.
pub trait Cluster: Send + Sync + 'static {
    /// The object, or `None` when there is none of that name.
    fn get<'a>(
        &'a self,
        kind: &'static ResourceKind,
        namespace: &'a str,
        name: &'a str,
    ) -> ClusterFuture<'a, Option<Value>>;

    /// Every object of a kind (in one namespace, or all). Kinds being watched may be answered
    /// from the watch's cache, as an informer's lister is: it can trail a write just made.
    fn list<'a>(&'a self, kind: &'static ResourceKind, namespace: Option<&'a str>) -> ClusterFuture<'a, Vec<Value>>;

    /// Creates through admission, as a POST does.
    fn create(&self, kind: &'static ResourceKind, obj: Value) -> ClusterFuture<'_, Value>;

    /// Replaces the object (PUT) or its status (PUT `/status`), pinned to its resourceVersion:
    /// a stale one is a 409.
    fn update(&self, kind: &'static ResourceKind, obj: Value, mode: UpdateMode) -> ClusterFuture<'_, Value>;

    /// Deletes (or marks for deletion, when finalizers hold it); gone already is a 404.
    fn delete<'a>(
        &'a self,
        kind: &'static ResourceKind,
        namespace: &'a str,
        name: &'a str,
        opts: DeleteOptions,
    ) -> ClusterFuture<'a, ()>;

    /// Changes to objects of these kinds from now on (others' may come too: filter by
    /// `kind_key`). A receiver that lags is told so and should list again.
    fn watch(&self, kinds: &[&'static ResourceKind]) -> broadcast::Receiver<Arc<WatchEvent>>;
}

impl Cluster for Store {
    fn get<'a>(
        &'a self,
        kind: &'static ResourceKind,
        namespace: &'a str,
        name: &'a str,
    ) -> ClusterFuture<'a, Option<Value>> {
        Box::pin(Store::get(self, kind, namespace, name))
    }

    fn list<'a>(&'a self, kind: &'static ResourceKind, namespace: Option<&'a str>) -> ClusterFuture<'a, Vec<Value>> {
        Box::pin(self.list_values(kind, namespace))
    }

    fn create(&self, kind: &'static ResourceKind, obj: Value) -> ClusterFuture<'_, Value> {
        Box::pin(crate::admission::create_admitted(self, kind, obj, false))
    }

    fn update(&self, kind: &'static ResourceKind, obj: Value, mode: UpdateMode) -> ClusterFuture<'_, Value> {
        Box::pin(Store::update(self, kind, obj, mode, false))
    }

    fn delete<'a>(
        &'a self,
        kind: &'static ResourceKind,
        namespace: &'a str,
        name: &'a str,
        opts: DeleteOptions,
    ) -> ClusterFuture<'a, ()> {
        Box::pin(async move { Store::delete(self, kind, namespace, name, &opts).await.map(|_| ()) })
    }

    fn watch(&self, _kinds: &[&'static ResourceKind]) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.subscribe()
    }
}

/// Waits for a change to an object of `kind` on `rx`, or for `tick`, whichever comes first (a
/// lagging receiver counts as a change); `false` once the stream has ended.
pub async fn changed_or_tick(
    rx: &mut broadcast::Receiver<Arc<WatchEvent>>,
    kind: &ResourceKind,
    tick: &mut tokio::time::Interval,
) -> bool {
    let key = kind.store_key();
    loop {
        tokio::select! {
            _ = tick.tick() => return true,
            ev = rx.recv() => match ev {
                Ok(ev) if ev.kind_key != key => continue,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return true,
                Err(broadcast::error::RecvError::Closed) => return false,
            },
        }
    }
}

/// Writes `status` if it differs from what is stored.
pub async fn write_status(
    cluster: &dyn Cluster,
    kind: &'static ResourceKind,
    obj: &Value,
    status: Value,
) -> ApiResult<()> {
    if obj.get("status") == Some(&status) {
        return Ok(());
    }
    let mut updated = obj.clone();
    updated["status"] = status;
    cluster.update(kind, updated, UpdateMode::Status).await.map(|_| ())
}

/// Deletes the object if it still has `uid`; gone already is fine.
pub async fn delete_uid(
    cluster: &dyn Cluster,
    kind: &'static ResourceKind,
    namespace: &str,
    name: &str,
    uid: &str,
) -> ApiResult<()> {
    let opts = DeleteOptions { precondition_uid: Some(uid.to_string()), ..DeleteOptions::default() };
    match cluster.delete(kind, namespace, name, opts).await {
        Ok(()) => Ok(()),
        Err(e) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
