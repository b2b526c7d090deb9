//! The embedded provisioner, pure: which claims bind, what PersistentVolume a claim gets, and
//! what a claim's status says. `runtime` makes the files and writes the objects.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::{requested_bytes, volume_mode, StorageConfig, PROVISIONER};
use crate::meta;

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
    let wffc = class.get("volumeBindingMode").and_then(Value::as_str) == Some("WaitForFirstConsumer");
    if wffc && !consumed {
        return Err(("WaitForFirstConsumer", "waiting for first consumer to be created before binding".into()));
    }
    Ok(())
}

/// The PersistentVolume for `pvc` from `class`, and the volume's directory.
pub fn volume_for(pvc: &Value, class: &Value, config: &StorageConfig) -> Result<(Value, PathBuf, u64), String> {
    let size = requested_bytes(pvc).ok_or("spec.resources.requests.storage is missing or not a positive quantity")?;
    // Whole 512-byte sectors, as a disk needs.
    let size = size.div_ceil(512) * 512;
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
    Ok((pv, dir, size))
}

/// Bytes as the apiserver prints them: `16Mi`, `2Gi`, or plain bytes.
pub fn quantity(bytes: u64) -> String {
    for (suffix, unit) in [("Ti", 1u64 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= unit && bytes % unit == 0 {
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

/// The default StorageClass and its StorageProfile, made at first start when no class exists.
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
        None => classes.iter().find(|c| {
            c.pointer(&format!("/metadata/annotations/{}", super::DEFAULT_CLASS_ANNOTATION.replace('/', "~1")))
                .and_then(Value::as_str)
                == Some("true")
        }),
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
    fn volumes_live_in_the_pool_and_respect_the_cap() {
        let mut config = StorageConfig::new(std::path::Path::new("/data"));
        let (pv, dir, size) = volume_for(&pvc("1000", None), &default_class(), &config).unwrap();
        assert_eq!(dir, PathBuf::from("/data/storage/local/pvc-u-1"));
        assert_eq!(size, 1024);
        assert_eq!(pv["spec"]["capacity"]["storage"], "1Ki");
        assert_eq!(quantity(3 << 30), "3Gi");
        assert_eq!(quantity(1536), "1536");
        assert_eq!(pv["spec"]["hostPath"]["path"], "/data/storage/local/pvc-u-1/disk.img");
        assert_eq!(pv["spec"]["claimRef"]["uid"], "u-1");
        let bound = bound_claim(&pvc("1Gi", None), &pv);
        assert_eq!(bound["spec"]["volumeName"], "pvc-u-1");
        config.max_volume_bytes = Some(1 << 20);
        assert!(volume_for(&pvc("2Mi", None), &default_class(), &config).unwrap_err().contains("cap"));
        let mut hostile = pvc("1Mi", None);
        hostile["metadata"]["uid"] = json!("../../etc");
        assert!(volume_for(&hostile, &default_class(), &config).is_err());
    }
}
