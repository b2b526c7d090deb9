//! The VMI controller's share of a VMI's life (the node agent owns the rest): Pending, then
//! scheduling onto a node, and releasing VMIs that are deleted before any node took them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::scheduler::{self, NodeView, Request};
use super::status::{self as st, is_final, node_name, phase};
use super::volume_binding::{self, ClaimView};
use super::{Key, VMI_FINALIZER};
use crate::cluster::Cluster;
use crate::error::ApiResult;
use crate::kinds;
use crate::meta;
use crate::storage::placement::SELECTED_NODE;
use crate::store::UpdateMode;
use crate::worker::Action;

/// How often an unschedulable VMI is tried again (node changes also wake it).
const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Default)]
pub struct VmiPlan {
    pub status: Option<Value>,
    /// The node the VMI was placed on, for its `kubevirt.io/nodeName` label.
    pub node_label: Option<String>,
    pub remove_finalizer: bool,
    pub requeue_after: Option<Duration>,
}

pub const NODE_NAME_LABEL: &str = "kubevirt.io/nodeName";

/// Pure: what to do with a VMI no node has taken yet.
pub fn reconcile(
    vmi: &Value,
    nodes: &[NodeView],
    used: &BTreeMap<String, Request>,
    volumes: &[Value],
    now: &str,
) -> VmiPlan {
    let mut plan = VmiPlan::default();
    if node_name(vmi).is_some() {
        return plan;
    }
    if meta::is_deleting(vmi) {
        plan.remove_finalizer = meta::finalizers(vmi).iter().any(|f| f == VMI_FINALIZER);
        return plan;
    }
    if is_final(phase(vmi)) {
        return plan;
    }
    let mut next = vmi.clone();
    st::set_phase(&mut next, st::PENDING, now);
    match scheduler::schedule(vmi, nodes, used, volumes) {
        Ok(node) => {
            st::mark_scheduled(&mut next, &node, now);
            plan.node_label = Some(node);
        }
        Err(message) => {
            st::mark_unscheduled(&mut next, "Unschedulable", &message, now);
            plan.requeue_after = Some(RETRY_UNSCHEDULABLE);
        }
    }
    plan.status = next.get("status").cloned().filter(|s| Some(s) != vmi.get("status"));
    plan
}

/// Pure: whether a placed VMI is one whose finalizer the controller may drop if its node is lost
/// (not Ready, or gone): deleted, finished, still held. Its domain may still run there — nothing
/// reaches it without the agent — and the agent, back, removes it as an orphan; the VM meanwhile
/// starts its next VMI elsewhere instead of waiting for a node that may never return.
pub fn released_by_lost_node(vmi: &Value) -> bool {
    node_name(vmi).is_some()
        && meta::is_deleting(vmi)
        && is_final(phase(vmi))
        && meta::finalizers(vmi).iter().any(|f| f == VMI_FINALIZER)
}

/// What each node has promised to the VMIs placed on it and not finished.
pub fn node_usage(vmis: &[Value]) -> BTreeMap<String, Request> {
    let mut used: BTreeMap<String, Request> = BTreeMap::new();
    for v in vmis.iter().filter(|v| !is_final(phase(v))) {
        if let Some(node) = node_name(v) {
            let r = scheduler::request_of(v);
            let entry = used.entry(node.to_string()).or_default();
            entry.cpu_milli += r.cpu_milli;
            entry.memory_bytes += r.memory_bytes;
        }
    }
    used
}

/// One placement at a time: each reads every node's load and adds to it, so two at once could
/// both fit into the same free memory.
pub(super) fn placement_lock() -> &'static tokio::sync::Mutex<()> {
    static LOCK: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

pub(super) async fn sync(cluster: &dyn Cluster, (ns, name): Key) -> ApiResult<Action> {
    let _placing = placement_lock().lock().await;
    let Some(vmi) = cluster.get(&kinds::VIRTUAL_MACHINE_INSTANCE, &ns, &name).await? else {
        return Ok(Action::AwaitChange);
    };
    if let Some(node) = node_name(&vmi) {
        // Its node's agent drops the finalizer once the domain is gone; a lost node's cannot.
        let node = match released_by_lost_node(&vmi) {
            true => cluster.get(&kinds::NODE, "", node).await?,
            false => return Ok(Action::AwaitChange),
        };
        if node.as_ref().is_none_or(|n| !st::condition_true(n, "Ready")) {
            release(cluster, &vmi).await?;
        }
        return Ok(Action::AwaitChange);
    }
    let placing = !meta::is_deleting(&vmi) && !is_final(phase(&vmi));
    let (nodes, used) = if placing {
        let nodes: Vec<NodeView> = cluster.list(&kinds::NODE, None).await?.iter().map(NodeView::from_node).collect();
        let vmis = cluster.list(&kinds::VIRTUAL_MACHINE_INSTANCE, None).await?;
        (nodes, node_usage(&vmis))
    } else {
        (vec![], BTreeMap::new())
    };
    let claims = match placing {
        true => claims_with_volumes(cluster, &vmi).await?,
        false => vec![],
    };
    let classes = match claims.is_empty() {
        true => vec![],
        false => cluster.list(&kinds::STORAGE_CLASS, None).await?,
    };
    let views: Vec<ClaimView> =
        claims.iter().map(|(pvc, pv)| ClaimView { pvc: pvc.as_ref(), pv: pv.as_ref() }).collect();
    let volumes = volume_binding::binding(&views, &classes);
    let plan = reconcile(&vmi, &nodes, &used, &volumes.terms, &meta::now_rfc3339());
    if plan.remove_finalizer {
        release(cluster, &vmi).await?;
        return Ok(Action::AwaitChange);
    }
    if let Some(node) = &plan.node_label {
        // Claims waiting for their first consumer learn its node before the node sees the guest.
        for i in &volumes.to_select {
            if let Some((Some(pvc), _)) = claims.get(*i) {
                let mut selected = pvc.clone();
                *meta::at_mut(&mut selected, &["metadata", "annotations", SELECTED_NODE]) = Value::String(node.clone());
                cluster.update(&kinds::PERSISTENT_VOLUME_CLAIM, selected, UpdateMode::Main).await?;
            }
        }
    }
    let mut vmi = vmi;
    if let Some(node) = &plan.node_label {
        // KubeVirt labels a placed VMI with its node (clients select by it).
        let mut labelled = vmi.clone();
        *meta::at_mut(&mut labelled, &["metadata", "labels", NODE_NAME_LABEL]) = Value::String(node.clone());
        vmi = cluster.update(&kinds::VIRTUAL_MACHINE_INSTANCE, labelled, UpdateMode::Main).await?;
        crate::failpoint::hit(crate::failpoint::VMI_AFTER_NODE_LABEL);
    }
    if let Some(status) = plan.status {
        let unschedulable = status
            .get("conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled" && c["status"] == "False"))
            .and_then(|c| c.get("message").and_then(Value::as_str).map(str::to_string));
        crate::cluster::write_status(cluster, &kinds::VIRTUAL_MACHINE_INSTANCE, &vmi, status).await?;
        if let Some(message) = unschedulable {
            let c = super::COMPONENT;
            crate::events::record(
                cluster,
                &kinds::VIRTUAL_MACHINE_INSTANCE,
                &vmi,
                crate::events::WARNING,
                "FailedScheduling",
                &message,
                c,
            )
            .await;
        }
    }
    Ok(plan.requeue_after.into())
}

/// Drops the VMI's finalizer (no node holds a domain of it).
pub(super) async fn release(cluster: &dyn Cluster, vmi: &Value) -> ApiResult<()> {
    let mut updated = vmi.clone();
    let rest: Vec<String> = meta::finalizers(vmi).into_iter().filter(|f| f != VMI_FINALIZER).collect();
    meta::set_finalizers(&mut updated, &rest);
    cluster.update(&kinds::VIRTUAL_MACHINE_INSTANCE, updated, UpdateMode::Main).await.map(|_| ())
}

/// Each claim `vmi` uses, with the volume it names.
async fn claims_with_volumes(cluster: &dyn Cluster, vmi: &Value) -> ApiResult<Vec<(Option<Value>, Option<Value>)>> {
    let mut out = vec![];
    for claim in crate::storage::claims::claims_of(vmi) {
        let pvc = cluster.get(&kinds::PERSISTENT_VOLUME_CLAIM, meta::namespace(vmi), &claim).await?;
        let volume = pvc.as_ref().and_then(|p| p.pointer("/spec/volumeName")).and_then(Value::as_str);
        let pv = match volume.filter(|v| !v.is_empty()) {
            Some(name) => cluster.get(&kinds::PERSISTENT_VOLUME, "", name).await?,
            None => None,
        };
        out.push((pvc, pv));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_a_deleted_finished_vmi_is_released_from_a_lost_node() {
        let vmi = |deleting: bool, phase: &str| {
            let mut v = json!({"metadata": {"name": "a", "finalizers": [VMI_FINALIZER]},
                               "status": {"nodeName": "n1", "phase": phase}});
            if deleting {
                v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            v
        };
        assert!(released_by_lost_node(&vmi(true, "Failed")));
        assert!(!released_by_lost_node(&vmi(true, "Running")), "a running guest waits for its node");
        assert!(!released_by_lost_node(&vmi(false, "Failed")), "not deleted");
        let mut unplaced = vmi(true, "Failed");
        unplaced["status"]["nodeName"] = Value::Null;
        assert!(!released_by_lost_node(&unplaced), "the unplaced case is reconcile's");
    }

    #[test]
    fn a_placed_vmi_is_labelled_with_its_node() {
        let node = json!({"metadata": {"name": "n1", "labels": {scheduler::EMULATION_LABEL: "true"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                "allocatable": {"cpu": "4", "memory": "8Gi"}}});
        let vmi = json!({"metadata": {"name": "a", "namespace": "ns"},
            "spec": {"domain": {"resources": {"requests": {"memory": "64Mi"}}}}});
        let plan = reconcile(&vmi, &[NodeView::from_node(&node)], &BTreeMap::new(), &[], "t");
        assert_eq!(plan.node_label.as_deref(), Some("n1"), "{:?}", plan.status);
        assert_eq!(plan.status.as_ref().map(|s| s["nodeName"].clone()), Some(json!("n1")));
    }
}
