//! Controllers as kube-rs shapes them: pure reconcilers (`vm`, `vmi`, `replicaset`, `scheduler`)
//! and a runtime that feeds them from the cluster (`crate::cluster`) through work queues
//! (`crate::worker`) and applies their plans.

pub mod datavolumes;
pub mod endpoints;
pub mod launcher_pod;
pub mod migration;
pub mod nodeipam;
pub mod nodes;
pub mod replicaset;
pub mod revisions;
pub mod scheduler;
pub mod status;
pub mod vm;
pub mod vmi;
pub mod volume_binding;

mod runtime;
mod vm_sync;

pub use crate::worker::Key;
pub use runtime::{spawn, ApiKind, Controllers};

/// The name KubeVirt's controllers record events under.
pub(crate) const COMPONENT: &str = "virtualmachine-controller";

/// The finalizer every VMI is born with; removed once its domain is gone (or it never had one).
pub const VMI_FINALIZER: &str = "kubevirt.io/virtualMachineControllerFinalize";

/// A VMI from an owner's `spec.template`, owned (as controller) by that owner: what the VM and
/// replica-set controllers create.
pub fn owned_vmi_from_template(owner: &serde_json::Value, owner_kind: &str, name: &str) -> serde_json::Value {
    use crate::meta;
    use serde_json::json;
    let template = owner.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut metadata = json!({
        "name": name,
        "namespace": meta::namespace(owner),
        "ownerReferences": [{
            "apiVersion": "kubevirt.io/v1",
            "kind": owner_kind,
            "name": meta::name(owner),
            "uid": meta::uid(owner),
            "controller": true,
            "blockOwnerDeletion": true,
        }],
    });
    for field in ["labels", "annotations"] {
        if let Some(v) = template.pointer(&format!("/metadata/{field}")).filter(|v| v.is_object()) {
            metadata[field] = v.clone();
        }
    }
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": metadata,
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    })
}
