//! On a Kubernetes cluster a VMI is placed as KubeVirt places it: through a launcher pod whose
//! requests are the guest's plus the overhead of what runs beside it, bound by the cluster's own
//! kube-scheduler among ordinary pods. The node agent then starts the domain on the node the pod
//! was bound to; when the pod goes (deleted, evicted, failed), the VMI fails and the agent
//! stops the guest; when the VMI finishes, its pod is deleted to free what it holds.
//!
//! The pod's container is a placeholder (by default the pause image): QEMU runs under the node's
//! libvirtd, started by `converge node`, not inside the pod's cgroup — the pod is how the
//! cluster's scheduler and quota see the guest.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::scheduler::{self, KVM_RESOURCE};
use super::status::{self as st, is_final, node_name, phase};
use super::vmi::NODE_NAME_LABEL;
use super::{Key, VMI_FINALIZER};
use crate::cluster::Cluster;
use crate::error::ApiResult;
use crate::kinds;
use crate::launcher::spec::VmiSpec;
use crate::meta;
use crate::quantity;
use crate::store::{DeleteOptions, UpdateMode};
use crate::worker::Action;

/// `kubevirt.io: virt-launcher`, as KubeVirt labels its pods.
pub const APP_LABEL: &str = "kubevirt.io";
/// The uid of the VMI a launcher pod serves.
pub const CREATED_BY: &str = "kubevirt.io/created-by";
pub const TUN_RESOURCE: &str = "devices.kubevirt.io/tun";
pub const SCHEDULABLE_LABEL: &str = "kubevirt.io/schedulable";
pub const DEFAULT_IMAGE: &str = "registry.k8s.io/pause:3.10";

const MI: u64 = 1 << 20;

/// What a launcher pod is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSettings {
    pub image: String,
    /// Ask for the KVM device; off where the cluster runs guests under software emulation
    /// (KubeVirt's `useEmulation`, whose launcher pods do not ask for it either).
    pub kvm: bool,
}

impl Default for PodSettings {
    fn default() -> Self {
        PodSettings { image: DEFAULT_IMAGE.into(), kvm: true }
    }
}

/// KubeVirt's estimate of what runs beside the guest's memory (pkg/virt-controller/services:
/// the launcher, its monitor, virtlogd, virtqemud, QEMU itself, 8 MiB per vCPU, the video
/// device, an IOThread, and the page tables: 1/512 of the guest).
pub fn memory_overhead(vmi: &Value) -> u64 {
    let Ok(spec) = VmiSpec::from_vmi(vmi) else { return 0 };
    let guest = spec.guest_memory_bytes().unwrap_or(0);
    let vcpus = vcpu_count(&spec);
    let graphics = vmi.pointer("/spec/domain/devices/autoattachGraphicsDevice").and_then(Value::as_bool) != Some(false);
    let fixed = (100 + 25 + 25 + 40 + 30 + 8) * MI;
    // Saturating: the VMI is read back from the cluster, whatever admission bounded then.
    let video = if graphics { 32 * MI } else { 0 };
    fixed.saturating_add(vcpus.saturating_mul(8 * MI)).saturating_add(video).saturating_add(guest / 512)
}

/// Sockets × cores × threads.
fn vcpu_count(spec: &VmiSpec) -> u64 {
    let (sockets, cores, threads) = spec.vcpus();
    u64::from(sockets).saturating_mul(u64::from(cores)).saturating_mul(u64::from(threads))
}

/// The launcher pod for `vmi`.
pub fn launcher_pod(vmi: &Value, settings: &PodSettings) -> Value {
    let name = meta::name(vmi);
    let request = scheduler::request_of(vmi);
    let vcpus = VmiSpec::from_vmi(vmi).map(|s| vcpu_count(&s)).unwrap_or(1);
    // KubeVirt's default: a tenth of a core per vCPU (cpuAllocationRatio 10).
    let cpu_milli = if request.cpu_milli > 0 { request.cpu_milli } else { vcpus.saturating_mul(100) };
    let memory = request.memory_bytes.saturating_add(memory_overhead(vmi));
    let mut labels: Map<String, Value> = meta::labels(vmi);
    labels.insert(APP_LABEL.into(), json!("virt-launcher"));
    labels.insert(CREATED_BY.into(), json!(meta::uid(vmi)));
    labels.insert("vm.kubevirt.io/name".into(), json!(name));
    let mut node_selector = vmi.pointer("/spec/nodeSelector").and_then(Value::as_object).cloned().unwrap_or_default();
    node_selector.insert(SCHEDULABLE_LABEL.into(), json!("true"));
    let mut limits = json!({TUN_RESOURCE: "1"});
    if settings.kvm {
        limits[KVM_RESOURCE] = json!("1");
    }
    let grace = vmi.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30);
    let mut spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "nodeSelector": node_selector,
        // The launcher's own shutdown comes after the guest's, as KubeVirt adds 15 s.
        "terminationGracePeriodSeconds": grace.clamp(0, crate::admission::MAX_GRACE_PERIOD_SECONDS) + 15,
        "containers": [{
            "name": "compute",
            "image": settings.image,
            "resources": {
                "requests": {"cpu": format!("{cpu_milli}m"), "memory": memory.to_string()},
                "limits": limits,
            },
        }],
    });
    // The guest's claims, as virt-launcher mounts them: kube-scheduler then places the pod where
    // its volumes are, and picks the node of a WaitForFirstConsumer claim's volume.
    let volumes: Vec<Value> = crate::storage::claims::claims_of(vmi)
        .iter()
        .enumerate()
        .map(|(i, claim)| json!({"name": format!("claim-{i}"), "persistentVolumeClaim": {"claimName": claim}}))
        .collect();
    if !volumes.is_empty() {
        spec["volumes"] = json!(volumes);
    }
    for key in ["affinity", "tolerations", "schedulerName", "priorityClassName"] {
        if let Some(v) = vmi.pointer(&format!("/spec/{key}")) {
            spec[key] = v.clone();
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("virt-launcher-{}-", truncated(name, 40)),
            "namespace": meta::namespace(vmi),
            "labels": labels,
            "annotations": {"kubevirt.io/domain": name},
            "ownerReferences": [{
                "apiVersion": kinds::VIRTUAL_MACHINE_INSTANCE.api_version(),
                "kind": "VirtualMachineInstance",
                "name": name,
                "uid": meta::uid(vmi),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
    })
}

fn truncated(name: &str, max: usize) -> &str {
    match name.char_indices().nth(max) {
        Some((i, _)) => name[..i].trim_end_matches(['-', '.']),
        None => name,
    }
}

/// The pods serving `vmi` (by its uid: a new VMI of the same name has pods of its own).
pub fn pods_of<'a>(vmi: &Value, pods: &'a [Value]) -> Vec<&'a Value> {
    let uid = meta::uid(vmi);
    pods.iter().filter(|p| meta::labels(p).get(CREATED_BY).and_then(Value::as_str) == Some(uid)).collect()
}

fn pod_done(pod: &Value) -> bool {
    meta::is_deleting(pod) || matches!(phase(pod), "Succeeded" | "Failed")
}

#[derive(Debug, Default, PartialEq)]
pub struct PodPlan {
    pub create: Option<Value>,
    /// Pods to delete (names).
    pub delete: Vec<String>,
    pub status: Option<Value>,
    pub node_label: Option<String>,
    pub remove_finalizer: bool,
    pub requeue_after: Option<Duration>,
}

/// Pure: what to do with `vmi` given its launcher pods.
pub fn reconcile(vmi: &Value, pods: &[&Value], settings: &PodSettings, now: &str) -> PodPlan {
    let mut plan = PodPlan::default();
    let live: Vec<&Value> = pods.iter().copied().filter(|p| !pod_done(p)).collect();
    if meta::is_deleting(vmi) {
        // No node took it: nothing on a node to wait for.
        plan.remove_finalizer = node_name(vmi).is_none() && meta::finalizers(vmi).iter().any(|f| f == VMI_FINALIZER);
        if is_final(phase(vmi)) || node_name(vmi).is_none() {
            plan.delete = live.iter().map(|p| meta::name(p).to_string()).collect();
        }
        return plan;
    }
    if is_final(phase(vmi)) {
        plan.delete = live.iter().map(|p| meta::name(p).to_string()).collect();
        return plan;
    }
    let mut next = vmi.clone();
    let had_pod = vmi.pointer("/status/activePods").and_then(Value::as_object).is_some_and(|m| !m.is_empty());
    match (node_name(vmi), live.first()) {
        (_, None) if had_pod => {
            // Its pod was deleted or evicted (or failed): the guest goes with it.
            st::set_phase(&mut next, st::FAILED, now);
            st::set_condition(&mut next, "Ready", false, "PodTerminating", "the virt-launcher pod is gone", now);
        }
        (None, None) => {
            plan.create = Some(launcher_pod(vmi, settings));
            st::set_phase(&mut next, st::PENDING, now);
        }
        (None, Some(pod)) => match pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            Some(node) => {
                plan.node_label = Some(node.to_string());
                st::mark_scheduled(&mut next, node, now);
            }
            None => {
                // kube-scheduler's own words, as KubeVirt copies them from the pod.
                let scheduled = st::condition(pod, "PodScheduled");
                let reason = scheduled.and_then(|c| c.get("reason")).and_then(Value::as_str).unwrap_or("");
                let message = scheduled.and_then(|c| c.get("message")).and_then(Value::as_str).unwrap_or("");
                st::mark_unscheduled(&mut next, reason, message, now);
            }
        },
        (Some(_), _) => {}
    }
    if let Some(pod) = live.first() {
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
        st::status_mut(&mut next).insert("activePods".into(), json!({meta::uid(pod): node}));
    }
    plan.status = next.get("status").cloned().filter(|s| Some(s) != vmi.get("status"));
    plan
}

pub(super) async fn sync(cluster: &dyn Cluster, (ns, name): Key, settings: &PodSettings) -> ApiResult<Action> {
    let Some(vmi) = cluster.get(&kinds::VIRTUAL_MACHINE_INSTANCE, &ns, &name).await? else {
        return Ok(Action::AwaitChange);
    };
    let pods = cluster.list(&kinds::POD, Some(&ns)).await?;
    let plan = reconcile(&vmi, &pods_of(&vmi, &pods), settings, &meta::now_rfc3339());
    for pod in &plan.delete {
        match cluster.delete(&kinds::POD, &ns, pod, DeleteOptions::default()).await {
            Err(e) if e.code != 404 => return Err(e),
            _ => {}
        }
    }
    if plan.remove_finalizer {
        super::vmi::release(cluster, &vmi).await?;
        return Ok(Action::AwaitChange);
    }
    let mut status = plan.status;
    if let Some(pod) = plan.create {
        let made = cluster.create(&kinds::POD, pod).await?;
        if let Some(s) = status.as_mut() {
            s["activePods"] = json!({meta::uid(&made): ""});
        }
    }
    let mut vmi = vmi;
    if let Some(node) = &plan.node_label {
        let mut labelled = vmi.clone();
        *meta::at_mut(&mut labelled, &["metadata", "labels", NODE_NAME_LABEL]) = Value::String(node.clone());
        vmi = cluster.update(&kinds::VIRTUAL_MACHINE_INSTANCE, labelled, UpdateMode::Main).await?;
    }
    if let Some(status) = status {
        crate::cluster::write_status(cluster, &kinds::VIRTUAL_MACHINE_INSTANCE, &vmi, status).await?;
    }
    Ok(plan.requeue_after.into())
}

/// The memory a pod asks for, in bytes (for tests and the bench).
pub fn pod_memory_request(pod: &Value) -> Option<u64> {
    pod.pointer("/spec/containers/0/resources/requests/memory")
        .and_then(|q| quantity::parse_value(q).ok())
        .map(|m| m as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi() -> Value {
        json!({"metadata": {"name": "web", "namespace": "ns", "uid": "u-1", "labels": {"app": "web"},
                            "finalizers": [VMI_FINALIZER]},
               "spec": {"domain": {"cpu": {"cores": 2}, "resources": {"requests": {"memory": "512Mi"}}},
                        "nodeSelector": {"disk": "ssd"}, "tolerations": [{"key": "k", "operator": "Exists"}]}})
    }

    #[test]
    fn the_pod_asks_for_the_guest_and_its_overhead_where_the_vmi_may_run() {
        let pod = launcher_pod(&vmi(), &PodSettings::default());
        let overhead = (100 + 25 + 25 + 40 + 30 + 8 + 2 * 8 + 32) * MI + (512 * MI) / 512;
        assert_eq!(pod_memory_request(&pod), Some(512 * MI + overhead));
        assert_eq!(pod["spec"]["containers"][0]["resources"]["requests"]["cpu"], "200m");
        assert_eq!(pod["spec"]["containers"][0]["resources"]["limits"][KVM_RESOURCE], "1");
        let emulated = launcher_pod(&vmi(), &PodSettings { kvm: false, ..PodSettings::default() });
        assert_eq!(emulated["spec"]["containers"][0]["resources"]["limits"], json!({TUN_RESOURCE: "1"}));
        assert_eq!(pod["spec"]["nodeSelector"], json!({"disk": "ssd", SCHEDULABLE_LABEL: "true"}));
        assert_eq!(pod["spec"]["tolerations"][0]["key"], "k");
        assert_eq!(pod["metadata"]["labels"]["app"], "web", "Services select the VMI's labels");
        assert_eq!(pod["metadata"]["labels"][CREATED_BY], "u-1");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(pod["metadata"]["generateName"], "virt-launcher-web-");
        assert!(pod["spec"].get("volumes").is_none(), "no claims, no volumes");
        let mut with_disks = vmi();
        with_disks["spec"]["volumes"] = json!([{"name": "root", "dataVolume": {"name": "web-root"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "web-data"}}, {"name": "e", "emptyDisk": {}}]);
        let pod = launcher_pod(&with_disks, &PodSettings::default());
        assert_eq!(
            pod["spec"]["volumes"],
            json!([{"name": "claim-0", "persistentVolumeClaim": {"claimName": "web-root"}},
                   {"name": "claim-1", "persistentVolumeClaim": {"claimName": "web-data"}}]),
            "kube-scheduler places the pod by its claims"
        );
    }

    #[test]
    fn a_vmi_follows_its_pod_from_creation_to_binding_to_its_end() {
        let settings = PodSettings::default();
        let v = vmi();
        let first = reconcile(&v, &[], &settings, "t0");
        assert!(first.create.is_some());
        assert_eq!(first.status.as_ref().map(|s| s["phase"].clone()), Some(json!("Pending")));

        let mut v = v;
        v["status"] = json!({"phase": "Pending", "activePods": {"p-1": ""}});
        let pending = json!({"metadata": {"name": "virt-launcher-web-x", "uid": "p-1", "labels": {CREATED_BY: "u-1"}},
            "spec": {}, "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/2 nodes are available: 2 Insufficient memory."}]}});
        let waiting = reconcile(&v, &[&pending], &settings, "t1");
        let status = waiting.status.unwrap_or_default();
        assert_eq!(status["phase"], "Scheduling");
        assert!(status.to_string().contains("2 Insufficient memory."), "{status}");
        assert!(waiting.create.is_none());

        let mut bound = pending.clone();
        bound["spec"]["nodeName"] = json!("node-b");
        let placed = reconcile(&v, &[&bound], &settings, "t2");
        assert_eq!(placed.node_label.as_deref(), Some("node-b"));
        let status = placed.status.unwrap_or_default();
        assert_eq!((status["phase"].clone(), status["nodeName"].clone()), (json!("Scheduled"), json!("node-b")));
        assert_eq!(status["activePods"], json!({"p-1": "node-b"}));

        // Evicted: the VMI fails (its node's agent stops the guest).
        let mut running = v.clone();
        running["status"] = json!({"phase": "Running", "nodeName": "node-b", "activePods": {"p-1": "node-b"}});
        let mut evicted = bound.clone();
        evicted["metadata"]["deletionTimestamp"] = json!("t3");
        let gone = reconcile(&running, &[&evicted], &settings, "t3");
        assert_eq!(gone.status.map(|s| s["phase"].clone()), Some(json!("Failed")));
        assert_eq!(reconcile(&running, &[], &settings, "t3").create, None, "never a second pod for a placed VMI");

        // Finished: its pod is deleted.
        let mut done = running.clone();
        done["status"]["phase"] = json!("Succeeded");
        assert_eq!(reconcile(&done, &[&bound], &settings, "t4").delete, vec!["virt-launcher-web-x".to_string()]);
        // Deleted before any node took it: released at once.
        let mut deleted = v.clone();
        deleted["metadata"]["deletionTimestamp"] = json!("t5");
        assert!(reconcile(&deleted, &[&pending], &settings, "t5").remove_finalizer);
    }
}
