//! The schema registry: KubeVirt's published definitions plus the core/v1 subset we serve.
//!
//! One walker does what the apiserver's decoder does for a typed object: it checks JSON types,
//! finds fields the schema does not declare (for `fieldValidation`), and prunes them when the
//! client asked for Ignore or Warn.

use serde_json::{Map, Value};
use std::sync::OnceLock;

const KUBEVIRT_SPEC: &str = include_str!("../schema/kubevirt-openapi.json");
const CORE_SPEC: &str = include_str!("../schema/core-v1.json");
/// CDI's published definitions (`../shared/reference/cdi-openapi.json`). Some of its names
/// (`v1.Condition`, `v1beta1.DataVolumeSpec`) differ in content from KubeVirt's, so they are filed
/// under `cdi.` with their references rewritten; CDI's ObjectMeta becomes the shared one.
const CDI_SPEC: &str = include_str!("../schema/cdi-openapi.json");
pub const CDI_PREFIX: &str = "cdi.";

/// All definitions by name, `#/definitions/NAME` references intact.
pub fn definitions() -> &'static Map<String, Value> {
    static DEFS: OnceLock<Map<String, Value>> = OnceLock::new();
    DEFS.get_or_init(|| {
        let mut all = Map::new();
        for text in [KUBEVIRT_SPEC, CORE_SPEC] {
            let doc: Value = serde_json::from_str(text).expect("embedded schema is valid JSON");
            if let Some(defs) = doc.get("definitions").and_then(Value::as_object) {
                all.extend(defs.clone());
            }
        }
        let cdi_text = CDI_SPEC.replace("\"#/definitions/", "\"#/definitions/cdi.").replace(
            "\"#/definitions/cdi.v1.ObjectMeta\"",
            "\"#/definitions/k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta\"",
        );
        let doc: Value = serde_json::from_str(&cdi_text).expect("embedded CDI schema is valid JSON");
        for (name, def) in doc.get("definitions").and_then(Value::as_object).into_iter().flatten() {
            all.insert(format!("{CDI_PREFIX}{name}"), def.clone());
        }
        extend(&mut all);
        all
    })
}

/// What Converge serves beyond KubeVirt's definitions, each an optional field KubeVirt's clients
/// ignore: a running migration's progress, which KubeVirt exports only as metrics
/// (`kubevirt_vmi_migration_data_remaining_bytes`, `…_memory_transfer_rate_bytes`).
fn extend(all: &mut Map<String, Value>) {
    let bytes = |d: &str| serde_json::json!({"type": "integer", "format": "int64", "description": d});
    let progress = serde_json::json!({
        "description": "Converge: the migration's progress as the source's libvirt reports it, refreshed every few seconds while it runs.",
        "type": "object",
        "properties": {
            "dataTotalBytes": bytes("Guest memory and copied disks to move, in bytes."),
            "dataProcessedBytes": bytes("What was sent so far, in bytes."),
            "dataRemainingBytes": bytes("What is left to send, in bytes."),
            "memoryTransferRateBytesPerSecond": bytes("How fast guest memory is being sent, in bytes per second."),
            "timestamp": {"type": "string", "format": "date-time", "description": "When it was read."}
        }
    });
    let state = all
        .get_mut("v1.VirtualMachineInstanceMigrationState")
        .and_then(|d| d.get_mut("properties"))
        .and_then(Value::as_object_mut);
    if let Some(properties) = state {
        properties.insert("progress".into(), progress);
    }
}

const OBJECT_META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// What the walk found.
#[derive(Debug, Default, PartialEq)]
pub struct SchemaReport {
    /// Paths such as `spec.template.spec.domain.foo` of fields the schema does not declare.
    pub unknown_fields: Vec<String>,
    /// `(path, message)` for values of the wrong JSON type.
    pub type_errors: Vec<(String, String)>,
    /// Paths of required fields that are absent.
    pub missing: Vec<String>,
}

/// Walk `obj` against definition `def`; with `prune`, remove unknown fields in place.
pub fn check(def: &str, obj: &mut Value, prune: bool) -> SchemaReport {
    let mut report = SchemaReport::default();
    let schema = Value::String(format!("#/definitions/{def}"));
    let root = serde_json::json!({"$ref": schema});
    walk(&root, obj, "", prune, true, &mut report);
    report
}

fn resolve(schema: &Value) -> (&Value, Option<&str>) {
    let mut cur = schema;
    let mut name = None;
    for _ in 0..8 {
        match cur.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/definitions/")) {
            Some(n) => match definitions().get(n) {
                Some(d) => {
                    name = Some(definitions().get_key_value(n).map(|(k, _)| k.as_str()).unwrap_or(n));
                    cur = d;
                }
                None => break,
            },
            None => break,
        }
    }
    (cur, name)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_names(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_ok(schema: &Value, v: &Value) -> bool {
    let actual = json_type(v);
    if schema.get("format").and_then(Value::as_str) == Some("int-or-string") {
        return actual == "string" || actual == "integer";
    }
    let allowed = type_names(schema);
    allowed.is_empty() || allowed.contains(&actual) || (actual == "integer" && allowed.contains(&"number"))
}

fn walk(schema: &Value, v: &mut Value, path: &str, prune: bool, top_meta: bool, report: &mut SchemaReport) {
    let (schema, name) = resolve(schema);
    // Null stands for "unset" in manifests (`creationTimestamp: null`), as the apiserver reads it.
    if v.is_null() {
        return;
    }
    if !type_ok(schema, v) {
        let want = type_names(schema).join(" or ");
        report.type_errors.push((
            path.to_string(),
            format!("Invalid value: \"{}\": {path} in body must be of type {want}", json_type(v)),
        ));
        return;
    }
    // Nested ObjectMeta (templates) is free-form in KubeVirt's CRDs: kept as sent.
    if name == Some(OBJECT_META) && !top_meta {
        return;
    }
    match v {
        Value::Object(map) => {
            if !path.starts_with("status") {
                for req in
                    schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
                {
                    if map.get(req).is_none_or(Value::is_null) {
                        // Defaulting runs before validation, as in the apiserver.
                        let default = schema.get("properties").and_then(|p| p.get(req)).and_then(|p| p.get("default"));
                        match default {
                            Some(d) => {
                                map.insert(req.to_string(), d.clone());
                            }
                            None => report.missing.push(join(path, req)),
                        }
                    }
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let mut unknown = vec![];
            for (key, child) in map.iter_mut() {
                if let Some(prop) = props.and_then(|p| p.get(key)) {
                    walk(prop, child, &join(path, key), prune, path.is_empty() && key == "metadata", report);
                } else if let Some(add) = additional.filter(|a| a.is_object()) {
                    walk(add, child, &join(path, key), prune, false, report);
                } else if props.is_some() && additional.is_none() {
                    unknown.push(key.clone());
                }
            }
            for key in unknown {
                report.unknown_fields.push(join(path, &key));
                if prune {
                    map.remove(&key);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), prune, false, report);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_served_kind_has_a_definition() {
        for k in crate::kinds::ALL {
            assert!(definitions().contains_key(k.definition), "{}", k.definition);
        }
    }

    #[test]
    fn finds_and_prunes_unknown_fields() {
        let mut vm = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "a", "bogus": 1},
            "spec": {"running": false, "foo": 1, "template": {"metadata": {"anything": 1}, "spec": {"domain": {"devices": {}, "bar": 2}}}}
        });
        let report = check("v1.VirtualMachine", &mut vm, true);
        assert_eq!(report.unknown_fields, vec!["metadata.bogus", "spec.template.spec.domain.bar", "spec.foo"]);
        assert!(vm["spec"].get("foo").is_none());
        assert_eq!(vm["spec"]["template"]["metadata"]["anything"], 1);
    }

    #[test]
    fn reports_wrong_types() {
        let mut vm = json!({"spec": {"running": "yes", "template": {"spec": {"domain": {"cpu": {"cores": "two"}, "memory": {"guest": "1Gi"}}}}}});
        let report = check("v1.VirtualMachine", &mut vm, false);
        let paths: Vec<&str> = report.type_errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, vec!["spec.running", "spec.template.spec.domain.cpu.cores"]);
    }

    #[test]
    fn required_fields_with_defaults_are_filled() {
        let mut preset = json!({"spec": {"selector": {}, "domain": {"cpu": {"cores": 2}}}});
        let report = check("v1.VirtualMachineInstancePreset", &mut preset, false);
        assert!(report.missing.is_empty(), "{report:?}");
        assert_eq!(preset["spec"]["domain"]["devices"], json!({}));
        let mut vm = json!({"spec": {}});
        assert_eq!(check("v1.VirtualMachine", &mut vm, false).missing, vec!["spec.template"]);
    }

    #[test]
    fn core_kinds_are_checked_too() {
        let mut cm = json!({"metadata": {"name": "x", "creationTimestamp": null}, "data": {"a": "b"}, "extra": true});
        let report = check("io.k8s.api.core.v1.ConfigMap", &mut cm, false);
        assert_eq!(report.unknown_fields, vec!["extra"]);
        assert!(report.type_errors.is_empty());
    }
}
