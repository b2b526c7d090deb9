//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and, for core kinds,
//! strategic merge patch with the merge keys of the fields those kinds have.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            // CBOR apply bodies are behind a feature gate in Kubernetes 1.32 too: a 415 here.
            "application/apply-patch+yaml" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("the patch body is not valid JSON: {0}")]
    Malformed(String),
    #[error("the patch could not be applied: {0}")]
    Failed(String),
    /// Too many operations, or a result past the size an object may have (413).
    #[error("{0}")]
    TooLarge(String),
}

/// The apiserver's limit on a JSON patch's operations.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;
/// The largest object a patch may produce: the request body limit, as the apiserver bounds it.
pub const MAX_PATCHED_SIZE: usize = 3 * 1024 * 1024;

/// Bytes `v` serializes to, counted without keeping them.
fn json_size(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

fn too_large(size: usize) -> PatchError {
    PatchError::TooLarge(format!(
        "Request entity too large: the patched object would exceed {MAX_PATCHED_SIZE} bytes (at least {size})"
    ))
}

/// A JSON patch applied one operation at a time, refused as soon as what it adds could take
/// the object past `MAX_PATCHED_SIZE`: a few `copy` operations of a growing subtree double
/// the object each, and the first cut would only be seen after gigabytes were allocated.
fn apply_json_patch(out: &mut Value, ops: &[json_patch::PatchOperation]) -> Result<(), PatchError> {
    use json_patch::PatchOperation as Op;
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooLarge(format!(
            "The allowed count of operations in the request is {MAX_JSON_PATCH_OPERATIONS}, but found {}",
            ops.len()
        )));
    }
    // An upper bound: what each op adds is counted, what it removes is not.
    let mut size = json_size(out);
    for op in ops {
        size = size.saturating_add(match op {
            Op::Add(a) => json_size(&a.value),
            Op::Replace(r) => json_size(&r.value),
            Op::Copy(c) => out.pointer(&c.from.to_string()).map_or(0, json_size),
            Op::Remove(_) | Op::Move(_) | Op::Test(_) => 0,
        });
        if size > MAX_PATCHED_SIZE {
            return Err(too_large(size));
        }
        json_patch::patch(out, std::slice::from_ref(op)).map_err(|e| PatchError::Failed(e.to_string()))?;
    }
    Ok(())
}

pub fn apply(kind: PatchType, doc: &Value, body: &[u8]) -> Result<Value, PatchError> {
    let patch: Value = serde_json::from_slice(body).map_err(|e| PatchError::Malformed(e.to_string()))?;
    let mut out = doc.clone();
    match kind {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(PatchError::Malformed("a merge patch must be a JSON object".into()));
            }
            json_patch::merge(&mut out, &patch);
        }
        PatchType::Json => {
            let ops: json_patch::Patch =
                serde_json::from_value(patch).map_err(|e| PatchError::Malformed(e.to_string()))?;
            apply_json_patch(&mut out, &ops)?;
        }
        PatchType::Strategic => {
            if !patch.is_object() {
                return Err(PatchError::Malformed("a strategic merge patch must be a JSON object".into()));
            }
            strategic_merge(&mut out, &patch, "");
        }
        // Server-side apply merges by schema and ownership: `crate::apply`, not a patch.
        PatchType::Apply => {
            return Err(PatchError::Failed("an apply is not a patch: see converge_engine::apply".into()))
        }
    }
    let size = json_size(&out);
    if size > MAX_PATCHED_SIZE {
        return Err(too_large(size));
    }
    Ok(out)
}

/// Lists merged element-wise by a key, per the core types' `patchMergeKey` tags.
fn merge_key(path: &str) -> Option<&'static str> {
    match path {
        "metadata.ownerReferences" => Some("uid"),
        "metadata.managedFields" => None,
        _ => None,
    }
}

/// Lists of scalars merged as sets (`patchStrategy: merge` on a []string).
fn is_set_list(path: &str) -> bool {
    path == "metadata.finalizers"
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn strategic_merge(target: &mut Value, patch: &Value, path: &str) {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    match patch_map.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replacement = patch_map.clone();
            replacement.remove("$patch");
            *target = Value::Object(replacement);
            return;
        }
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target.as_object_mut().expect("object ensured above");
    if let Some(retain) = patch_map.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        target_map.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, value) in patch_map {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(remove)) =
                (target_map.get_mut(field).and_then(Value::as_array_mut), value.as_array())
            {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        let here = child_path(path, key);
        if value.is_null() {
            target_map.remove(key);
            continue;
        }
        match (value, target_map.get_mut(key)) {
            (Value::Object(_), Some(existing)) if existing.is_object() => {
                strategic_merge(existing, value, &here);
                if existing.is_null() {
                    target_map.remove(key);
                }
            }
            (Value::Array(items), Some(Value::Array(existing))) if merge_key(&here).is_some() => {
                let mk = merge_key(&here).unwrap_or_default();
                merge_keyed_list(existing, items, mk, &here);
            }
            (Value::Array(items), Some(Value::Array(existing))) if is_set_list(&here) => {
                for item in items {
                    if !existing.contains(item) {
                        existing.push(item.clone());
                    }
                }
            }
            (Value::Object(_), _) => {
                let mut fresh = Value::Object(Map::new());
                strategic_merge(&mut fresh, value, &here);
                target_map.insert(key.clone(), fresh);
            }
            _ => {
                target_map.insert(key.clone(), value.clone());
            }
        }
    }
}

fn merge_keyed_list(existing: &mut Vec<Value>, items: &[Value], key: &str, path: &str) {
    for item in items {
        let id = item.get(key).cloned();
        let position = existing.iter().position(|e| id.is_some() && e.get(key) == id.as_ref());
        let deleting = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, deleting) {
            (Some(i), true) => {
                existing.remove(i);
            }
            (Some(i), false) => strategic_merge(&mut existing[i], item, path),
            (None, false) => existing.push(item.clone()),
            (None, true) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patches_that_grow_without_bound_are_refused_early() {
        // 28 copies of a doubling subtree: 2^28 times the seed, had it been applied.
        let mut ops = vec![json!({"op": "add", "path": "/data/a", "value": "x".repeat(64)})];
        for i in 0..28 {
            ops.push(json!({"op": "copy", "from": "/data", "path": format!("/data/c{i}")}));
        }
        let doc = json!({"data": {}});
        let err = run(PatchType::Json, doc.clone(), json!(ops));
        assert!(matches!(err, Err(PatchError::TooLarge(_))), "{err:?}");
        let many: Vec<Value> =
            (0..=MAX_JSON_PATCH_OPERATIONS).map(|_| json!({"op": "test", "path": "/data", "value": {}})).collect();
        assert!(matches!(run(PatchType::Json, doc.clone(), json!(many)), Err(PatchError::TooLarge(_))));
        let small = run(PatchType::Json, doc, json!(ops[..4]));
        assert!(small.is_ok_and(|v| v["data"].as_object().is_some_and(|m| m.len() == 4)));
    }

    fn run(kind: PatchType, doc: Value, patch: Value) -> Result<Value, PatchError> {
        apply(kind, &doc, patch.to_string().as_bytes())
    }

    #[test]
    fn merge_patch_deletes_with_null() {
        let out = run(PatchType::Merge, json!({"a": 1, "b": {"c": 2}}), json!({"b": {"c": null}, "d": 3}));
        assert_eq!(out, Ok(json!({"a": 1, "b": {}, "d": 3})));
    }

    #[test]
    fn json_patch_ops_and_failures() {
        let out = run(PatchType::Json, json!({"a": [1]}), json!([{"op": "add", "path": "/a/-", "value": 2}]));
        assert_eq!(out, Ok(json!({"a": [1, 2]})));
        let failed = run(PatchType::Json, json!({}), json!([{"op": "test", "path": "/x", "value": 1}]));
        assert!(matches!(failed, Err(PatchError::Failed(_))));
        assert!(matches!(run(PatchType::Json, json!({}), json!({"op": "add"})), Err(PatchError::Malformed(_))));
    }

    #[test]
    fn strategic_merge_directives() {
        let doc = json!({"metadata": {"finalizers": ["a"], "ownerReferences": [{"uid": "1", "name": "x"}]}, "data": {"k": "v", "z": "1"}});
        let patch = json!({
            "metadata": {"finalizers": ["b"], "ownerReferences": [{"uid": "1", "name": "y"}, {"uid": "2", "name": "n"}]},
            "data": {"z": null, "n": "2"}
        });
        let out = run(PatchType::Strategic, doc.clone(), patch);
        assert_eq!(
            out,
            Ok(
                json!({"metadata": {"finalizers": ["a", "b"], "ownerReferences": [{"uid": "1", "name": "y"}, {"uid": "2", "name": "n"}]}, "data": {"k": "v", "n": "2"}})
            )
        );
        let out = run(
            PatchType::Strategic,
            doc.clone(),
            json!({"data": {"$patch": "replace", "only": "1"}, "$deleteFromPrimitiveList/finalizers": ["a"]}),
        );
        assert_eq!(out.map(|v| v["data"].clone()), Ok(json!({"only": "1"})));
        let out = run(
            PatchType::Strategic,
            doc,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "ownerReferences": [{"uid": "1", "$patch": "delete"}]}}),
        );
        assert_eq!(out.map(|v| v["metadata"].clone()), Ok(json!({"finalizers": [], "ownerReferences": []})));
    }

    #[test]
    fn content_types() {
        assert_eq!(PatchType::from_content_type("application/merge-patch+json; charset=utf-8"), Some(PatchType::Merge));
        assert_eq!(PatchType::from_content_type("application/json"), None);
    }
}
