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
