//! The embedded provisioner, pure: which claims bind, what PersistentVolume a claim gets, and
//! what a claim's status says. `runtime` makes the files and writes the objects.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::{requested_bytes, volume_mode, StorageConfig, PROVISIONER};
use crate::meta;

/// A class whose claims bind only once a guest uses them.
pub fn waits_for_consumer(class: &Value) -> bool {
    class.get("volumeBindingMode").and_then(Value::as_str) == Some("WaitForFirstConsumer") && !shared_pool(class)
}

/// The class's pool is reached at the same path on every node (`parameters.shared: "true"`
/// with `parameters.path`: on one machine a directory, across machines a mount the admin
/// provides): its volumes are made by the server at once and pinned to no node, so their guests
/// run — and live-migrate — anywhere.
pub fn shared_pool(class: &Value) -> bool {
    class.pointer("/parameters/shared").and_then(Value::as_str) == Some("true")
        && class.pointer("/parameters/path").and_then(Value::as_str).is_some_and(|p| !p.is_empty())
}

/// Whether `pvc` should be provisioned now, or why not (reason, message).
pub fn binding_decision(pvc: &Value, class: Option<&Value>, consumed: bool) -> Result<(), (&'static str, String)> {
    let class_name = pvc.pointer("/spec/storageClassName").and_then(Value::as_str).unwrap_or_default();
    let Some(class) = class else {
        return Err((
            "ProvisioningFailed",
            if class_name.is_empty() {
                "no storage class is set and there is no default storage class".to_string()
            } else {
                format!("storageclass.storage.k8s.io \"{class_name}\" not found")
            },
        ));
    };
    if class.get("provisioner").and_then(Value::as_str) != Some(PROVISIONER) {
        return Err((
            "ExternalProvisioning",
            format!(
                "waiting for a volume to be created by the external provisioner {:?}; Converge provisions only {PROVISIONER}",
                class.get("provisioner").and_then(Value::as_str).unwrap_or_default()
            ),
        ));
    }
    if waits_for_consumer(class) && !consumed {
        return Err(("WaitForFirstConsumer", "waiting for first consumer to be created before binding".into()));
    }
    Ok(())
}

/// The PersistentVolume for `pvc` from `class`, and the volume's directory.
/// The volume for `pvc` in `class`'s pool, pinned to `node` if it lives on one.
pub fn volume_for(
    pvc: &Value,
    class: &Value,
    config: &StorageConfig,
    node: Option<&str>,
) -> Result<(Value, PathBuf, u64), String> {
    let size = requested_bytes(pvc).ok_or("spec.resources.requests.storage is missing or not a positive quantity")?;
    let size = super::aligned_up(size);
    if let Some(max) = config.max_volume_bytes.filter(|m| size > *m) {
        return Err(format!("the claim asks for {size} bytes, more than this node's cap of {max} bytes"));
    }
    let uid = meta::uid(pvc);
    if uid.is_empty() || !uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("the claim has no usable uid".into());
    }
    let name = format!("pvc-{uid}");
    let dir = config.pool_dir(class).join(&name);
    let access_modes = pvc.pointer("/spec/accessModes").cloned().unwrap_or(json!(["ReadWriteOnce"]));
    let pv = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            "finalizers": ["kubernetes.io/pv-protection"],
        },
        "spec": {
            "accessModes": access_modes,
            "capacity": {"storage": quantity(size)},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta::namespace(pvc),
                "name": meta::name(pvc),
                "uid": uid,
            },
            "persistentVolumeReclaimPolicy": class.get("reclaimPolicy").and_then(Value::as_str).unwrap_or("Delete"),
            "storageClassName": meta::name(class),
            "volumeMode": volume_mode(pvc),
            "hostPath": {
                "path": dir.join("disk.img").display().to_string(),
                "type": "File",
            },
        },
    });
    let mut pv = pv;
    if let Some(node) = node {
        pv["spec"]["nodeAffinity"] = super::placement::node_affinity(node);
    }
    Ok((pv, dir, size))
}

/// Bytes as the apiserver prints them: `16Mi`, `2Gi`, or plain bytes.
pub fn quantity(bytes: u64) -> String {
    for (suffix, unit) in [("Ti", 1u64 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// The claim as bound to `pv`: `spec.volumeName`, the binder's annotations and a Bound status.
pub fn bound_claim(pvc: &Value, pv: &Value) -> Value {
    let mut next = pvc.clone();
    next["spec"]["volumeName"] = json!(meta::name(pv));
    let annotations = meta::metadata_mut(&mut next).entry("annotations").or_insert_with(|| json!({}));
    if let Some(a) = annotations.as_object_mut() {
        a.insert("pv.kubernetes.io/bind-completed".into(), json!("yes"));
        a.insert("pv.kubernetes.io/bound-by-controller".into(), json!("yes"));
        a.insert("volume.kubernetes.io/storage-provisioner".into(), json!(PROVISIONER));
    }
    next
}

pub fn bound_status(pv: &Value) -> Value {
    json!({
        "phase": "Bound",
        "accessModes": pv.pointer("/spec/accessModes").cloned().unwrap_or(json!([])),
        "capacity": pv.pointer("/spec/capacity").cloned().unwrap_or(json!({})),
    })
}

fn access_modes(obj: &Value) -> Vec<&str> {
    obj.pointer("/spec/accessModes").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect()
}

fn capacity_of(pv: &Value) -> Option<f64> {
    pv.pointer("/spec/capacity/storage").and_then(|q| crate::quantity::parse_value(q).ok())
}

/// Whether a PersistentVolume someone made can hold `pvc`, as the binder matches them: free (or
/// pre-bound to this claim), same class, enough capacity, the access modes and volume mode, and
/// the claim's selector.
pub fn static_match(pvc: &Value, pv: &Value) -> bool {
    // A volume released by its claim keeps that claim's data: it never binds again unless an
    // admin clears it (as Kubernetes' binder treats Released volumes).
    let phase = pv.pointer("/status/phase").and_then(Value::as_str);
    if meta::is_deleting(pv) || matches!(phase, Some("Released" | "Failed")) {
        return false;
    }
    let claim_ref = pv.pointer("/spec/claimRef");
    let free = match claim_ref {
        None | Some(Value::Null) => true,
        Some(r) => {
            r.get("name").and_then(Value::as_str) == Some(meta::name(pvc))
                && r.get("namespace").and_then(Value::as_str) == Some(meta::namespace(pvc))
                && r.get("uid").and_then(Value::as_str).is_none_or(|u| u == meta::uid(pvc))
        }
    };
    let class = |o: &Value| o.pointer("/spec/storageClassName").and_then(Value::as_str).unwrap_or("").to_string();
    let enough = match (requested_bytes(pvc), capacity_of(pv)) {
        (Some(want), Some(have)) => have >= want as f64,
        _ => false,
    };
    let modes_ok = {
        let have = access_modes(pv);
        access_modes(pvc).iter().all(|m| have.contains(m))
    };
    let selector_ok = match pvc.pointer("/spec/selector").filter(|s| s.is_object()) {
        None => true,
        Some(sel) => crate::selector::LabelSelector::from_object(sel).is_ok_and(|s| s.matches(&meta::labels(pv))),
    };
    free && class(pv) == class(pvc) && enough && modes_ok && volume_mode(pv) == volume_mode(pvc) && selector_ok
}

/// Whether `pv` is bound to `pvc` itself: its claimRef names this claim by uid. A claim's own
/// `spec.volumeName` and status say nothing a tenant could not have written; the volume's
/// claimRef is written by the binder alone (PersistentVolumes are the admin's).
pub fn bound_to(pv: &Value, pvc: &Value) -> bool {
    let r = |f: &str| pv.pointer(&format!("/spec/claimRef/{f}")).and_then(Value::as_str);
    !meta::uid(pvc).is_empty()
        && r("uid") == Some(meta::uid(pvc))
        && r("name") == Some(meta::name(pvc))
        && r("namespace") == Some(meta::namespace(pvc))
}

/// The volume a claim binds to without provisioning: the one it names, else the smallest match.
/// A free volume for `pvc`: the one it names, or the smallest that fits — on the node the claim
/// selected, when it selected one.
pub fn pick_static<'a>(pvc: &Value, pvs: &'a [Value], selected: Option<&str>) -> Option<&'a Value> {
    let on_selected = |pv: &Value| match (selected, super::placement::has_affinity(pv)) {
        (Some(node), true) => super::placement::pv_node(pv) == Some(node),
        _ => true,
    };
    match pvc.pointer("/spec/volumeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        Some(name) => pvs.iter().find(|pv| meta::name(pv) == name && static_match(pvc, pv)),
        None => pvs
            .iter()
            .filter(|pv| static_match(pvc, pv) && on_selected(pv))
            .min_by(|a, b| capacity_of(a).unwrap_or(0.0).total_cmp(&capacity_of(b).unwrap_or(0.0))),
    }
}

/// Whether the server binds `pvc` to `pv`, which names it in its claimRef. A volume this
/// provisioner made on a node binds only if the claim selected that node (or it is the server's
/// own): a node's agent, which may make volumes, cannot take a claim over by naming it.
pub fn may_bind(pvc: &Value, pv: &Value, selected: Option<&str>, server_node: Option<&str>) -> Result<(), String> {
    let ours = meta::annotation(pv, "pv.kubernetes.io/provisioned-by") == Some(PROVISIONER);
    match super::placement::pv_node(pv) {
        Some(node) if ours && Some(node) != selected && Some(node) != server_node => Err(format!(
            "volume {:?} was made on node {node:?}, which claim {:?} did not select",
            meta::name(pv),
            meta::name(pvc)
        )),
        None if ours && super::placement::has_affinity(pv) => {
            Err(format!("volume {:?} is pinned to no single node", meta::name(pv)))
        }
        _ => Ok(()),
    }
}

/// `pv` with its claim reference set to `pvc`.
pub fn claimed_volume(pv: &Value, pvc: &Value) -> Value {
    let mut next = pv.clone();
    next["spec"]["claimRef"] = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "namespace": meta::namespace(pvc),
        "name": meta::name(pvc),
        "uid": meta::uid(pvc),
    });
    next
}

/// The directory and disk file of a volume: our `File` volumes are `DIR/disk.img`; a directory
/// volume (`hostPath` of type Directory, as admins make them) holds `disk.img`, as KubeVirt
/// expects of filesystem claims.
pub fn layout(pv: &Value) -> Option<(PathBuf, PathBuf)> {
    let path = PathBuf::from(pv.pointer("/spec/hostPath/path").and_then(Value::as_str)?);
    match pv.pointer("/spec/hostPath/type").and_then(Value::as_str) {
        Some("File") | Some("FileOrCreate") | Some("BlockDevice") => Some((path.parent()?.to_path_buf(), path)),
        _ => Some((path.clone(), path.join("disk.img"))),
    }
}

/// The default StorageClass and its StorageProfile, made at first start when no class exists.
/// The class made at first start: volumes made at once, in the server's pool (a cluster of
/// several machines wants a `WaitForFirstConsumer` class, whose volumes live on their guests'
/// nodes).
pub fn default_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": super::DEFAULT_CLASS, "annotations": {super::DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": false,
    })
}

/// The class `converge manifests` installs on a Kubernetes cluster: volumes made by the node
/// agent of the node kube-scheduler picks for the claim's first guest (local-path-provisioner's
/// way); not the cluster's default.
pub fn node_local_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": NODE_LOCAL_CLASS},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": false,
    })
}

/// Its name.
pub const NODE_LOCAL_CLASS: &str = "converge-local";

/// The StorageProfile CDI would publish for `class`: its claim defaults.
pub fn profile_for(class: &Value) -> Value {
    let sets = if class.get("provisioner").and_then(Value::as_str) == Some(PROVISIONER) {
        json!([
            {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"},
            {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block"},
        ])
    } else {
        json!([])
    };
    json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "StorageProfile",
        "metadata": {"name": meta::name(class)},
        "spec": {},
        "status": {
            "claimPropertySets": sets,
            "cloneStrategy": "copy",
            "dataImportCronSourceFormat": "pvc",
            "provisioner": class.get("provisioner").cloned().unwrap_or(json!("")),
            "storageClass": meta::name(class),
        },
    })
}

/// The class a claim names, or the default class when it names none.
pub fn class_for<'a>(claim_class: Option<&str>, classes: &'a [Value]) -> Option<&'a Value> {
    match claim_class.filter(|c| !c.is_empty()) {
        Some(name) => classes.iter().find(|c| meta::name(c) == name),
        None => classes.iter().find(|c| meta::annotation(c, super::DEFAULT_CLASS_ANNOTATION) == Some("true")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvc(storage: &str, class: Option<&str>) -> Value {
        let mut p = json!({"metadata": {"name": "data", "namespace": "ns", "uid": "u-1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}}});
        if let Some(c) = class {
            p["spec"]["storageClassName"] = json!(c);
        }
        p
    }

    #[test]
    fn claims_bind_by_class_and_binding_mode() {
        let mut wffc = default_class();
        wffc["metadata"]["name"] = json!("late");
        wffc["volumeBindingMode"] = json!("WaitForFirstConsumer");
        wffc["metadata"].as_object_mut().unwrap().remove("annotations");
        let mut external = default_class();
        external["provisioner"] = json!("ebs.csi.aws.com");
        let p = pvc("1Gi", None);
        assert!(binding_decision(&p, Some(&default_class()), false).is_ok());
        assert_eq!(binding_decision(&p, Some(&wffc), false).unwrap_err().0, "WaitForFirstConsumer");
        assert!(binding_decision(&p, Some(&wffc), true).is_ok());
        assert_eq!(binding_decision(&p, Some(&external), true).unwrap_err().0, "ExternalProvisioning");
        let e = binding_decision(&pvc("1Gi", Some("gold")), None, true).unwrap_err();
        assert!(e.1.contains("\"gold\" not found"), "{e:?}");
        let classes = [wffc.clone(), default_class()];
        assert_eq!(meta::name(class_for(None, &classes).unwrap()), "local");
        assert_eq!(meta::name(class_for(Some("late"), &classes).unwrap()), "late");
    }

    #[test]
    fn static_volumes_bind_as_the_binder_matches_them() {
        // Foreman's recorded PV and claim.
        let pv = json!({"metadata": {"name": "my-local-storage", "labels": {"type": "local", "component": "test", "tier": "dev"}},
            "spec": {"storageClassName": "manual", "capacity": {"storage": "3Gi"}, "accessModes": ["ReadWriteOnce"],
                     "hostPath": {"path": "/mnt/data/datax", "type": "Directory"}, "volumeMode": "Filesystem"}});
        let mut claim = pvc("2Gi", Some("manual"));
        claim["spec"]["volumeMode"] = json!("Filesystem");
        claim["spec"]["selector"] = json!({"matchLabels": {"component": "test"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["dev"]}]});
        claim["spec"]["volumeName"] = json!("my-local-storage");
        let pvs = [pv.clone()];
        assert_eq!(pick_static(&claim, &pvs, None).map(meta::name), Some("my-local-storage"));
        let mut big = claim.clone();
        big["spec"]["resources"]["requests"]["storage"] = json!("4Gi");
        assert!(pick_static(&big, &pvs, None).is_none());
        let mut other = claim.clone();
        other["spec"]["selector"] = json!({"matchLabels": {"tier": "prod"}});
        assert!(pick_static(&other, &pvs, None).is_none());
        let taken = claimed_volume(&pv, &json!({"metadata": {"name": "x", "namespace": "ns", "uid": "u-9"}}));
        assert!(pick_static(&claim, &[taken], None).is_none());
        assert_eq!(layout(&pv).unwrap().1, PathBuf::from("/mnt/data/datax/disk.img"));
    }

    #[test]
    fn volumes_live_in_the_pool_and_respect_the_cap() {
        let mut config = StorageConfig::new(std::path::Path::new("/data"));
        let (pv, dir, size) = volume_for(&pvc("1000", None), &default_class(), &config, None).unwrap();
        assert_eq!(dir, PathBuf::from("/data/storage/local/pvc-u-1"));
        assert_eq!(size, 1 << 20, "whole MiB");
        assert_eq!(pv["spec"]["capacity"]["storage"], "1Mi");
        let (_, _, size) = volume_for(&pvc("20G", None), &default_class(), &config, None).unwrap();
        assert_eq!(size % 4096, 0, "O_DIRECT needs whole blocks: {size}");
        assert_eq!(quantity(3 << 30), "3Gi");
        assert_eq!(quantity(1536), "1536");
        assert_eq!(pv["spec"]["hostPath"]["path"], "/data/storage/local/pvc-u-1/disk.img");
        assert_eq!(pv["spec"]["claimRef"]["uid"], "u-1");
        let bound = bound_claim(&pvc("1Gi", None), &pv);
        assert_eq!(bound["spec"]["volumeName"], "pvc-u-1");
        config.max_volume_bytes = Some(1 << 20);
        assert!(volume_for(&pvc("2Mi", None), &default_class(), &config, None).unwrap_err().contains("cap"));
        let mut hostile = pvc("1Mi", None);
        hostile["metadata"]["uid"] = json!("../../etc");
        assert!(volume_for(&hostile, &default_class(), &config, None).is_err());
    }
}
