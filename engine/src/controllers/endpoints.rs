//! The endpoints controllers: every Service with a selector gets an Endpoints and an
//! EndpointSlice of the same name listing the ready VMIs it selects (`network::services`
//! decides; this loop writes).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use tokio::task::JoinHandle;

use super::Key;
use crate::cluster::Cluster;
use crate::error::ApiResult;
use crate::kinds::{self, ResourceKind};
use crate::meta;
use crate::network::services;
use crate::store::{DeleteOptions, UpdateMode};
use crate::worker::{self, Action, WorkQueue};

const RESYNC: Duration = Duration::from_secs(30);

/// Starts the endpoints controller: a feed and one worker.
pub fn spawn(cluster: Arc<dyn Cluster>) -> Vec<JoinHandle<()>> {
    let queue: Arc<WorkQueue<Key>> = WorkQueue::new();
    let c = Arc::clone(&cluster);
    let mut tasks = worker::spawn("endpoints", &queue, 1, move |key| {
        let c = Arc::clone(&c);
        async move { sync(c.as_ref(), &key).await.map(|()| Action::AwaitChange) }
    });
    tasks.push(tokio::spawn(async move { feed(cluster.as_ref(), &queue).await }));
    tasks
}

async fn enqueue_namespace(cluster: &dyn Cluster, queue: &WorkQueue<Key>, namespace: Option<&str>) {
    if let Ok(all) = cluster.list(&kinds::SERVICE, namespace).await {
        for s in all {
            queue.add((meta::namespace(&s).to_string(), meta::name(&s).to_string()));
        }
    }
}

async fn feed(cluster: &dyn Cluster, queue: &WorkQueue<Key>) {
    let mut rx = cluster.watch(&[&kinds::SERVICE, &kinds::VIRTUAL_MACHINE_INSTANCE]);
    enqueue_namespace(cluster, queue, None).await;
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    let (svc, vmi) = (kinds::SERVICE.store_key(), kinds::VIRTUAL_MACHINE_INSTANCE.store_key());
    loop {
        tokio::select! {
            _ = resync.tick() => enqueue_namespace(cluster, queue, None).await,
            ev = rx.recv() => match ev {
                Ok(ev) if ev.kind_key == svc => queue.add((ev.namespace.clone(), ev.name.clone())),
                Ok(ev) if ev.kind_key == vmi => enqueue_namespace(cluster, queue, Some(&ev.namespace)).await,
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => enqueue_namespace(cluster, queue, None).await,
                Err(RecvError::Closed) => return,
            }
        }
    }
}

async fn sync(cluster: &dyn Cluster, (ns, name): &Key) -> ApiResult<()> {
    let service = cluster.get(&kinds::SERVICE, ns, name).await?;
    let Some(service) = service.filter(|s| s.pointer("/spec/selector").is_some_and(|v| v.is_object())) else {
        // Gone, or selectorless (its endpoints are the user's to write): ours go.
        for kind in [&kinds::ENDPOINTS, &kinds::ENDPOINT_SLICE] {
            if let Some(existing) = cluster.get(kind, ns, name).await? {
                if managed(&existing) {
                    match cluster.delete(kind, ns, name, DeleteOptions::default()).await {
                        Err(e) if e.code != 404 => return Err(e),
                        _ => {}
                    }
                }
            }
        }
        return Ok(());
    };
    let vmis = cluster.list(&kinds::VIRTUAL_MACHINE_INSTANCE, Some(ns)).await?;
    let backends = services::backends(&service, &vmis);
    let owner = json!([{"apiVersion": "v1", "kind": "Service", "name": name, "uid": meta::uid(&service),
                        "controller": true, "blockOwnerDeletion": true}]);
    let mut endpoints = services::endpoints(&service, &backends);
    let mut slice = services::endpoint_slice(&service, &backends);
    for obj in [&mut endpoints, &mut slice] {
        meta::metadata_mut(obj).insert("annotations".into(), json!({MANAGED_BY: "converge.dev/endpoints"}));
    }
    meta::metadata_mut(&mut slice).insert("ownerReferences".into(), owner);
    upsert(cluster, &kinds::ENDPOINTS, endpoints, &["subsets"]).await?;
    upsert(cluster, &kinds::ENDPOINT_SLICE, slice, &["endpoints", "ports", "addressType"]).await
}

const MANAGED_BY: &str = "converge.dev/managed-by";

fn managed(obj: &Value) -> bool {
    meta::annotation(obj, MANAGED_BY).is_some()
}

/// Creates `want`, or rewrites the stored object's `fields` when they differ.
async fn upsert(cluster: &dyn Cluster, kind: &'static ResourceKind, want: Value, fields: &[&str]) -> ApiResult<()> {
    match cluster.get(kind, meta::namespace(&want), meta::name(&want)).await? {
        None => match cluster.create(kind, want).await {
            Err(e) if e.reason == "AlreadyExists" => {
                Err(crate::error::ApiError::conflict(kind.group, kind.plural, "", "created meanwhile"))
            }
            other => other.map(|_| ()),
        },
        Some(current) => {
            if fields.iter().all(|f| current.get(*f) == want.get(*f)) {
                return Ok(());
            }
            let mut next = current.clone();
            for f in fields {
                next[*f] = want.get(*f).cloned().unwrap_or(Value::Null);
            }
            cluster.update(kind, next, UpdateMode::Main).await.map(|_| ())
        }
    }
}
