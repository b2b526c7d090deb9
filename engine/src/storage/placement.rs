//! Where a volume lives, as local-path-provisioner places them: a claim in a
//! `WaitForFirstConsumer` class is made on the node the scheduler picked for its first guest
//! (`volume.kubernetes.io/selected-node`, as kube-scheduler writes it), by that node's agent, in
//! that node's pool; its PersistentVolume says so in `spec.nodeAffinity`, and every later guest of
//! the claim is scheduled there. A claim in an `Immediate` class is made at once by the server, in
//! its pool, pinned to the server's own node when it runs one.
//!
//! Each process running storage keeps the volumes of one place (`StorageConfig::keeps`): the
//! server those without a node and those of its own node; a joined node its own. The process that
//! keeps a claim's volume makes it, fills it (import, clone, upload) and reclaims it.

use serde_json::{json, Value};

/// The claim's node, chosen by the scheduler for its first consumer.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The label every Node carries with its own name.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Which part of the storage work a process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageRole {
    /// `converge serve`: claims and DataVolumes of the cluster (binding, protection, profiles,
    /// DataSources, a DataVolume's claim), and the volumes of the server's own pool.
    #[default]
    Server,
    /// `converge node`: the volumes that live on this node alone.
    Node,
    /// `converge controllers` on a Kubernetes cluster: DataVolumes (their claims and status
    /// until a node's volume is bound), StorageProfiles and DataSources. Binding and protection
    /// are kube-controller-manager's there, every volume a node's.
    Cluster,
}

impl StorageRole {
    /// Whether this process keeps the cluster's storage catalog: StorageProfiles, DataSources.
    pub fn keeps_catalog(self) -> bool {
        matches!(self, StorageRole::Server | StorageRole::Cluster)
    }
}

/// A PersistentVolume's `spec.nodeAffinity` pinning it to `node`.
pub fn node_affinity(node: &str) -> Value {
    json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": HOSTNAME_LABEL, "operator": "In", "values": [node]}
    ]}]}})
}

/// The node a volume lives on: the one host name of a `kubernetes.io/hostname In [node]`
/// affinity (what this provisioner writes, and what local volumes carry). `None` without an
/// affinity — or with one naming no single node, which this storage keeps nowhere.
pub fn pv_node(pv: &Value) -> Option<&str> {
    let terms = pv.pointer("/spec/nodeAffinity/required/nodeSelectorTerms")?.as_array()?;
    let [term] = terms.as_slice() else { return None };
    let exprs = term.get("matchExpressions")?.as_array()?;
    let [expr] = exprs.as_slice() else { return None };
    if expr.get("key").and_then(Value::as_str) != Some(HOSTNAME_LABEL)
        || expr.get("operator").and_then(Value::as_str) != Some("In")
    {
        return None;
    }
    match expr.get("values")?.as_array()?.as_slice() {
        [only] => only.as_str(),
        _ => None,
    }
}

/// Whether a volume has a node affinity at all (a volume pinned in a way `pv_node` cannot name
/// is kept by no process here).
pub fn has_affinity(pv: &Value) -> bool {
    pv.pointer("/spec/nodeAffinity/required").is_some()
}

/// The node a claim selected, if it names one by the name rules (a tenant can write it).
pub fn selected_node(pvc: &Value) -> Option<&str> {
    crate::meta::annotation(pvc, SELECTED_NODE)
        .filter(|n| !n.is_empty() && crate::meta::dns1123_subdomain_errors(n).is_empty())
}

/// CDI's annotation on a DataVolume: fill it now, though its class waits for a first consumer
/// (what golden images want: nothing consumes them).
pub const BIND_IMMEDIATE: &str = "cdi.kubevirt.io/storage.bind.immediate.requested";

/// Where a claim filled at once lives, there being no guest to follow: this process's own node
/// when it has one, else the first (by name) Ready, schedulable node that runs Converge.
pub fn immediate_node(own: Option<&str>, nodes: &[Value]) -> Option<String> {
    if let Some(own) = own {
        return Some(own.to_string());
    }
    let mut eligible: Vec<&str> = nodes
        .iter()
        .filter(|n| crate::meta::labels(n).get("kubevirt.io/schedulable").and_then(Value::as_str) == Some("true"))
        .filter(|n| crate::controllers::status::condition_true(n, "Ready"))
        .filter(|n| n.pointer("/spec/unschedulable").and_then(Value::as_bool) != Some(true))
        .map(crate::meta::name)
        .collect();
    eligible.sort_unstable();
    eligible.first().map(|n| n.to_string())
}

/// The node terms a volume puts on its guests' placement: its `required` node selector terms.
pub fn required_terms(pv: &Value) -> Option<&Value> {
    pv.pointer("/spec/nodeAffinity/required/nodeSelectorTerms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_filled_at_once_goes_to_a_ready_node_of_converge() {
        let node = |name: &str, schedulable: bool, ready: bool, cordoned: bool| {
            json!({"metadata": {"name": name, "labels": {"kubevirt.io/schedulable": schedulable.to_string()}},
                   "spec": {"unschedulable": cordoned},
                   "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
        };
        let nodes = [
            node("d", true, true, false),
            node("a", false, true, false),
            node("b", true, false, false),
            node("c", true, true, true),
            node("e", true, true, false),
        ];
        assert_eq!(immediate_node(None, &nodes), Some("d".to_string()));
        assert_eq!(immediate_node(Some("own"), &nodes), Some("own".to_string()));
        assert_eq!(immediate_node(None, &nodes[1..4]), None);
    }

    #[test]
    fn a_volume_names_its_node_only_by_one_host_name() {
        let pinned = json!({"spec": {"nodeAffinity": node_affinity("n2")}});
        assert_eq!(pv_node(&pinned), Some("n2"));
        assert!(has_affinity(&pinned));
        assert_eq!(pv_node(&json!({"spec": {}})), None);
        let two = json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": HOSTNAME_LABEL, "operator": "In", "values": ["a", "b"]}]}]}}}});
        assert_eq!(pv_node(&two), None);
        assert!(has_affinity(&two));
        let zone = json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z"]}]}]}}}});
        assert_eq!(pv_node(&zone), None);
    }

    #[test]
    fn a_selected_node_must_be_a_node_name() {
        let claim = |n: &str| json!({"metadata": {"annotations": {SELECTED_NODE: n}}});
        assert_eq!(selected_node(&claim("node-b")), Some("node-b"));
        assert_eq!(selected_node(&claim("../x")), None);
        assert_eq!(selected_node(&claim("")), None);
        assert_eq!(selected_node(&json!({"metadata": {}})), None);
    }
}
