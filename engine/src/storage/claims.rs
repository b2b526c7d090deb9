//! What a guest's volumes need from storage: a claim's file or device once it is bound and
//! filled, and which claims guests consume (for WaitForFirstConsumer and pvc-protection).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use super::ANN_POD_PHASE;
use crate::cluster::Cluster;
use crate::error::ApiResult;
use crate::kinds;
use crate::meta;

/// A claim ready to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimVolume {
    /// The volume's `disk.img`.
    pub file: PathBuf,
    /// Block mode: attach through a loop device.
    pub block: bool,
    /// The node the volume lives on (`placement::pv_node`); `None`: the server's pool.
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimState {
    Ready(ClaimVolume),
    /// Not yet: (reason, message). The guest waits.
    Waiting(String, String),
}

/// Claim names `vmi` uses: `persistentVolumeClaim.claimName` and `dataVolume.name`.
pub fn claims_of(vmi: &Value) -> Vec<String> {
    vmi.pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            v.pointer("/persistentVolumeClaim/claimName")
                .or_else(|| v.pointer("/dataVolume/name"))
                .and_then(Value::as_str)
        })
        .map(str::to_string)
        .collect()
}

/// `(namespace, claim)` pairs consumed by VMIs that are not finished.
pub async fn consumed(cluster: &dyn Cluster) -> ApiResult<BTreeSet<(String, String)>> {
    Ok(consumers(cluster).await?.into_keys().collect())
}

/// `(namespace, claim)` consumed by VMIs that are not finished, with the node of a placed one.
pub async fn consumers(cluster: &dyn Cluster) -> ApiResult<BTreeMap<(String, String), Option<String>>> {
    let vmis = cluster.list(&kinds::VIRTUAL_MACHINE_INSTANCE, None).await?;
    let mut out: BTreeMap<(String, String), Option<String>> = BTreeMap::new();
    for v in vmis.iter().filter(|v| !crate::controllers::status::is_final(crate::controllers::status::phase(v))) {
        let node = crate::controllers::status::node_name(v).map(str::to_string);
        for c in claims_of(v) {
            let entry = out.entry((meta::namespace(v).to_string(), c)).or_default();
            if entry.is_none() {
                entry.clone_from(&node);
            }
        }
    }
    Ok(out)
}

/// Whether `pvc` is ready for a guest, from it and its volume.
pub fn state_of(pvc: Option<&Value>, pv: Option<&Value>, claim: &str) -> ClaimState {
    let Some(pvc) = pvc else {
        return ClaimState::Waiting("PVCNotFound".into(), format!("PersistentVolumeClaim {claim:?} not found"));
    };
    if pvc.pointer("/status/phase").and_then(Value::as_str) != Some("Bound") {
        return ClaimState::Waiting("PVCNotBound".into(), format!("PersistentVolumeClaim {claim:?} is not bound yet"));
    }
    let filling = meta::annotation(pvc, ANN_POD_PHASE).filter(|p| *p != "Succeeded");
    if let Some(phase) = filling {
        return ClaimState::Waiting(
            "DataVolumeNotReady".into(),
            format!("PersistentVolumeClaim {claim:?} is still being populated ({phase})"),
        );
    }
    // The claim's volumeName and phase are the tenant's to write; the volume's claimRef is not.
    let pv = pv.filter(|pv| super::provisioner::bound_to(pv, pvc));
    if pv.is_none() {
        return ClaimState::Waiting("PVCNotBound".into(), format!("PersistentVolumeClaim {claim:?} is not bound yet"));
    }
    match pv.and_then(|pv| pv.pointer("/spec/hostPath/path")).and_then(Value::as_str) {
        Some(path) => ClaimState::Ready(ClaimVolume {
            file: PathBuf::from(path),
            block: super::volume_mode(pvc) == "Block",
            node: pv.and_then(super::placement::pv_node).map(str::to_string),
        }),
        None => ClaimState::Waiting(
            "PVNotUsable".into(),
            format!("the volume of claim {claim:?} is not one this node can attach"),
        ),
    }
}

/// Looks `claim` up in `namespace`.
pub async fn resolve(cluster: &dyn Cluster, namespace: &str, claim: &str) -> ApiResult<ClaimState> {
    let pvc = cluster.get(&kinds::PERSISTENT_VOLUME_CLAIM, namespace, claim).await?;
    let pv_name = pvc.as_ref().and_then(|p| p.pointer("/spec/volumeName")).and_then(Value::as_str);
    let pv = match pv_name {
        Some(n) => cluster.get(&kinds::PERSISTENT_VOLUME, "", n).await?,
        None => None,
    };
    let state = state_of(pvc.as_ref(), pv.as_ref(), claim);
    // A directory volume an admin made starts without a disk: KubeVirt makes `disk.img` the size
    // of the volume on first use, and so does this.
    if let (ClaimState::Ready(v), Some(pv)) = (&state, &pv) {
        if !v.block && !v.file.exists() && v.file.parent().is_some_and(|d| d.is_dir()) {
            let size =
                pv.pointer("/spec/capacity/storage").and_then(|q| crate::quantity::parse_value(q).ok()).unwrap_or(0.0);
            let made = std::fs::File::create(&v.file).and_then(|f| f.set_len(super::aligned_down(size as u64)));
            if let Err(e) = made {
                return Ok(ClaimState::Waiting(
                    "FailedAttachVolume".into(),
                    format!("creating {}: {e}", v.file.display()),
                ));
            }
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_claim_is_ready_when_bound_and_filled() {
        let pv = json!({"spec": {"hostPath": {"path": "/p/pvc-1/disk.img", "type": "File"},
                                  "claimRef": {"namespace": "ns", "name": "c", "uid": "u-1"}}});
        let mut pvc = json!({"metadata": {"name": "c", "namespace": "ns", "uid": "u-1", "annotations": {ANN_POD_PHASE: "Running"}}, "spec": {"volumeMode": "Block"}, "status": {"phase": "Bound"}});
        assert!(matches!(state_of(None, None, "c"), ClaimState::Waiting(r, _) if r == "PVCNotFound"));
        assert!(matches!(state_of(Some(&pvc), Some(&pv), "c"), ClaimState::Waiting(r, _) if r == "DataVolumeNotReady"));
        pvc["metadata"]["annotations"][ANN_POD_PHASE] = json!("Succeeded");
        let ready = ClaimVolume { file: "/p/pvc-1/disk.img".into(), block: true, node: None };
        assert_eq!(state_of(Some(&pvc), Some(&pv), "c"), ClaimState::Ready(ready));
        // Another claim that names the volume and says it is Bound gets nothing.
        let mut thief = pvc.clone();
        thief["metadata"]["uid"] = json!("u-2");
        assert!(matches!(state_of(Some(&thief), Some(&pv), "c"), ClaimState::Waiting(r, _) if r == "PVCNotBound"));
        pvc["status"]["phase"] = json!("Pending");
        assert!(matches!(state_of(Some(&pvc), Some(&pv), "c"), ClaimState::Waiting(r, _) if r == "PVCNotBound"));
        let vmi = json!({"spec": {"volumes": [{"name": "a", "dataVolume": {"name": "dv"}}, {"name": "b", "persistentVolumeClaim": {"claimName": "p"}}, {"name": "c", "emptyDisk": {}}]}});
        assert_eq!(claims_of(&vmi), vec!["dv", "p"]);
    }
}
