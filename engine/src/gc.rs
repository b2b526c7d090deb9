//! The garbage collector: level-triggered, like Kubernetes' own. Each pass looks at what the
//! store holds (dangling ownerReferences, objects held by `orphan`/`foregroundDeletion`,
//! terminating namespaces) and moves each one step on; passes run after every burst of changes
//! and on a timer, so a step that lost a race is retried.

use crate::error::ApiResult;
use crate::kinds::{self, ResourceKind};
use crate::meta;
use crate::store::{
    DeleteOptions, Propagation, Store, UpdateMode, WatchEvent, WatchEventType, FOREGROUND_FINALIZER,
    NAMESPACE_FINALIZER, ORPHAN_FINALIZER,
};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Run passes until the store closes: after changes that can leave work (a deletion, or an
/// object given a deletionTimestamp), and every few seconds in case a step lost a race.
pub async fn run(store: Arc<Store>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = store.subscribe();
    loop {
        if let Err(e) = collect(&store).await {
            tracing::warn!(error = %e, "garbage collection pass failed; will retry");
        }
        let retry_at = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(retry_at, rx.recv()).await {
                Err(_) | Ok(Err(RecvError::Lagged(_))) => break,
                Ok(Err(RecvError::Closed)) => return,
                Ok(Ok(ev)) if can_leave_work(&ev) => {
                    // The pass about to run sees everything queued behind this event too.
                    while rx.try_recv().is_ok() {}
                    break;
                }
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Plain creates and updates of live objects never give the collector anything to do; only
/// removals (dependents may dangle) and objects being deleted (finalizers to act on) do.
fn can_leave_work(ev: &WatchEvent) -> bool {
    ev.event_type == WatchEventType::Deleted || meta::is_deleting(&ev.object)
}

/// One pass; returns how many objects it acted on.
#[tracing::instrument(skip_all)]
pub async fn collect(store: &Store) -> ApiResult<usize> {
    let mut acted = 0;
    for (key, ns, name, _) in store.dangling_owner_refs().await? {
        let Some(kind) = kinds::by_store_key(&key) else {
            continue;
        };
        let Some(obj) = store.get(kind, &ns, &name).await? else {
            continue;
        };
        let mut live = vec![];
        for owner in meta::owner_uids(&obj) {
            if store.exists_uid(&owner).await? {
                live.push(owner);
            }
        }
        acted += 1;
        if live.is_empty() {
            ignore_gone(store.delete(kind, &ns, &name, &background()).await.map(drop))?;
        } else {
            ignore_gone(retain_owner_refs(store, kind, obj, |uid| live.iter().any(|l| l == uid)).await)?;
        }
    }
    for (key, obj) in store.deleting().await? {
        let Some(kind) = kinds::by_store_key(&key) else {
            continue;
        };
        acted += usize::from(finish_deletion(store, kind, obj).await?);
    }
    Ok(acted)
}

fn background() -> DeleteOptions {
    DeleteOptions { propagation: Some(Propagation::Background), ..Default::default() }
}

/// NotFound and Conflict mean another writer got there first; the next pass looks again.
fn ignore_gone(result: ApiResult<()>) -> ApiResult<()> {
    match result {
        Err(e) if e.code == 404 || e.code == 409 => Ok(()),
        other => other,
    }
}

async fn retain_owner_refs(
    store: &Store,
    kind: &ResourceKind,
    mut obj: Value,
    keep: impl Fn(&str) -> bool,
) -> ApiResult<()> {
    let m = meta::metadata_mut(&mut obj);
    if let Some(refs) = m.get_mut("ownerReferences").and_then(Value::as_array_mut) {
        refs.retain(|r| r.get("uid").and_then(Value::as_str).is_some_and(&keep));
        if refs.is_empty() {
            m.remove("ownerReferences");
        }
    }
    store.update(kind, obj, UpdateMode::Main, false).await.map(drop)
}

async fn remove_finalizer(store: &Store, kind: &ResourceKind, mut obj: Value, finalizer: &str) -> ApiResult<()> {
    let remaining: Vec<String> = meta::finalizers(&obj).into_iter().filter(|f| f != finalizer).collect();
    meta::set_finalizers(&mut obj, &remaining);
    store.update(kind, obj, UpdateMode::Main, false).await.map(drop)
}

/// Move one object held by the collector's finalizers a step on. True when something was done.
async fn finish_deletion(store: &Store, kind: &ResourceKind, obj: Value) -> ApiResult<bool> {
    let uid = meta::uid(&obj).to_string();
    let finalizers = meta::finalizers(&obj);
    if finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
        for (key, ns, name) in store.dependents(&uid).await? {
            let Some(dep_kind) = kinds::by_store_key(&key) else {
                continue;
            };
            if let Some(dep) = store.get(dep_kind, &ns, &name).await? {
                ignore_gone(retain_owner_refs(store, dep_kind, dep, |u| u != uid).await)?;
            }
        }
        ignore_gone(remove_finalizer(store, kind, obj, ORPHAN_FINALIZER).await)?;
        return Ok(true);
    }
    if finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
        let dependents = store.dependents(&uid).await?;
        if dependents.is_empty() {
            ignore_gone(remove_finalizer(store, kind, obj, FOREGROUND_FINALIZER).await)?;
            return Ok(true);
        }
        for (key, ns, name) in dependents {
            let Some(dep_kind) = kinds::by_store_key(&key) else {
                continue;
            };
            let opts = DeleteOptions { propagation: Some(Propagation::Foreground), ..Default::default() };
            ignore_gone(store.delete(dep_kind, &ns, &name, &opts).await.map(drop))?;
        }
        return Ok(true);
    }
    let terminating_namespace = std::ptr::eq(kind, &kinds::NAMESPACE)
        && meta::at(&obj, &["spec", "finalizers"])
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|x| x == NAMESPACE_FINALIZER));
    if terminating_namespace {
        let name = meta::name(&obj).to_string();
        let contents = store.namespace_contents(&name).await?;
        if contents.is_empty() {
            let mut finalized = obj;
            *meta::at_mut(&mut finalized, &["spec", "finalizers"]) = Value::Array(vec![]);
            ignore_gone(store.update(kind, finalized, UpdateMode::Main, false).await.map(drop))?;
            return Ok(true);
        }
        for (key, item) in contents {
            let Some(item_kind) = kinds::by_store_key(&key) else {
                continue;
            };
            ignore_gone(store.delete(item_kind, &name, &item, &background()).await.map(drop))?;
        }
        return Ok(true);
    }
    Ok(false)
}
