//! A VM's `dataVolumeTemplates`: the DataVolumes it owns, and whether its volumes let it start.

use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::error::ApiResult;
use crate::kinds;
use crate::meta;

/// What a VM's DataVolumes allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumesState {
    Ready,
    /// Being imported, cloned or uploaded: KubeVirt's `Provisioning`.
    Provisioning,
    /// Their claims wait for a volume: `WaitingForVolumeBinding`.
    WaitingForVolumeBinding,
    /// One failed: `DataVolumeError`, with its message.
    Error(String),
}

impl VolumesState {
    pub fn printable(&self) -> Option<&'static str> {
        match self {
            VolumesState::Ready => None,
            VolumesState::Provisioning => Some("Provisioning"),
            VolumesState::WaitingForVolumeBinding => Some("WaitingForVolumeBinding"),
            VolumesState::Error(_) => Some("DataVolumeError"),
        }
    }
}

/// The DataVolume a template asks for, owned by the VM.
pub fn datavolume_from_template(vm: &Value, template: &Value) -> Value {
    let mut metadata = template.get("metadata").cloned().filter(Value::is_object).unwrap_or(json!({}));
    metadata["namespace"] = json!(meta::namespace(vm));
    metadata["ownerReferences"] = json!([{
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "name": meta::name(vm),
        "uid": meta::uid(vm),
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    if let Some(m) = metadata.as_object_mut() {
        m.remove("creationTimestamp");
    }
    json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": metadata,
        "spec": template.get("spec").cloned().unwrap_or(json!({})),
    })
}

/// The state of one DataVolume, for the VM.
pub fn state_of(dv: &Value) -> VolumesState {
    let phase = dv.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
    match phase {
        "Succeeded" | "WaitForFirstConsumer" | "PendingPopulation" => VolumesState::Ready,
        "Failed" => {
            let message = crate::storage::datavolume::running_message(dv).unwrap_or("the DataVolume failed");
            VolumesState::Error(format!("DataVolume {} failed: {message}", meta::name(dv)))
        }
        "" | "Pending" => VolumesState::WaitingForVolumeBinding,
        _ => VolumesState::Provisioning,
    }
}

/// The worst of several states.
pub fn combine(states: impl IntoIterator<Item = VolumesState>) -> VolumesState {
    let rank = |s: &VolumesState| match s {
        VolumesState::Ready => 0,
        VolumesState::Provisioning => 1,
        VolumesState::WaitingForVolumeBinding => 2,
        VolumesState::Error(_) => 3,
    };
    states.into_iter().max_by_key(rank).unwrap_or(VolumesState::Ready)
}

/// Creates the VM's missing DataVolumes and tells what they allow.
pub async fn ensure(cluster: &dyn Cluster, vm: &Value) -> ApiResult<VolumesState> {
    let templates = vm.pointer("/spec/dataVolumeTemplates").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut states = vec![];
    for template in &templates {
        let name = template.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            continue;
        }
        let dv = match cluster.get(&kinds::DATA_VOLUME, meta::namespace(vm), name).await? {
            Some(dv) => dv,
            None if meta::is_deleting(vm) => continue,
            None => {
                let new = datavolume_from_template(vm, template);
                match cluster.create(&kinds::DATA_VOLUME, new).await {
                    Ok(created) => created,
                    Err(e) if e.code == 409 => continue,
                    Err(e) => {
                        states.push(VolumesState::Error(format!("DataVolume {name} cannot be created: {}", e.message)));
                        continue;
                    }
                }
            }
        };
        states.push(state_of(&dv));
    }
    Ok(combine(states))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datavolume_phases_decide_whether_the_vm_may_start() {
        let dv = |phase: &str| json!({"metadata": {"name": "root"}, "status": {"phase": phase}});
        assert_eq!(state_of(&dv("Succeeded")), VolumesState::Ready);
        assert_eq!(state_of(&dv("WaitForFirstConsumer")), VolumesState::Ready);
        assert_eq!(state_of(&dv("ImportInProgress")), VolumesState::Provisioning);
        assert_eq!(state_of(&dv("Pending")), VolumesState::WaitingForVolumeBinding);
        assert!(matches!(state_of(&dv("Failed")), VolumesState::Error(_)));
        assert_eq!(combine([VolumesState::Ready, VolumesState::Provisioning]), VolumesState::Provisioning);
        let vm = json!({"metadata": {"name": "vm", "namespace": "ns", "uid": "u"}});
        let t = json!({"metadata": {"name": "root"}, "spec": {"source": {"blank": {}}}});
        let made = datavolume_from_template(&vm, &t);
        assert_eq!(made["metadata"]["ownerReferences"][0]["uid"], "u");
        assert_eq!(made["metadata"]["namespace"], "ns");
    }
}
