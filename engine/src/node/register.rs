//! This host as a core/v1 Node: labels the scheduler reads, capacity and allocatable, nodeInfo,
//! addresses and the Ready condition, refreshed by a heartbeat.

use serde_json::{json, Value};

use super::host::HostFacts;
use crate::controllers::scheduler::{EMULATION_LABEL, KVM_RESOURCE};
use crate::launcher::build::Accel;

/// Memory kept back for the host and Converge itself, as kubelet's system reservation does.
const RESERVED_MEMORY: u64 = 512 << 20;

pub struct NodeFacts<'a> {
    pub name: &'a str,
    pub host: &'a HostFacts,
    pub accel: Accel,
    /// Without KVM and without permission to emulate, the node offers neither the KVM device nor
    /// the emulation label: the scheduler answers "Insufficient devices.kubevirt.io/kvm".
    pub emulation_allowed: bool,
    pub hypervisor_version: &'a str,
    pub serving_port: u16,
}

pub fn labels(f: &NodeFacts) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": f.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubevirt.io/schedulable": "true",
    });
    if f.accel == Accel::Tcg && f.emulation_allowed {
        labels[EMULATION_LABEL] = json!("true");
    }
    labels
}

pub fn status(f: &NodeFacts, now: &str) -> Value {
    let kvm = if f.accel == Accel::Kvm { "1k" } else { "0" };
    let capacity = json!({
        "cpu": f.host.cpus.to_string(),
        "memory": format!("{}Ki", f.host.memory_bytes / 1024),
        "pods": "110",
        KVM_RESOURCE: kvm,
    });
    let allocatable = json!({
        "cpu": f.host.cpus.to_string(),
        "memory": format!("{}Ki", f.host.memory_bytes.saturating_sub(RESERVED_MEMORY) / 1024),
        "pods": "110",
        KVM_RESOURCE: kvm,
    });
    let mut addresses = vec![json!({"type": "Hostname", "address": f.host.hostname})];
    if let Some(ip) = f.host.internal_ip {
        addresses.insert(0, json!({"type": "InternalIP", "address": ip.to_string()}));
    }
    json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "addresses": addresses,
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "converge node agent is posting ready status",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }],
        "nodeInfo": {
            "architecture": "amd64",
            "bootID": f.host.boot_id,
            "containerRuntimeVersion": format!("libvirt://{}", f.hypervisor_version),
            "kernelVersion": f.host.kernel_version,
            "kubeProxyVersion": "",
            "kubeletVersion": format!("converge-v{}", env!("CARGO_PKG_VERSION")),
            "machineID": f.host.machine_id,
            "operatingSystem": "linux",
            "osImage": f.host.os_image,
            "systemUUID": f.host.machine_id,
        },
        "daemonEndpoints": {"kubeletEndpoint": {"Port": f.serving_port}},
    })
}

/// Keeps the Ready condition's transition time when it is already Ready.
pub fn merge_heartbeat(previous: Option<&Value>, mut next: Value) -> Value {
    let prev_ready = previous
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready" && c["status"] == "True"))
        .and_then(|c| c.get("lastTransitionTime").cloned());
    if let (Some(t), Some(cond)) = (prev_ready, next.pointer_mut("/conditions/0")) {
        cond["lastTransitionTime"] = t;
    }
    next
}

/// The devices a node offers as extended resources (`devices.kubevirt.io/tun`: taps for pod
/// interfaces; the KVM device only where KVM works).
fn devices(accel: Accel) -> [(&'static str, &'static str); 2] {
    [
        (KVM_RESOURCE, if accel == Accel::Kvm { "1k" } else { "0" }),
        (crate::controllers::launcher_pod::TUN_RESOURCE, "1k"),
    ]
}

/// Publishes (or withdraws) where guests migrate to this node (`migration::endpoint`).
pub fn set_migration_endpoint(node: &mut Value, endpoint: Option<&crate::migration::Endpoint>) {
    use crate::migration::endpoint::ANNOTATION;
    let annotations = crate::meta::at_mut(node, &["metadata", "annotations"]);
    if !annotations.is_object() {
        *annotations = json!({});
    }
    if let Some(map) = annotations.as_object_mut() {
        match endpoint {
            Some(e) => map.insert(ANNOTATION.into(), json!(e.annotation_value())),
            None => map.remove(ANNOTATION),
        };
    }
}

/// Where the agent on a kubelet's Node serves the controllers (the Node's endpoints are the
/// kubelet's): the port on the Node's InternalIP.
pub const AGENT_PORT_ANNOTATION: &str = "converge.dev/agent-port";

/// On a Kubernetes cluster the kubelet registers the Node and posts its status; the agent adds
/// only what virt-handler adds: its labels, and the annotation saying where it serves. The Node
/// with them, or `None` when it has them.
pub fn joined_labels(node: &Value, f: &NodeFacts) -> Option<Value> {
    let mut next = node.clone();
    let annotations = crate::meta::at_mut(&mut next, &["metadata", "annotations"]);
    if !annotations.is_object() {
        *annotations = json!({});
    }
    let map = annotations.as_object_mut()?;
    match f.serving_port {
        0 => map.remove(AGENT_PORT_ANNOTATION),
        port => map.insert(AGENT_PORT_ANNOTATION.into(), json!(port.to_string())),
    };
    if map.is_empty() && node.pointer("/metadata/annotations").is_none() {
        if let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("annotations");
        }
    }
    let labels = crate::meta::at_mut(&mut next, &["metadata", "labels"]);
    if !labels.is_object() {
        *labels = json!({});
    }
    let map = labels.as_object_mut()?;
    map.remove(EMULATION_LABEL);
    map.insert("kubevirt.io/schedulable".into(), json!("true"));
    if f.accel == Accel::Tcg && f.emulation_allowed {
        map.insert(EMULATION_LABEL.into(), json!("true"));
    }
    (next != *node).then_some(next)
}

/// The Node's status with the devices this node offers in capacity and allocatable, as a device
/// plugin's resources appear there (the rest is the kubelet's); `None` when already so.
pub fn joined_status(node: &Value, accel: Accel) -> Option<Value> {
    let mut next = node.clone();
    for field in ["capacity", "allocatable"] {
        let map = crate::meta::at_mut(&mut next, &["status", field]);
        if !map.is_object() {
            *map = json!({});
        }
        for (resource, amount) in devices(accel) {
            map[resource] = json!(amount);
        }
    }
    (next != *node).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joined_node_gains_labels_and_devices_and_keeps_the_kubelets_status() {
        let host = super::super::host::gather();
        let facts = NodeFacts {
            name: "n1",
            host: &host,
            accel: Accel::Tcg,
            emulation_allowed: true,
            hypervisor_version: "9.0",
            serving_port: 8186,
        };
        let node = json!({"metadata": {"name": "n1", "labels": {"zone": "a"}},
            "status": {"capacity": {"cpu": "4"}, "allocatable": {"cpu": "3"},
                       "conditions": [{"type": "Ready", "status": "True"}]}});
        let labelled = joined_labels(&node, &facts).unwrap_or_default();
        assert_eq!(labelled["metadata"]["labels"]["zone"], "a");
        assert_eq!(labelled["metadata"]["labels"][EMULATION_LABEL], "true");
        assert_eq!(labelled["metadata"]["annotations"][AGENT_PORT_ANNOTATION], "8186");
        assert_eq!(joined_labels(&labelled, &facts), None, "nothing to write twice");
        let status = joined_status(&labelled, Accel::Tcg).unwrap_or_default();
        assert_eq!(
            status["status"]["allocatable"],
            json!({"cpu": "3", KVM_RESOURCE: "0", "devices.kubevirt.io/tun": "1k"})
        );
        assert_eq!(status["status"]["conditions"], node["status"]["conditions"]);
        assert_eq!(joined_status(&status, Accel::Tcg), None);
    }
}
