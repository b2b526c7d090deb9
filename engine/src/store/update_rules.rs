//! What an update keeps of the stored object, and what counts as a change of its spec.

use super::UpdateMode;
use crate::kinds::ResourceKind;
use crate::meta;
use serde_json::{Map, Value};

/// Everything but metadata and status: what `generation` counts changes of.
pub(super) fn spec_of(obj: &Value) -> Map<String, Value> {
    let mut m = obj.as_object().cloned().unwrap_or_default();
    m.remove("metadata");
    m.remove("status");
    m
}

const SYSTEM_METADATA: &[&str] = &[
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "resourceVersion",
    "namespace",
    "name",
    "selfLink",
];

pub(super) fn merge_for_update(kind: &ResourceKind, current: &Value, new: Value, mode: UpdateMode) -> Value {
    match mode {
        UpdateMode::Status => {
            let mut merged = current.clone();
            if let (Some(m), Some(status)) = (merged.as_object_mut(), new.get("status")) {
                m.insert("status".into(), status.clone());
            }
            // Who wrote the status is recorded with it (the API's field manager computed this),
            // from a write made against this very version: an unconditional write's copy may be
            // older than what is stored.
            let current_version = meta::meta_str(current, "resourceVersion");
            let same_version = current_version.is_some() && meta::meta_str(&new, "resourceVersion") == current_version;
            if let (true, Some(fields)) = (same_version, new.pointer("/metadata/managedFields")) {
                meta::metadata_mut(&mut merged).insert("managedFields".into(), fields.clone());
            }
            merged
        }
        UpdateMode::Main => {
            let mut merged = new;
            let current_meta = meta::metadata(current).cloned().unwrap_or_default();
            let m = meta::metadata_mut(&mut merged);
            for field in SYSTEM_METADATA {
                match current_meta.get(*field) {
                    Some(v) => m.insert(field.to_string(), v.clone()),
                    None => m.remove(*field),
                };
            }
            if let Some(obj) = merged.as_object_mut() {
                if kind.status_subresource {
                    match current.get("status") {
                        Some(s) => obj.insert("status".into(), s.clone()),
                        None => obj.remove("status"),
                    };
                }
            }
            merged
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds;
    use serde_json::json;

    #[test]
    fn main_updates_keep_status_and_system_metadata() {
        let current = json!({"metadata": {"name": "a", "uid": "u", "generation": 3, "resourceVersion": "9", "labels": {"x": "1"}}, "spec": {"a": 1}, "status": {"s": 1}});
        let new = json!({"metadata": {"name": "a", "uid": "other", "labels": {"y": "2"}}, "spec": {"a": 2}, "status": {"s": 2}});
        let merged = merge_for_update(&kinds::VIRTUAL_MACHINE, &current, new.clone(), UpdateMode::Main);
        assert_eq!(merged["status"], json!({"s": 1}));
        assert_eq!(merged["metadata"]["uid"], "u");
        assert_eq!(merged["metadata"]["labels"], json!({"y": "2"}));
        let status = merge_for_update(&kinds::VIRTUAL_MACHINE, &current, new, UpdateMode::Status);
        assert_eq!(status["spec"], json!({"a": 1}));
        assert_eq!(status["status"], json!({"s": 2}));
    }
}
