//! What the apiserver and CDI's webhooks check on storage objects.

use serde_json::Value;

use super::Operation;
use crate::error::Cause;
use crate::storage::datavolume;

const ACCESS_MODES: &[&str] = &["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"];
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";

fn check_claim_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    match spec.pointer("/resources/requests/storage") {
        None => causes.push(Cause::required(format!("{path}.resources[storage]"), "Required value")),
        Some(q) => {
            if crate::quantity::parse_value(q).map_or(true, |v| v <= 0.0) {
                causes.push(Cause::invalid(format!("{path}.resources[storage]"), "must be greater than zero"));
            }
        }
    }
    if let Some(modes) = spec.get("accessModes").and_then(Value::as_array) {
        for m in modes {
            if !m.as_str().is_some_and(|m| ACCESS_MODES.contains(&m)) {
                causes.push(Cause::not_supported(
                    format!("{path}.accessModes"),
                    format!("Unsupported value: {m}: supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\", \"ReadWriteOncePod\""),
                ));
            }
        }
    }
    if let Some(mode) = spec.get("volumeMode").and_then(Value::as_str) {
        if mode != "Block" && mode != "Filesystem" {
            causes.push(Cause::not_supported(
                format!("{path}.volumeMode"),
                format!("Unsupported value: \"{mode}\": supported values: \"Block\", \"Filesystem\""),
            ));
        }
    }
}

pub fn admit_pvc(op: Operation, obj: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    if spec.get("accessModes").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        causes.push(Cause::required("spec.accessModes", "at least 1 access mode is required"));
    }
    check_claim_spec(&spec, "spec", causes);
    match (op, old) {
        (Operation::Create, _) => {
            if obj.pointer("/spec/volumeMode").is_none() {
                obj["spec"]["volumeMode"] = Value::String("Filesystem".into());
            }
            let mut finalizers = crate::meta::finalizers(obj);
            if !finalizers.iter().any(|f| f == PVC_PROTECTION) {
                finalizers.push(PVC_PROTECTION.to_string());
                crate::meta::set_finalizers(obj, &finalizers);
            }
        }
        (Operation::Update, Some(old)) => {
            let strip = |v: &Value| {
                let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
                if let Some(m) = s.as_object_mut() {
                    m.remove("resources");
                    m.remove("volumeAttributesClassName");
                }
                s
            };
            if strip(obj) != strip(old) {
                causes.push(Cause::forbidden(
                    "spec",
                    "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
                ));
            } else if obj.pointer("/spec/resources") != old.pointer("/spec/resources") {
                causes.push(Cause::forbidden(
                    "spec.resources.requests.storage",
                    "volume expansion is not supported by Converge's provisioner",
                ));
            }
        }
        _ => {}
    }
}

pub fn admit_datavolume(op: Operation, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    if let Err(message) = datavolume::source_of(obj) {
        let field = if obj.pointer("/spec/sourceRef").is_some() { "spec.sourceRef" } else { "spec.source" };
        causes.push(Cause::invalid(field, message));
    }
    let (path, claim) = match (obj.pointer("/spec/pvc"), obj.pointer("/spec/storage")) {
        (Some(p), None) => ("spec.pvc", p),
        (None, Some(s)) => ("spec.storage", s),
        (Some(_), Some(_)) => {
            causes.push(Cause::invalid("spec", "only one of spec.pvc and spec.storage may be set"));
            return;
        }
        (None, None) => {
            causes.push(Cause::required("spec.storage", "Missing Data volume PVC or storage"));
            return;
        }
    };
    // A clone may leave the size out (`storage: {}` among CDI's examples): it takes its source's.
    let is_clone = datavolume::source_of(obj).is_ok_and(|s| s.is_clone());
    if is_clone && claim.pointer("/resources/requests/storage").is_none() {
        let mut sized = claim.clone();
        *crate::meta::at_mut(&mut sized, &["resources", "requests", "storage"]) = serde_json::json!("1");
        check_claim_spec(&sized, path, causes);
    } else {
        check_claim_spec(claim, path, causes);
    }
    match obj.pointer("/spec/contentType").and_then(Value::as_str) {
        None | Some("kubevirt") | Some("archive") => {}
        Some(other) => causes.push(Cause::not_supported(
            "spec.contentType",
            format!("Unsupported value: \"{other}\": supported values: \"kubevirt\", \"archive\""),
        )),
    }
    if let (Operation::Update, Some(old)) = (op, old) {
        if obj.get("spec") != old.get("spec") {
            causes.push(Cause::forbidden("spec", "Cannot update DataVolume spec: the spec is immutable"));
        }
    }
}

/// The apiserver's StorageClass defaults (pkg/apis/storage/v1/defaults.go).
pub fn default_storage_class(obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.entry("reclaimPolicy").or_insert_with(|| serde_json::json!("Delete"));
        m.entry("volumeBindingMode").or_insert_with(|| serde_json::json!("Immediate"));
    }
}

pub fn admit_storage_class(op: Operation, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    match obj.get("volumeBindingMode").and_then(Value::as_str) {
        None | Some("Immediate") | Some("WaitForFirstConsumer") => {}
        Some(other) => causes.push(Cause::not_supported(
            "volumeBindingMode",
            format!("Unsupported value: \"{other}\": supported values: \"Immediate\", \"WaitForFirstConsumer\""),
        )),
    }
    match obj.get("reclaimPolicy").and_then(Value::as_str) {
        None | Some("Delete") | Some("Retain") => {}
        Some(other) => causes.push(Cause::not_supported(
            "reclaimPolicy",
            format!("Unsupported value: \"{other}\": supported values: \"Delete\", \"Retain\""),
        )),
    }
    if let Some(path) = obj.pointer("/parameters/path").and_then(Value::as_str) {
        if !std::path::Path::new(path).is_absolute() || path.split('/').any(|c| c == "..") {
            causes.push(Cause::invalid("parameters.path", "the pool directory must be an absolute path without '..'"));
        }
    }
    match obj.pointer("/parameters/shared").and_then(Value::as_str) {
        None | Some("false") => {}
        Some("true") if obj.pointer("/parameters/path").and_then(Value::as_str).is_some_and(|p| !p.is_empty()) => {}
        Some("true") => causes.push(Cause::required(
            "parameters.path",
            "a shared pool is the path where every node mounts it: parameters.path is required",
        )),
        Some(other) => causes.push(Cause::not_supported(
            "parameters.shared",
            format!("Unsupported value: \"{other}\": supported values: \"true\", \"false\""),
        )),
    }
    if let (Operation::Update, Some(old)) = (op, old) {
        for field in ["provisioner", "parameters", "reclaimPolicy", "volumeBindingMode"] {
            if obj.get(field) != old.get(field) {
                causes.push(Cause::forbidden(field, format!("updates to {field} are forbidden.")));
            }
        }
    }
}

pub fn admit_data_source(obj: &Value, causes: &mut Vec<Cause>) {
    if obj.pointer("/spec/source").is_none_or(|s| s.as_object().is_none_or(|m| m.is_empty())) {
        causes.push(Cause::required("spec.source", "Required value: a DataSource needs spec.source.pvc"));
    }
}

/// A volume made by hand: the apiserver's defaults (Retain, Filesystem) and its protection.
pub fn admit_pv(op: Operation, obj: &mut Value, causes: &mut Vec<Cause>) {
    if obj.pointer("/spec/capacity/storage").is_none() {
        causes.push(Cause::required("spec.capacity", "Required value"));
    }
    if obj.pointer("/spec/accessModes").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        causes.push(Cause::required("spec.accessModes", "Required value"));
    }
    if op != Operation::Create {
        return;
    }
    if obj.pointer("/spec/persistentVolumeReclaimPolicy").is_none() {
        obj["spec"]["persistentVolumeReclaimPolicy"] = Value::String("Retain".into());
    }
    if obj.pointer("/spec/volumeMode").is_none() {
        obj["spec"]["volumeMode"] = Value::String("Filesystem".into());
    }
    let mut finalizers = crate::meta::finalizers(obj);
    if !finalizers.iter().any(|f| f == "kubernetes.io/pv-protection") {
        finalizers.push("kubernetes.io/pv-protection".to_string());
        crate::meta::set_finalizers(obj, &finalizers);
    }
    obj["status"] = serde_json::json!({"phase": "Pending"});
}
