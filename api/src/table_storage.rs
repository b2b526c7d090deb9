//! Printer columns of the storage kinds: the apiserver's for claims, volumes and classes, and
//! CDI's for DataVolumes.

use super::{text, Cell, Column, AGE, NAME};
use converge_engine::kinds::{self, ResourceKind};
use converge_engine::meta;
use serde_json::{json, Value};

const fn col(name: &'static str, description: &'static str, priority: i64, cell: fn(&Value) -> Value) -> Column {
    Column { name, kind: "string", format: "", priority, description, cell: Cell::Computed(cell) }
}

/// A column CDI's CRD prints too (a JSONPath there).
const fn field(name: &'static str, description: &'static str, pointer: &'static str) -> Column {
    Column { name, kind: "string", format: "", priority: 0, description, cell: Cell::Field(pointer) }
}

/// `RWO,ROX`, as kubectl abbreviates access modes.
fn access_modes(o: &Value) -> Value {
    let modes: Vec<&str> = o
        .pointer("/spec/accessModes")
        .or_else(|| o.pointer("/status/accessModes"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect();
    json!(modes.join(","))
}

fn or_unset(v: Value) -> Value {
    if v.is_null() {
        json!("<unset>")
    } else {
        v
    }
}

/// The kinds printed here; their rows read fields outside `status`, so they are parsed whole.
pub(super) fn prints(kind: &ResourceKind) -> bool {
    [&kinds::PERSISTENT_VOLUME_CLAIM, &kinds::PERSISTENT_VOLUME, &kinds::STORAGE_CLASS, &kinds::DATA_VOLUME]
        .iter()
        .any(|k| std::ptr::eq(*k, kind))
}

pub(super) fn columns(kind: &ResourceKind) -> Option<Vec<Column>> {
    let columns = if std::ptr::eq(kind, &kinds::PERSISTENT_VOLUME_CLAIM) {
        vec![
            NAME,
            col("Status", "The phase of the claim", 0, |o| text(o, "/status/phase")),
            col("Volume", "The volume bound to the claim", 0, |o| text(o, "/spec/volumeName")),
            col("Capacity", "The capacity of the bound volume", 0, |o| text(o, "/status/capacity/storage")),
            col("Access Modes", "Access modes of the bound volume", 0, access_modes),
            col("StorageClass", "The storage class of the claim", 0, |o| text(o, "/spec/storageClassName")),
            col("VolumeAttributesClass", "The volume attributes class of the claim", 0, |o| {
                or_unset(text(o, "/spec/volumeAttributesClassName"))
            }),
            AGE,
            col("VolumeMode", "Filesystem or Block", 1, |o| text(o, "/spec/volumeMode")),
        ]
    } else if std::ptr::eq(kind, &kinds::PERSISTENT_VOLUME) {
        vec![
            NAME,
            col("Capacity", "The capacity of the volume", 0, |o| text(o, "/spec/capacity/storage")),
            col("Access Modes", "Access modes of the volume", 0, access_modes),
            col("Reclaim Policy", "What happens to the volume when its claim goes", 0, |o| {
                text(o, "/spec/persistentVolumeReclaimPolicy")
            }),
            col("Status", "The phase of the volume", 0, |o| text(o, "/status/phase")),
            col("Claim", "The claim bound to the volume", 0, |o| {
                match (o.pointer("/spec/claimRef/namespace"), o.pointer("/spec/claimRef/name")) {
                    (Some(ns), Some(n)) => json!(format!("{}/{}", ns.as_str().unwrap_or(""), n.as_str().unwrap_or(""))),
                    _ => json!(""),
                }
            }),
            col("StorageClass", "The storage class of the volume", 0, |o| text(o, "/spec/storageClassName")),
            col("VolumeAttributesClass", "The volume attributes class", 0, |o| {
                or_unset(text(o, "/spec/volumeAttributesClassName"))
            }),
            col("Reason", "Why the volume is in its phase", 0, |o| text(o, "/status/reason")),
            AGE,
            col("VolumeMode", "Filesystem or Block", 1, |o| text(o, "/spec/volumeMode")),
        ]
    } else if std::ptr::eq(kind, &kinds::STORAGE_CLASS) {
        vec![
            Column {
                cell: Cell::Computed(|o| {
                    let default = meta::annotation(o, "storageclass.kubernetes.io/is-default-class") == Some("true");
                    json!(if default { format!("{} (default)", meta::name(o)) } else { meta::name(o).to_string() })
                }),
                ..NAME
            },
            col("Provisioner", "The provisioner of the class", 0, |o| text(o, "/provisioner")),
            col("ReclaimPolicy", "What happens to volumes when their claim goes", 0, |o| {
                o.get("reclaimPolicy").cloned().unwrap_or(json!("Delete"))
            }),
            col("VolumeBindingMode", "When claims bind", 0, |o| {
                o.get("volumeBindingMode").cloned().unwrap_or(json!("Immediate"))
            }),
            col("AllowVolumeExpansion", "Whether claims may grow", 0, |o| {
                json!(o.get("allowVolumeExpansion").and_then(Value::as_bool).unwrap_or(false).to_string())
            }),
            AGE,
        ]
    } else if std::ptr::eq(kind, &kinds::DATA_VOLUME) {
        vec![
            NAME,
            field("Phase", "The phase the DataVolume is in", "/status/phase"),
            field("Progress", "DataVolume progress", "/status/progress"),
            Column { kind: "integer", ..field("Restarts", "DataVolume restarts", "/status/restartCount") },
            AGE,
        ]
    } else {
        return None;
    };
    Some(columns)
}
