//! core/v1 Events about VMs and VMIs, as KubeVirt's controllers and virt-handler record them, so
//! `kubectl describe vm|vmi` tells the story. A repeat of the same event bumps its count. Each
//! event is owned by the object it is about, so the collector removes it with that object.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cluster::Cluster;
use crate::kinds::{self, ResourceKind};
use crate::meta;
use crate::store::UpdateMode;

pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

/// Records an event; failures are logged, never fatal to the caller's work.
pub async fn record(
    cluster: &dyn Cluster,
    kind: &'static ResourceKind,
    obj: &Value,
    event_type: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    if let Err(e) = try_record(cluster, kind, obj, event_type, reason, message, component).await {
        tracing::debug!(error = %e.message, reason, "could not record an event");
    }
}

async fn try_record(
    cluster: &dyn Cluster,
    kind: &'static ResourceKind,
    obj: &Value,
    event_type: &str,
    reason: &str,
    message: &str,
    component: &str,
) -> crate::ApiResult<()> {
    let ns = meta::namespace(obj);
    let digest = Sha256::digest(format!("{}/{reason}/{message}", meta::uid(obj)).as_bytes());
    let name = format!("{}.{}", meta::name(obj), hex::encode(&digest[..8]));
    let now = meta::now_rfc3339();
    for _ in 0..5 {
        if let Some(mut existing) = cluster.get(&kinds::EVENT, ns, &name).await? {
            let count = existing.get("count").and_then(Value::as_i64).unwrap_or(1) + 1;
            existing["count"] = json!(count);
            existing["lastTimestamp"] = json!(now);
            match cluster.update(&kinds::EVENT, existing, UpdateMode::Main).await {
                Err(e) if e.code == 409 => continue,
                other => return other.map(|_| ()),
            }
        }
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": name,
                "namespace": ns,
                "ownerReferences": [{"apiVersion": kind.api_version(), "kind": kind.kind, "name": meta::name(obj), "uid": meta::uid(obj)}],
            },
            "involvedObject": {
                "apiVersion": kind.api_version(), "kind": kind.kind, "namespace": ns,
                "name": meta::name(obj), "uid": meta::uid(obj),
            },
            "reason": reason,
            "message": message,
            "type": event_type,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": "",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        match cluster.create(&kinds::EVENT, event).await {
            Err(e) if e.code == 409 => continue,
            other => return other.map(|_| ()),
        }
    }
    Ok(())
}

/// The newest event about `obj` (its reason and message), for surfacing why something waits.
pub async fn latest_for(cluster: &dyn Cluster, obj: &Value) -> Option<(String, String)> {
    let events = cluster.list(&kinds::EVENT, Some(meta::namespace(obj))).await.ok()?;
    let about = |ev: &&Value| ev.pointer("/involvedObject/uid").and_then(Value::as_str) == Some(meta::uid(obj));
    let text = |ev: &Value, k: &str| ev.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    events
        .iter()
        .filter(about)
        .max_by_key(|ev| text(ev, "lastTimestamp"))
        .map(|ev| (text(ev, "reason"), text(ev, "message")))
}
